"""Roofline estimates (homec.targets.estimate): hand-computed layers, QDQ counting,
transitions, invariants on random and real graphs, and measured onnxruntime latency."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest

import homec
from homec.analysis.cost import analyze_cost
from homec.analysis.shapes import infer_shapes
from homec.targets.descriptor import load_target
from homec.targets.estimate import estimate, measure_latency
from homec.testing.graphgen import random_model
from homec.testing.models import ocr_model

F32 = onnx.TensorProto.FLOAT


def _model(nodes, inputs, outputs, inits=()):
    g = oh.make_graph(nodes, "g", inputs, outputs, list(inits))
    return oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)


def _vi(name, shape):
    return oh.make_tensor_value_info(name, F32, shape)


def _init(name, shape, seed=0):
    return onh.from_array(np.random.default_rng(seed).standard_normal(shape).astype(np.float32), name)


def _conv_model(cin, cout, size, k=3):
    return _model([oh.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[k // 2] * 4)],
                  [_vi("x", [1, cin, size, size])], [_vi("y", None)], [_init("w", [cout, cin, k, k])])


def _run(model, target, devices=None, *, qdq_fused=True, input_shapes=None):
    graph = model if isinstance(model, homec.Graph) else homec.load(model)
    types = infer_shapes(graph, input_shapes)
    return graph, estimate(graph, types, load_target(target) if isinstance(target, str) else target,
                           devices or {}, qdq_fused=qdq_fused)


def _layer(est, name):
    return next(layer for layer in est.layers if layer.node == name)


def _cycles_per_byte(model):
    return model.clock_hz / model.bandwidth


def _check_invariants(est):
    """Finite, non-negative, and the total is the sum of its parts."""
    for layer in est.layers:
        assert math.isfinite(layer.cycles) and layer.cycles >= 0, layer
        assert layer.macs >= 0 and layer.bytes >= 0, layer
        assert layer.bound in ("compute", "memory", "overhead")
    assert est.total_ms == pytest.approx(math.fsum(l.ms for l in est.layers) + est.transitions_ms,
                                         rel=1e-12, abs=1e-15)
    assert sum(est.by_device.values()) == pytest.approx(est.total_ms - est.transitions_ms, rel=1e-9,
                                                        abs=1e-15)
    d = est.as_dict()
    json.dumps(d)  # JSON-ready
    assert d["total_ms"] == pytest.approx(sum(l["ms"] for l in d["layers"]) + d["transitions_ms"],
                                          rel=1e-5, abs=1e-9)


# ---------------------------------------------------------------------------------------
# Hand-computed layers
# ---------------------------------------------------------------------------------------


def test_large_conv_is_compute_bound_on_the_npu_model():
    npu = load_target("npu-int8")
    c = npu.compute
    assert (c.throughput("float32"), c.clock_hz, c.bandwidth, c.overhead_cycles) == (512, 800e6, 6.4e9, 400)
    _, est = _run(_conv_model(128, 128, 32), npu)
    conv = _layer(est, "conv")
    macs = 32 * 32 * 128 * (128 * 3 * 3)  # |Y| * Cin*k*k
    nbytes = 4 * (128 * 32 * 32 + 128 * 32 * 32 + 128 * 128 * 9)  # x + y + w, float32
    compute, memory = macs / 512, nbytes / (6.4e9 / 800e6)
    assert compute > memory
    assert (conv.macs, conv.bytes, conv.device, conv.dtype) == (macs, nbytes, "npu", "float32")
    assert conv.cycles == pytest.approx(compute + 400)
    assert conv.ms == pytest.approx((compute + 400) / 800e6 * 1e3)
    assert conv.bound == "compute"
    assert est.total_ms == pytest.approx(conv.ms) and est.transitions == 0


def test_large_elementwise_add_is_memory_bound():
    shape = [1, 64, 64, 64]
    m = _model([oh.make_node("Add", ["a", "b"], ["y"], name="add")],
               [_vi("a", shape), _vi("b", shape)], [_vi("y", shape)])
    npu = load_target("npu-int8")
    _, est = _run(m, npu)
    add = _layer(est, "add")
    nbytes = 3 * 4 * 64 ** 3
    assert (add.macs, add.bytes, add.bound) == (0, nbytes, "memory")
    assert add.cycles == pytest.approx(nbytes * _cycles_per_byte(npu.compute) + npu.compute.overhead_cycles)


def test_small_node_is_overhead_bound():
    m = _model([oh.make_node("Relu", ["x"], ["y"], name="relu")], [_vi("x", [1, 4])], [_vi("y", [1, 4])])
    cpu = load_target("cpu")
    _, est = _run(m, cpu)
    relu = _layer(est, "relu")
    assert relu.bound == "overhead"
    assert relu.cycles == pytest.approx(32 * _cycles_per_byte(cpu.compute) + cpu.compute.overhead_cycles)


def test_views_cost_nothing():
    m = _model([oh.make_node("Relu", ["x"], ["r"], name="relu"),
                oh.make_node("Flatten", ["r"], ["f"], name="flat"),
                oh.make_node("Unsqueeze", ["f", "ax"], ["u"], name="unsq"),
                oh.make_node("Squeeze", ["u", "ax"], ["s"], name="sq"),
                oh.make_node("Reshape", ["s", "shape"], ["rs"], name="reshape"),
                oh.make_node("Identity", ["rs"], ["y"], name="ident")],
               [_vi("x", [1, 8, 4, 4])], [_vi("y", None)],
               [onh.from_array(np.array([0], np.int64), "ax"),
                onh.from_array(np.array([1, 128], np.int64), "shape")])
    _, est = _run(m, "mcu")
    for name in ("flat", "unsq", "sq", "reshape", "ident"):
        layer = _layer(est, name)
        assert (layer.cycles, layer.ms, layer.bytes) == (0, 0, 0), layer
    assert est.total_ms == pytest.approx(_layer(est, "relu").ms)


def _branchy_model():
    """conv -> (relu, sigmoid) -> add(conv, relu) ; sigmoid is an output."""
    return _model([oh.make_node("Conv", ["x", "w"], ["c"], name="conv"),
                   oh.make_node("Relu", ["c"], ["r"], name="relu"),
                   oh.make_node("Sigmoid", ["c"], ["s"], name="sig"),
                   oh.make_node("Add", ["c", "r"], ["y"], name="add")],
                  [_vi("x", [1, 8, 16, 16])], [_vi("y", None), _vi("s", None)],
                  [_init("w", [8, 8, 1, 1])])


def test_transitions_are_counted_per_value_and_consumer_device_and_priced():
    npu = load_target("npu-int8")
    devices = {"conv": "npu", "relu": "cpu", "sig": "cpu", "add": "npu"}
    _, est = _run(_branchy_model(), npu, devices)
    # c -> cpu (relu and sig share one transfer), r -> npu; c -> add stays on the npu
    assert est.transitions == 2
    assert est.transitions_ms == pytest.approx(2 * npu.transition_us / 1e3)
    assert est.total_ms == pytest.approx(sum(l.ms for l in est.layers) + 2 * 40e-3)
    assert set(est.by_device) == {"npu", "cpu"}
    assert est.by_device["cpu"] == pytest.approx(_layer(est, "relu").ms + _layer(est, "sig").ms)
    _check_invariants(est)
    _, same = _run(_branchy_model(), npu, {})
    assert (same.transitions, same.transitions_ms) == (0, 0)


def test_fallback_node_is_priced_with_the_fallback_compute_model():
    npu = load_target("npu-int8")
    fb = npu.fallback_compute
    assert fb is not None and fb != npu.compute
    _, est = _run(_branchy_model(), npu, {"relu": "cpu"})
    relu = _layer(est, "relu")
    nbytes = 2 * 4 * 8 * 16 * 16
    assert (relu.device, relu.bytes) == ("cpu", nbytes)
    assert relu.cycles == pytest.approx(nbytes * fb.clock_hz / fb.bandwidth + fb.overhead_cycles)
    assert relu.ms == pytest.approx(relu.cycles / fb.clock_hz * 1e3)
    # the same node on the accelerator uses the accelerator's model
    sig = _layer(est, "sig")
    assert sig.cycles == pytest.approx(nbytes * _cycles_per_byte(npu.compute) + npu.compute.overhead_cycles)


def test_target_without_fallback_compute_prices_other_devices_with_its_own_model():
    mcu = load_target("mcu")
    assert mcu.fallback_compute is None
    _, est = _run(_branchy_model(), mcu, {"relu": "elsewhere"})
    relu = _layer(est, "relu")
    assert relu.device == "elsewhere"
    assert relu.cycles == pytest.approx(2 * 4 * 8 * 256 * _cycles_per_byte(mcu.compute)
                                        + mcu.compute.overhead_cycles)


def _quantized_conv():
    m = _conv_model(3, 8, 16)
    return homec.compile(m, 'schedule { quantize(calibration="random") }').graph


def test_qdq_conv_computes_at_the_int8_rate_and_reads_integer_tensors():
    graph = _quantized_conv()
    mcu = load_target("mcu")
    c = mcu.compute
    assert c.throughput("int8") == 2 and c.throughput("float32") == 0.5
    _, est = _run(graph, mcu, qdq_fused=True)
    conv = _layer(est, "conv")
    macs = 16 * 16 * 8 * 3 * 9
    # reads the uint8 x (DQ input), writes the float graph output y, and the int8 weight
    # with its per-channel float scale and int8 zero point
    nbytes = 3 * 256 * 1 + 8 * 256 * 4 + (8 * 27 * 1 + 8 * 4 + 8 * 1)
    assert conv.dtype in ("int8", "uint8")
    assert (conv.macs, conv.bytes, conv.bound) == (macs, nbytes, "compute")
    assert conv.cycles == pytest.approx(macs / 2 + c.overhead_cycles)
    by_op = {l.op: l for l in est.layers if l.op != "Conv"}
    dq_nodes = [l for l in est.layers if l.op == "DequantizeLinear"]
    assert len(dq_nodes) == 2 and all(l.cycles == 0 and l.bytes == 0 for l in dq_nodes)
    # the graph input's QuantizeLinear is a real conversion: float x in, uint8 x out, and
    # its scalar scale and zero point
    q = by_op["QuantizeLinear"]
    assert q.bytes == 3 * 256 * 4 + 3 * 256 + 4 + 1 and q.cycles > 0


def test_unfused_qdq_counts_the_float_tensors_and_the_glue():
    graph = _quantized_conv()
    _, est = _run(graph, "cpu", qdq_fused=False)
    conv = _layer(est, "conv")
    # the float x_dq is read and the float weight view's stored constants (the DQ of a
    # weight is folded at load time, so it stays free)
    assert conv.bytes == 3 * 256 * 4 + 8 * 256 * 4 + (8 * 27 + 8 * 4 + 8)
    dq = [l for l in est.layers if l.op == "DequantizeLinear"]
    weight_dq, act_dq = sorted(dq, key=lambda l: l.bytes)
    assert weight_dq.cycles == 0 and act_dq.bytes == 3 * 256 + 3 * 256 * 4 + 4 + 1


def test_compute_model_prices_uint8_like_int8():
    for name in ("mcu", "cpu"):
        c = load_target(name).compute
        assert c.throughput("uint8") == c.throughput("int8")


# ---------------------------------------------------------------------------------------
# Invariants
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["cpu", "npu-int8", "mcu"])
def test_more_channels_never_estimate_less(target):
    for size in (4, 16, 32):
        for k in (1, 3):
            c = 4
            previous = 0.0
            while c <= 128:
                _, est = _run(_conv_model(c, c, size, k), target)
                assert est.total_ms >= previous, (size, k, c)
                previous = est.total_ms
                c *= 2


@pytest.mark.parametrize("target", ["cpu", "npu-int8", "mcu"])
def test_random_graphs_give_finite_non_negative_estimates(target):
    t = load_target(target)
    for seed in range(25):
        graph = homec.load(random_model(seed))
        types = infer_shapes(graph)
        names = [l.node for l in analyze_cost(graph, types).layers]
        # every other MAC layer falls back, to exercise transitions too
        devices = {n: ("cpu" if i % 2 else t.device) for i, n in enumerate(names)}
        est = estimate(graph, types, t, devices, qdq_fused=t.quantization.form == "qdq")
        n_layers = sum(1 for n in graph.nodes if n.op_type != "Constant")
        assert len(est.layers) == n_layers
        _check_invariants(est)
        assert est.transitions_ms == pytest.approx(est.transitions * t.transition_us / 1e3)


def test_random_quantized_graphs():
    npu = load_target("npu-int8")
    for seed in range(6):
        graph = homec.compile(random_model(seed, ops=("Conv", "Relu", "Add", "MatMul", "Reshape")),
                              'schedule { quantize(calibration="random") }').graph
        types = infer_shapes(graph)
        devices = {n.name: "cpu" for n in graph.nodes if n.op_type == "Relu"}
        est = estimate(graph, types, npu, devices, qdq_fused=True)
        _check_invariants(est)


def test_as_dict_has_the_agreed_shape_and_rounds():
    _, est = _run(_branchy_model(), "npu-int8", {"relu": "cpu"})
    d = est.as_dict()
    assert set(d) == {"total_ms", "by_device", "transitions", "transitions_ms", "layers", "unknown"}
    for layer in d["layers"]:
        assert set(layer) == {"node", "op", "device", "dtype", "macs", "bytes", "cycles", "ms", "bound"}
        assert layer["ms"] == float(f"{layer['ms']:.6g}")
    assert [l["node"] for l in d["layers"]] == ["conv", "relu", "sig", "add"]
    assert d["unknown"] == []


def test_unknown_sizes_are_marked():
    m = _model([oh.make_node("Conv", ["x", "w"], ["y"], name="conv")],
               [_vi("x", ["n", 4, "h", "w"])], [_vi("y", None)], [_init("w", [4, 4, 3, 3])])
    _, est = _run(m, "npu-int8")
    assert est.unknown == ("conv",)
    conv = _layer(est, "conv")
    assert conv.macs == 0 and conv.bytes == 4 * 4 * 4 * 9  # only the weight is known
    _, fixed = _run(m, "npu-int8", input_shapes={"x": (1, 4, 8, 8)})
    assert fixed.unknown == ()
    assert _layer(fixed, "conv").macs == (4 * 6 * 6) * (4 * 3 * 3)  # |Y| * Cin*k*k, no pads


# ---------------------------------------------------------------------------------------
# A real model
# ---------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(ocr_model("det") is None, reason="rapidocr_onnxruntime models not installed")
def test_ppocr_det_estimate_adds_up():
    graph = homec.load(ocr_model("det"))
    types = infer_shapes(graph, {"x": (1, 3, 64, 64)})
    npu = load_target("npu-int8")
    devices = {}
    for n in graph.nodes:
        rule = npu.rule(n)
        if rule is None or rule.attribute_violation(n) is not None:
            devices[n.name] = "cpu"
    est = estimate(graph, types, npu, devices, qdq_fused=False)
    _check_invariants(est)
    assert est.unknown == ()
    assert sum(l.macs for l in est.layers) == analyze_cost(graph, types).total_macs > 0
    assert est.transitions > 0 and set(est.by_device) == {"npu", "cpu"}
    assert est.total_ms == pytest.approx(sum(est.by_device.values()) + est.transitions_ms)


# ---------------------------------------------------------------------------------------
# Measured latency
# ---------------------------------------------------------------------------------------


def test_measure_latency_on_a_tiny_model():
    m = _conv_model(3, 8, 16)
    feeds = [{"x": np.random.default_rng(i).standard_normal((1, 3, 16, 16)).astype(np.float32)}
             for i in range(3)]
    r = measure_latency(m, feeds, runs=7, warmup=2)
    assert set(r) == {"median_ms", "p90_ms", "min_ms", "runs", "threads", "provider", "onnxruntime"}
    assert 0 < r["min_ms"] <= r["median_ms"] <= r["p90_ms"] < 1000
    assert (r["runs"], r["threads"], r["provider"]) == (7, 1, "CPUExecutionProvider")
    import onnxruntime
    assert r["onnxruntime"] == onnxruntime.__version__


def test_measure_latency_rejects_bad_arguments():
    m = _conv_model(3, 8, 16)
    with pytest.raises(homec.errors.UsageError):
        measure_latency(m, [], runs=3)
    with pytest.raises(homec.errors.UsageError):
        measure_latency(m, [{"x": np.zeros((1, 3, 16, 16), np.float32)}], runs=0)
    with pytest.raises(homec.errors.UnsupportedError):
        measure_latency(m, [{"x": np.zeros((1, 4, 16, 16), np.float32)}], runs=1)
