"""prune_channels: structured channel pruning on tiny hand-built graphs.

The central check is metamorphic: when the channels the criterion will remove are made
irrelevant by construction (their producer filters scaled down to the lowest norms, and the
weights that read them zero), removing them must not change the model's outputs, while the
weights, activations and MACs physically shrink. The surviving weights are then exact slices
of the originals (with or without the least-squares re-fit, whose correction is zero here), so
every edited constant is compared with `np.delete` of the original array.

Besides: refusals and their reported reasons, the options (align, min_channels, global, the
six criteria, ratio="auto"), the re-fit against an independent least-squares oracle, usage
errors, determinism and selectors.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import homec
from homec.calib import CalibrationSet
from homec.errors import ExitCode, UsageError
from homec.testing.oracle import random_feeds
from homec.verify import make_session

F32 = onnx.TensorProto.FLOAT
TINY = 1e-3  # producer filters of the channels meant to go: far below any random filter's norm


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _normal(rng, *shape) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def _scale(w: np.ndarray, channels, axis: int, factor: float) -> np.ndarray:
    """w with the entries of `channels` along `axis` multiplied by `factor` (a copy)."""
    w = w.copy()
    index = [slice(None)] * w.ndim
    index[axis] = list(channels)
    w[tuple(index)] *= np.float32(factor)
    return w


def _weak(w, channels, axis=0):
    """Producer filters of `channels` shrunk so the L1/L2 criteria rank them lowest."""
    return _scale(w, channels, axis, TINY)


def _unread(w, channels, axis=1):
    """Consumer weights reading `channels` set to zero: those channels no longer matter."""
    return _scale(w, channels, axis, 0.0)


def _drop(w, channels, axis=0):
    return np.delete(w, list(channels), axis=axis)


def _calib(n=12, seed=1, shape=(1, 3, 8, 8), name="x") -> CalibrationSet:
    rng = _rng(seed)
    return CalibrationSet([{name: _normal(rng, *shape)} for _ in range(n)])


def _prune(m, options: str = "", *, calib=None, selector: str = "", seed: int = 0):
    """Compile `m` with one prune_channels invocation; returns (result, its PassRecord)."""
    call = f"prune_channels({options})" + (f" {selector}" if selector else "")
    res = homec.compile(m, f"schedule {{ {call} }}", calib=calib, seed=seed)
    rec = res.records[-1]
    assert rec.name == "prune_channels"
    return res, rec


def _run(m, feeds) -> list[np.ndarray]:
    return make_session(m).run(None, feeds)


def _rel(ref, got) -> float:
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


def _const_inputs(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Every constant of the model's main graph by name (initializers and Constant nodes)."""
    out = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    out[n.output[0]] = onnx.numpy_helper.to_array(a.t)
    return out


def _node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    found = [n for n in model.graph.node if n.name == name]
    assert len(found) == 1, f"node {name} not found once in {[n.name for n in model.graph.node]}"
    return found[0]


def _input_const(model, node_name: str, slot: int) -> np.ndarray:
    return _const_inputs(model)[_node(model, node_name).input[slot]]


def _attr(model, node_name: str, attr: str):
    for a in _node(model, node_name).attribute:
        if a.name == attr:
            return onnx.helper.get_attribute_value(a)
    return None


def _assert_same_outputs(m, out, *, seeds=(0, 1, 2), rel=1e-5, feeds=None):
    feeds_list = feeds if feeds is not None else [random_feeds(m, s) for s in seeds]
    for f in feeds_list:
        for ref, got in zip(_run(m, f), _run(out, f), strict=True):
            assert ref.shape == got.shape
            assert _rel(ref, got) <= rel, f"outputs differ: relative L2 {_rel(ref, got):.3g}"


def _orphans(model: onnx.ModelProto) -> list[str]:
    """Initializers nothing reads (constants a rewrite replaced but left behind)."""
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    return [t.name for t in model.graph.initializer if t.name not in used]


# The metamorphic checks run in two modes: L2 filter norms without calibration (plain slicing),
# and the data criterion with least-squares reconstruction on calibration data. With the
# removed channels' consumer weights zero, the re-fit's correction W_R (...) is zero, so both
# must reproduce the original outputs and keep exact slices of the original weights.
MODES = {"l2": "", "data_refit": ', criterion="data", reconstruct=true'}


@pytest.fixture(params=list(MODES))
def mode(request) -> str:
    return request.param


def _check_exact(m, options: str, expected: dict[tuple[str, int], np.ndarray], *,
                 attrs: dict[tuple[str, str], object] | None = None, mode: str = "l2"):
    """Prune `m` (removed channels irrelevant by construction) and check: a valid model
    without orphaned constants, the same outputs, every listed constant input equal to the
    expected slice of the original, the listed attributes rewritten, fewer MACs."""
    onnx.checker.check_model(m, full_check=True)
    calib = CalibrationSet([random_feeds(m, 100 + s) for s in range(16)]) if mode != "l2" else None
    res, rec = _prune(m, options + MODES[mode], calib=calib)
    onnx.checker.check_model(res.model, full_check=True)
    assert not _orphans(res.model), f"constants left behind: {_orphans(res.model)}"
    _assert_same_outputs(m, res.model)
    for (name, slot), want in expected.items():
        got = _input_const(res.model, name, slot)
        assert got.shape == want.shape, f"{name} input {slot}: shape {got.shape} != {want.shape}"
        np.testing.assert_array_equal(got, want, err_msg=f"{name} input {slot}")
    for (name, attr), want in (attrs or {}).items():
        assert _attr(res.model, name, attr) == want, f"{name}.{attr}"
    st = rec.stats
    assert st["channels_removed"] > 0 and st["groups_pruned"] > 0
    assert 0 < st["macs_after"] < st["macs_before"]
    assert 0 < st["params_after"] < st["params_before"]
    if mode != "l2":  # the reconstruction ran (re-fit, or mean folding where rows are few)
        assert st.get("consumers_refit", 0) + st.get("consumers_mean_folded", 0) >= 1, st
    return res, rec


def _conv(h, x, w, b, y, name, **attrs):
    inputs = [x, w] + ([b] if b else [])
    attrs.setdefault("pads", [1, 1, 1, 1])  # "same" 3x3 by default
    return h.node("Conv", inputs, [y], name=name, **attrs)


# ---------------------------------------------------------------------------------------
# 1. ratio 0 is the identity
# ---------------------------------------------------------------------------------------


def _chain(h, rng=None, *, dead=(1, 4, 6, 7), c_mid=8, opset=17):
    """x -> conv1 -> Relu -> conv2 -> y (conv2's output is the graph output)."""
    rng = rng or _rng(0)
    w1 = _weak(_normal(rng, c_mid, 3, 3, 3), dead)
    b1 = _normal(rng, c_mid)
    w2 = _unread(_normal(rng, 4, c_mid, 3, 3), dead)
    b2 = _normal(rng, 4)
    m = h.model([_conv(h, "x", "w1", "b1", "c1", "conv1"), h.node("Relu", ["c1"], ["r1"]),
                 _conv(h, "r1", "w2", "b2", "y", "conv2")],
                [("x", F32, [1, 3, 8, 8])], [("y", F32, [1, 4, 8, 8])],
                [h.init("w1", w1), h.init("b1", b1), h.init("w2", w2), h.init("b2", b2)], opset=opset,
                value_info=[h.vi(v, F32, [1, c_mid, 8, 8]) for v in ("c1", "r1")])
    return m, dict(w1=w1, b1=b1, w2=w2, b2=b2)


@pytest.mark.parametrize("criterion, with_calib", [("l2", False), ("data", True)])
def test_ratio_zero_is_the_identity(h, criterion, with_calib):
    m, _ = _chain(h)
    untouched = homec.compile(m).model.SerializeToString(deterministic=True)
    res, rec = _prune(m, f'ratio=0, criterion="{criterion}"', calib=_calib() if with_calib else None)
    assert res.model.SerializeToString(deterministic=True) == untouched
    assert not rec.modified
    assert not rec.stats.get("channels_removed") and not rec.stats.get("classes_removed")


# ---------------------------------------------------------------------------------------
# 2. metamorphic exactness, one coupling pattern at a time
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("opset", [13, 17])
def test_conv_relu_conv_chain(h, opset, mode):
    dead = (1, 4, 6, 7)
    m, w = _chain(h, dead=dead, opset=opset)
    res, rec = _check_exact(m, "ratio=0.5", {
        ("conv1", 1): _drop(w["w1"], dead), ("conv1", 2): _drop(w["b1"], dead),
        ("conv2", 1): _drop(w["w2"], dead, 1), ("conv2", 2): w["b2"]}, mode=mode)
    assert rec.stats["channels_removed"] == 4 and rec.stats["groups_pruned"] == 1
    # the activations shrank too: their declared types follow
    declared = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
                for v in res.model.graph.value_info}
    assert declared == {"c1": [1, 4, 8, 8], "r1": [1, 4, 8, 8]}
    groups = rec.details["groups"]
    assert [(g["producers"], g["channels"], g["removed"]) for g in groups] == [(["conv1"], 8, 4)]


def test_residual_add_of_two_convs_removes_the_same_channels_from_both(h, mode):
    """r0 -> (conv_a 3x3, conv_b 1x1) -> Add -> Relu -> conv_out: conv_a and conv_b write one
    stream, so a channel goes from both or from neither."""
    rng = _rng(1)
    dead0, dead_sum = (2, 5), (0, 3, 5, 6)
    w0 = _weak(_normal(rng, 8, 3, 3, 3), dead0)
    wa = _weak(_unread(_normal(rng, 8, 8, 3, 3), dead0), dead_sum)
    wb = _weak(_unread(_normal(rng, 8, 8, 1, 1), dead0), dead_sum)
    ba, bb = _normal(rng, 8), _normal(rng, 8)
    wo = _unread(_normal(rng, 3, 8, 3, 3), dead_sum)
    m = h.model([_conv(h, "x", "w0", None, "c0", "conv0"), h.node("Relu", ["c0"], ["r0"]),
                 _conv(h, "r0", "wa", "ba", "a", "conv_a"),
                 _conv(h, "r0", "wb", "bb", "b", "conv_b", pads=[0, 0, 0, 0]),
                 h.node("Add", ["a", "b"], ["s"]), h.node("Relu", ["s"], ["rs"]),
                 _conv(h, "rs", "wo", None, "y", "conv_out")],
                [("x", F32, [1, 3, 8, 8])], [("y", F32, [1, 3, 8, 8])],
                [h.init(k, v) for k, v in dict(w0=w0, wa=wa, wb=wb, ba=ba, bb=bb, wo=wo).items()])
    # ratio 0.25 of 8: two channels per group
    _, rec = _check_exact(m, "ratio=0.25", {
        ("conv0", 1): _drop(w0, dead0),
        ("conv_a", 1): _drop(_drop(wa, dead0, 1), dead_sum[:2]),
        ("conv_b", 1): _drop(_drop(wb, dead0, 1), dead_sum[:2]),
        ("conv_a", 2): _drop(ba, dead_sum[:2]), ("conv_b", 2): _drop(bb, dead_sum[:2]),
        ("conv_out", 1): _drop(wo, dead_sum[:2], 1)}, mode=mode)
    by_producers = {tuple(g["producers"]): g["removed"] for g in rec.details["groups"]}
    assert by_producers == {("conv0",): 2, ("conv_a", "conv_b"): 2}


def test_residual_identity_skip(h, mode):
    """r0 + conv1(r0): conv0's and conv1's output channels are one class each."""
    rng = _rng(2)
    dead = (0, 3, 5, 6)
    w0 = _weak(_normal(rng, 8, 3, 3, 3), dead)
    w1 = _weak(_unread(_normal(rng, 8, 8, 3, 3), dead), dead)
    w2 = _unread(_normal(rng, 4, 8, 3, 3), dead)
    m = h.model([_conv(h, "x", "w0", None, "c0", "conv0"), h.node("Relu", ["c0"], ["r0"]),
                 _conv(h, "r0", "w1", None, "c1", "conv1"), h.node("Add", ["r0", "c1"], ["s"]),
                 _conv(h, "s", "w2", None, "y", "conv2")],
                [("x", F32, [1, 3, 8, 8])], [("y", F32, [1, 4, 8, 8])],
                [h.init("w0", w0), h.init("w1", w1), h.init("w2", w2)])
    _, rec = _check_exact(m, "ratio=0.5", {
        ("conv0", 1): _drop(w0, dead), ("conv1", 1): _drop(_drop(w1, dead), dead, 1),
        ("conv2", 1): _drop(w2, dead, 1)}, mode=mode)
    assert rec.stats["groups_pruned"] == 1 and rec.stats["classes_removed"] == 4


def test_concat_on_channels_keeps_offset_ranges(h, mode):
    rng = _rng(3)
    dead_a, dead_b = (0, 2), (1, 3)
    wa, wb = _weak(_normal(rng, 4, 3, 3, 3), dead_a), _weak(_normal(rng, 4, 3, 3, 3), dead_b)
    consumer_dead = list(dead_a) + [4 + c for c in dead_b]
    w2 = _unread(_normal(rng, 3, 8, 3, 3), consumer_dead)
    m = h.model([_conv(h, "x", "wa", None, "a", "conv_a"), h.node("Relu", ["a"], ["ra"]),
                 _conv(h, "x", "wb", None, "b", "conv_b"), h.node("Relu", ["b"], ["rb"]),
                 h.node("Concat", ["ra", "rb"], ["cat"], axis=1),
                 _conv(h, "cat", "w2", None, "y", "conv2")],
                [("x", F32, [1, 3, 8, 8])], [("y", F32, [1, 3, 8, 8])],
                [h.init("wa", wa), h.init("wb", wb), h.init("w2", w2)])
    _check_exact(m, "ratio=0.5", {("conv_a", 1): _drop(wa, dead_a), ("conv_b", 1): _drop(wb, dead_b),
                                  ("conv2", 1): _drop(w2, consumer_dead, 1)}, mode=mode)


def test_split_on_channels_rewrites_the_sizes(h, mode):
    """conv1 (8) -> Split [4, 4] -> conv_a, conv_b -> Add -> y; three of conv1's channels go:
    two from the first piece and one from the second, so the sizes become [2, 3]."""
    rng = _rng(4)
    dead = (0, 1, 6)
    w1 = _weak(_normal(rng, 8, 3, 3, 3), dead)
    wa = _unread(_normal(rng, 3, 4, 3, 3), (0, 1))
    wb = _unread(_normal(rng, 3, 4, 3, 3), (2,))
    m = h.model([_conv(h, "x", "w1", None, "c1", "conv1"), h.node("Relu", ["c1"], ["r1"]),
                 h.node("Split", ["r1", "sizes"], ["p", "q"], axis=1, name="split"),
                 _conv(h, "p", "wa", None, "a", "conv_a"), _conv(h, "q", "wb", None, "b", "conv_b"),
                 h.node("Add", ["a", "b"], ["y"])],
                [("x", F32, [1, 3, 8, 8])], [("y", F32, [1, 3, 8, 8])],
                [h.init("w1", w1), h.init("wa", wa), h.init("wb", wb),
                 h.init("sizes", np.array([4, 4], np.int64))], opset=13)
    res, _ = _check_exact(m, "ratio=0.375", {
        ("conv1", 1): _drop(w1, dead), ("conv_a", 1): _drop(wa, (0, 1), 1),
        ("conv_b", 1): _drop(wb, (2,), 1)}, mode=mode)
    np.testing.assert_array_equal(_input_const(res.model, "split", 1), [2, 3])


def test_slice_on_channels_rewrites_the_bounds(h, mode):
    """conv1 (8) -> Slice [2:7] -> conv2 (5 in): channels 0 and 7 are outside the slice, 3 is
    inside; the slice becomes [1:5] of the 5 survivors."""
    rng = _rng(5)
    dead = (0, 3, 7)
    w1 = _weak(_normal(rng, 8, 3, 3, 3), dead)
    w2 = _unread(_normal(rng, 3, 5, 3, 3), (3 - 2,))
    inits = [h.init("w1", w1), h.init("w2", w2), h.init("starts", np.array([2], np.int64)),
             h.init("ends", np.array([7], np.int64)), h.init("axes", np.array([1], np.int64))]
    m = h.model([_conv(h, "x", "w1", None, "c1", "conv1"), h.node("Relu", ["c1"], ["r1"]),
                 h.node("Slice", ["r1", "starts", "ends", "axes"], ["s"], name="slice"),
                 _conv(h, "s", "w2", None, "y", "conv2")],
                [("x", F32, [1, 3, 8, 8])], [("y", F32, [1, 3, 8, 8])], inits)
    res, _ = _check_exact(m, "ratio=0.375", {("conv1", 1): _drop(w1, dead),
                                             ("conv2", 1): _drop(w2, (1,), 1)}, mode=mode)
    assert _input_const(res.model, "slice", 1).tolist() == [1]
    assert _input_const(res.model, "slice", 2).tolist() == [5]


def test_depthwise_conv_between_pointwise_convs(h, mode):
    rng = _rng(6)
    dead = (2, 3, 5, 7)
    w1 = _weak(_normal(rng, 8, 3, 1, 1), dead)
    wd, bd = _normal(rng, 8, 1, 3, 3), _normal(rng, 8)
    w2 = _unread(_normal(rng, 4, 8, 1, 1), dead)
    m = h.model([_conv(h, "x", "w1", None, "c1", "pw1", pads=[0, 0, 0, 0]), h.node("Relu", ["c1"], ["r1"]),
                 _conv(h, "r1", "wd", "bd", "d", "dw", group=8), h.node("Relu", ["d"], ["rd"]),
                 _conv(h, "rd", "w2", None, "y", "pw2", pads=[0, 0, 0, 0])],
                [("x", F32, [1, 3, 8, 8])], [("y", F32, [1, 4, 8, 8])],
                [h.init("w1", w1), h.init("wd", wd), h.init("bd", bd), h.init("w2", w2)])
    _check_exact(m, "ratio=0.5", {("pw1", 1): _drop(w1, dead), ("dw", 1): _drop(wd, dead),
                                  ("dw", 2): _drop(bd, dead), ("pw2", 1): _drop(w2, dead, 1)},
                 attrs={("dw", "group"): 4}, mode=mode)


def test_grouped_conv_loses_the_same_local_channels_in_every_group(h, mode):
    """conv1 (8) -> grouped conv (groups 2, 8 -> 8) -> conv3. Channel j of group 0 goes with
    channel j of group 1, on the grouped conv's input (conv1's 1 and 5) and output (2 and 6)."""
    rng = _rng(7)
    w1 = _weak(_normal(rng, 8, 3, 3, 3), (1, 5))
    wg = _weak(_unread(_normal(rng, 8, 4, 3, 3), (1,)), (2, 6))
    w3 = _unread(_normal(rng, 3, 8, 3, 3), (2, 6))
    m = h.model([_conv(h, "x", "w1", None, "c1", "conv1"), h.node("Relu", ["c1"], ["r1"]),
                 _conv(h, "r1", "wg", None, "g", "grouped", group=2), h.node("Relu", ["g"], ["rg"]),
                 _conv(h, "rg", "w3", None, "y", "conv3")],
                [("x", F32, [1, 3, 8, 8])], [("y", F32, [1, 3, 8, 8])],
                [h.init("w1", w1), h.init("wg", wg), h.init("w3", w3)])
    _, rec = _check_exact(m, "ratio=0.25", {
        ("conv1", 1): _drop(w1, (1, 5)), ("grouped", 1): _drop(_drop(wg, (2, 6)), (1,), 1),
        ("conv3", 1): _drop(w3, (2, 6), 1)}, attrs={("grouped", "group"): 2}, mode=mode)
    assert rec.stats["channels_removed"] == 4 and rec.stats["classes_removed"] == 2


def test_batchnorm_between_convs(h, mode):
    rng = _rng(8)
    dead = (1, 2, 5, 6)
    w1 = _weak(_normal(rng, 8, 3, 3, 3), dead)
    bn = [rng.uniform(0.5, 1.5, 8).astype(np.float32), _normal(rng, 8), _normal(rng, 8),
          rng.uniform(0.5, 2.0, 8).astype(np.float32)]
    w2 = _unread(_normal(rng, 3, 8, 3, 3), dead)
    m = h.model([_conv(h, "x", "w1", None, "c1", "conv1"),
                 h.node("BatchNormalization", ["c1", "g", "beta", "mu", "var"], ["n1"], name="bn"),
                 h.node("Relu", ["n1"], ["r1"]), _conv(h, "r1", "w2", None, "y", "conv2")],
                [("x", F32, [1, 3, 8, 8])], [("y", F32, [1, 3, 8, 8])],
                [h.init("w1", w1), h.init("w2", w2)] +
                [h.init(k, v) for k, v in zip(("g", "beta", "mu", "var"), bn)])
    expected = {("conv1", 1): _drop(w1, dead), ("conv2", 1): _drop(w2, dead, 1)}
    expected.update({("bn", s): _drop(p, dead) for s, p in enumerate(bn, start=1)})
    _check_exact(m, "ratio=0.5", expected, mode=mode)


def test_per_channel_mul_and_add_constants(h, mode):
    rng = _rng(9)
    dead = (0, 1, 4, 7)
    w1 = _weak(_normal(rng, 8, 3, 3, 3), dead)
    s, t = _normal(rng, 8, 1, 1), _normal(rng, 8, 1, 1)
    w2 = _unread(_normal(rng, 3, 8, 3, 3), dead)
    m = h.model([_conv(h, "x", "w1", None, "c1", "conv1"), h.node("Mul", ["c1", "s"], ["m1"], name="mul"),
                 h.node("Add", ["m1", "t"], ["a1"], name="add"), h.node("Relu", ["a1"], ["r1"]),
                 _conv(h, "r1", "w2", None, "y", "conv2")],
                [("x", F32, [1, 3, 8, 8])], [("y", F32, [1, 3, 8, 8])],
                [h.init("w1", w1), h.init("w2", w2), h.init("s", s), h.init("t", t)])
    _check_exact(m, "ratio=0.5", {("conv1", 1): _drop(w1, dead), ("mul", 1): _drop(s, dead),
                                  ("add", 1): _drop(t, dead), ("conv2", 1): _drop(w2, dead, 1)}, mode=mode)


def test_squeeze_excitation_block(h, mode):
    """x1 = Relu(conv0 x); gate = Sigmoid(se2(Relu(se1(GAP x1)))); y = conv_out(x1 * gate).
    conv0 and se2 write channels that are multiplied together: one group."""
    rng = _rng(10)
    dead, dead_se = (1, 2, 4, 7), (0, 3)
    w0 = _weak(_normal(rng, 8, 3, 3, 3), dead)
    w_se1 = _weak(_unread(_normal(rng, 4, 8, 1, 1), dead), dead_se)
    b_se1 = _normal(rng, 4)
    w_se2 = _weak(_unread(_normal(rng, 8, 4, 1, 1), dead_se), dead)
    b_se2 = _normal(rng, 8)
    wo = _unread(_normal(rng, 3, 8, 3, 3), dead)
    one = dict(pads=[0, 0, 0, 0])
    m = h.model([_conv(h, "x", "w0", None, "c0", "conv0"), h.node("Relu", ["c0"], ["x1"]),
                 h.node("GlobalAveragePool", ["x1"], ["gap"]),
                 _conv(h, "gap", "w_se1", "b_se1", "s1", "se1", **one), h.node("Relu", ["s1"], ["rs1"]),
                 _conv(h, "rs1", "w_se2", "b_se2", "s2", "se2", **one), h.node("Sigmoid", ["s2"], ["gate"]),
                 h.node("Mul", ["x1", "gate"], ["scaled"]), _conv(h, "scaled", "wo", None, "y", "conv_out")],
                [("x", F32, [1, 3, 8, 8])], [("y", F32, [1, 3, 8, 8])],
                [h.init(k, v) for k, v in dict(w0=w0, w_se1=w_se1, b_se1=b_se1, w_se2=w_se2,
                                               b_se2=b_se2, wo=wo).items()])
    _, rec = _check_exact(m, "ratio=0.5", {
        ("conv0", 1): _drop(w0, dead), ("se1", 1): _drop(_drop(w_se1, dead, 1), dead_se),
        ("se1", 2): _drop(b_se1, dead_se), ("se2", 1): _drop(_drop(w_se2, dead_se, 1), dead),
        ("se2", 2): _drop(b_se2, dead), ("conv_out", 1): _drop(wo, dead, 1)}, mode=mode)
    by_producers = {tuple(g["producers"]): g["removed"] for g in rec.details["groups"]}
    assert by_producers == {("conv0", "se2"): 4, ("se1",): 2}


def test_conv_transpose_as_consumer_and_producer(h, mode):
    rng = _rng(11)
    dead_in, dead_out = (0, 5, 6, 7), (1, 2, 4)
    w1 = _weak(_normal(rng, 8, 3, 3, 3), dead_in)
    wt = _weak(_unread(_normal(rng, 8, 6, 2, 2), dead_in, axis=0), dead_out, axis=1)
    bt = _normal(rng, 6)
    w3 = _unread(_normal(rng, 3, 6, 3, 3), dead_out)
    m = h.model([_conv(h, "x", "w1", None, "c1", "conv1"), h.node("Relu", ["c1"], ["r1"]),
                 h.node("ConvTranspose", ["r1", "wt", "bt"], ["t"], strides=[2, 2], name="up"),
                 h.node("Relu", ["t"], ["rt"]), _conv(h, "rt", "w3", None, "y", "conv3")],
                [("x", F32, [1, 3, 8, 8])], [("y", F32, [1, 3, 16, 16])],
                [h.init("w1", w1), h.init("wt", wt), h.init("bt", bt), h.init("w3", w3)])
    _check_exact(m, "ratio=0.5", {("conv1", 1): _drop(w1, dead_in),
                                  ("up", 1): _drop(_drop(wt, dead_in, 0), dead_out, 1),
                                  ("up", 2): _drop(bt, dead_out), ("conv3", 1): _drop(w3, dead_out, 1)},
                 mode=mode)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_global_pool_flatten_gemm(h, trans_b, mode):
    rng = _rng(12 + trans_b)
    dead = (1, 3, 4, 6)
    w1 = _weak(_normal(rng, 8, 3, 3, 3), dead)
    k_axis = 1 if trans_b else 0
    wf = _unread(_normal(rng, *((5, 8) if trans_b else (8, 5))), dead, axis=k_axis)
    bf = _normal(rng, 5)
    m = h.model([_conv(h, "x", "w1", None, "c1", "conv1"), h.node("Relu", ["c1"], ["r1"]),
                 h.node("GlobalAveragePool", ["r1"], ["gap"]), h.node("Flatten", ["gap"], ["f"]),
                 h.node("Gemm", ["f", "wf", "bf"], ["y"], transB=trans_b, name="fc")],
                [("x", F32, [1, 3, 8, 8])], [("y", F32, [1, 5])],
                [h.init("w1", w1), h.init("wf", wf), h.init("bf", bf)])
    _check_exact(m, "ratio=0.5", {("conv1", 1): _drop(w1, dead), ("fc", 1): _drop(wf, dead, k_axis),
                                  ("fc", 2): bf}, mode=mode)


def test_flatten_with_spatial_dims_removes_feature_blocks(h, mode):
    """conv1 (4 ch, 4x4) -> Flatten -> Gemm over 64 features: channel c owns features
    16c .. 16c+15."""
    rng = _rng(14)
    dead = (0, 2)
    features = [f for c in dead for f in range(16 * c, 16 * c + 16)]
    w1 = _weak(_normal(rng, 4, 3, 3, 3), dead)
    wf = _unread(_normal(rng, 64, 5), features, axis=0)
    m = h.model([_conv(h, "x", "w1", None, "c1", "conv1"), h.node("Relu", ["c1"], ["r1"]),
                 h.node("Flatten", ["r1"], ["f"]), h.node("Gemm", ["f", "wf"], ["y"], name="fc")],
                [("x", F32, [1, 3, 4, 4])], [("y", F32, [1, 5])], [h.init("w1", w1), h.init("wf", wf)])
    _check_exact(m, "ratio=0.5", {("conv1", 1): _drop(w1, dead), ("fc", 1): _drop(wf, features, 0)},
                 mode=mode)


def test_matmul_producer_and_consumer_on_sequence(h, mode):
    """[N, T, D] tokens: MatMul (6 -> 8) + per-feature bias -> Relu -> MatMul (8 -> 4)."""
    rng = _rng(15)
    dead = (0, 2, 3, 7)
    w1 = _weak(_normal(rng, 6, 8), dead, axis=1)
    b1 = _normal(rng, 8)
    w2 = _unread(_normal(rng, 8, 4), dead, axis=0)
    m = h.model([h.node("MatMul", ["x", "w1"], ["m1"], name="fc1"),
                 h.node("Add", ["m1", "b1"], ["a1"], name="bias1"), h.node("Relu", ["a1"], ["r1"]),
                 h.node("MatMul", ["r1", "w2"], ["y"], name="fc2")],
                [("x", F32, [2, 5, 6])], [("y", F32, [2, 5, 4])],
                [h.init("w1", w1), h.init("b1", b1), h.init("w2", w2)])
    _check_exact(m, "ratio=0.5", {("fc1", 1): _drop(w1, dead, 1), ("bias1", 1): _drop(b1, dead),
                                  ("fc2", 1): _drop(w2, dead, 0)}, mode=mode)


@pytest.mark.parametrize("bias_shape", [(8,), (1, 8)])
def test_gemm_mlp_producer_and_consumer(h, mode, bias_shape):
    """Gemm (transB=1, bias [8] or [1, 8]) -> Relu -> Gemm: the producer's bias is sliced on
    its last axis."""
    rng = _rng(28)
    dead = (2, 3, 5, 7)
    w1 = _weak(_normal(rng, 8, 6), dead, axis=0)  # transB=1: [N, K]
    b1 = _normal(rng, *bias_shape)
    w2 = _unread(_normal(rng, 8, 4), dead, axis=0)
    m = h.model([h.node("Gemm", ["x", "w1", "b1"], ["g1"], transB=1, name="fc1"),
                 h.node("Relu", ["g1"], ["r1"]), h.node("Gemm", ["r1", "w2"], ["y"], name="fc2")],
                [("x", F32, [4, 6])], [("y", F32, [4, 4])],
                [h.init("w1", w1), h.init("b1", b1), h.init("w2", w2)])
    _check_exact(m, "ratio=0.5", {("fc1", 1): _drop(w1, dead, 0),
                                  ("fc1", 2): _drop(b1, dead, len(bias_shape) - 1),
                                  ("fc2", 1): _drop(w2, dead, 0)}, mode=mode)


def test_conv1d_chain(h, mode):
    rng = _rng(29)
    dead = (0, 1, 4, 6)
    w1 = _weak(_normal(rng, 8, 3, 5), dead)
    w2 = _unread(_normal(rng, 3, 8, 3), dead)
    m = h.model([h.node("Conv", ["x", "w1"], ["c1"], pads=[2, 2], name="conv1"),
                 h.node("Relu", ["c1"], ["r1"]),
                 h.node("Conv", ["r1", "w2"], ["y"], strides=[2], name="conv2")],
                [("x", F32, [1, 3, 32])], [("y", F32, [1, 3, 15])], [h.init("w1", w1), h.init("w2", w2)])
    _check_exact(m, "ratio=0.5", {("conv1", 1): _drop(w1, dead), ("conv2", 1): _drop(w2, dead, 1)}, mode=mode)


def test_per_channel_qdq_pair_between_convs(h, mode):
    rng = _rng(16)
    dead = (1, 2, 3, 6)
    w1 = _weak(_normal(rng, 8, 3, 3, 3), dead)
    w2 = _unread(_normal(rng, 3, 8, 3, 3), dead)
    scale = rng.uniform(0.02, 0.05, 8).astype(np.float32)
    zp = rng.integers(-3, 4, 8).astype(np.int8)
    m = h.model([_conv(h, "x", "w1", None, "c1", "conv1"),
                 h.node("QuantizeLinear", ["c1", "scale", "zp"], ["q"], axis=1, name="q"),
                 h.node("DequantizeLinear", ["q", "scale", "zp"], ["dq"], axis=1, name="dq"),
                 _conv(h, "dq", "w2", None, "y", "conv2")],
                [("x", F32, [1, 3, 8, 8])], [("y", F32, [1, 3, 8, 8])],
                [h.init("w1", w1), h.init("w2", w2), h.init("scale", scale), h.init("zp", zp)])
    _check_exact(m, "ratio=0.5", {("conv1", 1): _drop(w1, dead), ("conv2", 1): _drop(w2, dead, 1),
                                  ("q", 1): _drop(scale, dead), ("q", 2): _drop(zp, dead),
                                  ("dq", 1): _drop(scale, dead), ("dq", 2): _drop(zp, dead)}, mode=mode)


def test_resize_maxpool_pad_in_between(h, mode):
    rng = _rng(17)
    dead = (0, 4, 5, 6)
    w1 = _weak(_normal(rng, 8, 3, 3, 3), dead)
    w2 = _unread(_normal(rng, 3, 8, 3, 3), dead)
    inits = [h.init("w1", w1), h.init("w2", w2),
             h.init("scales", np.array([1, 1, 2, 2], np.float32)),
             h.init("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))]
    m = h.model([_conv(h, "x", "w1", None, "c1", "conv1"), h.node("Relu", ["c1"], ["r1"]),
                 h.node("Resize", ["r1", "", "scales"], ["up"], mode="nearest"),
                 h.node("MaxPool", ["up"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
                 h.node("Pad", ["p", "pads"], ["padded"]),
                 _conv(h, "padded", "w2", None, "y", "conv2", pads=[0, 0, 0, 0])],
                [("x", F32, [1, 3, 8, 8])], [("y", F32, [1, 3, 8, 8])], inits)
    _check_exact(m, "ratio=0.5", {("conv1", 1): _drop(w1, dead), ("conv2", 1): _drop(w2, dead, 1)}, mode=mode)


def test_split_without_sizes_gets_explicit_sizes(h, mode):
    """An equal Split (no sizes input) that loses channels unevenly needs explicit sizes."""
    rng = _rng(18)
    dead = (0, 1, 6)
    w1 = _weak(_normal(rng, 8, 3, 3, 3), dead)
    wa = _unread(_normal(rng, 3, 4, 3, 3), (0, 1))
    wb = _unread(_normal(rng, 3, 4, 3, 3), (2,))
    m = h.model([_conv(h, "x", "w1", None, "c1", "conv1"), h.node("Relu", ["c1"], ["r1"]),
                 h.node("Split", ["r1"], ["p", "q"], axis=1, name="split"),
                 _conv(h, "p", "wa", None, "a", "conv_a"), _conv(h, "q", "wb", None, "b", "conv_b"),
                 h.node("Add", ["a", "b"], ["y"])],
                [("x", F32, [1, 3, 8, 8])], [("y", F32, [1, 3, 8, 8])],
                [h.init("w1", w1), h.init("wa", wa), h.init("wb", wb)], opset=13)
    res, _ = _check_exact(m, "ratio=0.375", {("conv1", 1): _drop(w1, dead)}, mode=mode)
    np.testing.assert_array_equal(_input_const(res.model, "split", 1), [2, 3])


def test_resize_with_sizes_input(h, mode):
    rng = _rng(19)
    dead = (0, 4, 5, 6)
    w1 = _weak(_normal(rng, 8, 3, 3, 3), dead)
    w2 = _unread(_normal(rng, 3, 8, 3, 3), dead)
    m = h.model([_conv(h, "x", "w1", None, "c1", "conv1"),
                 h.node("Resize", ["c1", "", "", "sizes"], ["up"], mode="nearest", name="resize"),
                 _conv(h, "up", "w2", None, "y", "conv2")],
                [("x", F32, [1, 3, 8, 8])], [("y", F32, [1, 3, 16, 16])],
                [h.init("w1", w1), h.init("w2", w2), h.init("sizes", np.array([1, 8, 16, 16], np.int64))])
    res, _ = _check_exact(m, "ratio=0.5", {("conv1", 1): _drop(w1, dead), ("conv2", 1): _drop(w2, dead, 1)},
                          mode=mode)
    assert _input_const(res.model, "resize", 3).tolist() == [1, 4, 16, 16]


@pytest.mark.parametrize("target, rewritten", [([1, 64], [1, 32]), ([-1, 64], [-1, 32]), ([1, -1], [1, -1])])
def test_reshape_to_features_rewrites_a_literal_size(h, mode, target, rewritten):
    """conv1 (4 ch, 4x4) -> Reshape [N, C*H*W] -> Gemm: like Flatten, and a literal feature
    count in the shape constant follows the removal."""
    rng = _rng(22)
    dead = (0, 2)
    features = [f for c in dead for f in range(16 * c, 16 * c + 16)]
    w1 = _weak(_normal(rng, 4, 3, 3, 3), dead)
    wf = _unread(_normal(rng, 64, 5), features, axis=0)
    m = h.model([_conv(h, "x", "w1", None, "c1", "conv1"), h.node("Relu", ["c1"], ["r1"]),
                 h.node("Reshape", ["r1", "shape"], ["f"], name="reshape"),
                 h.node("Gemm", ["f", "wf"], ["y"], name="fc")],
                [("x", F32, [1, 3, 4, 4])], [("y", F32, [1, 5])],
                [h.init("w1", w1), h.init("wf", wf), h.init("shape", np.array(target, np.int64))])
    res, _ = _check_exact(m, "ratio=0.5", {("conv1", 1): _drop(w1, dead), ("fc", 1): _drop(wf, features, 0)},
                          mode=mode)
    assert _input_const(res.model, "reshape", 1).tolist() == rewritten


@pytest.mark.parametrize("layout", ["reshape_transpose", "nhwc"])
def test_channels_moved_to_the_last_axis_feed_a_matmul(h, mode, layout):
    """[N,C,H,W] -> Reshape [N,C,HW] -> Transpose [N,HW,C] (or Transpose to NHWC) -> MatMul
    over the channels."""
    rng = _rng(23)
    dead = (1, 2, 5, 6)
    w1 = _weak(_normal(rng, 8, 3, 3, 3), dead)
    wm = _unread(_normal(rng, 8, 5), dead, axis=0)
    inits = [h.init("w1", w1), h.init("wm", wm)]
    if layout == "nhwc":
        moves = [h.node("Transpose", ["c1"], ["t"], perm=[0, 2, 3, 1])]
        y_shape = [1, 8, 8, 5]
    else:
        moves = [h.node("Reshape", ["c1", "shape"], ["r"], name="reshape"),
                 h.node("Transpose", ["r"], ["t"], perm=[0, 2, 1])]
        inits.append(h.init("shape", np.array([1, 8, 64], np.int64)))
        y_shape = [1, 64, 5]
    m = h.model([_conv(h, "x", "w1", None, "c1", "conv1"), *moves,
                 h.node("MatMul", ["t", "wm"], ["y"], name="fc")],
                [("x", F32, [1, 3, 8, 8])], [("y", F32, y_shape)], inits)
    res, _ = _check_exact(m, "ratio=0.5", {("conv1", 1): _drop(w1, dead), ("fc", 1): _drop(wm, dead, 0)},
                          mode=mode)
    if layout != "nhwc":
        assert _input_const(res.model, "reshape", 1).tolist() == [1, 4, 64]


@pytest.mark.parametrize("op", ["PRelu", "Sub", "Div"])
def test_other_per_channel_binary_constants(h, mode, op):
    rng = _rng(24)
    dead = (0, 3, 4, 7)
    w1 = _weak(_normal(rng, 8, 3, 3, 3), dead)
    w2 = _unread(_normal(rng, 3, 8, 3, 3), dead)
    k = np.abs(_normal(rng, 8, 1, 1)) + np.float32(0.5)
    # Sub with the constant first: the channel axis of the *first* operand is sliced
    ins, slot = {"PRelu": (["c1", "k"], 1), "Sub": (["k", "c1"], 0), "Div": (["c1", "k"], 1)}[op]
    m = h.model([_conv(h, "x", "w1", None, "c1", "conv1"), h.node(op, ins, ["mid"], name="mid"),
                 _conv(h, "mid", "w2", None, "y", "conv2")],
                [("x", F32, [1, 3, 8, 8])], [("y", F32, [1, 3, 8, 8])],
                [h.init("w1", w1), h.init("w2", w2), h.init("k", k)])
    _check_exact(m, "ratio=0.5", {("conv1", 1): _drop(w1, dead), ("mid", slot): _drop(k, dead),
                                  ("conv2", 1): _drop(w2, dead, 1)}, mode=mode)


def test_concat_of_a_tensor_with_itself(h, mode):
    rng = _rng(25)
    dead = (1, 6)
    w1 = _weak(_normal(rng, 8, 3, 3, 3), dead)
    twice = [1, 6, 9, 14]  # both copies of each removed channel
    w2 = _unread(_normal(rng, 3, 16, 3, 3), twice)
    m = h.model([_conv(h, "x", "w1", None, "c1", "conv1"), h.node("Concat", ["c1", "c1"], ["cc"], axis=1),
                 _conv(h, "cc", "w2", None, "y", "conv2")],
                [("x", F32, [1, 3, 8, 8])], [("y", F32, [1, 3, 8, 8])], [h.init("w1", w1), h.init("w2", w2)])
    _check_exact(m, "ratio=0.25", {("conv1", 1): _drop(w1, dead), ("conv2", 1): _drop(w2, twice, 1)},
                 mode=mode)


def test_concat_with_a_graph_input_keeps_the_input_channels(h, mode):
    rng = _rng(26)
    dead = (1, 3, 4, 6)
    w1 = _weak(_normal(rng, 8, 3, 3, 3), dead)
    consumer_dead = [3 + c for c in dead]  # after the input's 3 channels
    w2 = _unread(_normal(rng, 3, 11, 3, 3), consumer_dead)
    m = h.model([_conv(h, "x", "w1", None, "c1", "conv1"), h.node("Concat", ["x", "c1"], ["cc"], axis=1),
                 _conv(h, "cc", "w2", None, "y", "conv2")],
                [("x", F32, [1, 3, 8, 8])], [("y", F32, [1, 3, 8, 8])], [h.init("w1", w1), h.init("w2", w2)])
    _check_exact(m, "ratio=0.5", {("conv1", 1): _drop(w1, dead), ("conv2", 1): _drop(w2, consumer_dead, 1)},
                 mode=mode)


def test_unnamed_nodes_are_pruned_and_costed(h):
    m, w = _chain(h)
    for n in m.graph.node:
        n.name = ""
    res, rec = _prune(m, "ratio=0.5")
    _assert_same_outputs(m, res.model)
    weights = {n.output[0]: _const_inputs(res.model)[n.input[1]] for n in res.model.graph.node
               if n.op_type == "Conv"}
    assert weights["c1"].shape == (4, 3, 3, 3) and weights["y"].shape == (4, 4, 3, 3)
    assert 0 < rec.stats["macs_after"] < rec.stats["macs_before"]
    assert rec.details["groups"][0]["producers"] == ["c1"]  # reports name a node by its output


def test_ir3_model_drops_the_replaced_initializers(h, mode):
    """Below IR 4 every initializer is also listed as a graph input, and is still a constant
    (onnxruntime refuses feeds for it): the sliced originals must go, inputs entry included,
    or the "pruned" file holds both the old and the new weights."""
    dead = (1, 4, 6, 7)
    m, w = _chain(h, dead=dead, opset=13)
    m.ir_version = 3
    del m.graph.value_info[:]
    m.graph.input.extend(h.vi(t.name, t.data_type, list(t.dims)) for t in m.graph.initializer)
    res, rec = _check_exact(m, "ratio=0.5", {("conv1", 1): _drop(w["w1"], dead),
                                             ("conv2", 1): _drop(w["w2"], dead, 1)}, mode=mode)
    size = sum(int(np.prod(t.dims)) for t in res.model.graph.initializer)
    assert size == rec.stats["params_after"]
    inputs = {i.name for i in res.model.graph.input}
    assert {t.name for t in res.model.graph.initializer} <= inputs  # IR 3 lists them all


def test_overridable_weight_is_not_treated_as_a_constant(h):
    """From IR 4 on, an initializer that is also a graph input is only a default: a caller may
    feed another weight (passes/_util.is_const). Pruning must not bake the default in."""
    m, w = _chain(h)
    m.graph.input.append(h.vi("w1", F32, [8, 3, 3, 3]))
    onnx.checker.check_model(m, full_check=True)
    res, _ = _prune(m, "ratio=0.5")
    onnx.checker.check_model(res.model, full_check=True)
    assert [i.name for i in res.model.graph.input] == ["x", "w1"]
    assert _node(res.model, "conv1").input[1] == "w1", "conv1 no longer reads the overridable w1"
    for seed in (0, 1):  # random x and a fed w1 (the default times a random factor)
        feeds = random_feeds(m, seed, override_initializers=True)
        assert set(feeds) == {"x", "w1"}
        for ref, got in zip(_run(m, feeds), _run(res.model, feeds), strict=True):
            assert _rel(ref, got) <= 1e-5


# ---------------------------------------------------------------------------------------
# 3. refusals
# ---------------------------------------------------------------------------------------


def _refused(rec, producer: str) -> list[str]:
    """The reasons the report gives for keeping `producer`'s channels."""
    return [r for entry in rec.details.get("refused", []) if producer in entry["producers"]
            for r in entry["reasons"]]


def test_conv_feeding_a_graph_output_keeps_its_channels(h):
    m, w = _chain(h)
    # conv1's output is also a graph output: none of its channels may go
    m.graph.output.append(h.vi("c1", F32, [1, 8, 8, 8]))
    onnx.checker.check_model(m, full_check=True)
    res, rec = _prune(m, "ratio=0.5")
    np.testing.assert_array_equal(_input_const(res.model, "conv1", 1), w["w1"])
    np.testing.assert_array_equal(_input_const(res.model, "conv2", 1), w["w2"])
    assert any("graph output" in r for r in _refused(rec, "conv1"))
    assert rec.stats["refused_groups"] >= 1 and rec.stats["refused_classes"] >= 8
    assert not rec.stats.get("channels_removed")
    _assert_same_outputs(m, res.model, rel=0.0)


def test_channel_shuffle_is_refused_but_the_rest_is_pruned(h):
    """conv_a (6) -> conv1 (8) -> Reshape [1,2,4,8,8] -> Transpose -> Reshape [1,8,8,8] -> conv2:
    conv1's channels are regrouped and stay; conv_a's are still pruned."""
    rng = _rng(20)
    dead_a = (1, 4, 5)
    wa = _weak(_normal(rng, 6, 3, 3, 3), dead_a)
    w1 = _unread(_normal(rng, 8, 6, 3, 3), dead_a)
    w2 = _normal(rng, 3, 8, 3, 3)
    m = h.model([_conv(h, "x", "wa", None, "a", "conv_a"), h.node("Relu", ["a"], ["ra"]),
                 _conv(h, "ra", "w1", None, "c1", "conv1"),
                 h.node("Reshape", ["c1", "shape5"], ["r5"]),
                 h.node("Transpose", ["r5"], ["t5"], perm=[0, 2, 1, 3, 4]),
                 h.node("Reshape", ["t5", "shape4"], ["shuffled"]),
                 _conv(h, "shuffled", "w2", None, "y", "conv2")],
                [("x", F32, [1, 3, 8, 8])], [("y", F32, [1, 3, 8, 8])],
                [h.init("wa", wa), h.init("w1", w1), h.init("w2", w2),
                 h.init("shape5", np.array([1, 2, 4, 8, 8], np.int64)),
                 h.init("shape4", np.array([1, 8, 8, 8], np.int64))])
    onnx.checker.check_model(m, full_check=True)
    res, rec = _prune(m, "ratio=0.5")
    onnx.checker.check_model(res.model, full_check=True)
    _assert_same_outputs(m, res.model)
    np.testing.assert_array_equal(_input_const(res.model, "conv1", 1), _drop(w1, dead_a, 1))
    np.testing.assert_array_equal(_input_const(res.model, "conv2", 1), w2)
    np.testing.assert_array_equal(_input_const(res.model, "conv_a", 1), _drop(wa, dead_a))
    assert any("splits or regroups" in r for r in _refused(rec, "conv1")), rec.details.get("refused")
    assert rec.stats["groups_pruned"] == 1 and rec.stats["channels_removed"] == 3


@pytest.mark.parametrize("middle, reason", [
    ("LRN", "LRN"), ("Softmax", "normalizes across channels"), ("Custom", "custom op")])
def test_channel_mixing_ops_are_refused(h, middle, reason):
    rng = _rng(21)
    w1, w2 = _normal(rng, 8, 3, 3, 3), _normal(rng, 3, 8, 3, 3)
    if middle == "LRN":
        mid = h.node("LRN", ["c1"], ["mid"], size=3)
    elif middle == "Softmax":
        mid = h.node("Softmax", ["c1"], ["mid"], axis=1)
    else:
        mid = h.node("Mix", ["c1"], ["mid"], domain="com.example")
    extra = [("com.example", 1)] if middle == "Custom" else []
    m = h.model([_conv(h, "x", "w1", None, "c1", "conv1"), mid, _conv(h, "mid", "w2", None, "y", "conv2")],
                [("x", F32, [1, 3, 8, 8])], [("y", F32, [1, 3, 8, 8])],
                [h.init("w1", w1), h.init("w2", w2)], extra_opsets=extra,
                value_info=[h.vi("mid", F32, [1, 8, 8, 8])])
    res, rec = _prune(m, "ratio=0.5")
    np.testing.assert_array_equal(_input_const(res.model, "conv1", 1), w1)
    np.testing.assert_array_equal(_input_const(res.model, "conv2", 1), w2)
    assert any(reason in r for r in _refused(rec, "conv1")), rec.details.get("refused")
    assert not rec.stats.get("channels_removed")
    res.graph.verify()
    if middle != "Custom":  # onnxruntime does not know the custom op
        onnx.checker.check_model(res.model, full_check=True)
        _assert_same_outputs(m, res.model, rel=0.0)


def _refusal_case(h, kind: str):
    """conv1 (8) -> <kind> -> conv2 -> y; returns (model, conv1 weight, expected reason)."""
    rng = _rng(27)
    w1 = _normal(rng, 8, 3, 3, 3)
    inits = [h.init("w1", w1)]
    x_shape = [1, 3, 8, 8]
    if kind == "residual_with_input":  # x + conv1(x): x's channels come from no producer
        x_shape = [1, 8, 8, 8]
        w1 = _normal(rng, 8, 8, 3, 3)
        inits = [h.init("w1", w1)]
        mid = [h.node("Add", ["x", "c1"], ["mid"])]
        reason, c_mid = "not tracked", 8
    elif kind == "slice_with_step":
        mid = [h.node("Slice", ["c1", "st", "en", "ax", "sp"], ["mid"])]
        inits += [h.init(k, np.array([v], np.int64)) for k, v in
                  dict(st=0, en=8, ax=1, sp=2).items()]
        reason, c_mid = "steps through the channels", 4
    elif kind == "depthwise_multiplier_2":
        mid = [_conv(h, "c1", "wd", None, "mid", "dw", group=8)]
        inits.append(h.init("wd", _normal(rng, 16, 1, 3, 3)))
        reason, c_mid = "channel multiplier", 16
    elif kind == "reduce_over_channels":  # a spatial attention map: mean over the channels
        mid = [h.node("ReduceMean", ["c1"], ["att"], axes=[1], keepdims=1),
               h.node("Mul", ["c1", "att"], ["mid"])]
        reason, c_mid = "reduces over the channels", 8
    else:
        raise AssertionError(kind)
    inits.append(h.init("w2", _normal(rng, 3, c_mid, 3, 3)))
    m = h.model([_conv(h, "x", "w1", None, "c1", "conv1"), *mid, _conv(h, "mid", "w2", None, "y", "conv2")],
                [("x", F32, x_shape)], [("y", F32, [1, 3, 8, 8])], inits)
    return m, w1, reason


@pytest.mark.parametrize("kind", ["residual_with_input", "slice_with_step", "depthwise_multiplier_2",
                                  "reduce_over_channels"])
def test_unprovable_couplings_keep_the_producer_whole(h, kind):
    m, w1, reason = _refusal_case(h, kind)
    onnx.checker.check_model(m, full_check=True)
    res, rec = _prune(m, "ratio=0.5")
    onnx.checker.check_model(res.model, full_check=True)
    np.testing.assert_array_equal(_input_const(res.model, "conv1", 1), w1)
    assert any(reason in r for r in _refused(rec, "conv1")), rec.details.get("refused")
    if rec.stats.get("channels_removed"):  # another producer (the depthwise conv's outputs) went
        feeds = random_feeds(m, 0)
        assert [a.shape for a in _run(m, feeds)] == [a.shape for a in _run(res.model, feeds)]
    else:
        _assert_same_outputs(m, res.model, rel=0.0)


# ---------------------------------------------------------------------------------------
# 4. options
# ---------------------------------------------------------------------------------------


def _wide_chain(h, c_mid: int, seed: int = 30):
    rng = _rng(seed)
    w1 = _normal(rng, c_mid, 3, 3, 3)
    w2 = _normal(rng, 3, c_mid, 3, 3)
    return h.model([_conv(h, "x", "w1", None, "c1", "conv1"), h.node("Relu", ["c1"], ["r1"]),
                    _conv(h, "r1", "w2", None, "y", "conv2")],
                   [("x", F32, [1, 3, 8, 8])], [("y", F32, [1, 3, 8, 8])],
                   [h.init("w1", w1), h.init("w2", w2)])


@pytest.mark.parametrize("align, kept", [(1, 15), (8, 16), (16, 16)])
def test_align_keeps_a_multiple(h, align, kept):
    # 24 channels, ratio 0.4: 9 asked, 15 left; alignment rounds towards keeping more
    res, _ = _prune(_wide_chain(h, 24), f"ratio=0.4, align={align}")
    assert _input_const(res.model, "conv1", 1).shape[0] == kept
    assert _input_const(res.model, "conv2", 1).shape[1] == kept


def test_align_larger_than_the_removal_keeps_everything(h):
    res, rec = _prune(_wide_chain(h, 24), "ratio=0.2, align=8")  # 4 asked: 20 -> rounds to 24
    assert _input_const(res.model, "conv1", 1).shape[0] == 24
    assert not rec.stats.get("channels_removed")


@pytest.mark.parametrize("min_channels, kept", [(1, 1), (3, 3), (8, 8)])
def test_min_channels_bounds_the_kept_count(h, min_channels, kept):
    res, _ = _prune(_wide_chain(h, 8), f"ratio=0.9, min_channels={min_channels}")
    assert _input_const(res.model, "conv1", 1).shape[0] == kept


def _strong_and_weak(h):
    """conv1: 8 filters of equal norm; conv2: 4 filters of norm ~1e-3 and 4 of norm 1. A global
    threshold on mean-normalized scores takes the 4 weak filters of conv2 and nothing of conv1;
    per group both lose a quarter."""
    rng = _rng(31)
    w1 = _normal(rng, 8, 3, 3, 3)
    w1 /= np.linalg.norm(w1.reshape(8, -1), axis=1)[:, None, None, None]
    w2 = _normal(rng, 8, 8, 3, 3)
    w2 /= np.linalg.norm(w2.reshape(8, -1), axis=1)[:, None, None, None]
    w2 = _weak(w2, (0, 2, 5, 7))
    w3 = _normal(rng, 3, 8, 3, 3)
    return h.model([_conv(h, "x", "w1", None, "c1", "conv1"), h.node("Relu", ["c1"], ["r1"]),
                    _conv(h, "r1", "w2", None, "c2", "conv2"), h.node("Relu", ["c2"], ["r2"]),
                    _conv(h, "r2", "w3", None, "y", "conv3")],
                   [("x", F32, [1, 3, 8, 8])], [("y", F32, [1, 3, 8, 8])],
                   [h.init("w1", w1), h.init("w2", w2), h.init("w3", w3)])


def test_global_threshold_differs_from_per_group(h):
    m = _strong_and_weak(h)
    per_group, _ = _prune(m, "ratio=0.25")
    global_, rec = _prune(m, "ratio=0.25, global=true")
    assert _input_const(per_group.model, "conv1", 1).shape[0] == 6
    assert _input_const(per_group.model, "conv2", 1).shape[0] == 6
    assert _input_const(global_.model, "conv1", 1).shape[0] == 8
    w2 = _const_inputs(m)["w2"]
    np.testing.assert_array_equal(_input_const(global_.model, "conv2", 1), _drop(w2, (0, 2, 5, 7)))
    assert rec.stats["groups_pruned"] == 1


def _dead_channel_net(h):
    """conv1 (8) -> BN -> Relu -> conv2. Channel 5 is dead: its filter is zero, its BN gamma
    tiny and beta -1, so after the Relu it is exactly zero on every input."""
    rng = _rng(32)
    w1 = _normal(rng, 8, 3, 3, 3)
    w1[5] = 0.0
    gamma = rng.uniform(0.5, 1.5, 8).astype(np.float32)
    gamma[5] = 0.01
    beta = rng.uniform(0.2, 0.8, 8).astype(np.float32)
    beta[5] = -1.0
    mean, var = np.zeros(8, np.float32), np.ones(8, np.float32)
    w2 = _normal(rng, 3, 8, 3, 3)
    m = h.model([_conv(h, "x", "w1", None, "c1", "conv1"),
                 h.node("BatchNormalization", ["c1", "g", "beta", "mu", "var"], ["n1"], name="bn"),
                 h.node("Relu", ["n1"], ["r1"]), _conv(h, "r1", "w2", None, "y", "conv2")],
                [("x", F32, [1, 3, 8, 8])], [("y", F32, [1, 3, 8, 8])],
                [h.init("w1", w1), h.init("w2", w2), h.init("g", gamma), h.init("beta", beta),
                 h.init("mu", mean), h.init("var", var)])
    return m, w1, w2


@pytest.mark.parametrize("criterion", ["l1", "l2", "bn_gamma", "mean_activation", "apoz", "data"])
def test_every_criterion_removes_the_dead_channel_first(h, criterion):
    m, w1, w2 = _dead_channel_net(h)
    res, rec = _prune(m, f'ratio=0.125, criterion="{criterion}", reconstruct=false', calib=_calib())
    np.testing.assert_array_equal(_input_const(res.model, "conv1", 1), _drop(w1, (5,)))
    np.testing.assert_array_equal(_input_const(res.model, "conv2", 1), _drop(w2, (5,), 1))
    assert rec.stats["channels_removed"] == 1
    _assert_same_outputs(m, res.model, feeds=list(_calib(3, seed=9)))  # the channel was always zero


@pytest.mark.parametrize("criterion", ["mean_activation", "apoz", "data"])
def test_data_criteria_see_the_activations_not_the_filters(h, criterion):
    """A channel with the largest filter whose activation is always zero (a bias driving it
    below the Relu) is removed by the data-aware criteria, while L2 keeps it."""
    rng = _rng(33)
    w1 = _normal(rng, 8, 3, 3, 3)
    w1[2] *= 5.0  # the largest filter by far
    b1 = rng.uniform(0.5, 1.0, 8).astype(np.float32)
    b1[2] = -1000.0  # ... but its activation is zero on every input
    w2 = _normal(rng, 3, 8, 3, 3)
    m = h.model([_conv(h, "x", "w1", "b1", "c1", "conv1"), h.node("Relu", ["c1"], ["r1"]),
                 _conv(h, "r1", "w2", None, "y", "conv2")],
                [("x", F32, [1, 3, 8, 8])], [("y", F32, [1, 3, 8, 8])],
                [h.init("w1", w1), h.init("b1", b1), h.init("w2", w2)])
    data_res, _ = _prune(m, f'ratio=0.125, criterion="{criterion}", reconstruct=false', calib=_calib())
    np.testing.assert_array_equal(_input_const(data_res.model, "conv1", 1), _drop(w1, (2,)))
    l2_res, _ = _prune(m, 'ratio=0.125, criterion="l2", reconstruct=false', calib=_calib())
    kept_by_l2 = _input_const(l2_res.model, "conv1", 1)
    assert kept_by_l2.shape[0] == 7 and any(np.array_equal(row, w1[2]) for row in kept_by_l2)


def test_bn_gamma_without_batchnorm_falls_back_to_l2_and_warns(h):
    m, w = _chain(h)
    res, rec = _prune(m, 'ratio=0.5, criterion="bn_gamma"')
    assert rec.stats["skipped_bn_groups"] == 1
    assert any("BatchNormalization" in warning for warning in res.report["warnings"])
    np.testing.assert_array_equal(_input_const(res.model, "conv1", 1), _drop(w["w1"], (1, 4, 6, 7)))


# ---------------------------------------------------------------------------------------
# 5. reconstruction and usage errors
# ---------------------------------------------------------------------------------------


def _correlated_chain(h):
    """conv1 (8) -> conv2 (8) -> Relu -> conv3: conv1's filters 4..7 are nearly multiples of
    0..3, so the channels that go are largely predictable from the ones that stay."""
    rng = _rng(40)
    base = _normal(rng, 4, 3, 3, 3)
    w1 = np.concatenate([base, base * np.float32(0.8) + _normal(rng, 4, 3, 3, 3) * np.float32(0.15)])
    b1 = _normal(rng, 8)
    w2, w3 = _normal(rng, 8, 8, 3, 3), _normal(rng, 3, 8, 3, 3)
    return h.model([_conv(h, "x", "w1", "b1", "c1", "conv1"),
                    _conv(h, "c1", "w2", None, "c2", "conv2"), h.node("Relu", ["c2"], ["r2"]),
                    _conv(h, "r2", "w3", None, "y", "conv3")],
                   [("x", F32, [1, 3, 8, 8])], [("y", F32, [1, 3, 8, 8])],
                   [h.init("w1", w1), h.init("b1", b1), h.init("w2", w2), h.init("w3", w3)])


def test_reconstruction_lowers_the_error_on_held_out_inputs(h):
    m = _correlated_chain(h)
    calib = _calib(16, seed=41)
    held_out = list(_calib(4, seed=42))
    plain, plain_rec = _prune(m, "ratio=0.375, reconstruct=false", calib=calib)
    refit, refit_rec = _prune(m, "ratio=0.375, reconstruct=true", calib=calib)
    for name in ("conv1", "conv2"):  # the same channels went
        assert _input_const(plain.model, name, 1).shape == _input_const(refit.model, name, 1).shape
    assert refit_rec.stats.get("consumers_refit", 0) >= 1 and not plain_rec.stats.get("consumers_refit")

    def error(out):
        return np.mean([_rel(_run(m, f)[0], _run(out, f)[0]) for f in held_out])

    e_plain, e_refit = error(plain.model), error(refit.model)
    assert e_refit < 0.8 * e_plain, (e_refit, e_plain)


CONSUMER_GEOMETRIES = {
    "same_upper_stride2": dict(auto_pad="SAME_UPPER", strides=[2, 2]),
    "same_lower_stride2": dict(auto_pad="SAME_LOWER", strides=[2, 2]),
    "asymmetric_pads_dilated": dict(pads=[2, 1, 0, 1], dilations=[2, 2], strides=[1, 2]),
    "valid": dict(auto_pad="VALID"),
}


@pytest.mark.parametrize("geometry", list(CONSUMER_GEOMETRIES))
def test_reconstruction_is_the_least_squares_optimum_of_the_last_layer(h, geometry):
    """x -> conv1 (8) -> Relu -> conv2 (odd geometry) -> y. conv2's output is the model's, so
    its re-fit minimizes the output error on the calibration data (8x8 inputs: SAME padding
    with stride 2 is uneven, so UPPER and LOWER differ): the error must equal the
    least-squares optimum computed independently (patches taken by onnxruntime itself, via a
    Conv with one-hot filters), and beat plain pruning."""
    rng = _rng(43)
    kw = CONSUMER_GEOMETRIES[geometry]
    w1, w2, b2 = _normal(rng, 8, 3, 3, 3), _normal(rng, 3, 8, 3, 3), _normal(rng, 3)
    m = h.model([_conv(h, "x", "w1", None, "c1", "conv1"), h.node("Relu", ["c1"], ["r1"]),
                 h.node("Conv", ["r1", "w2", "b2"], ["y"], name="conv2", **kw)],
                [("x", F32, [1, 3, 8, 8])], [("y", F32, [1, 3, None, None])],
                [h.init("w1", w1), h.init("w2", w2), h.init("b2", b2)])
    m = onnx.shape_inference.infer_shapes(m)
    calib = _calib(24, seed=44, shape=(1, 3, 8, 8))
    refit, rec = _prune(m, "ratio=0.5, reconstruct=true, ridge=0", calib=calib)
    plain, _ = _prune(m, "ratio=0.5, reconstruct=false", calib=calib)
    assert rec.stats.get("consumers_refit") == 1, rec.stats
    kept_rows = _input_const(refit.model, "conv1", 1)
    kept = [i for i in range(8) if any(np.array_equal(w1[i], r) for r in kept_rows)]
    assert len(kept) == 4

    # the oracle: patches of the kept channels of r1 as onnxruntime's Conv sees them
    features = len(kept) * 9
    one_hot = np.eye(features, dtype=np.float32).reshape(features, len(kept), 3, 3)
    patches_model = h.model([h.node("Conv", ["r", "e"], ["p"], **kw)], [("r", F32, [1, len(kept), 8, 8])],
                            [("p", F32, None)], [h.init("e", one_hot)])
    with_r1 = onnx.ModelProto()
    with_r1.CopyFrom(m)
    with_r1.graph.output.append(h.vi("r1", F32, [1, 8, 8, 8]))
    rows, targets, err_refit, err_plain = [], [], 0.0, 0.0
    for feeds in calib:
        y, r1 = _run(with_r1, feeds)
        p = _run(patches_model, {"r": r1[:, kept]})[0]
        rows.append(np.moveaxis(p, 1, -1).reshape(-1, features))
        targets.append(np.moveaxis(y, 1, -1).reshape(-1, 3))
        err_refit += float(np.sum((_run(refit.model, feeds)[0].astype(np.float64) - y) ** 2))
        err_plain += float(np.sum((_run(plain.model, feeds)[0].astype(np.float64) - y) ** 2))
    design = np.column_stack([np.concatenate(rows).astype(np.float64), np.ones(sum(len(r) for r in rows))])
    target = np.concatenate(targets).astype(np.float64)
    solution = np.linalg.lstsq(design, target, rcond=None)[0]
    err_opt = float(np.sum((design @ solution - target) ** 2))
    assert err_refit <= err_opt * (1 + 1e-3) + 1e-6, (err_refit, err_opt)
    assert err_plain > 1.5 * err_opt, (err_plain, err_opt)


def test_reconstructed_matmul_gets_a_bias_add_and_keeps_its_output_name(h):
    """A MatMul has no bias input: the re-fit's bias goes into an Add after it, which takes
    over the output's name (here a graph output); another round replaces that Add's constant
    instead of adding a second Add."""
    rng = _rng(45)
    w1, w2 = _normal(rng, 6, 8), _normal(rng, 8, 4)
    m = h.model([h.node("MatMul", ["x", "w1"], ["m1"], name="fc1"), h.node("Relu", ["m1"], ["r1"]),
                 h.node("MatMul", ["r1", "w2"], ["y"], name="fc2")],
                [("x", F32, [2, 5, 6])], [("y", F32, [2, 5, 4])], [h.init("w1", w1), h.init("w2", w2)])
    calib = CalibrationSet([random_feeds(m, 200 + s) for s in range(24)])
    held_out = [random_feeds(m, 300 + s) for s in range(4)]
    plain, _ = _prune(m, "ratio=0.5, reconstruct=false", calib=calib)

    def error(out):
        return np.mean([_rel(_run(m, f)[0], _run(out, f)[0]) for f in held_out])

    for rounds in (1, 2):
        res, rec = _prune(m, f"ratio=0.5, reconstruct=true, rounds={rounds}", calib=calib)
        onnx.checker.check_model(res.model, full_check=True)
        assert [o.name for o in res.model.graph.output] == ["y"]
        ops = [n.op_type for n in res.model.graph.node]
        assert ops == ["MatMul", "Relu", "MatMul", "Add"], ops
        assert res.model.graph.node[-1].output[0] == "y"
        assert rec.stats["consumers_refit"] == 1
        assert not _orphans(res.model), _orphans(res.model)
        assert error(res.model) < error(plain.model)


@pytest.mark.parametrize("options, message", [
    ("ratio=0.3, reconstruct=true", "calibration"),
    ('ratio=0.3, criterion="data"', "calibration"),
    ('ratio=0.3, criterion="apoz"', "calibration"),
    ('ratio="auto", budget=0.3', "calibration"),
])
def test_data_options_without_calibration_are_usage_errors(h, options, message):
    m, _ = _chain(h)
    with pytest.raises(UsageError, match=message) as info:
        _prune(m, options)
    assert info.value.exit_code == ExitCode.USAGE == 2


def test_auto_ratio_without_budget_is_a_usage_error(h):
    m, _ = _chain(h)
    with pytest.raises(UsageError, match="budget") as info:
        _prune(m, 'ratio="auto"', calib=_calib(4))
    assert info.value.exit_code == 2


# ---------------------------------------------------------------------------------------
# 6. ratio="auto"
# ---------------------------------------------------------------------------------------


def _four_layer_net(h):
    """conv0 (8) -> conv1 (16) -> conv2 (16) -> conv3 (4), Relu between; a quarter of each
    hidden layer's filters are weak (x0.02), so there is something cheap to remove."""
    rng = _rng(50)
    shapes = [(8, 3), (16, 8), (16, 16), (4, 16)]
    ws = [_normal(rng, o, i, 3, 3) / np.float32(np.sqrt(i * 9)) for o, i in shapes]
    for k in range(3):
        out = shapes[k][0]
        ws[k] = _scale(ws[k], rng.choice(out, out // 4, replace=False), 0, 0.02)
    nodes, x = [], "x"
    for k in range(4):
        y = "y" if k == 3 else f"c{k}"
        nodes.append(_conv(h, x, f"w{k}", None, y, f"conv{k}"))
        if k < 3:
            nodes.append(h.node("Relu", [y], [f"r{k}"]))
            x = f"r{k}"
    return h.model(nodes, [("x", F32, [1, 3, 8, 8])], [("y", F32, [1, 4, 8, 8])],
                   [h.init(f"w{k}", w) for k, w in enumerate(ws)])


def test_auto_ratio_meets_a_macs_budget(h):
    m = _four_layer_net(h)
    res, rec = _prune(m, 'ratio="auto", budget=0.3, objective="macs", samples=8, sensitivity_samples=2',
                      calib=_calib(8, seed=51))
    st = rec.stats
    assert st["macs_after"] <= 0.7 * st["macs_before"] + 1
    sens = rec.details["sensitivity"]
    assert {s["group"] for s in sens} == {"conv0", "conv1", "conv2"}
    for s in sens:  # each curve starts at ratio 0 with no error and only grows in removal
        assert s["curve"][0] == (0.0, 0, 0.0)
        assert [p[1] for p in s["curve"]] == sorted(p[1] for p in s["curve"])
    assert st["candidates_measured"] == sum(len(s["curve"]) - 1 for s in sens)
    assert rec.details["auto"]["saved"] >= 0.3
    # MACs really dropped in the emitted model: the weights hold the stats' MACs
    onnx.checker.check_model(res.model, full_check=True)
    macs = sum(int(np.prod(_input_const(res.model, f"conv{k}", 1).shape)) * 64 for k in range(4))
    assert macs == st["macs_after"]


def test_auto_ratio_meets_a_params_budget(h):
    m = _four_layer_net(h)
    res, rec = _prune(m, 'ratio="auto", budget=0.4, objective="params", samples=8, sensitivity_samples=2',
                      calib=_calib(8, seed=53))
    st = rec.stats
    assert st["params_after"] <= 0.6 * st["params_before"] + 1
    params = sum(int(np.prod(_input_const(res.model, f"conv{k}", 1).shape)) for k in range(4))
    assert params == st["params_after"]  # no biases: the weights are all the parameters


def test_auto_ratio_keeps_the_error_within_an_error_budget(h):
    m = _four_layer_net(h)
    calib = _calib(8, seed=52)
    budget = 0.05
    res, rec = _prune(m, f'ratio="auto", budget={budget}, objective="error", samples=8, '
                         'sensitivity_samples=2', calib=calib)
    auto = rec.details["auto"]
    assert auto["objective"] == "error" and auto["rel_l2"] <= budget
    # the reported error is the emitted model's, on the sensitivity samples (the first two:
    # all samples have the same size)
    measured = np.mean([_rel(_run(m, f)[0], _run(res.model, f)[0]) for f in list(calib)[:2]])
    assert measured == pytest.approx(auto["rel_l2"], abs=1e-5)
    assert rec.stats.get("channels_removed", 0) > 0  # a 5% budget leaves room to prune


# ---------------------------------------------------------------------------------------
# 7. determinism, 8. selectors
# ---------------------------------------------------------------------------------------


def test_compiling_twice_gives_identical_bytes(h):
    m = _four_layer_net(h)
    opts = 'ratio=0.4, criterion="data", reconstruct=true, rounds=2'
    a, _ = _prune(m, opts, calib=_calib(8, seed=60))
    b, _ = _prune(m, opts, calib=_calib(8, seed=60))
    assert a.model.SerializeToString(deterministic=True) == b.model.SerializeToString(deterministic=True)


def test_selector_leaves_unselected_producers_whole(h):
    m = _four_layer_net(h)  # conv0 .. conv3
    ws = _const_inputs(m)
    res, rec = _prune(m, "ratio=0.5", selector='on Conv where name ~ "conv[12]"')
    np.testing.assert_array_equal(_input_const(res.model, "conv0", 1), ws["w0"])  # not selected
    assert _input_const(res.model, "conv1", 1).shape == (8, 8, 3, 3)  # reads conv0 whole
    assert _input_const(res.model, "conv2", 1).shape == (8, 8, 3, 3)
    assert _input_const(res.model, "conv3", 1).shape == (4, 8, 3, 3)
    assert any("not selected" in r for r in _refused(rec, "conv0"))
    by_producers = {tuple(g["producers"]): g["removed"] for g in rec.details["groups"]}
    assert by_producers == {("conv1",): 8, ("conv2",): 8}
