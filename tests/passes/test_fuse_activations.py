"""fuse_activations: decomposed HardSwish / HardSigmoid -> one op each (PaddlePaddle spellings).

Hand-built graphs for every spelling and near miss (h.check: outputs vs onnxruntime within
the pass's tolerance, statistics, idempotence, checker), the opset upgrade and its guard,
generated graphs (homec.testing.graphgen) with spellings spliced in under verify-each
checks, and PP-OCRv4 det/rec/cls after cleanup.
"""

from __future__ import annotations

import functools
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import pytest

import homec
import homec.onnx_io
import homec.verify
from homec.testing.oracle import text_like_image
from homec.context import PassContext, Selector
from homec.errors import UnsupportedError
from homec.passes._util import Names, constant_in_place
from homec.registry import REGISTRY
from homec.testing.graphgen import DEFAULT_OPS, random_model
from homec.testing.oracle import compare, random_feeds, run_ort

PASS = "fuse_activations"
F32 = onnx.TensorProto.FLOAT
F64 = onnx.TensorProto.DOUBLE
SIXTH = float(np.float32(1 / 6))
SHAPE = [2, 3, 4, 5]


def _feeds(shape=SHAPE, seed=0, dtype=np.float32):
    """x over [-7, 7] with the kinks at -3 and 3 hit exactly."""
    x = np.random.default_rng(seed).uniform(-7, 7, size=shape).astype(dtype)
    flat = x.reshape(-1)
    flat[:4] = [-3.0, 3.0, 0.0, -6.0][:flat.size]
    return {"x": x}


def _consts(h, shape=(), dtype=np.float32, three=3.0, six=6.0, sixth=SIXTH, lo=0.0, hi=6.0):
    """The pattern's constants: `three`, `six`, `sixth` as scalars or [1] (shape), Clip's
    bounds `lo`, `hi` always scalars (Clip-11 wants scalars)."""
    def c(name, v, s=shape):
        return h.init(name, np.full(s, v, dtype))
    return [c("three", three), c("six", six), c("sixth", sixth), c("lo", lo, ()), c("hi", hi, ())]


def _relu6(h, x, out, *, opset=17, add_swapped=False):
    """Clip(Add(x, 3), 0, 6) -> out."""
    add = h.node("Add", ["three", x] if add_swapped else [x, "three"], [out + "_add"])
    if opset < 11:
        return [add, h.node("Clip", [out + "_add"], [out], min=0.0, max=6.0)]
    return [add, h.node("Clip", [out + "_add", "lo", "hi"], [out])]


def _gate(h, kind, x, out, **kw):
    """HardSigmoid(x; 1/6, 1/2) spelled `kind` -> out."""
    r = out + "_r"
    if kind == "div":
        return [*_relu6(h, x, r, **kw), h.node("Div", [r, "six"], [out])]
    if kind == "mul":
        return [*_relu6(h, x, r, **kw), h.node("Mul", [r, "sixth"], [out])]
    if kind == "mul_swapped":
        return [*_relu6(h, x, r, **kw), h.node("Mul", ["sixth", r], [out])]
    if kind == "op":
        return [h.node("HardSigmoid", [x], [out], alpha=SIXTH, beta=0.5)]
    raise AssertionError(kind)


# HardSwish spellings: name -> (builder(h, x, out, **kw), nodes in the spelling)
def _hs_gate(kind, swapped):
    def build(h, x, out, **kw):
        g = out + "_g"
        return [*_gate(h, kind, x, g, **kw), h.node("Mul", [g, x] if swapped else [x, g], [out])]
    return build


def _hs_outer(outer, inner_swapped, outer_swapped):
    def build(h, x, out, **kw):
        r, m = out + "_r", out + "_m"
        inner = h.node("Mul", [r, x] if inner_swapped else [x, r], [m])
        if outer == "div":
            last = h.node("Div", [m, "six"], [out])
        else:
            last = h.node("Mul", ["sixth", m] if outer_swapped else [m, "sixth"], [out])
        return [*_relu6(h, x, r, **kw), inner, last]
    return build


HARDSWISH = {
    "mul(x,div(r,6))": (_hs_gate("div", False), 4),
    "mul(div(r,6),x)": (_hs_gate("div", True), 4),
    "mul(x,mul(r,1/6))": (_hs_gate("mul", False), 4),
    "mul(mul(1/6,r),x)": (_hs_gate("mul_swapped", True), 4),
    "div(mul(x,r),6)": (_hs_outer("div", False, False), 4),
    "div(mul(r,x),6)": (_hs_outer("div", True, False), 4),
    "mul(mul(x,r),1/6)": (_hs_outer("mul", False, False), 4),
    "mul(1/6,mul(r,x))": (_hs_outer("mul", True, True), 4),
    "mul(x,hardsigmoid(x))": (_hs_gate("op", False), 2),
    "mul(hardsigmoid(x),x)": (_hs_gate("op", True), 2),
}


def _model(h, body, *, opset=17, consts=None, shape=SHAPE, elem=F32, outputs=(), ir_version=None):
    m = h.model(body, [("x", elem, shape)], [("y", elem, shape), *outputs],
                consts if consts is not None else _consts(h), opset=opset,
                ir_version=ir_version or (7 if opset < 15 else 8))
    return m


def _hardswish_model(h, spelling="mul(x,div(r,6))", *, opset=17, consts=None, add_swapped=False, **kw):
    build, _ = HARDSWISH[spelling]
    return _model(h, build(h, "x", "y", opset=opset, add_swapped=add_swapped), opset=opset,
                  consts=consts, **kw)


def _se_model(h, kind="div", *, opset=17, consts=None):
    """A squeeze-excitation gate: y = f * HardSigmoid(s), s a different value than f."""
    body = [h.node("ReduceMean", ["x"], ["s"], axes=[2, 3], keepdims=1) if opset < 18 else
            h.node("ReduceMean", ["x", "axes"], ["s"], keepdims=1),
            *_gate(h, kind, "s", "g", opset=opset), h.node("Mul", ["x", "g"], ["y"])]
    cs = list(consts if consts is not None else _consts(h))
    if opset >= 18:
        cs.append(h.init("axes", np.array([2, 3], np.int64)))
    return _model(h, body, opset=opset, consts=cs)


def _opset_of(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


# ---------------------------------------------------------------------------------------
# Every spelling fuses
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("spelling", list(HARDSWISH))
@pytest.mark.parametrize("const_shape", [(), (1,)])
def test_each_hardswish_spelling_fuses(h, spelling, const_shape):
    nodes = HARDSWISH[spelling][1]
    m = _hardswish_model(h, spelling, consts=_consts(h, const_shape))
    r = h.check(m, PASS, {"hardswish_fused": 1, "nodes_removed": nodes - 1}, feeds=_feeds())
    assert r.ops() == ["HardSwish"]
    assert r.graph.nodes[0].outputs[0].name == "y"  # the graph output keeps its name
    # the constants went with the spelling; an initializer nobody read is not this pass's
    unread = {t.name for t in m.graph.initializer} - {i for n in m.graph.node for i in n.input}
    assert {t.name for t in r.model.graph.initializer} == unread


def test_add_operands_in_either_order(h):
    r = h.check(_hardswish_model(h, add_swapped=True), PASS, {"hardswish_fused": 1, "nodes_removed": 3},
                feeds=_feeds())
    assert r.ops() == ["HardSwish"]


@pytest.mark.parametrize("sixth", [0.16666667, 0.1666667, 0.16666666666666666])
def test_paddle_spellings_of_one_sixth_match(h, sixth):
    """0.1666667 is PaddlePaddle's hardsigmoid slope (0.16666670143 in float32)."""
    m = _hardswish_model(h, "mul(mul(x,r),1/6)", consts=_consts(h, sixth=sixth))
    h.check(m, PASS, {"hardswish_fused": 1, "nodes_removed": 3}, feeds=_feeds())
    body = [h.node("HardSigmoid", ["x"], ["g"], alpha=sixth, beta=0.5), h.node("Mul", ["x", "g"], ["y"])]
    h.check(_model(h, body, consts=[]), PASS, {"hardswish_fused": 1, "nodes_removed": 1}, feeds=_feeds())


@pytest.mark.parametrize("kind", ["div", "mul", "mul_swapped"])
def test_squeeze_excitation_gate_becomes_hardsigmoid(h, kind):
    r = h.check(_se_model(h, kind), PASS, {"hardsigmoid_fused": 1, "nodes_removed": 2}, feeds=_feeds())
    assert r.ops() == ["ReduceMean", "HardSigmoid", "Mul"]
    hs = r.graph.nodes[1]
    assert hs.inputs[0].name == "s" and hs.outputs[0].name == "g"
    assert hs.attr("alpha") == SIXTH and hs.attr("beta") == 0.5


def test_standalone_gate_as_graph_output_keeps_its_name(h):
    m = _model(h, _gate(h, "div", "x", "y"))
    r = h.check(m, PASS, {"hardsigmoid_fused": 1, "nodes_removed": 2}, feeds=_feeds())
    assert r.ops() == ["HardSigmoid"] and r.graph.nodes[0].outputs[0].name == "y"


def test_chained_activations_share_constants(h):
    """Two HardSwishes reading the same constant initializers, and a gate: all fuse, and a
    constant still read by another node stays."""
    body = [*HARDSWISH["mul(x,div(r,6))"][0](h, "x", "a"),
            *HARDSWISH["div(mul(x,r),6)"][0](h, "a", "b"),
            *_gate(h, "mul", "b", "c"),
            h.node("Add", ["c", "six"], ["y"])]
    r = h.check(_model(h, body), PASS,
                {"hardswish_fused": 2, "hardsigmoid_fused": 1, "nodes_removed": 8}, feeds=_feeds())
    assert r.ops() == ["HardSwish", "HardSwish", "HardSigmoid", "Add"]
    assert [t.name for t in r.model.graph.initializer] == ["six"]


def test_intermediate_hardswish_feeding_several_readers(h):
    """The anchor's output (the activation's result) may be read anywhere."""
    body = [*HARDSWISH["mul(x,mul(r,1/6))"][0](h, "x", "a"),
            h.node("Relu", ["a"], ["y"]), h.node("Neg", ["a"], ["z"])]
    r = h.check(_model(h, body, outputs=[("z", F32, SHAPE), ("a", F32, SHAPE)]), PASS,
                {"hardswish_fused": 1, "nodes_removed": 3}, feeds=_feeds())
    assert r.ops() == ["HardSwish", "Relu", "Neg"]


def test_x_read_by_other_nodes_is_fine(h):
    body = [*HARDSWISH["mul(x,div(r,6))"][0](h, "x", "a"), h.node("Add", ["a", "x"], ["y"])]
    r = h.check(_model(h, body), PASS, {"hardswish_fused": 1, "nodes_removed": 3}, feeds=_feeds())
    assert r.ops() == ["HardSwish", "Add"]


def test_inside_an_if_branch(h):
    branch = oh.make_graph(HARDSWISH["div(mul(x,r),6)"][0](h, "x", "bo"), "then", [],
                           [h.vi("bo", F32, SHAPE)])
    other = oh.make_graph([h.node("Identity", ["x"], ["eo"])], "else", [], [h.vi("eo", F32, SHAPE)])
    body = [h.node("If", ["cond"], ["y"], then_branch=branch, else_branch=other)]
    consts = [*_consts(h), h.init("cond", np.array(True))]
    r = h.check(_model(h, body, consts=consts), PASS, {"hardswish_fused": 1, "nodes_removed": 3},
                feeds=_feeds())
    then = r.graph.nodes[0].attrs["then_branch"].value
    assert [n.op_type for n in then.nodes] == ["HardSwish"]


# ---------------------------------------------------------------------------------------
# What must not fuse
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("consts", "skipped"), [
    (dict(three=2.5), 2),  # Add(x, 2.5): the HardSwish and (inside it) the gate both near-miss
    (dict(six=5.0), 2),  # Div(r, 5)
    (dict(hi=5.0), 2),  # Clip(0, 5)
    (dict(lo=-1.0), 2),  # Clip(-1, 6)
    (dict(three=3.001), 2),  # outside the 1e-6 relative tolerance
])
def test_wrong_constants_are_left_alone(h, consts, skipped):
    h.check_noop(_hardswish_model(h, consts=_consts(h, **consts)), PASS,
                 expected={"skipped_constants": skipped})


def test_wrong_scale_constants_are_left_alone(h):
    h.check_noop(_hardswish_model(h, "mul(mul(x,r),1/6)", consts=_consts(h, sixth=0.167)), PASS,
                 expected={"skipped_constants": 1})
    h.check_noop(_hardswish_model(h, "div(mul(x,r),6)", consts=_consts(h, six=3.0)), PASS,
                 expected={"skipped_constants": 1})
    body = [h.node("HardSigmoid", ["x"], ["g"]), h.node("Mul", ["x", "g"], ["y"])]  # alpha 0.2
    h.check_noop(_model(h, body, consts=[]), PASS, expected={"skipped_constants": 1})


def test_clip_without_an_upper_bound_is_not_relu6(h):
    body = [h.node("Add", ["x", "three"], ["a"]), h.node("Clip", ["a", "lo"], ["r"]),
            h.node("Div", ["r", "six"], ["g"]), h.node("Mul", ["x", "g"], ["y"])]
    h.check_noop(_model(h, body), PASS, expected={"skipped_constants": 2})


def test_gate_of_another_value_is_not_hardswish(h):
    """Mul(f, HardSigmoid(s)) with s != f is a gate, never a HardSwish."""
    body = [h.node("Relu", ["x"], ["s"]), h.node("HardSigmoid", ["s"], ["g"], alpha=SIXTH, beta=0.5),
            h.node("Mul", ["x", "g"], ["y"])]
    h.check_noop(_model(h, body, consts=[]), PASS)


def test_non_constant_operand_is_not_a_match(h):
    body = [h.node("Add", ["x", "t"], ["a"]), h.node("Clip", ["a", "lo", "hi"], ["r"]),
            h.node("Div", ["r", "six"], ["g"]), h.node("Mul", ["x", "g"], ["y"])]
    m = h.model(body, [("x", F32, SHAPE), ("t", F32, [])], [("y", F32, SHAPE)], _consts(h))
    h.check_noop(m, PASS)


def test_overridable_initializer_is_not_a_constant(h):
    """IR >= 4: an initializer also listed as a graph input is a default a caller may replace."""
    m = _hardswish_model(h)
    m.graph.input.append(h.vi("three", F32, []))
    h.check_noop(m, PASS, expected={"skipped_constants": 2})


@pytest.mark.parametrize("value", ["y_g_r_add", "y_g_r"])
def test_intermediate_read_elsewhere_blocks_everything(h, value):
    """The Add or Clip output is read by another node: neither HardSwish nor the gate fuses."""
    body = [*HARDSWISH["mul(x,div(r,6))"][0](h, "x", "y"), h.node("Neg", [value], ["z"])]
    h.check_noop(_model(h, body, outputs=[("z", F32, SHAPE)]), PASS, expected={"skipped_shared": 2})


@pytest.mark.parametrize("value", ["y_g_r_add", "y_g_r", "y_g"])
def test_graph_output_in_the_middle_blocks_the_hardswish(h, value):
    m = _model(h, HARDSWISH["mul(x,div(r,6))"][0](h, "x", "y"), outputs=[(value, F32, SHAPE)])
    if value == "y_g":  # the gate's own output is the HardSigmoid anchor: the gate still fuses
        r = h.check(m, PASS, {"hardsigmoid_fused": 1, "nodes_removed": 2, "skipped_shared": 1},
                    feeds=_feeds())
        assert r.ops() == ["HardSigmoid", "Mul"]
        assert [o.name for o in r.model.graph.output] == ["y", "y_g"]
    else:
        h.check_noop(m, PASS, expected={"skipped_shared": 2})


def test_gate_read_elsewhere_fuses_the_gate_only(h):
    body = [*HARDSWISH["mul(x,mul(r,1/6))"][0](h, "x", "y"), h.node("Neg", ["y_g"], ["z"])]
    r = h.check(_model(h, body, outputs=[("z", F32, SHAPE)]), PASS,
                {"hardsigmoid_fused": 1, "nodes_removed": 2, "skipped_shared": 1}, feeds=_feeds())
    assert r.ops() == ["HardSigmoid", "Mul", "Neg"]


def test_inner_product_read_elsewhere_is_not_fused(h):
    body = [*HARDSWISH["div(mul(x,r),6)"][0](h, "x", "y"), h.node("Neg", ["y_m"], ["z"])]
    h.check_noop(_model(h, body, outputs=[("z", F32, SHAPE)]), PASS, expected={"skipped_shared": 1})


def test_double_is_left_alone(h):
    """onnxruntime's HardSwish / HardSigmoid kernels take float32 only."""
    m = _hardswish_model(h, consts=_consts(h, dtype=np.float64), elem=F64)
    h.check_noop(m, PASS, expected={"skipped_dtype": 2})


def test_one_element_constants_need_x_of_known_rank(h):
    """Add(x, [3]) of a scalar x is [1]: HardSwish(x) would be a scalar."""
    m = _hardswish_model(h, consts=_consts(h, (1,)), shape=[], outputs=())
    m.graph.output[0].CopyFrom(h.vi("y", F32, [1]))
    h.check_noop(m, PASS, expected={"skipped_rank": 2})
    # with scalar constants the shape is x's: fuses
    r = h.check(_hardswish_model(h, shape=[]), PASS, {"hardswish_fused": 1, "nodes_removed": 3},
                feeds=_feeds(shape=[]))
    assert r.ops() == ["HardSwish"]


def test_unselected_anchor_is_left_alone(h):
    m = _hardswish_model(h)
    ctx = PassContext(selector=Selector(op_types=("Div",)))  # the gate's Div, not the outer Mul
    r = h.check(m, PASS, {"hardsigmoid_fused": 1, "nodes_removed": 2}, ctx=ctx, feeds=_feeds())
    assert r.ops() == ["HardSigmoid", "Mul"]
    h.check_noop(m, PASS, ctx=PassContext(selector=Selector(name_glob="nothing*")))


def test_options_turn_each_fusion_off(h):
    r = h.check(_hardswish_model(h), PASS, {"hardsigmoid_fused": 1, "nodes_removed": 2},
                feeds=_feeds(), hardswish=False)
    assert r.ops() == ["HardSigmoid", "Mul"]
    h.check_noop(_hardswish_model(h), PASS, hardswish=False, hardsigmoid=False)
    h.check_noop(_se_model(h), PASS, hardsigmoid=False)
    # the HardSwish spelling does not need the hardsigmoid option
    h.check(_hardswish_model(h), PASS, {"hardswish_fused": 1, "nodes_removed": 3}, feeds=_feeds(),
            hardsigmoid=False)


def test_constant_nodes_as_constants(h):
    """Un-cleaned exports (PaddlePaddle's p2o.helper.constant.*) hold 3 and 6 in Constant
    nodes; those left unread are removed, one still read elsewhere stays."""
    def const(name, v):
        return h.node("Constant", [], [name], value=h.init(name, np.float32(v)))
    body = [const("three", 3), const("lo", 0), const("hi", 6), const("six", 6),
            *HARDSWISH["mul(x,div(r,6))"][0](h, "x", "a"), h.node("Add", ["a", "six"], ["y"])]
    r = h.check(_model(h, body, consts=[]), PASS, {"hardswish_fused": 1, "nodes_removed": 6},
                feeds=_feeds())
    assert r.ops() == ["Constant", "HardSwish", "Add"]


def test_in_a_compile_with_verify_each(h):
    m = _hardswish_model(h, opset=12)
    res = homec.compile(m, "schedule { fuse_activations }", verify=True, verify_each=True)
    assert [n.op_type for n in res.graph.nodes] == ["HardSwish"]
    assert res.report["verification"]["ok"]


def test_nothing_to_fuse_is_byte_identical(h):
    body = [h.node("Relu", ["x"], ["a"]), h.node("Mul", ["a", "six"], ["y"])]
    h.check_noop(_model(h, body), PASS)


# ---------------------------------------------------------------------------------------
# Opsets
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("opset", [12, 13])
def test_older_model_is_upgraded_to_14(h, opset):
    body = [h.node("Relu", ["x"], ["a"]), *HARDSWISH["mul(x,div(r,6))"][0](h, "a", "y", opset=opset)]
    r = h.check(_model(h, body, opset=opset), PASS,
                {"hardswish_fused": 1, "nodes_removed": 3, "opset_upgraded_to": 14}, feeds=_feeds())
    assert r.ops() == ["Relu", "HardSwish"] and _opset_of(r.model) == 14


def test_clip_with_attribute_bounds_below_opset_11(h):
    body = HARDSWISH["div(mul(x,r),6)"][0](h, "x", "y", opset=10)
    # the converter turns the attributes into Constant nodes (0 and 6), removed once unread
    r = h.check(_model(h, body, opset=10), PASS,
                {"hardswish_fused": 1, "nodes_removed": 5, "opset_upgraded_to": 14}, feeds=_feeds())
    assert r.ops() == ["HardSwish"] and _opset_of(r.model) == 14
    # a gate alone needs no upgrade (HardSigmoid exists from opset 6)
    r = h.check(_se_model(h, "mul", opset=10), PASS, {"hardsigmoid_fused": 1, "nodes_removed": 2},
                feeds=_feeds())
    assert _opset_of(r.model) == 10
    # Clip(0, 5) by attributes is no Relu6 (and, no HardSwish to fuse, no upgrade: only the
    # gate's near miss is counted)
    body = [h.node("Add", ["x", "three"], ["a"]), h.node("Clip", ["a"], ["r"], min=0.0, max=5.0),
            h.node("Div", ["r", "six"], ["g"]), h.node("Mul", ["x", "g"], ["y"])]
    r = h.check_noop(_model(h, body, opset=10), PASS, expected={"skipped_constants": 1})
    assert _opset_of(r.model) == 10


def test_opset_13_without_upgrade_fuses_only_gates(h):
    m = _hardswish_model(h, opset=13)
    r = h.check(m, PASS, {"hardsigmoid_fused": 1, "nodes_removed": 2, "skipped_opset": 1},
                feeds=_feeds(), upgrade_opset=False)
    assert r.ops() == ["HardSigmoid", "Mul"] and _opset_of(r.model) == 13
    # no gate in this spelling: nothing changes at all
    h.check_noop(_hardswish_model(h, "div(mul(x,r),6)", opset=13), PASS,
                 expected={"skipped_opset": 1}, upgrade_opset=False)
    # the gate fused by the first run is a HardSwish spelling once upgrading is allowed
    r2 = h.check(r.model, PASS, {"hardswish_fused": 1, "nodes_removed": 1, "opset_upgraded_to": 14},
                 feeds=_feeds())
    assert r2.ops() == ["HardSwish"]


def test_no_upgrade_without_a_hardswish(h):
    h.check_noop(_model(h, [h.node("Relu", ["x"], ["y"])], opset=12), PASS)


def test_conversion_that_changes_outputs_is_refused(h, monkeypatch):
    real = homec.onnx_io.convert_opset

    def converter_with_a_bug(graph, version):
        real(graph, version)
        bias = graph.value("bias")
        constant_in_place(bias, np.full(SHAPE[1:], 2.0, np.float32), Names(graph))

    monkeypatch.setattr(homec.onnx_io, "convert_opset", converter_with_a_bug)
    body = [h.node("Add", ["x", "bias"], ["a"]), *HARDSWISH["mul(x,div(r,6))"][0](h, "a", "y", opset=12)]
    m = _model(h, body, opset=12, consts=[*_consts(h), h.init("bias", np.ones(SHAPE[1:], np.float32))])
    with pytest.raises(UnsupportedError, match="changed its outputs"):
        h.apply(m, PASS)


def test_conversion_the_converter_cannot_do_is_skipped_with_a_warning(h, monkeypatch):
    def failing_converter(graph, version):
        raise UnsupportedError(f"cannot convert the model to opset {version}: no adapter")

    monkeypatch.setattr(homec.onnx_io, "convert_opset", failing_converter)
    ctx = PassContext()
    r = h.check_noop(_hardswish_model(h, "div(mul(x,r),6)", opset=12), PASS, ctx=ctx,
                     expected={"skipped_opset": 1})
    assert _opset_of(r.model) == 12
    assert any("no adapter" in w for w in ctx.warnings)


def test_model_onnxruntime_cannot_run_is_not_converted(h):
    body = [h.node("Foo", ["x"], ["a"], domain="com.example"),
            *HARDSWISH["mul(x,div(r,6))"][0](h, "a", "y", opset=12)]
    m = _model(h, body, opset=12)
    m.opset_import.append(oh.make_opsetid("com.example", 1))
    ctx = PassContext()
    r = h.apply(m, PASS, ctx)
    assert r.stats["skipped_opset"] == 1 and r.stats["hardsigmoid_fused"] == 1
    assert "opset_upgraded_to" not in r.stats and _opset_of(r.model) == 12
    assert any("cannot be checked" in w for w in ctx.warnings)


def test_conversion_is_checked_on_calibration_samples(h, monkeypatch):
    """With calibration data the conversion check runs on those samples."""
    seen = []
    real_run = homec.verify.run_model

    def spy(model, feeds, **kw):
        seen.append(feeds["x"])
        return real_run(model, feeds, **kw)

    monkeypatch.setattr(homec.verify, "run_model", spy)
    sample = _feeds(seed=5)
    r = h.apply(_hardswish_model(h, opset=12), PASS, PassContext(calib=[sample]))
    assert r.stats["opset_upgraded_to"] == 14
    assert len(seen) == 2 and all(np.array_equal(s, sample["x"]) for s in seen)


# ---------------------------------------------------------------------------------------
# Differential: generated graphs with spellings spliced in
# ---------------------------------------------------------------------------------------

_SPLICED = [*HARDSWISH, "gate:div", "gate:mul", "gate:mul_swapped", "near-miss:clip5", "near-miss:shared"]
_GEN_OPS = tuple(op for op in DEFAULT_OPS if op not in ("QuantizeLinear", "DequantizeLinear", "Cast"))
_GEN_OPSETS = (17, 13, 15, 21)


def _splice(h, model: onnx.ModelProto, seed: int) -> tuple[onnx.ModelProto, int]:
    """Rewrite up to three float32 values v of `model` (rank >= 1) as v = act(2.5 * v_pre)
    with a random spelling `act`; returns the model and how many spellings must fuse.
    Rounding steps (QuantizeLinear, Cast) are not generated: a 1-ulp change would flip them."""
    rng = np.random.RandomState(seed)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inferred = onnx.shape_inference.infer_shapes(m)
    typed = {vi.name: vi.type.tensor_type for vi in [*inferred.graph.value_info, *inferred.graph.output]}
    spots = [(i, j) for i, n in enumerate(m.graph.node) for j, o in enumerate(n.output)
             if o in typed and typed[o].elem_type == F32 and typed[o].HasField("shape")
             and len(typed[o].shape.dim) >= 1]
    if not spots:
        return m, 0
    picks = sorted(rng.choice(len(spots), size=min(3, len(spots)), replace=False), reverse=True)
    must_fuse = 0
    for k, p in enumerate(picks):
        i, j = spots[p]
        node = m.graph.node[i]
        v = node.output[j]
        pre, scaled, pfx = f"{v}__pre{k}", f"{v}__s{k}", f"inj{k}_"
        node.output[j] = pre
        spelling = _SPLICED[rng.randint(len(_SPLICED))]
        if spelling in HARDSWISH:
            body = HARDSWISH[spelling][0](h, scaled, v)
            must_fuse += 1
        elif spelling.startswith("gate:"):  # an SE-style gate: v = v_pre * gate(2.5 v_pre)
            body = [*_gate(h, spelling[5:], scaled, v + "_g"), h.node("Mul", [pre, v + "_g"], [v])]
            must_fuse += 1
        elif spelling == "near-miss:clip5":
            body = [h.node("Add", [scaled, "three"], [v + "_a"]),
                    h.node("Clip", [v + "_a", "lo", "five"], [v + "_r"]),
                    h.node("Div", [v + "_r", "six"], [v + "_g"]), h.node("Mul", [scaled, v + "_g"], [v])]
        else:  # the Clip output also feeds the result: stays
            body = [*_relu6(h, scaled, v + "_r"), h.node("Div", [v + "_r", "six"], [v + "_g"]),
                    h.node("Mul", [scaled, v + "_g"], [v + "_m"]),
                    h.node("Add", [v + "_m", v + "_r"], [v])]
        body = [h.node("Mul", [pre, "scale"], [scaled]), *body]
        for n in body:  # this splice's own constants
            n.input[:] = [pfx + s if s in ("three", "six", "sixth", "lo", "hi", "five", "scale") else s
                          for s in n.input]
        nodes = list(m.graph.node)
        nodes[i + 1:i + 1] = body
        del m.graph.node[:]
        m.graph.node.extend(nodes)
        for t in [*_consts(h), h.init("five", np.float32(5.0)), h.init("scale", np.float32(2.5))]:
            t.name = pfx + t.name
            m.graph.initializer.append(t)
    return m, must_fuse


def _differential(h, seed: int) -> tuple[list[str], int]:
    """verify-each checks of fuse_activations on a spliced generated model: what went wrong,
    and how many spellings fused."""
    base = random_model(seed, max_nodes=30, ops=_GEN_OPS, opset=_GEN_OPSETS[seed % len(_GEN_OPSETS)])
    m, must_fuse = _splice(h, base, seed)
    onnx.checker.check_model(m, full_check=True)
    feeds = random_feeds(m, seed, override_initializers=True)
    ref = run_ort(m, feeds)
    info = REGISTRY.get(PASS)
    g = homec.load(m)
    stats = info.fn(g, PassContext(), **info.bind({}))
    g.verify()
    out = g.to_onnx()
    problems = []
    onnx.checker.check_model(out, full_check=True)
    if [i.name for i in out.graph.input] != [i.name for i in m.graph.input] or \
            [o.name for o in out.graph.output] != [o.name for o in m.graph.output]:
        problems.append("interface changed")
    fused = stats["hardswish_fused"] + stats["hardsigmoid_fused"]
    if fused < must_fuse:
        problems.append(f"{fused} fused, {must_fuse} spliced spellings must fuse: {stats}")
    data = out.SerializeToString(deterministic=True)
    if data != homec.load(m).to_onnx().SerializeToString(deterministic=True) and not h.changes(stats):
        problems.append(f"changed without reporting it: {stats}")
    cmp = compare(ref, run_ort(out, feeds), info.tolerance, names=[o.name for o in m.graph.output])
    if not cmp.ok:
        problems.append(cmp.describe())
    again = info.fn(g, PassContext(), **info.bind({}))
    if h.changes(again) or g.to_onnx().SerializeToString(deterministic=True) != data:
        problems.append(f"second run changed something: {h.changes(again)}")
    return [f"seed {seed}: {p}" for p in problems], fused


def test_generated_graphs_with_spliced_spellings(h):
    problems, fused = [], 0
    for seed in range(2000, 2060):
        p, n = _differential(h, seed)
        problems += p
        fused += n
    assert not problems, "\n".join(problems)
    assert fused >= 60, f"only {fused} spellings fused over 60 graphs: the splicing found no spots"


# ---------------------------------------------------------------------------------------
# PP-OCRv4 (rapidocr-onnxruntime): every HardSwish fuses, outputs stay within tolerance
# ---------------------------------------------------------------------------------------


def _ocr_models() -> dict[str, Path]:
    import rapidocr_onnxruntime

    d = Path(rapidocr_onnxruntime.__file__).parent / "models"
    return {kind: next(d.glob(f"*{kind}*.onnx")) for kind in ("det", "rec", "cls")}


_text_image = text_like_image


# kind -> input shape, HardSwish spellings in the model (Mul(x, Clip(x + 3, 0, 6)) / 6)
OCR = {"det": ((1, 3, 256, 320), 24), "rec": ((2, 3, 48, 320), 28), "cls": ((2, 3, 48, 192), 18)}


@functools.lru_cache(maxsize=None)
def _cleaned(kind: str) -> onnx.ModelProto:
    return homec.compile(_ocr_models()[kind], "schedule { cleanup }").model


@pytest.mark.parametrize("kind", list(OCR))  # ~2 s each: not marked slow
def test_pp_ocr_models(kind, record_property):
    shape, spellings = OCR[kind]
    cleaned = _cleaned(kind)
    assert _opset_of(cleaned) < 14
    info = REGISTRY.get(PASS)
    g = homec.load(cleaned)
    before = len(g)
    ops_before = Counter(n.op_type for n in g.nodes)
    stats = info.fn(g, PassContext(), **info.bind({}))
    g.verify()
    out = g.to_onnx()
    onnx.checker.check_model(out, full_check=True)
    assert _changes(stats) == {"hardswish_fused": spellings, "nodes_removed": 3 * spellings,
                               "opset_upgraded_to": 14}
    ops = Counter(n.op_type for n in g.nodes)
    assert ops["HardSwish"] == spellings and ops["Clip"] == 0
    for op in ("Add", "Mul", "Div"):  # one of each per spelling
        assert ops[op] == ops_before[op] - spellings
    # onnx's opset converter adds nodes of its own (rec: Squeeze axes as Constant nodes,
    # Flatten/Shape/Reshape around Softmax to keep its opset-11 semantics)
    assert len(g) >= before - 3 * spellings
    rng = np.random.default_rng(0)
    name = cleaned.graph.input[0].name
    print(f"\n{kind}: {before} -> {len(g)} nodes, {_changes(stats)}")
    for x in (_text_image(rng, shape), rng.random(shape, dtype=np.float32)):
        cmp = compare(run_ort(cleaned, {name: x}), run_ort(out, {name: x}), info.tolerance)
        assert cmp.ok, cmp
        print(cmp.describe())
    record_property("nodes_before", before)
    record_property("nodes_after", len(g))
    again = info.fn(g, PassContext(), **info.bind({}))
    assert not _changes(again)


def _changes(stats: dict) -> dict:
    """The statistics recording a change (zeros and skipped_* dropped)."""
    return {k: v for k, v in stats.items() if v and not k.startswith("skipped")}
