"""decompose: HardSwish, HardSigmoid, Gelu, LayerNormalization and two-node ReLU6 into the
primitives a target has.

Hand-built graphs per decomposition and spelling (h.check: onnxruntime outputs before vs
after within the pass's tolerance, statistics, idempotence, checker), the choices a target
makes (npu-int8, mcu, cpu and variants), refusals, generated graphs, PP-OCRv4 rec and a
small transformer block.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest

import homec
from homec.context import PassContext, Selector
from homec.errors import UsageError
from homec.registry import REGISTRY
from homec.targets.descriptor import load_target
from homec.testing.graphgen import random_model
from homec.testing.oracle import compare, random_feeds, run_ort

PASS = "decompose"
F32, F64, F16 = onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16
SHAPE = [2, 3, 4, 8]


def _one(h, node, *, opset=17, shape=SHAPE, elem=F32, inits=(), in_shape=None):
    return h.model([node], [("x", elem, in_shape if in_shape is not None else shape)],
                   [("y", elem, shape)], list(inits), opset=opset,
                   ir_version=7 if opset < 15 else 8 if opset < 19 else 9)


def _ops(res):
    return [n.op_type for n in res.graph.nodes]


def _target(name: str):
    """A built-in target as these tests knew it: npu-int8 and mcu now run HardSwish
    natively, so the tests take them without it (a board that lacks it)."""
    t = load_target(name)
    if t.all_ops:
        return t
    return dataclasses.replace(t, ops={k: v for k, v in t.ops.items() if k != "HardSwish"})


def _ctx(target):
    return PassContext(target=_target(target) if isinstance(target, str) else target)


# ---------------------------------------------------------------------------------------
# HardSwish / HardSigmoid
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("opset", [14, 17, 21])
def test_hardswish_to_hardsigmoid(h, opset):
    res = h.check(_one(h, h.node("HardSwish", ["x"], ["y"]), opset=opset), PASS,
                  {"hardswish_decomposed": 1}, ops=["HardSwish"])
    assert _ops(res) == ["HardSigmoid", "Mul"]
    hs = res.graph.nodes[0]
    assert hs.attr("alpha") == pytest.approx(1 / 6) and hs.attr("beta") == 0.5


@pytest.mark.parametrize("opset", [14, 18])
def test_hardswish_fully(h, opset):
    res = h.check(_one(h, h.node("HardSwish", ["x"], ["y"]), opset=opset), PASS,
                  {"hardswish_decomposed": 1}, ops=["HardSwish", "HardSigmoid"])
    assert _ops(res) == ["Mul", "Add", "Clip", "Mul"]
    assert len(res.graph.nodes[2].inputs) == 3  # bounds as inputs from opset 11


@pytest.mark.parametrize("opset", [7, 10, 11, 13])
@pytest.mark.parametrize("alpha,beta", [(0.2, 0.5), (0.3, 0.4), (1 / 6, 0.5)])
def test_hardsigmoid(h, opset, alpha, beta):
    node = h.node("HardSigmoid", ["x"], ["y"], alpha=alpha, beta=beta)
    res = h.check(_one(h, node, opset=opset), PASS, {"hardsigmoid_decomposed": 1},
                  ops=["HardSigmoid"])
    assert _ops(res) == ["Mul", "Add", "Clip"]
    clip = res.graph.nodes[2]
    if opset < 11:
        assert (clip.attr("min"), clip.attr("max")) == (0.0, 1.0) and len(clip.inputs) == 1
    else:
        assert [float(clip.input_const(i)) for i in (1, 2)] == [0.0, 1.0]


def test_hardsigmoid_default_attributes(h):
    res = h.check(_one(h, h.node("HardSigmoid", ["x"], ["y"])), PASS,
                  {"hardsigmoid_decomposed": 1}, ops=["HardSigmoid"])
    consts = sorted(float(v.const.numpy()) for v in res.graph.initializers.values())
    assert consts == pytest.approx([0.0, 0.2, 0.5, 1.0])


def test_hardsigmoid_float64_keeps_dtype(h):
    node = h.node("HardSigmoid", ["x"], ["y"], alpha=0.3, beta=0.4)
    # onnxruntime has no float64 HardSigmoid: the decomposition is checked against numpy
    res = h.check(_one(h, node, elem=F64), PASS, {"hardsigmoid_decomposed": 1},
                  ops=["HardSigmoid"], run=False)
    assert {v.const.numpy().dtype for v in res.graph.initializers.values()} == {np.dtype(np.float64)}
    x = np.random.default_rng(0).uniform(-5, 5, SHAPE)
    (y,) = run_ort(res.model, {"x": x})
    assert y.dtype == np.float64
    alpha, beta = float(np.float32(0.3)), float(np.float32(0.4))  # float attributes
    np.testing.assert_allclose(y, np.clip(alpha * x + beta, 0, 1), rtol=1e-15, atol=1e-15)


# ---------------------------------------------------------------------------------------
# Gelu
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("opset", [20, 21])
@pytest.mark.parametrize("approximate", [None, "none", "tanh"])
def test_gelu(h, opset, approximate):
    attrs = {} if approximate is None else {"approximate": approximate}
    m = _one(h, h.node("Gelu", ["x"], ["y"], **attrs), opset=opset)
    # a wide input range: the tails (Erf/Tanh saturating) and the curve around 0
    x = np.random.default_rng(1).uniform(-8, 8, SHAPE).astype(np.float32)
    res = h.check(m, PASS, {"gelu_decomposed": 1}, ops=["Gelu"], feeds={"x": x})
    ops = Counter(_ops(res))
    if approximate == "tanh":
        assert ops == {"Mul": 6, "Add": 2, "Tanh": 1}
    else:
        assert ops == {"Mul": 3, "Add": 1, "Erf": 1}


def test_gelu_float64(h):
    m = _one(h, h.node("Gelu", ["x"], ["y"], approximate="tanh"), opset=20, elem=F64)
    try:
        run_ort(m, random_feeds(m, 0))
    except Exception:
        pytest.skip("onnxruntime has no float64 Gelu kernel")
    res = h.check(m, PASS, {"gelu_decomposed": 1}, ops=["Gelu"])
    assert {v.const.numpy().dtype for v in res.graph.initializers.values()} == {np.dtype(np.float64)}


# ---------------------------------------------------------------------------------------
# LayerNormalization
# ---------------------------------------------------------------------------------------


def _layernorm(h, axis=-1, *, bias=True, opset=17, elem=F32, epsilon=None, stash_type=None,
               shape=SHAPE, in_shape=None, outputs=1):
    npt = {F32: np.float32, F64: np.float64, F16: np.float16}[elem]
    rng = np.random.default_rng(3)
    norm = shape[axis:]
    inits = [h.init("scale", (rng.random(norm) + 0.5).astype(npt))]
    ins = ["x", "scale"]
    if bias:
        inits.append(h.init("bias", rng.standard_normal(norm).astype(npt)))
        ins.append("bias")
    attrs = {"axis": axis}
    if epsilon is not None:
        attrs["epsilon"] = epsilon
    if stash_type is not None:
        attrs["stash_type"] = stash_type
    outs = ["y", "mean", "inv_std"][:outputs]
    node = h.node("LayerNormalization", ins, outs, **attrs)
    graph_outs = [("y", elem, shape)]
    if outputs > 1:
        graph_outs.append(("mean", F32 if elem == F16 else elem,
                           [*shape[:axis % len(shape)], *[1] * (len(shape) - axis % len(shape))]))
    return h.model([node], [("x", elem, in_shape if in_shape is not None else shape)],
                   graph_outs, inits, opset=opset, ir_version=8 if opset < 19 else 9)


@pytest.mark.parametrize("opset", [17, 18, 21])
@pytest.mark.parametrize("axis", [-1, -2, -3, 1, 3, 0])
@pytest.mark.parametrize("bias", [True, False])
def test_layernorm(h, opset, axis, bias):
    x = (np.random.default_rng(5).standard_normal(SHAPE) * 3 + 1).astype(np.float32)
    res = h.check(_layernorm(h, axis, bias=bias, opset=opset), PASS, {"layernorm_decomposed": 1},
                  ops=["LayerNormalization"], feeds={"x": x})
    ops = Counter(_ops(res))
    assert ops == {"ReduceMean": 2, "Sub": 1, "Mul": 2, "Add": 1 + bias, "Sqrt": 1, "Div": 1}
    rank = len(SHAPE)
    want = list(range(axis, 0)) if axis < 0 else list(range(axis, rank))
    for rm in (n for n in res.graph.nodes if n.op_type == "ReduceMean"):
        if opset >= 18:
            assert "axes" not in rm.attrs and list(rm.input_const(1)) == want
        else:
            assert len(rm.inputs) == 1 and list(rm.attr("axes")) == want


def test_layernorm_epsilon(h):
    x = (np.random.default_rng(6).standard_normal(SHAPE) * 0.01).astype(np.float32)  # eps matters
    res = h.check(_layernorm(h, epsilon=1e-2), PASS, {"layernorm_decomposed": 1},
                  ops=["LayerNormalization"], feeds={"x": x})
    assert any(v.const.numpy().item() == pytest.approx(1e-2) for v in res.graph.initializers.values()
               if v.const.numpy().size == 1)


def test_layernorm_float64(h):
    res = h.check(_layernorm(h, -2, elem=F64), PASS, {"layernorm_decomposed": 1},
                  ops=["LayerNormalization"])
    assert all(v.const.numpy().dtype == np.float64 for v in res.graph.initializers.values())
    assert "Cast" not in _ops(res)


def test_layernorm_float16_computes_in_float32(h):
    """stash_type=1 (the default): the fused kernel keeps float16's statistics in float32,
    and so does the decomposition (Casts around it); stash_type=0 stays in float16."""
    m = _layernorm(h, -1, elem=F16)
    try:
        run_ort(m, random_feeds(m, 0))
    except Exception:
        pytest.skip("onnxruntime has no float16 LayerNormalization kernel")
    res = h.apply(m, PASS, ops=["LayerNormalization"])
    assert res.stats["layernorm_decomposed"] == 1
    ops = _ops(res)
    assert ops.count("Cast") == 4 and ops[-1] == "Cast"  # x, scale, bias in; y out
    onnx.checker.check_model(res.model, full_check=True)
    feeds = random_feeds(m, 0)
    cmp = compare(run_ort(m, feeds), run_ort(res.model, feeds), _f16_tolerance())
    assert cmp.ok, cmp
    low = h.apply(_layernorm(h, -1, elem=F16, stash_type=0), PASS, ops=["LayerNormalization"])
    assert "Cast" not in _ops(low)


def _f16_tolerance():
    from homec.registry import Tolerance

    return Tolerance(atol=4e-3, rtol=4e-3)  # a few float16 ulps


def test_layernorm_refused_when_statistics_are_read(h):
    res = h.check_noop(_layernorm(h, outputs=2), PASS, ops=["LayerNormalization"])
    assert res.stats["refused_layernorm_outputs"] == 1


def test_layernorm_unused_statistics_outputs_are_dropped(h):
    m = _layernorm(h, outputs=3)
    del m.graph.output[1:]
    res = h.check(m, PASS, {"layernorm_decomposed": 1}, ops=["LayerNormalization"])
    assert res.graph.value("mean") is None and res.graph.value("inv_std") is None


def test_layernorm_positive_axis_needs_rank(h):
    """A non-negative axis on x of unknown rank: axes axis..rank-1 cannot be written."""
    ctx = PassContext()
    res = h.check_noop(_unknown_rank_layernorm(h, 2), PASS, ctx=ctx, ops=["LayerNormalization"])
    assert res.stats["refused_layernorm_rank"] == 1
    assert ctx.details["refused"][0]["reason"].startswith("axis=2")
    # a negative axis needs no rank: axes -2, -1
    feeds = {"x": np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32),
             "shp": np.array(SHAPE, np.int64)}
    h.check(_unknown_rank_layernorm(h, -2), PASS, {"layernorm_decomposed": 1},
            ops=["LayerNormalization"], feeds=feeds)


def _unknown_rank(h, m, x="x"):
    """`m` with its node reading Reshape(x, shp) instead of x, where shp has a symbolic
    length: a value of unknown rank (graph inputs must declare one)."""
    m.graph.input.append(h.vi("shp", h.I64, ["n"]))
    m.graph.node.insert(0, h.node("Reshape", [x, "shp"], ["x_any_rank"]))
    for n in m.graph.node[1:]:
        n.input[:] = ["x_any_rank" if i == x else i for i in n.input]
    return m


def _unknown_rank_layernorm(h, axis):
    return _unknown_rank(h, _layernorm(h, axis))


# ---------------------------------------------------------------------------------------
# ReLU6 spellings -> Clip(x, 0, 6)
# ---------------------------------------------------------------------------------------


def _bounds(h, shape=(), dtype=np.float32, zero=0.0, six=6.0):
    return [h.init("zero", np.full(shape, zero, dtype)), h.init("six", np.full(shape, six, dtype))]


RELU6 = {  # name -> (nodes, inits builder)
    "min(max(x,0),6)": lambda h: [h.node("Max", ["x", "zero"], ["a"]), h.node("Min", ["a", "six"], ["y"])],
    "min(6,max(0,x))": lambda h: [h.node("Max", ["zero", "x"], ["a"]), h.node("Min", ["six", "a"], ["y"])],
    "max(min(x,6),0)": lambda h: [h.node("Min", ["x", "six"], ["a"]), h.node("Max", ["a", "zero"], ["y"])],
    "max(0,min(6,x))": lambda h: [h.node("Min", ["six", "x"], ["a"]), h.node("Max", ["zero", "a"], ["y"])],
    "min(relu(x),6)": lambda h: [h.node("Relu", ["x"], ["a"]), h.node("Min", ["a", "six"], ["y"])],
    "clip(relu(x),0,6)": lambda h: [h.node("Relu", ["x"], ["a"]), h.node("Clip", ["a", "zero", "six"], ["y"])],
    "clip(relu(x),,6)": lambda h: [h.node("Relu", ["x"], ["a"]), h.node("Clip", ["a", "", "six"], ["y"])],
}


def _relu6_feeds():
    x = np.random.default_rng(2).uniform(-9, 9, SHAPE).astype(np.float32)
    x.reshape(-1)[:4] = [0.0, 6.0, -0.0, 5.999]
    return {"x": x}


@pytest.mark.parametrize("spelling", list(RELU6))
@pytest.mark.parametrize("opset", [13, 17])
@pytest.mark.parametrize("bound_shape", [(), (1,)])
def test_relu6(h, spelling, opset, bound_shape):
    m = h.model(RELU6[spelling](h), [("x", F32, SHAPE)], [("y", F32, SHAPE)],
                _bounds(h, bound_shape), opset=opset)
    if "clip(relu(x),,6)" == spelling or spelling.startswith("min(relu"):
        m.graph.initializer.remove(next(t for t in m.graph.initializer if t.name == "zero"))
    res = h.check(m, PASS, {"relu6_to_clip": 1}, ops=["Relu6"], feeds=_relu6_feeds())
    assert _ops(res) == ["Clip"]
    clip = res.graph.nodes[0]
    assert clip.inputs[0].name == "x"
    assert [float(clip.input_const(i)) for i in (1, 2)] == [0.0, 6.0]
    assert not res.graph.initializers.keys() & {"zero", "six"}  # old bounds removed


def test_relu6_clip_attributes_before_opset_11(h):
    m = h.model([h.node("Relu", ["x"], ["a"]), h.node("Clip", ["a"], ["y"], min=0.0, max=6.0)],
                [("x", F32, SHAPE)], [("y", F32, SHAPE)], opset=10, ir_version=5)
    res = h.check(m, PASS, {"relu6_to_clip": 1}, ops=["Relu6"], feeds=_relu6_feeds())
    clip = res.graph.nodes[0]
    assert _ops(res) == ["Clip"] and (clip.attr("min"), clip.attr("max")) == (0.0, 6.0)


def test_relu6_constant_nodes(h):
    nodes = [h.node("Constant", [], ["zero"], value=onh.from_array(np.float32(0))),
             h.node("Constant", [], ["six"], value=onh.from_array(np.float32(6))),
             *RELU6["max(min(x,6),0)"](h)]
    m = h.model(nodes, [("x", F32, SHAPE)], [("y", F32, SHAPE)])
    res = h.check(m, PASS, {"relu6_to_clip": 1}, ops=["Relu6"], feeds=_relu6_feeds())
    assert _ops(res) == ["Clip"]


def test_relu6_float64(h):
    m = h.model(RELU6["min(max(x,0),6)"](h), [("x", F64, SHAPE)], [("y", F64, SHAPE)],
                _bounds(h, (), np.float64))
    res = h.check(m, PASS, {"relu6_to_clip": 1}, ops=["Relu6"])
    assert all(v.const.numpy().dtype == np.float64 for v in res.graph.initializers.values())


@pytest.mark.parametrize("case", ["bound 6.5", "bound 0.5", "inner shared", "inner output",
                                  "bound [2]", "bound [1,1]", "int32", "lower bound 1"])
def test_relu6_near_misses(h, case):
    zero, six, shape = 0.0, 6.0, ()
    outs = [("y", F32, SHAPE)]
    nodes = RELU6["min(max(x,0),6)"](h)
    elem, npt = F32, np.float32
    if case == "bound 6.5":
        six = 6.5
    elif case == "bound 0.5":
        zero = 0.5
    elif case == "bound [2]":
        shape = (2,)
    elif case == "bound [1,1]":
        shape = (1, 1)
    elif case == "inner shared":
        nodes.append(h.node("Neg", ["a"], ["z"]))
        outs.append(("z", F32, SHAPE))
    elif case == "inner output":
        outs.append(("a", F32, SHAPE))
    elif case == "int32":
        elem, npt = onnx.TensorProto.INT32, np.int32
        outs = [("y", elem, SHAPE)]
    elif case == "lower bound 1":
        nodes = RELU6["clip(relu(x),0,6)"](h)
        zero = 1.0
    in_shape = SHAPE[:-1] + [2] if case == "bound [2]" else SHAPE
    if case == "bound [2]":
        outs = [("y", F32, in_shape)]
    if case == "bound [1,1]":
        outs = [("y", F32, SHAPE)]
    m = h.model(nodes, [("x", elem, in_shape)], outs, _bounds(h, shape, npt, zero, six))
    res = h.check_noop(m, PASS, ops=["Relu6"])
    assert res.stats["relu6_to_clip"] == 0


def test_relu6_one_element_bounds_need_a_known_rank(h):
    m = h.model(RELU6["min(max(x,0),6)"](h), [("x", F32, SHAPE)], [("y", F32, SHAPE)],
                _bounds(h, (1,)))
    res = h.check_noop(_unknown_rank(h, m), PASS, ops=["Relu6"])
    assert res.stats["refused_relu6_shape"] == 1


# ---------------------------------------------------------------------------------------
# Selection, explicit ops and a second run
# ---------------------------------------------------------------------------------------


def _mixed(h, opset=20):
    """HardSwish, HardSigmoid, Gelu, LayerNormalization and a Min/Max ReLU6 in a row."""
    rng = np.random.default_rng(4)
    nodes = [h.node("HardSwish", ["x"], ["a"], name="hs"),
             h.node("HardSigmoid", ["a"], ["b"], name="hsig", alpha=0.25, beta=0.3),
             h.node("Gelu", ["b"], ["c"], name="gelu"),
             h.node("LayerNormalization", ["c", "scale", "bias"], ["d"], name="ln"),
             h.node("Max", ["d", "zero"], ["e"], name="max"),
             h.node("Min", ["e", "six"], ["y"], name="min")]
    inits = [h.init("scale", (rng.random(SHAPE[-1]) + 0.5).astype(np.float32)),
             h.init("bias", rng.standard_normal(SHAPE[-1]).astype(np.float32)), *_bounds(h)]
    return h.model(nodes, [("x", F32, SHAPE)], [("y", F32, SHAPE)], inits, opset=opset,
                   ir_version=9)


ALL = {"hardswish_decomposed": 1, "hardsigmoid_decomposed": 1, "gelu_decomposed": 1,
       "layernorm_decomposed": 1, "relu6_to_clip": 1}


def test_all_ops_explicitly(h):
    res = h.check(_mixed(h), PASS, ALL, ops=["HardSwish", "HardSigmoid", "Gelu",
                                             "LayerNormalization", "Relu6"])
    assert not {"HardSwish", "HardSigmoid", "Gelu", "LayerNormalization", "Max", "Min"} & set(_ops(res))


def test_no_ops_and_no_target_is_a_noop(h):
    h.check_noop(_mixed(h), PASS)


def test_selector_limits_the_anchors(h):
    ctx = PassContext(selector=Selector(name_glob="g*"))
    res = h.check(_mixed(h), PASS, {"gelu_decomposed": 1}, ctx=ctx,
                  ops=["HardSwish", "Gelu", "LayerNormalization"])
    assert {"HardSwish", "LayerNormalization"} <= set(_ops(res))


def test_unknown_op_option_is_a_usage_error(h):
    with pytest.raises(UsageError) as e:
        homec.compile(_mixed(h), 'schedule { decompose(ops=["Softmax"]) }')
    assert e.value.exit_code == 2 and "Softmax" in str(e.value)


def test_through_a_schedule(h):
    m = _mixed(h)
    res = homec.compile(m, 'schedule { decompose(ops=["Gelu", "Relu6"]) }', verify=True)
    ops = [n.op_type for n in res.model.graph.node]
    assert "Gelu" not in ops and "Max" not in ops and "Erf" in ops


# ---------------------------------------------------------------------------------------
# Targets choose
# ---------------------------------------------------------------------------------------


def test_npu_int8(h):
    """npu-int8 has HardSigmoid and Mul (HardSwish decomposes), Clip (the ReLU6 moves onto
    it: no Min/Max), but no Erf and no ReduceMean/Sqrt/Div: Gelu and LayerNormalization
    stay, counted as kept."""
    ctx = _ctx("npu-int8")
    res = h.check(_mixed(h), PASS, {"hardswish_decomposed": 1, "relu6_to_clip": 1,
                                    "kept_gelu": 1, "kept_layernorm": 1}, ctx=ctx)
    ops = _ops(res)
    assert ops[:2] == ["HardSigmoid", "Mul"] and "HardSwish" not in ops
    assert {"Gelu", "LayerNormalization", "Clip"} <= set(ops)
    kept = {k["op"]: k["missing"] for k in ctx.details["kept"]}
    assert kept == {"Gelu": ["Erf"], "LayerNormalization": ["Div", "ReduceMean", "Sqrt"]}


def test_mcu(h):
    """mcu lacks HardSwish, Gelu, LayerNormalization, Max and Min and has every primitive."""
    res = h.check(_mixed(h), PASS, {k: v for k, v in ALL.items() if k != "hardsigmoid_decomposed"},
                  ctx=_ctx("mcu"))
    mcu = _target("mcu")
    assert all(mcu.rule(n) is not None for n in res.graph.nodes), _ops(res)


def test_cpu_runs_everything(h):
    h.check_noop(_mixed(h), PASS, ctx=_ctx("cpu"))


def test_target_decompose_list(h):
    """A target listing HardSigmoid under `decompose` (it has the op, but slowly): HardSwish's
    gate is decomposed too, into Mul/Add/Clip."""
    mcu = dataclasses.replace(_target("mcu"), decompose=("HardSigmoid",))
    res = h.check(_mixed(h), PASS, ALL, ctx=_ctx(mcu))
    assert "HardSigmoid" not in _ops(res)


def test_target_all_ops_with_decompose_list(h):
    cpu = dataclasses.replace(load_target("cpu"), decompose=("Gelu", "Relu6"))
    res = h.check(_mixed(h), PASS, {"gelu_decomposed": 1, "relu6_to_clip": 1}, ctx=_ctx(cpu))
    assert "HardSwish" in _ops(res)


def test_target_that_has_min_and_max_keeps_relu6(h):
    npu = _target("npu-int8")
    ops = {**npu.ops, "Max": npu.ops["Relu"], "Min": npu.ops["Relu"]}
    npu = dataclasses.replace(npu, ops=ops)
    res = h.check(_mixed(h), PASS, {"hardswish_decomposed": 1, "kept_gelu": 1,
                                    "kept_layernorm": 1}, ctx=_ctx(npu))
    assert {"Max", "Min"} <= set(_ops(res))


def test_target_without_hardsigmoid_decomposes_hardswish_fully(h):
    mcu = _target("mcu")
    ops = {k: v for k, v in mcu.ops.items() if k != "HardSigmoid"}
    res = h.check(_one(h, h.node("HardSwish", ["x"], ["y"])), PASS,
                  {"hardswish_decomposed": 1}, ctx=_ctx(dataclasses.replace(mcu, ops=ops)))
    assert _ops(res) == ["Mul", "Add", "Clip", "Mul"]


def test_target_without_the_replacement_keeps(h):
    npu = _target("npu-int8")
    ops = {k: v for k, v in npu.ops.items() if k != "HardSigmoid"}
    ctx = _ctx(dataclasses.replace(npu, ops=ops))
    # HardSigmoid is lacking too, so HardSwish would need Mul/Add/Clip: npu has them
    res = h.check(_one(h, h.node("HardSwish", ["x"], ["y"])), PASS, {"hardswish_decomposed": 1},
                  ctx=ctx)
    assert _ops(res) == ["Mul", "Add", "Clip", "Mul"]
    ops.pop("Clip")
    ctx = _ctx(dataclasses.replace(npu, ops=ops))
    res = h.check_noop(_one(h, h.node("HardSwish", ["x"], ["y"])), PASS, ctx=ctx)
    assert res.stats["kept_hardswish"] == 1
    assert ctx.details["kept"] == [{"node": "", "op": "HardSwish", "missing": ["Clip"]}]


# ---------------------------------------------------------------------------------------
# Generated graphs: HardSwish and Clip in random networks, for mcu and explicitly
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 5, 8, 13, 21])
@pytest.mark.parametrize("how", ["mcu", "all"])
def test_generated_graphs(h, seed, how):
    m = random_model(seed, max_nodes=30, opset=17)
    info = REGISTRY.get(PASS)
    ctx = _ctx("mcu") if how == "mcu" else PassContext()
    opts = {} if how == "mcu" else {"ops": list(("HardSwish", "HardSigmoid", "Relu6"))}
    g = homec.load(m)
    stats = info.fn(g, ctx, **info.bind(opts))
    g.verify()
    out = g.to_onnx()
    onnx.checker.check_model(out, full_check=True)
    hardswish = sum(1 for n in homec.load(m).all_nodes() if n.op_type == "HardSwish")
    assert stats["hardswish_decomposed"] == hardswish
    assert "HardSwish" not in [n.op_type for n in g.all_nodes()]
    changed = out.SerializeToString(deterministic=True) != homec.load(m).to_onnx().SerializeToString(deterministic=True)
    assert changed == bool(h.changes(stats))
    feeds = random_feeds(m, seed, override_initializers=True)
    cmp = compare(run_ort(m, feeds), run_ort(out, feeds), info.tolerance)
    assert cmp.ok, f"seed {seed}: {cmp.describe()}"
    again = info.fn(g, ctx, **info.bind(opts))
    assert not h.changes(again)


# ---------------------------------------------------------------------------------------
# Real models
# ---------------------------------------------------------------------------------------


def _ocr_model(kind: str) -> Path:
    import rapidocr_onnxruntime

    d = Path(rapidocr_onnxruntime.__file__).parent / "models"
    return next(d.glob(f"*PP-OCRv4_{kind}*.onnx"))


@pytest.mark.slow
def test_pp_ocr_rec_for_mcu():
    """PP-OCRv4 rec after cleanup + fuse_activations has 28 HardSwish (and 2 squeeze-
    excitation HardSigmoids); for mcu each HardSwish becomes HardSigmoid * x."""
    fused = homec.compile(_ocr_model("rec"), "schedule { cleanup; fuse_activations }").model
    before = Counter(n.op_type for n in fused.graph.node)
    assert before["HardSwish"] == 28
    info = REGISTRY.get(PASS)
    g = homec.load(fused)
    stats = info.fn(g, _ctx("mcu"), **info.bind({}))
    g.verify()
    out = g.to_onnx()
    onnx.checker.check_model(out, full_check=True)
    assert stats["hardswish_decomposed"] == 28
    after = Counter(n.op_type for n in out.graph.node)
    assert after["HardSwish"] == 0
    assert after["HardSigmoid"] == before["HardSigmoid"] + 28
    assert after["Mul"] == before["Mul"] + 28
    rng = np.random.default_rng(0)
    x = rng.random((1, 3, 48, 160), dtype=np.float32)
    name = fused.graph.input[0].name
    cmp = compare(run_ort(fused, {name: x}), run_ort(out, {name: x}), info.tolerance)
    assert cmp.ok, cmp


def _transformer_block(opset: int) -> onnx.ModelProto:
    """A small pre-norm transformer MLP block, as exported by PyTorch at opset 20:
    LayerNorm -> MatMul -> Gelu -> MatMul -> residual Add -> LayerNorm."""
    rng = np.random.default_rng(7)
    d, hdim = 32, 64
    t = onh.from_array
    inits = [t((rng.random(d) + 0.5).astype(np.float32), "ln1_w"),
             t((rng.standard_normal(d) * 0.1).astype(np.float32), "ln1_b"),
             t((rng.standard_normal((d, hdim)) / np.sqrt(d)).astype(np.float32), "w1"),
             t((rng.standard_normal(hdim) * 0.1).astype(np.float32), "b1"),
             t((rng.standard_normal((hdim, d)) / np.sqrt(hdim)).astype(np.float32), "w2"),
             t((rng.random(d) + 0.5).astype(np.float32), "ln2_w")]
    nodes = [oh.make_node("LayerNormalization", ["x", "ln1_w", "ln1_b"], ["n1"], name="ln1"),
             oh.make_node("MatMul", ["n1", "w1"], ["h1"], name="fc1"),
             oh.make_node("Add", ["h1", "b1"], ["h2"], name="fc1_bias"),
             oh.make_node("Gelu", ["h2"], ["g"], name="gelu"),
             oh.make_node("MatMul", ["g", "w2"], ["h3"], name="fc2"),
             oh.make_node("Add", ["x", "h3"], ["r"], name="residual"),
             oh.make_node("LayerNormalization", ["r", "ln2_w"], ["y"], name="ln2", epsilon=1e-6)]
    g = oh.make_graph(nodes, "block", [oh.make_tensor_value_info("x", F32, ["batch", 16, d])],
                      [oh.make_tensor_value_info("y", F32, ["batch", 16, d])], inits)
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", opset)])
    m.ir_version = 9
    return m


@pytest.mark.parametrize("target", ["mcu", "npu-int8"])
def test_transformer_block(h, target):
    m = _transformer_block(20)
    expected = ({"gelu_decomposed": 1, "layernorm_decomposed": 2} if target == "mcu"
                else {"kept_gelu": 1, "kept_layernorm": 2})
    res = h.check(m, PASS, expected, ctx=_ctx(target))
    if target == "mcu":
        assert not {"Gelu", "LayerNormalization"} & set(_ops(res))
        rm = [n for n in res.graph.nodes if n.op_type == "ReduceMean"]
        assert len(rm) == 4 and all(list(n.input_const(1)) == [-1] for n in rm)


# ---------------------------------------------------------------------------------------
# Sum
# ---------------------------------------------------------------------------------------


def _sum_model(shapes):
    from onnx import TensorProto, helper

    names = [f"x{i}" for i in range(len(shapes))]
    g = helper.make_graph([helper.make_node("Sum", names, ["y"], name="sum")], "g",
                          [helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
                           for n, s in zip(names, shapes)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("shapes", [[[2, 3]] * 2, [[2, 3], [3], [1, 3]], [[4, 1, 5], [1, 6, 1], [5], [4, 6, 5]]])
def test_sum_becomes_a_chain_of_adds(shapes):
    """Sum(x1..xn) = left fold of Adds, with the same broadcasting; exact for two terms and
    within rounding for more (bitwise equal here: onnxruntime folds left too)."""
    import onnxruntime as ort

    m = _sum_model(shapes)
    res = homec.compile(m, "schedule { decompose(ops=[\"Sum\"]) }")
    assert res.records[0].stats["sum_to_add"] == 1
    assert [n.op_type for n in res.model.graph.node] == ["Add"] * (len(shapes) - 1)
    rng = np.random.default_rng(0)
    feeds = {f"x{i}": rng.standard_normal(s).astype(np.float32) for i, s in enumerate(shapes)}
    ref = ort.InferenceSession(m.SerializeToString()).run(None, feeds)[0]
    got = ort.InferenceSession(res.model.SerializeToString()).run(None, feeds)[0]
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


def test_targets_without_sum_get_adds():
    """npu-int8 and mcu have Add but no Sum (ResNet exports write residual adds as Sum)."""
    for name in ("npu-int8", "mcu"):
        res = homec.compile(_sum_model([[1, 4, 2, 2]] * 3), None, target=name,
                            input_shapes={"x0": (1, 4, 2, 2)})
        ops = {n["op"] for n in res.report["manifest"]["placement"]["nodes"]}
        assert "Sum" not in ops and "Add" in ops
