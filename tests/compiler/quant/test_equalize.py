"""Cross-layer equalization: outputs unchanged, ranges balanced, per-tensor int8 error lower."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest

import homec
from homec.quant import numerics as Q
from homec.quant.equalize import equalize, find_pairs
from homec.registry import Tolerance
from homec.testing.oracle import compare, random_feeds, run_ort

F32 = onnx.TensorProto.FLOAT
INT8 = Q.qtype("int8")
RNG = np.random.default_rng(11)


@pytest.fixture(autouse=True)
def _seeded_rng():
    global RNG
    RNG = np.random.default_rng(11)  # each test sees the same weights, alone or in a run


def _init(name, arr):
    return onh.from_array(np.asarray(arr, np.float32), name)


def _model(nodes, x_shape, y_shape, inits, *, outputs=("y",), opset=17):
    """A model reading `x`; every output gets the shape `y_shape`."""
    g = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", F32, x_shape)],
                      [oh.make_tensor_value_info(o, F32, y_shape) for o in outputs], inits)
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def _unbalanced(shape, spread=3.0):
    """Random weights whose output channels (axis 0) span `spread` decades of range."""
    w = RNG.standard_normal(shape)
    return w * np.logspace(-spread / 2, spread / 2, shape[0]).reshape((-1,) + (1,) * (len(shape) - 1))


def _equalized(m, **options):
    """Equalize a copy of `m`; check the IR, the checker and the outputs (float_refold)."""
    g = homec.load(m)
    stats = equalize(g, **options)
    g.verify()
    out = g.to_onnx()
    onnx.checker.check_model(out, full_check=True)
    assert [o.name for o in out.graph.output] == [o.name for o in m.graph.output]
    feeds = random_feeds(m, 0)
    feeds = {k: np.abs(v) + 0.5 if k == "x" else v for k, v in feeds.items()}  # nonzero means
    cmp = compare(run_ort(m, feeds), run_ort(out, feeds), Tolerance.float_refold())
    assert cmp.ok, cmp.describe()
    return g, stats, out


def _weights(model):
    return {t.name: onh.to_array(t) for t in model.graph.initializer}


def _weight_quant_error(model, names):
    """Relative output error of `model` with the initializers `names` fake-quantized to
    per-tensor symmetric int8 (homec.quant.numerics), on inputs with nonzero means."""
    q = onnx.ModelProto()
    q.CopyFrom(model)
    for t in q.graph.initializer:
        if t.name in names:
            w = onh.to_array(t)
            scale, zp = Q.weight_qparams(w, INT8, axis=None)
            t.CopyFrom(onh.from_array(Q.fake_quantize(w, scale, zp, INT8), t.name))
    feeds = random_feeds(model, 1)
    feeds["x"] = np.abs(feeds["x"]) + 0.1
    ref, got = run_ort(model, feeds)[0], run_ort(q, feeds)[0]
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


def _channel_int8_error(w, channel_axis):
    """Mean over channels of the relative error ||fq(w_c) - w_c|| / ||w_c|| of per-tensor
    symmetric int8 fake quantization: how well each channel survives, whatever its scale."""
    scale, zp = Q.weight_qparams(w, INT8, axis=None)
    err = np.moveaxis(Q.fake_quantize(w, scale, zp, INT8) - w, channel_axis, 0).reshape(w.shape[channel_axis], -1)
    ref = np.moveaxis(w, channel_axis, 0).reshape(w.shape[channel_axis], -1)
    return float(np.mean(np.linalg.norm(err, axis=1) / np.linalg.norm(ref, axis=1)))


def _ops_stats(stats):
    return {k: v for k, v in stats.items() if v and not k.startswith(("skipped", "candidates", "iterations"))}


def _conv_relu_conv(c=8):
    inits = [_init("w1", _unbalanced((c, 3, 3, 3))), _init("b1", RNG.standard_normal(c)),
             _init("w2", RNG.standard_normal((5, c, 3, 3))), _init("b2", RNG.standard_normal(5))]
    nodes = [oh.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             oh.make_node("Relu", ["c1"], ["r1"]),
             oh.make_node("Conv", ["r1", "w2", "b2"], ["y"], name="conv2")]
    return _model(nodes, [2, 3, 9, 9], [2, 5, 7, 7], inits)


def test_conv_relu_conv_balances_ranges_and_lowers_int8_error():
    m = _conv_relu_conv()
    g, stats, out = _equalized(m)
    assert _ops_stats(stats) == {"pairs_equalized": 1, "channels_rescaled": 8}
    assert stats["candidates_pairs"] == 1 and stats["iterations_run"] == 2  # 2nd sweep: s = 1
    w = _weights(out)
    r1 = np.abs(w["w1"]).reshape(8, -1).max(1)
    r2 = np.abs(w["w2"]).transpose(1, 0, 2, 3).reshape(8, -1).max(1)
    np.testing.assert_allclose(r1, r2, rtol=1e-5)
    # the balanced ranges are the geometric means of the old ones
    old = _weights(m)
    np.testing.assert_allclose(r1, np.sqrt(np.abs(old["w1"]).reshape(8, -1).max(1)
                                           * np.abs(old["w2"]).transpose(1, 0, 2, 3).reshape(8, -1).max(1)),
                               rtol=1e-5)
    # per-tensor int8: every channel keeps more of its precision, and the network's output
    # error with both weights fake-quantized drops
    # (w1's small channels gain what the balanced w2 gives up)
    before = _channel_int8_error(old["w1"], 0) + _channel_int8_error(old["w2"], 1)
    after = _channel_int8_error(w["w1"], 0) + _channel_int8_error(w["w2"], 1)
    assert after < 0.5 * before, (before, after)
    before = _weight_quant_error(m, {"w1", "w2"})
    after = _weight_quant_error(out, {"w1", "w2"})
    assert after < 0.8 * before, (before, after)
    # weight names survive; the old tensors are gone, not edited
    assert sorted(w) == ["b1", "b2", "w1", "w2"]
    again = homec.load(out)
    assert _ops_stats(equalize(again)) == {}
    assert again.to_onnx().SerializeToString(deterministic=True) == out.SerializeToString(deterministic=True)


def test_original_tensors_are_not_modified():
    g = homec.load(_conv_relu_conv())
    tensors = {n: v.const for n, v in g.initializers.items()}
    copies = {n: t.numpy().copy() for n, t in tensors.items()}
    equalize(g)
    for n, t in tensors.items():
        np.testing.assert_array_equal(t.numpy(), copies[n])
        # the rewritten ones are new tensors under the old names
        assert (g.initializers[n].const is not t) == (n in ("w1", "b1", "w2"))
    assert set(g.initializers) == set(tensors)


def test_pointwise_depthwise_pointwise_chain_converges():
    """Conv(1x1) -> Conv(depthwise) -> Relu -> Conv(1x1): the depthwise layer is second of
    one pair and first of the next; at the fixed point all three ranges per channel agree."""
    c = 6
    inits = [_init("pw1", _unbalanced((c, 4, 1, 1))), _init("pb1", RNG.standard_normal(c)),
             _init("dw", _unbalanced((c, 1, 3, 3))[::-1].copy()), _init("db", RNG.standard_normal(c)),
             _init("pw2", RNG.standard_normal((5, c, 1, 1)))]
    nodes = [oh.make_node("Conv", ["x", "pw1", "pb1"], ["a"]),
             oh.make_node("Conv", ["a", "dw", "db"], ["b"], group=c, pads=[1, 1, 1, 1]),
             oh.make_node("Relu", ["b"], ["r"]),
             oh.make_node("Conv", ["r", "pw2"], ["y"])]
    m = _model(nodes, [1, 4, 8, 8], [1, 5, 8, 8], inits)
    pairs = find_pairs(homec.load(m))
    assert [(p.first.op_type, [n.op_type for n in p.between], p.second.attr("group", 1)) for p in pairs] == \
        [("Conv", [], c), ("Conv", ["Relu"], 1)]
    g, stats, out = _equalized(m, iterations=100, tolerance=1e-6)
    assert _ops_stats(stats) == {"pairs_equalized": 2, "channels_rescaled": 2 * c}
    assert 2 < stats["iterations_run"] < 100
    w = _weights(out)
    r_pw1 = np.abs(w["pw1"]).reshape(c, -1).max(1)
    r_dw = np.abs(w["dw"]).reshape(c, -1).max(1)
    r_pw2 = np.abs(w["pw2"]).reshape(5, c).max(0)
    np.testing.assert_allclose(r_pw1, r_dw, rtol=1e-4)
    np.testing.assert_allclose(r_dw, r_pw2, rtol=1e-4)
    names = {"pw1", "dw", "pw2"}
    assert _weight_quant_error(out, names) < 0.5 * _weight_quant_error(m, names)


def test_iteration_limit_stops_early_but_stays_exact():
    c = 6
    inits = [_init("a", _unbalanced((c, 3, 1, 1))), _init("b", _unbalanced((c, 1, 3, 3))),
             _init("d", RNG.standard_normal((4, c, 1, 1)))]
    nodes = [oh.make_node("Conv", ["x", "a"], ["p"]),
             oh.make_node("Conv", ["p", "b"], ["q"], group=c),
             oh.make_node("Conv", ["q", "d"], ["y"])]
    m = _model(nodes, [1, 3, 6, 6], [1, 4, 4, 4], inits)
    _, stats, _ = _equalized(m, iterations=1)
    assert stats["iterations_run"] == 1 and stats["pairs_equalized"] == 2


@pytest.mark.parametrize("g1,g2", [(1, 2), (2, 4), (2, 1), (4, 8)])
def test_grouped_convs(g1, g2):
    cin, c, cout = 4, 8, 8
    inits = [_init("w1", _unbalanced((c, cin // g1, 3, 3))), _init("b1", RNG.standard_normal(c)),
             _init("w2", RNG.standard_normal((cout, c // g2, 1, 1)) * np.linspace(0.1, 3, cout)[:, None, None, None])]
    nodes = [oh.make_node("Conv", ["x", "w1", "b1"], ["c1"], group=g1),
             oh.make_node("Relu", ["c1"], ["r"]),
             oh.make_node("Conv", ["r", "w2"], ["y"], group=g2)]
    m = _model(nodes, [2, cin, 6, 6], [2, cout, 4, 4], inits)
    _, stats, out = _equalized(m)
    assert _ops_stats(stats) == {"pairs_equalized": 1, "channels_rescaled": c}
    w = _weights(out)
    r1 = np.abs(w["w1"]).reshape(c, -1).max(1)
    w2 = w["w2"].reshape(g2, cout // g2, c // g2)  # input channel i = grp * (c/g2) + j
    r2 = np.abs(w2).max(axis=1).reshape(-1)
    np.testing.assert_allclose(r1, r2, rtol=1e-5)


@pytest.mark.parametrize("act", ["LeakyRelu", "PRelu", "Identity+Relu", "none"])
def test_homogeneous_activations(act):
    c = 6
    inits = [_init("w1", _unbalanced((c, 3, 1, 1))), _init("b1", RNG.standard_normal(c)),
             _init("w2", RNG.standard_normal((4, c, 1, 1)))]
    nodes = [oh.make_node("Conv", ["x", "w1", "b1"], ["c1"])]
    if act == "LeakyRelu":
        nodes.append(oh.make_node("LeakyRelu", ["c1"], ["a"], alpha=0.2))
    elif act == "PRelu":
        inits.append(_init("slope", RNG.uniform(0.05, 0.5, (c, 1, 1))))
        nodes.append(oh.make_node("PRelu", ["c1", "slope"], ["a"]))
    elif act == "Identity+Relu":
        nodes += [oh.make_node("Identity", ["c1"], ["i"]), oh.make_node("Relu", ["i"], ["a"])]
    else:
        nodes.append(oh.make_node("Identity", ["c1"], ["a"]))
    nodes.append(oh.make_node("Conv", ["a", "w2"], ["y"]))
    m = _model(nodes, [1, 3, 5, 5], [1, 4, 5, 5], inits)
    _, stats, _ = _equalized(m)
    assert _ops_stats(stats) == {"pairs_equalized": 1, "channels_rescaled": c}


@pytest.mark.parametrize("act", ["Clip", "HardSwish", "Sigmoid", "HardSigmoid"])
def test_non_homogeneous_activation_is_not_paired(act):
    c = 6
    inits = [_init("w1", _unbalanced((c, 3, 1, 1))), _init("w2", RNG.standard_normal((4, c, 1, 1))),
             _init("lo", np.float32(0)), _init("hi", np.float32(6))]
    mid = (oh.make_node("Clip", ["c1", "lo", "hi"], ["a"]) if act == "Clip"  # ReLU6
           else oh.make_node(act, ["c1"], ["a"]))
    nodes = [oh.make_node("Conv", ["x", "w1"], ["c1"]), mid, oh.make_node("Conv", ["a", "w2"], ["y"])]
    m = _model(nodes, [1, 3, 5, 5], [1, 4, 5, 5], inits)
    g, stats, out = _equalized(m)
    assert _ops_stats(stats) == {} and stats["skipped_not_homogeneous"] == 1
    assert out.SerializeToString(deterministic=True) == \
        homec.load(m).to_onnx().SerializeToString(deterministic=True)


def test_shared_weight_fanout_and_graph_output_are_skipped():
    c = 4
    inits = [_init("w1", _unbalanced((c, 3, 1, 1))), _init("w2", RNG.standard_normal((c, c, 1, 1))),
             _init("w3", _unbalanced((c, 3, 1, 1)))]
    nodes = [oh.make_node("Conv", ["x", "w1"], ["a"]),  # a -> conv(w2): w2 shared below
             oh.make_node("Relu", ["a"], ["ra"]),
             oh.make_node("Conv", ["ra", "w2"], ["p"]),
             oh.make_node("Conv", ["x", "w3"], ["b"]),  # b is read by Relu and by Add
             oh.make_node("Relu", ["b"], ["rb"]),
             oh.make_node("Conv", ["rb", "w2"], ["q"]),
             oh.make_node("Add", ["p", "q"], ["s"]),
             oh.make_node("Add", ["s", "b"], ["y"]),
             oh.make_node("Conv", ["x", "w3_2"], ["e"]),  # e is a graph output
             oh.make_node("Conv", ["e", "w4"], ["y2"])]
    inits += [_init("w3_2", _unbalanced((c, 3, 1, 1))), _init("w4", RNG.standard_normal((c, c, 1, 1)))]
    m = _model(nodes, [1, 3, 4, 4], [1, c, 4, 4], inits, outputs=("y", "e", "y2"))
    _, stats, out = _equalized(m)
    assert _ops_stats(stats) == {}
    assert stats["skipped_shared_weights"] == 1 and stats["skipped_fanout"] == 2
    assert out.SerializeToString(deterministic=True) == \
        homec.load(m).to_onnx().SerializeToString(deterministic=True)


def test_unselected_layers_are_left_alone():
    m = _conv_relu_conv()
    for name in ("conv1", "conv2"):
        g = homec.load(m)
        assert find_pairs(g, lambda n, name=name: n.name != name) == []
        assert _ops_stats(equalize(g, selected=lambda n, name=name: n.name != name)) == {}


def test_zero_range_channel_keeps_scale_one():
    c = 5
    w1 = _unbalanced((c, 3, 1, 1))
    w1[2] = 0.0  # a dead channel
    inits = [_init("w1", w1), _init("b1", RNG.standard_normal(c)), _init("w2", RNG.standard_normal((3, c, 1, 1)))]
    nodes = [oh.make_node("Conv", ["x", "w1", "b1"], ["c1"]), oh.make_node("Relu", ["c1"], ["r"]),
             oh.make_node("Conv", ["r", "w2"], ["y"])]
    m = _model(nodes, [1, 3, 4, 4], [1, 3, 4, 4], inits)
    _, stats, out = _equalized(m)
    assert _ops_stats(stats) == {"pairs_equalized": 1, "channels_rescaled": c - 1}
    w = _weights(out)
    np.testing.assert_array_equal(w["w2"][:, 2], _weights(m)["w2"][:, 2])
    np.testing.assert_array_equal(w["b1"][2], _weights(m)["b1"][2])


@pytest.mark.parametrize("second", ["Gemm", "Gemm_transB", "MatMul"])
@pytest.mark.parametrize("c_shape", [(6,), (1, 6), (), (3, 1)])
def test_gemm_first(second, c_shape):
    k, n, out_n = 4, 6, 5
    inits = [_init("w1", _unbalanced((n, k)).T.copy()), _init("c1", RNG.standard_normal(c_shape))]
    w2 = RNG.standard_normal((n, out_n))
    if second == "Gemm_transB":
        inits.append(_init("w2", w2.T.copy()))
        tail = oh.make_node("Gemm", ["r", "w2"], ["y"], transB=1)
    else:
        inits.append(_init("w2", w2))
        tail = oh.make_node(second, ["r", "w2"], ["y"])
    nodes = [oh.make_node("Gemm", ["x", "w1", "c1"], ["g1"], alpha=0.5, beta=2.0),
             oh.make_node("Relu", ["g1"], ["r"]), tail]
    m = _model(nodes, [3, k], [3, out_n], inits)
    _, stats, out = _equalized(m)
    assert _ops_stats(stats) == {"pairs_equalized": 1, "channels_rescaled": n}
    w = _weights(out)
    r1 = np.abs(w["w1"]).max(axis=0)
    r2 = np.abs(w["w2"]).max(axis=0 if second == "Gemm_transB" else 1)
    np.testing.assert_allclose(r1, r2, rtol=1e-5)


def test_matmul_chain_on_3d_activations():
    k, n = 4, 6
    inits = [_init("w1", _unbalanced((n, k)).T.copy()), _init("w2", RNG.standard_normal((n, 3)))]
    nodes = [oh.make_node("MatMul", ["x", "w1"], ["m1"]), oh.make_node("Relu", ["m1"], ["r"]),
             oh.make_node("MatMul", ["r", "w2"], ["y"])]
    m = _model(nodes, [2, 5, k], [2, 5, 3], inits)
    _, stats, _ = _equalized(m)
    assert _ops_stats(stats) == {"pairs_equalized": 1, "channels_rescaled": n}


def test_channel_axes_that_do_not_line_up_are_not_paired():
    # Gemm(transA=1) reads features on axis 0 of A; a Conv output feeding a MatMul has its
    # channels on axis 1, not the contracted last axis.
    inits = [_init("w1", _unbalanced((4, 4))), _init("w2", RNG.standard_normal((4, 4))),
             _init("cw", _unbalanced((4, 3, 1, 1))), _init("mw", RNG.standard_normal((5, 2)))]
    nodes = [oh.make_node("Gemm", ["x", "w1"], ["a"]), oh.make_node("Relu", ["a"], ["r"]),
             oh.make_node("Gemm", ["r", "w2"], ["y"], transA=1)]
    m = _model(nodes, [4, 4], [4, 4], inits[:2])
    _, stats, _ = _equalized(m)
    assert _ops_stats(stats) == {} and stats["skipped_incompatible"] == 1
    nodes = [oh.make_node("Conv", ["x", "cw"], ["a"]), oh.make_node("MatMul", ["a", "mw"], ["y"])]
    m = _model(nodes, [1, 3, 4, 5], [1, 4, 4, 2], inits[2:])
    _, stats, _ = _equalized(m)
    assert _ops_stats(stats) == {} and stats["skipped_incompatible"] == 1


def test_random_graphs_keep_their_outputs():
    """Differential check over the random-graph generator: equalization never changes the
    outputs beyond float rounding (initializers that are graph inputs are fed overrides)."""
    from homec.testing.graphgen import random_model

    found = 0
    for seed in range(150):
        m = random_model(seed, max_nodes=30)
        g = homec.load(m)
        stats = equalize(g)
        g.verify()
        found += stats["pairs_equalized"]
        if not stats["pairs_equalized"]:
            continue
        out = g.to_onnx()
        onnx.checker.check_model(out, full_check=True)
        feeds = random_feeds(m, seed, override_initializers=True)
        cmp = compare(run_ort(m, feeds), run_ort(out, feeds), Tolerance.float_refold())
        assert cmp.ok, f"seed {seed}: {cmp.describe()}"
    assert found >= 10  # the generator's Conv/Gemm blocks do give the pass something to do


CLS_MODEL = "models/ch_ppocr_mobile_v2.0_cls_infer.onnx"
ROOT = Path(__file__).resolve().parents[3]


def _label_crops(n):
    """Rendered appliance labels (bench/ocr/render) preprocessed as RapidOCR's text-direction
    classifier does: height 48, width <= 192 keeping the aspect ratio, zero padded right,
    scaled to [-1, 1], CHW. Random normal inputs are far from what the network was trained
    on and do not show the effect of equalization."""
    cv2 = pytest.importorskip("cv2")
    if str(ROOT) not in sys.path:  # bench/ is a plain folder of the checkout
        sys.path.insert(0, str(ROOT))
    from bench.ocr import render

    batch = np.zeros((n, 3, 48, 192), np.float32)
    for i, sample in enumerate(render.calib_set(n)):
        h, w = sample.image.shape[:2]
        width = min(192, int(np.ceil(48 * w / h)))
        img = cv2.resize(sample.image, (width, 48)).astype(np.float32) / 255.0
        batch[i, :, :, :width] = ((img - 0.5) / 0.5).transpose(2, 0, 1)
    return batch


@pytest.mark.slow
def test_ppocr_cls_model():
    rapidocr = pytest.importorskip("rapidocr_onnxruntime")
    path = os.path.join(os.path.dirname(rapidocr.__file__), CLS_MODEL)
    graph = homec.compile(path, "schedule { cleanup }").graph
    softmax = [n for n in graph.nodes if n.op_type == "Softmax"]
    graph.add_output(softmax[0].inputs[0])  # the logits: a finer measure than probabilities
    clean = graph.to_onnx()
    pairs = find_pairs(graph)
    stats = equalize(graph)
    graph.verify()
    out = graph.to_onnx()
    # MobileNetV3: expand -> ReLU -> depthwise -> ReLU -> project, SE squeeze -> ReLU ->
    # excite; the HardSwish blocks (Add/Clip/Mul/Div, read twice) are not paired
    assert len(pairs) == stats["candidates_pairs"] == 15
    assert stats["pairs_equalized"] == 15 and stats["iterations_run"] < 20
    x = _label_crops(8)
    noise = np.random.default_rng(0).standard_normal((2, 3, 48, 192)).astype(np.float32)
    for feeds in ({"x": x}, {"x": noise}):
        cmp = compare(run_ort(clean, feeds), run_ort(out, feeds), Tolerance.float_refold())
        assert cmp.ok, cmp.describe()
    # per-tensor int8 fake quantization of the paired weights only: relative logit error
    paired = {p.first.inputs[1].name for p in pairs} | {p.second.inputs[1].name for p in pairs}
    before, after = _logit_int8_error(clean, paired, x), _logit_int8_error(out, paired, x)
    assert after < 0.5 * before, (before, after)


def _logit_int8_error(model, names, x):
    q = onnx.ModelProto()
    q.CopyFrom(model)
    for t in q.graph.initializer:
        if t.name in names:
            w = onh.to_array(t)
            scale, zp = Q.weight_qparams(w, INT8, axis=None)
            t.CopyFrom(onh.from_array(Q.fake_quantize(w, scale, zp, INT8), t.name))
    ref, got = run_ort(model, {"x": x})[1], run_ort(q, {"x": x})[1]
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
