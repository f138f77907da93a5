"""layer_errors: per-tensor error of a quantized model against its float original."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest

import homec
from homec.quant.dynamic import quantize_dynamic
from homec.quant.layer_error import LayerError, auto_pairs, format_table, layer_errors, to_report

TP = onnx.TensorProto
F32 = TP.FLOAT


def _chain(weights, *, shape_out=True):
    """x -> MatMul(W0) -> Relu -> MatMul(W1) -> Relu -> ... (tensors m<i>, r<i>), plus a
    Shape of the input as a second (integer) output."""
    nodes, x = [], "x"
    for i in range(len(weights)):
        nodes += [oh.make_node("MatMul", [x, f"W{i}"], [f"m{i}"], name=f"mm{i}"),
                  oh.make_node("Relu", [f"m{i}"], [f"r{i}"], name=f"relu{i}")]
        x = f"r{i}"
    outputs = [oh.make_tensor_value_info(x, F32, [None, weights[-1].shape[1]])]
    if shape_out:
        nodes.append(oh.make_node("Shape", ["x"], ["s"], name="shape"))
        outputs.append(oh.make_tensor_value_info("s", TP.INT64, [2]))
    g = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", F32, ["N", weights[0].shape[0]])], outputs,
                      [onh.from_array(w, f"W{i}") for i, w in enumerate(weights)])
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _weights(seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((16, 16)) * 0.4).astype(np.float32) for _ in range(3)]


def _samples(n, seed=1, shape=(4, 16)):
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]


def test_identical_graphs_have_no_error():
    g = homec.load(_chain(_weights()))
    errors = layer_errors(g, homec.load(_chain(_weights())), None, _samples(3))
    assert [e.name for e in errors] == ["m0", "r0", "m1", "r1", "m2", "r2"]  # no Shape output
    assert [(e.node, e.op_type) for e in errors[:2]] == [("mm0", "MatMul"), ("relu0", "Relu")]
    for e in errors:
        assert (e.cosine, e.rel_l2, e.max_abs, e.samples) == (1.0, 0.0, 0.0, 3)


def test_error_starts_at_the_perturbed_layer():
    weights = _weights()
    perturbed = [w.copy() for w in weights]
    perturbed[1] += np.float32(0.01) * np.random.default_rng(2).standard_normal((16, 16)).astype(np.float32)
    errors = {e.name: e for e in layer_errors(homec.load(_chain(weights)), homec.load(_chain(perturbed)),
                                              None, _samples(4), max_samples=2)}
    for name in ("m0", "r0"):
        assert errors[name].rel_l2 == 0.0 and errors[name].max_abs == 0.0
    for name in ("m1", "r1", "m2", "r2"):
        assert 1e-4 < errors[name].rel_l2 < 0.2 and errors[name].max_abs > 0
        assert 0.98 < errors[name].cosine < 1.0
    assert all(e.samples == 2 for e in errors.values())


def test_figures_accumulate_over_samples():
    """cosine / rel_l2 / max_abs equal those of all samples' tensors concatenated."""
    weights = _weights()
    perturbed = [w * np.float32(1.05) for w in weights]
    samples = _samples(3)
    errors = layer_errors(homec.load(_chain(weights)), homec.load(_chain(perturbed)), [("m0", "m0"), ("r2", "r2")],
                          samples)
    x = np.concatenate([s["x"] for s in samples]).astype(np.float64)
    f, q = x @ weights[0], x @ perturbed[0]
    assert errors[0].name == "m0" and errors[0].samples == 3
    assert errors[0].rel_l2 == pytest.approx(np.linalg.norm(q - f) / np.linalg.norm(f), rel=1e-5)
    assert errors[0].cosine == pytest.approx(1.0, abs=1e-9)  # a uniform scaling keeps the direction
    assert errors[0].max_abs == pytest.approx(np.abs(q - f).max(), rel=1e-4)
    assert errors[1].rel_l2 == pytest.approx(1.05 ** 3 - 1, rel=1e-4)  # Relu commutes with scaling


def test_explicit_pairs_are_checked():
    g = homec.load(_chain(_weights()))
    with pytest.raises(ValueError, match="no tensor 'nope'"):
        layer_errors(g, g, [("m0", "nope")], _samples(1))
    with pytest.raises(ValueError, match="shape"):
        layer_errors(g, g, [("m0", "s")], _samples(1))
    assert layer_errors(g, g, [], _samples(1)) == []


def test_dynamic_quantization_is_paired_by_name():
    weights = _weights()
    fg = homec.load(_chain(weights))
    qg = homec.load(_chain(weights))
    quantize_dynamic(qg)
    errors = layer_errors(fg, qg, None, _samples(4))
    assert [e.name for e in errors] == ["m0", "r0", "m1", "r1", "m2", "r2"]
    assert all(0 < e.rel_l2 < 0.05 and e.cosine > 0.998 for e in errors)
    assert errors[-1].rel_l2 > errors[0].rel_l2  # error accumulates along the chain


def _conv_net(seed=0):
    """conv1 -> relu1 -> conv2 -> GlobalAveragePool -> Flatten -> Gemm."""
    rng = np.random.default_rng(seed)

    def w(*shape, scale):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    inits = [("w1", w(8, 3, 3, 3, scale=0.3)), ("b1", w(8, scale=0.1)), ("w2", w(8, 8, 3, 3, scale=0.2)),
             ("b2", w(8, scale=0.1)), ("wf", w(10, 8, scale=0.3)), ("bf", w(10, scale=0.1))]
    nodes = [oh.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             oh.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             oh.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
             oh.make_node("GlobalAveragePool", ["c2"], ["p"], name="gap"),
             oh.make_node("Flatten", ["p"], ["f"], name="flatten"),
             oh.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1, name="fc")]
    g = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", F32, [1, 3, 16, 16])],
                      [oh.make_tensor_value_info("y", F32, [1, 10])], [onh.from_array(a, n) for n, a in inits])
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_onnxruntime_qdq_model(tmp_path):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    m = _conv_net()
    calib = _samples(8, seed=3, shape=(1, 3, 16, 16))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(calib)

        def get_next(self):
            return next(self._it, None)

    onnx.save(m, tmp_path / "float.onnx")
    quantize_static(str(tmp_path / "float.onnx"), str(tmp_path / "qdq.onnx"), Reader(),
                    quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    fg, qg = homec.load(m), homec.load(str(tmp_path / "qdq.onnx"))
    pairs = dict(auto_pairs(fg, qg))
    # onnxruntime fused relu1 into conv1 (its Conv writes r1), so c1 has no counterpart;
    # the others are read through their QuantizeLinear -> DequantizeLinear pair
    assert "c1" not in pairs
    assert qg.value(pairs["c2"]).producer.op_type == "DequantizeLinear"
    assert qg.value(pairs["r1"]).producer.op_type == "DequantizeLinear"
    assert qg.value(pairs["r1"]).producer.inputs[0].producer.inputs[0].name == "r1"

    errors = layer_errors(fg, qg, None, _samples(4, seed=4, shape=(1, 3, 16, 16)), max_samples=3)
    by_name = {e.name: e for e in errors}
    assert list(by_name) == ["r1", "c2", "p", "f", "y"]
    for e in errors:
        assert e.samples == 3
        assert 0 < e.rel_l2 < 0.2 and 0.98 < e.cosine < 1.0 and e.max_abs > 0, e
    assert by_name["c2"].op_type == "Conv" and by_name["c2"].node == "conv2"
    assert by_name["c2"].quant_name == pairs["c2"]


def test_report_and_table():
    errors = [LayerError("a", "n1", "Conv", 0.99999912345, 0.0012345678, 0.5, 4),
              LayerError("b", "n2", "Relu", 0.5, math.inf, math.nan, 4, "b_dq")]
    rows = to_report(errors)
    json.dumps(rows, allow_nan=False)  # strict JSON
    assert rows[0] == {"tensor": "a", "quantized_tensor": "a", "node": "n1", "op_type": "Conv",
                       "cosine": 0.999999, "rel_l2": 0.001235, "max_abs": 0.5, "samples": 4}
    assert rows[1]["rel_l2"] is None and rows[1]["max_abs"] is None
    assert rows[1]["quantized_tensor"] == "b_dq"
    table = format_table(errors).splitlines()
    assert table[0].split() == ["tensor", "op", "cosine", "rel_l2", "max_abs"]
    assert [line.split()[0] for line in table[2:]] == ["a", "b"]
    top = format_table(errors, top=1).splitlines()
    assert len(top) == 3 and top[2].split()[:2] == ["b", "Relu"]  # the worst first
