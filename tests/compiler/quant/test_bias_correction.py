"""Empirical bias correction: the mean output error of quantized weights folds into the bias."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest

import homec
from homec.quant import numerics as Q
from homec.quant.bias_correction import (apply_bias_shift, bias_shift, input_channel_mean,
                                         layer_bias_shift)
from homec.testing.oracle import run_ort

F32 = onnx.TensorProto.FLOAT
INT4 = Q.qtype("int4")  # coarse, so the mean error is well above float noise
RNG = np.random.default_rng(5)


@pytest.fixture(autouse=True)
def _seeded_rng():
    global RNG
    RNG = np.random.default_rng(5)


def _fake_quant(w):
    scale, zp = Q.weight_qparams(w, INT4, axis=None)
    return Q.fake_quantize(w, scale, zp, INT4)


def _layer(op, x_shape, w, b=None, *, attrs=None):
    """A one-layer model `op(x, w[, b])`; returns (ModelProto, name of the output)."""
    inits = [onh.from_array(np.asarray(w, np.float32), "w")]
    ins = ["x", "w"]
    if b is not None:
        inits.append(onh.from_array(np.asarray(b, np.float32), "b"))
        ins.append("b")
    g = oh.make_graph([oh.make_node(op, ins, ["y"], name="layer", **(attrs or {}))], "g",
                      [oh.make_tensor_value_info("x", F32, x_shape)],
                      [oh.make_tensor_value_info("y", F32, None)], inits)
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)])
    m.ir_version = 8
    y_shape = run_ort(m, {"x": np.zeros(x_shape, np.float32)})[0].shape  # declare it for full_check
    m.graph.output[0].CopyFrom(oh.make_tensor_value_info("y", F32, y_shape))
    return m


def _inputs(shape, channel_axis):
    """Inputs whose channels have clearly nonzero, different means (like ReLU outputs)."""
    means = RNG.uniform(0.5, 3.0, shape[channel_axis])
    bshape = [1] * len(shape)
    bshape[channel_axis] = shape[channel_axis]
    return (RNG.standard_normal(shape) + means.reshape(bshape)).astype(np.float32)


def _channel_mean_of_output(y, op):
    return input_channel_mean("Conv" if op in ("Conv", "ConvTranspose") else "MatMul", y)


def _check_layer(op, x_shape, w, b, attrs, channel_axis, *, min_drop=10.0):
    """Quantize `w`, correct the bias through the graph, and measure the mean error per
    output channel of the quantized layer against the float one (onnxruntime)."""
    x = _inputs(x_shape, channel_axis)
    float_model = _layer(op, x_shape, w, b, attrs=attrs)
    wq = _fake_quant(w)
    quant_model = _layer(op, x_shape, wq, b, attrs=attrs)
    y_float = run_ort(float_model, {"x": x})[0]
    y_quant = run_ort(quant_model, {"x": x})[0]

    graph = homec.load(quant_model)
    node = graph.nodes[0]
    shift = layer_bias_shift(node, w, wq, input_channel_mean(op, x))
    new_bias = apply_bias_shift(graph, node, shift)
    assert new_bias is not None
    graph.verify()
    corrected = graph.to_onnx()
    onnx.checker.check_model(corrected, full_check=True)
    y_corr = run_ort(corrected, {"x": x})[0]

    err_before = np.abs(_channel_mean_of_output(y_quant - y_float, op))
    err_after = np.abs(_channel_mean_of_output(y_corr - y_float, op))
    assert err_before.max() > 1e-3  # the quantization error has a real mean to remove
    assert err_after.max() * min_drop < err_before.max(), (err_before, err_after)
    return shift, err_before, err_after


@pytest.mark.parametrize("group", [1, 2, 6])  # 6: depthwise
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kernel", [1, 3])
def test_conv(group, bias, kernel):
    cin, cout = 6, 12
    w = RNG.standard_normal((cout, cin // group, kernel, kernel))
    b = RNG.standard_normal(cout) if bias else None
    # No padding. A 1x1 kernel reads every pixel once: the sample mean of the error is exactly
    # (Wq - W) E[x], up to float rounding. A 3x3 kernel's taps read shifted windows whose
    # sample means differ slightly from the image's: exact in expectation only.
    _check_layer("Conv", [4, cin, 10, 10], w, b, {"group": group}, 1, min_drop=1e3 if kernel == 1 else 10)


def test_conv_with_padding_is_approximate_but_still_corrects():
    # border taps read zeros, not the mean: the residual shrinks like kernel / image size
    # (3x3 on 16x16 leaves ~1/9 of the error, on 48x48 ~1/25)
    w = RNG.standard_normal((8, 4, 3, 3))
    _check_layer("Conv", [2, 4, 48, 48], w, RNG.standard_normal(8), {"pads": [1, 1, 1, 1]}, 1)


@pytest.mark.parametrize("group", [1, 2])
@pytest.mark.parametrize("stride", [1, 2])
def test_conv_transpose(group, stride):
    cin, cout_g = 4, 3
    w = RNG.standard_normal((cin, cout_g, 3, 3))
    # pads 1 + output_padding give output = stride * input: few taps fall outside
    attrs = {"group": group, "strides": [stride, stride], "pads": [1, 1, 1, 1]}
    if stride > 1:
        attrs["output_padding"] = [1, 1]
    _check_layer("ConvTranspose", [2, cin, 40, 40], w, RNG.standard_normal(cout_g * group), attrs, 1)


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("c_shape", [None, (5,), (1, 5), (7, 1), ()])
def test_gemm(trans_b, c_shape):
    k, n = 6, 5
    w = RNG.standard_normal((n, k) if trans_b else (k, n))
    c = RNG.standard_normal(c_shape) if c_shape is not None else None
    shift, _, _ = _check_layer("Gemm", [7, k], w, c, {"transB": trans_b, "alpha": 0.7, "beta": 1.5}, 1,
                               min_drop=1e3)
    assert shift.shape == (n,)


def test_gemm_with_beta_zero_replaces_the_ignored_c():
    k, n = 6, 5
    w = RNG.standard_normal((k, n))
    _check_layer("Gemm", [7, k], w, RNG.standard_normal(n), {"beta": 0.0}, 1, min_drop=1e3)


def test_matmul_gets_an_add_that_keeps_the_output_name():
    k, n = 6, 5
    w = RNG.standard_normal((k, n))
    _check_layer("MatMul", [2, 9, k], w, None, None, 2, min_drop=1e3)
    graph = homec.load(_layer("MatMul", [2, 9, k], w))
    bias = apply_bias_shift(graph, graph.nodes[0], np.arange(n, dtype=np.float64))
    assert [n.op_type for n in graph.nodes] == ["MatMul", "Add"]
    assert [o.name for o in graph.outputs] == ["y"] and graph.outputs[0].producer.op_type == "Add"
    np.testing.assert_array_equal(bias.const.numpy(), np.arange(n, dtype=np.float32))


def test_matmul_followed_by_a_bias_add_updates_that_bias():
    k, n = 6, 5
    w, b = RNG.standard_normal((k, n)).astype(np.float32), RNG.standard_normal(n).astype(np.float32)
    g = oh.make_graph([oh.make_node("MatMul", ["x", "w"], ["m"]), oh.make_node("Add", ["b", "m"], ["y"])], "g",
                      [oh.make_tensor_value_info("x", F32, [3, k])], [oh.make_tensor_value_info("y", F32, [3, n])],
                      [onh.from_array(w, "w"), onh.from_array(b, "b")])
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)])
    graph = homec.load(m)
    shift = np.linspace(-1, 1, n)
    bias = apply_bias_shift(graph, graph.nodes[0], shift)
    graph.verify()
    assert [n.op_type for n in graph.nodes] == ["MatMul", "Add"] and bias.name == "b"
    x = RNG.standard_normal((3, k)).astype(np.float32)
    np.testing.assert_allclose(run_ort(graph.to_onnx(), {"x": x})[0], run_ort(m, {"x": x})[0] + shift,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op,w_shape,kw", [
    ("Conv", (8, 2, 3, 3), {"group": 2}),
    ("ConvTranspose", (4, 3, 2, 2), {"group": 2, "strides": (2, 2)}),
    ("Gemm", (5, 6), {"trans_b": True}),
    ("MatMul", (6, 5), {}),
])
def test_zero_shift_without_quantization_error(op, w_shape, kw):
    w = RNG.standard_normal(w_shape)
    c_in = {"Conv": 4, "ConvTranspose": 4, "Gemm": 6, "MatMul": 6}[op]
    shift = bias_shift(op, w, w.copy(), RNG.uniform(1, 2, c_in), **kw)
    np.testing.assert_array_equal(shift, 0.0)


def test_shift_matches_a_direct_expectation():
    """The formula against brute force: the mean of (Wq - W) * x over random x."""
    cin, cout, group = 4, 6, 2
    w = RNG.standard_normal((cout, cin // group, 1, 1))
    wq = _fake_quant(w)
    mu = RNG.uniform(-2, 2, cin)
    shift = bias_shift("Conv", w, wq, mu, group=group)
    dw = (wq - w)[:, :, 0, 0]
    expect = np.array([-(dw[o] * mu[(o // (cout // group)) * 2:(o // (cout // group)) * 2 + 2]).sum()
                       for o in range(cout)])
    np.testing.assert_allclose(shift, expect, rtol=1e-12)


def test_inconsistent_shapes_are_rejected():
    w = RNG.standard_normal((8, 2, 3, 3))
    with pytest.raises(ValueError):
        bias_shift("Conv", w, w, np.ones(3), group=2)
    with pytest.raises(ValueError):
        bias_shift("Conv", w, w[:4], np.ones(4), group=2)
    with pytest.raises(ValueError):
        bias_shift("Relu", w, w, np.ones(4))


def test_shared_bias_is_not_modified_for_the_other_reader():
    cin, cout = 3, 4
    w = RNG.standard_normal((cout, cin, 1, 1)).astype(np.float32)
    b = RNG.standard_normal(cout).astype(np.float32)
    g = oh.make_graph([oh.make_node("Conv", ["x", "w", "b"], ["y1"]), oh.make_node("Conv", ["x", "w2", "b"], ["y2"])],
                      "g", [oh.make_tensor_value_info("x", F32, [1, cin, 2, 2])],
                      [oh.make_tensor_value_info("y1", F32, [1, cout, 2, 2]),
                       oh.make_tensor_value_info("y2", F32, [1, cout, 2, 2])],
                      [onh.from_array(w, "w"), onh.from_array(w.copy(), "w2"), onh.from_array(b, "b")])
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)])
    graph = homec.load(m)
    first, second = graph.nodes
    new = apply_bias_shift(graph, first, np.ones(cout))
    graph.verify()
    assert new.name != "b" and second.inputs[2].name == "b"
    np.testing.assert_array_equal(second.inputs[2].const.numpy(), b)
    np.testing.assert_allclose(new.const.numpy(), b + 1)


def test_non_constant_bias_is_refused():
    cin, cout = 3, 4
    w = RNG.standard_normal((cout, cin, 1, 1)).astype(np.float32)
    g = oh.make_graph([oh.make_node("Conv", ["x", "w", "b"], ["y"])], "g",
                      [oh.make_tensor_value_info("x", F32, [1, cin, 2, 2]), oh.make_tensor_value_info("b", F32, [cout])],
                      [oh.make_tensor_value_info("y", F32, [1, cout, 2, 2])], [onh.from_array(w, "w")])
    graph = homec.load(oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)]))
    before = graph.to_onnx().SerializeToString(deterministic=True)
    assert apply_bias_shift(graph, graph.nodes[0], np.ones(cout)) is None
    assert graph.to_onnx().SerializeToString(deterministic=True) == before
