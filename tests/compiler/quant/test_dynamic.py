"""quantize_dynamic: integer weights, run-time activation quantization, checked in onnxruntime.

Every rewritten model must verify, pass onnx.checker (full check), keep its interface and give
onnxruntime outputs close to the float model's (cosine, relative L2) on random inputs; on
weights and activations that lie exactly on their grids the result is exact.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest

import homec
from homec.context import PassContext
from homec.onnx_io import convert_opset
from homec.quant.dynamic import quantize_dynamic
from homec.registry import REGISTRY
from homec.testing.graphgen import random_model
from homec.testing.oracle import random_feeds, run_ort

TP = onnx.TensorProto
F32 = TP.FLOAT
RNG = np.random.default_rng(11)


def _model(nodes, inputs, outputs, inits=(), *, opset=17, ir_version=8):
    g = oh.make_graph(nodes, "g", [oh.make_tensor_value_info(*i) for i in inputs],
                      [oh.make_tensor_value_info(*o) for o in outputs],
                      [onh.from_array(np.asarray(a), n) for n, a in inits])
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", opset)])
    m.ir_version = ir_version
    onnx.checker.check_model(m, full_check=True)
    return m


def _quantize(m, **options):
    """Quantize a fresh load; the result verifies, passes the checker and keeps the interface."""
    g = homec.load(m)
    stats = quantize_dynamic(g, **options)
    g.verify()
    out = g.to_onnx()
    onnx.checker.check_model(out, full_check=True)
    assert _feedable(out) == _feedable(m)
    assert [o.name for o in out.graph.output] == [o.name for o in m.graph.output]
    return g, stats, out


def _feedable(m):
    """Graph inputs without an initializer (below IR 4 every initializer is listed too)."""
    inits = {t.name for t in m.graph.initializer}
    return [i.name for i in m.graph.input if i.name not in inits]


def _changes(stats):
    return {k: v for k, v in stats.items() if v and not k.startswith(("seen", "refused", "skipped"))}


def _cosine(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _rel_l2(ref, got):
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


def _outputs(m, out, feeds):
    return run_ort(m, feeds), run_ort(out, feeds)


def _ops(g):
    return [n.op_type for n in g.nodes]


def _weight(shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def _matmul_model(x_shape, k=16, n=8):
    y_shape = list(x_shape[:-1]) + [n]
    return _model([oh.make_node("MatMul", ["x", "W"], ["y"])], [("x", F32, list(x_shape))],
                  [("y", F32, y_shape)], [("W", _weight((k, n)))])


# ---------------------------------------------------------------------------------------
# MatMul
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("weight_type", ["int8", "uint8"])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("x_shape", [(4, 16), (2, 5, 16), (2, 3, 4, 16), (16,)])
def test_matmul_is_close_to_float(x_shape, per_channel, weight_type):
    m = _matmul_model(x_shape)
    g, stats, out = _quantize(m, per_channel=per_channel, weight_type=weight_type)
    assert _changes(stats) == {"matmul_quantized": 1, "weights_quantized": 1, "activations_quantized": 1}
    assert _ops(g) == ["DynamicQuantizeLinear", "MatMulInteger", "Cast", "Mul", "Mul"]
    w_q = g.nodes[1].input_const(1)
    assert w_q.dtype == np.dtype(weight_type) and w_q.shape == (16, 8)
    assert g.nodes[1].input_const(3).shape == ((8,) if per_channel else ())
    assert "W" not in g.initializers  # the float weight is gone
    feeds = random_feeds(m, 0)
    (ref,), (got,) = _outputs(m, out, feeds)
    assert got.shape == ref.shape and got.dtype == np.float32
    assert _cosine(ref, got) > 0.999
    assert _rel_l2(ref, got) < 0.03
    again = quantize_dynamic(homec.load(out), per_channel=per_channel, weight_type=weight_type)
    assert not _changes(again)


def _on_grid_activation(shape, zero_point, step, rng):
    """Values (k - zero_point) * step, k in 0..255, with k = 0 and 255 both present, so that
    DynamicQuantizeLinear picks exactly scale = step and this zero point."""
    k = rng.integers(0, 256, size=shape)
    k.flat[0], k.flat[1] = 0, 255
    return ((k - zero_point) * step).astype(np.float32)


@pytest.mark.parametrize("weight_type", ["int8", "uint8"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_weights_and_activations_on_their_grids_give_exact_results(per_channel, weight_type):
    rng = np.random.default_rng(5)
    k, n = 24, 6
    if weight_type == "int8":
        ints = rng.integers(-127, 128, size=(k, n))
        ints[0, :] = 127 * np.where(np.arange(n) % 2, 1, -1)  # |max| = 127 in every column
    else:
        ints = rng.integers(-100, 156, size=(k, n))
        ints[0, :], ints[1, :] = -100, 155  # range exactly 255 steps in every column
    w = (ints * 2.0 ** -3).astype(np.float32)
    m = _model([oh.make_node("MatMul", ["x", "W"], ["y"])], [("x", F32, [5, k])], [("y", F32, [5, n])],
               [("W", w)])
    _, stats, out = _quantize(m, per_channel=per_channel, weight_type=weight_type)
    assert stats["matmul_quantized"] == 1
    feeds = {"x": _on_grid_activation((5, k), 77, 2.0 ** -4, rng)}
    (ref,), (got,) = _outputs(m, out, feeds)
    np.testing.assert_array_equal(got, ref)
    # off the grid the result moves: the equality above is not vacuous
    feeds = {"x": feeds["x"] + np.float32(0.01)}
    (ref,), (got,) = _outputs(m, out, feeds)
    assert not np.array_equal(got, ref)


@pytest.mark.parametrize("weight_type", ["int8", "uint8"])
def test_conv_on_grid_is_exact(weight_type):
    rng = np.random.default_rng(6)
    lo, hi = (-127, 128) if weight_type == "int8" else (-100, 156)
    ints = rng.integers(lo, hi, size=(4, 3, 3, 3))
    ints.flat[0], ints.flat[1] = (127, -127) if weight_type == "int8" else (-100, 155)
    w = (ints * 2.0 ** -2).astype(np.float32)
    bias = (rng.integers(-8, 8, size=4) * 0.5).astype(np.float32)
    m = _model([oh.make_node("Conv", ["x", "W", "b"], ["y"], pads=[1, 1, 1, 1])],
               [("x", F32, [1, 3, 6, 6])], [("y", F32, [1, 4, 6, 6])], [("W", w), ("b", bias)])
    _, stats, out = _quantize(m, weight_type=weight_type)
    assert stats["conv_quantized"] == 1
    feeds = {"x": _on_grid_activation((1, 3, 6, 6), 40, 2.0 ** -5, rng)}
    (ref,), (got,) = _outputs(m, out, feeds)
    np.testing.assert_array_equal(got, ref)


def test_shared_activation_is_quantized_once():
    w1, w2, w3 = _weight((16, 8)), _weight((16, 4)), _weight((16, 5))
    m = _model([oh.make_node("MatMul", ["x", "W1"], ["a"]), oh.make_node("MatMul", ["x", "W2"], ["b"]),
                oh.make_node("Gemm", ["x", "W3"], ["c"])],
               [("x", F32, [3, 16])], [("a", F32, [3, 8]), ("b", F32, [3, 4]), ("c", F32, [3, 5])],
               [("W1", w1), ("W2", w2), ("W3", w3)])
    g, stats, out = _quantize(m)
    assert _changes(stats) == {"matmul_quantized": 2, "gemm_quantized": 1, "weights_quantized": 3,
                               "activations_quantized": 1}
    assert _ops(g).count("DynamicQuantizeLinear") == 1
    ref, got = _outputs(m, out, random_feeds(m, 1))
    assert all(_cosine(r, q) > 0.999 for r, q in zip(ref, got))


def test_shared_weight_is_quantized_once():
    m = _model([oh.make_node("MatMul", ["x", "W"], ["a"]), oh.make_node("Relu", ["a"], ["r"]),
                oh.make_node("MatMul", ["r", "W"], ["y"])],
               [("x", F32, [3, 16])], [("y", F32, [3, 16])], [("W", _weight((16, 16), 0.3))])
    g, stats, out = _quantize(m)
    assert _changes(stats) == {"matmul_quantized": 2, "weights_quantized": 1, "activations_quantized": 2}
    integer = [n for n in g.nodes if n.op_type == "MatMulInteger"]
    assert integer[0].inputs[1] is integer[1].inputs[1]
    ref, got = _outputs(m, out, random_feeds(m, 2))
    assert _cosine(ref[0], got[0]) > 0.999


def test_float_weight_read_elsewhere_is_kept():
    w = _weight((16, 16))
    m = _model([oh.make_node("MatMul", ["x", "W"], ["y"]), oh.make_node("Add", ["x", "W"], ["z"])],
               [("x", F32, [16, 16])], [("y", F32, [16, 16]), ("z", F32, [16, 16])], [("W", w)])
    g, stats, out = _quantize(m)
    assert stats["matmul_quantized"] == 1 and "W" in g.initializers
    assert stats["seen_weight_bytes_after"] > stats["seen_weight_bytes_before"]
    ref, got = _outputs(m, out, random_feeds(m, 3))
    np.testing.assert_array_equal(got[1], ref[1])


def test_intermediate_and_output_names_are_kept():
    m = _model([oh.make_node("MatMul", ["x", "W1"], ["h"]), oh.make_node("Relu", ["h"], ["r"]),
                oh.make_node("MatMul", ["r", "W2"], ["y"])],
               [("x", F32, [2, 16])], [("y", F32, [2, 4])], [("W1", _weight((16, 8))), ("W2", _weight((8, 4)))])
    g, _, _ = _quantize(m)
    assert g.value("h").producer.op_type == "Mul" and g.value("y").producer.op_type == "Mul"
    assert g.outputs[0].name == "y"


# ---------------------------------------------------------------------------------------
# Gemm
# ---------------------------------------------------------------------------------------

_C_CASES = {"none": None, "vector": (6,), "matrix": (4, 6), "scalar": (), "input": "input"}


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("alpha,beta", [(1.0, 1.0), (0.5, 2.0), (-1.5, 0.0)])
@pytest.mark.parametrize("c_case", list(_C_CASES))
def test_gemm_variants(trans_b, alpha, beta, c_case):
    b = _weight((6, 10) if trans_b else (10, 6))
    inputs, inits, gemm_in = [("a", F32, [4, 10])], [("B", b)], ["a", "B"]
    c = _C_CASES[c_case]
    if c == "input":
        inputs.append(("c", F32, [4, 6]))
        gemm_in.append("c")
    elif c is not None:
        inits.append(("c", _weight(c)))
        gemm_in.append("c")
    m = _model([oh.make_node("Gemm", gemm_in, ["y"], transB=trans_b, alpha=alpha, beta=beta)],
               inputs, [("y", F32, [4, 6])], inits)
    g, stats, out = _quantize(m, per_channel=trans_b == 1)
    assert stats["gemm_quantized"] == 1
    adds = _ops(g).count("Add")
    assert adds == (0 if c is None or beta == 0 else 1)
    assert _ops(g).count("Mul") == 2 + (c == "input" and beta not in (0.0, 1.0))
    ref, got = _outputs(m, out, random_feeds(m, 4))
    assert _cosine(ref[0], got[0]) > 0.999


def test_gemm_with_transposed_a_is_refused():
    m = _model([oh.make_node("Gemm", ["a", "B"], ["y"], transA=1)], [("a", F32, [10, 4])],
               [("y", F32, [4, 6])], [("B", _weight((10, 6)))])
    g, stats, _ = _quantize(m)
    assert stats["refused_transposed_a"] == 1 and not _changes(stats)
    assert _ops(g) == ["Gemm"]


# ---------------------------------------------------------------------------------------
# Conv
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("weight_type", ["int8", "uint8"])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("case", ["plain", "grouped", "strided", "same_upper", "conv1d", "conv3d", "no_bias"])
def test_conv_variants(case, per_channel, weight_type):
    x_shape, w_shape, attrs = [2, 6, 9, 9], (8, 6, 3, 3), {"pads": [1, 1, 1, 1]}
    if case == "grouped":
        w_shape, attrs = (6, 2, 3, 3), {"group": 3}
    elif case == "strided":
        attrs = {"strides": [2, 1], "dilations": [1, 2], "pads": [0, 1, 2, 0]}
    elif case == "same_upper":
        attrs = {"auto_pad": "SAME_UPPER", "strides": [2, 2]}
    elif case == "conv1d":
        x_shape, w_shape, attrs = [2, 6, 11], (8, 6, 3), {}
    elif case == "conv3d":
        x_shape, w_shape, attrs = [1, 6, 5, 5, 5], (8, 6, 3, 3, 3), {}
    inputs = ["x", "W"] if case == "no_bias" else ["x", "W", "b"]
    inits = [("W", _weight(w_shape, 0.3))] + ([] if case == "no_bias" else [("b", _weight((w_shape[0],)))])
    m = _model([oh.make_node("Conv", inputs, ["y"], **attrs)], [("x", F32, x_shape)],
               [("y", F32, [None] * len(x_shape))], inits)
    g, stats, out = _quantize(m, per_channel=per_channel, weight_type=weight_type)
    assert _changes(stats) == {"conv_quantized": 1, "weights_quantized": 1, "activations_quantized": 1}
    integer = g.nodes[1]
    assert integer.op_type == "ConvInteger" and integer.input_const(1).dtype == np.dtype(weight_type)
    assert integer.input_const(3).shape == ()  # onnxruntime's ConvInteger takes one zero point
    assert "W" not in g.initializers and "b" not in g.initializers
    (ref,), (got,) = _outputs(m, out, random_feeds(m, 5))
    assert got.shape == ref.shape
    assert _cosine(ref, got) > 0.999


def test_conv_bias_from_an_input_is_reshaped():
    m = _model([oh.make_node("Conv", ["x", "W", "b"], ["y"])], [("x", F32, [1, 3, 5, 5]), ("b", F32, [4])],
               [("y", F32, [1, 4, 3, 3])], [("W", _weight((4, 3, 3, 3)))])
    g, stats, out = _quantize(m)
    assert stats["conv_quantized"] == 1 and "Reshape" in _ops(g)
    (ref,), (got,) = _outputs(m, out, random_feeds(m, 6))
    assert _cosine(ref, got) > 0.999


# ---------------------------------------------------------------------------------------
# Accuracy and size
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["MatMul", "Conv"])
def test_per_channel_beats_per_tensor_on_uneven_channels(op):
    rng = np.random.default_rng(8)
    if op == "MatMul":
        w = rng.standard_normal((32, 16)) * np.logspace(-3, 1, 16)[None, :]
        m = _model([oh.make_node("MatMul", ["x", "W"], ["y"])], [("x", F32, [64, 32])], [("y", F32, [64, 16])],
                   [("W", w.astype(np.float32))])
        out_axis = 1
    else:
        w = rng.standard_normal((16, 4, 3, 3)) * np.logspace(-3, 1, 16)[:, None, None, None]
        m = _model([oh.make_node("Conv", ["x", "W"], ["y"])], [("x", F32, [2, 4, 8, 8])], [("y", F32, [2, 16, 6, 6])],
                   [("W", w.astype(np.float32))])
        out_axis = 1
    feeds = random_feeds(m, 9)
    errors = {}
    for per_channel in (False, True):
        _, _, out = _quantize(m, per_channel=per_channel)
        (ref,), (got,) = _outputs(m, out, feeds)
        # the relative error of each output channel, averaged: small channels count too
        moved_ref, moved_got = np.moveaxis(ref, out_axis, 0), np.moveaxis(got, out_axis, 0)
        errors[per_channel] = np.mean([_rel_l2(r, q) for r, q in zip(moved_ref, moved_got)])
    assert errors[True] < 0.5 * errors[False]
    assert errors[True] < 0.05


def test_model_size_shrinks_about_four_times(tmp_path):
    nodes, inits, x = [], [], "x"
    for i in range(3):
        nodes += [oh.make_node("MatMul", [x, f"W{i}"], [f"h{i}"]), oh.make_node("Add", [f"h{i}", f"b{i}"], [f"s{i}"]),
                  oh.make_node("Relu", [f"s{i}"], [f"r{i}"])]
        inits += [(f"W{i}", _weight((512, 512), 0.05)), (f"b{i}", _weight((512,), 0.1))]
        x = f"r{i}"
    m = _model(nodes, [("x", F32, [4, 512])], [("r2", F32, [4, 512])], inits)
    g, stats, out = _quantize(m, per_channel=True)
    assert stats["matmul_quantized"] == 3
    before, after = stats["seen_weight_bytes_before"], stats["seen_weight_bytes_after"]
    assert 3.8 < before / after < 4.0
    onnx.save(m, tmp_path / "float.onnx")
    homec.save(g, tmp_path / "int8.onnx")
    ratio = os.path.getsize(tmp_path / "float.onnx") / os.path.getsize(tmp_path / "int8.onnx")
    assert 3.7 < ratio < 4.0
    ref, got = _outputs(m, out, random_feeds(m, 10))
    assert _cosine(ref[0], got[0]) > 0.999


# ---------------------------------------------------------------------------------------
# What is left alone
# ---------------------------------------------------------------------------------------


def test_opset_below_11_is_refused():
    m = _model([oh.make_node("MatMul", ["x", "W"], ["y"])], [("x", F32, [2, 16])], [("y", F32, [2, 8])],
               [("W", _weight((16, 8)))], opset=10, ir_version=5)
    g, stats, _ = _quantize(m)
    assert stats["refused_opset"] == 1 and not _changes(stats)
    assert _ops(g) == ["MatMul"]


def test_refusals_are_counted_and_change_nothing():
    w64 = RNG.standard_normal((16, 8))
    nodes = [oh.make_node("MatMul", ["x", "Wi"], ["a"]),               # weight is an input
             oh.make_node("MatMul", ["x", "W3"], ["b"]),               # batched weight
             oh.make_node("MatMul", ["x", "Wo"], ["c"]),               # overridable initializer
             oh.make_node("MatMul", ["x", "Wnan"], ["d"]),             # non-finite
             oh.make_node("MatMul", ["x64", "W64"], ["e"])]            # float64
    inputs = [("x", F32, [2, 16]), ("Wi", F32, [16, 8]), ("x64", TP.DOUBLE, [2, 16]), ("Wo", F32, [16, 8])]
    wnan = _weight((16, 8))
    wnan[0, 0] = np.inf
    m = _model(nodes, inputs, [("a", F32, [2, 8]), ("b", F32, [2, 2, 8]), ("c", F32, [2, 8]),
                               ("d", F32, [2, 8]), ("e", TP.DOUBLE, [2, 8])],
               [("W3", _weight((2, 16, 8))), ("Wo", _weight((16, 8))), ("Wnan", wnan), ("W64", w64)])
    untouched = homec.load(m).to_onnx().SerializeToString(deterministic=True)
    g, stats, out = _quantize(m)
    assert not _changes(stats)
    assert {k: v for k, v in stats.items() if k.startswith("refused") and v} == {
        "refused_weight_not_constant": 2, "refused_weight_shape": 1, "refused_weight_nonfinite": 1,
        "refused_dtype": 1}
    assert out.SerializeToString(deterministic=True) == untouched


def test_selection_exclusion_and_op_list():
    m = _model([oh.make_node("MatMul", ["x", "W1"], ["a"], name="first"),
                oh.make_node("MatMul", ["x", "W2"], ["b"], name="second"),
                oh.make_node("Gemm", ["x", "W3"], ["c"], name="head")],
               [("x", F32, [3, 16])], [("a", F32, [3, 8]), ("b", F32, [3, 8]), ("c", F32, [3, 8])],
               [("W1", _weight((16, 8))), ("W2", _weight((16, 8))), ("W3", _weight((16, 8)))])
    g, stats, _ = _quantize(m, selected=lambda n: n.name != "first", exclude=lambda n: n.name == "head")
    assert stats["matmul_quantized"] == 1 and stats["gemm_quantized"] == 0 and stats["skipped_excluded"] == 1
    assert sorted(n.name for n in g.nodes if n.op_type in ("MatMul", "Gemm")) == ["first", "head"]
    g, stats, _ = _quantize(m, ops=("Gemm",))
    assert _changes(stats) == {"gemm_quantized": 1, "weights_quantized": 1, "activations_quantized": 1}
    with pytest.raises(ValueError, match="ConvTranspose"):
        quantize_dynamic(homec.load(m), ops=("MatMul", "ConvTranspose"))


def test_matmul_inside_a_subgraph():
    then_g = oh.make_graph([oh.make_node("MatMul", ["x", "W"], ["t"])], "then", [],
                           [oh.make_tensor_value_info("t", F32, [2, 8])])
    else_g = oh.make_graph([oh.make_node("Identity", ["z"], ["e"])], "else", [],
                           [oh.make_tensor_value_info("e", F32, [2, 8])])
    m = _model([oh.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g)],
               [("x", F32, [2, 16]), ("cond", TP.BOOL, []), ("z", F32, [2, 8])], [("y", F32, [2, 8])],
               [("W", _weight((16, 8)))])
    g, stats, out = _quantize(m)
    assert stats["matmul_quantized"] == 1
    feeds = random_feeds(m, 12)
    feeds["cond"] = np.array(True)
    ref, got = _outputs(m, out, feeds)
    assert _cosine(ref[0], got[0]) > 0.999


def test_ir3_model_lists_new_initializers_as_inputs():
    m = _model([oh.make_node("MatMul", ["x", "W"], ["y"])], [("x", F32, [2, 16]), ("W", F32, [16, 8])],
               [("y", F32, [2, 8])], [("W", _weight((16, 8)))], opset=11, ir_version=3)
    g, stats, out = _quantize(m)
    assert stats["matmul_quantized"] == 1
    assert {t.name for t in out.graph.initializer} <= {i.name for i in out.graph.input}
    ref, got = _outputs(m, out, random_feeds(m, 13))
    assert _cosine(ref[0], got[0]) > 0.999


# ---------------------------------------------------------------------------------------
# Random graphs and real models
# ---------------------------------------------------------------------------------------


def _float_cosines(ref, got):
    for r, q in zip(ref, got):
        assert r.shape == q.shape and r.dtype == q.dtype
        if r.dtype.kind != "f" or r.size == 0:
            np.testing.assert_array_equal(q, r)
            continue
        fin = np.isfinite(r)
        np.testing.assert_array_equal(np.isfinite(q), fin)
        if np.any(r[fin]):
            yield _cosine(r[fin], q[fin])


@pytest.mark.parametrize("chunk", range(4))
def test_random_graphs(chunk):
    """Generated models (graphgen): no crash, valid output, every float output close."""
    totals = dict.fromkeys(("matmul_quantized", "gemm_quantized", "conv_quantized"), 0)
    for seed in range(chunk * 50, chunk * 50 + 50):
        m = random_model(seed, opset=(13, 17, 21)[seed % 3])
        _, stats, out = _quantize(m, per_channel=seed % 2 == 1, weight_type=("int8", "uint8")[seed % 5 == 0])
        for k in totals:
            totals[k] += stats[k]
        feeds = random_feeds(m, seed, override_initializers=True)
        ref, got = _outputs(m, out, feeds)
        for cos in _float_cosines(ref, got):
            assert cos > 0.995, f"seed {seed}: cosine {cos}"
    assert all(totals.values()), totals  # the generator's models do exercise every op


ZOO_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
ZOO = ["light_resnet50", "light_squeezenet", "light_shufflenet", "light_inception_v1", "light_densenet121"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO)
def test_zoo_models(name):
    """The onnx wheel's zoo models (weights folded from ConstantOfShape, converted from opset
    9 to 13, weights then replaced by seeded random ones of the same shapes, which are no
    longer all equal) stay close."""
    g = homec.load(onnx.load(os.fspath(ZOO_DIR / f"{name}.onnx")))
    REGISTRY.get("fold_constants").fn(g, PassContext())
    convert_opset(g, 13)  # they are opset 9; DynamicQuantizeLinear needs 11
    fan_in = {}  # weight name -> fan-in, for He-scaled random weights
    for node in g.nodes:
        w = node.input_const(1) if node.op_type in ("Conv", "Gemm") else None
        if w is not None:
            fan_in[node.inputs[1].name] = w[0].size if node.op_type == "Conv" else w.shape[1 - node.attr("transB", 0)]
    m = g.to_onnx()
    rng = np.random.default_rng(0)
    for t in m.graph.initializer:
        if t.name in fan_in:
            w = rng.standard_normal(tuple(t.dims)) * np.sqrt(2 / fan_in[t.name])
            t.CopyFrom(onh.from_array(w.astype(np.float32), t.name))
    counts = {op: sum(n.op_type == op for n in m.graph.node) for op in ("Conv", "Gemm")}
    _, stats, out = _quantize(m, per_channel=True)
    assert stats["conv_quantized"] == counts["Conv"] and stats["gemm_quantized"] == counts["Gemm"]
    assert stats["seen_weight_bytes_after"] < 0.3 * stats["seen_weight_bytes_before"]
    inits = {t.name for t in m.graph.initializer}
    feeds = {x.name: np.random.default_rng(1).random([d.dim_value for d in x.type.tensor_type.shape.dim],
                                                     dtype=np.float32)
             for x in m.graph.input if x.name not in inits}
    ref, got = _outputs(m, out, feeds)
    cos = _cosine(ref[0], got[0])
    print(f"\n{name}: {counts}, cosine {cos:.6f}, rel_l2 {_rel_l2(ref[0], got[0]):.4f}")
    assert cos > 0.99
