"""Fuse decomposed HardSwish / HardSigmoid (Add, Clip, Div, Mul spellings) into single ops."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import numpy as np

from homec import dtypes as D
from homec.context import PassContext
from homec.ir import Graph, Node, Value
from homec.registry import Stats, Tolerance, register_pass

from ._util import (Names, OpsetUpgradeError, Types, all_graphs, constant_array, opset, remove_constant,
                    replace_value, upgrade_opset)

HARDSWISH_OPSET = 14  # HardSwish-14 is the first version of the op
HARDSIGMOID_OPSET = 6  # HardSigmoid-6 dropped the legacy `consumed_inputs` attribute
CLIP_INPUT_BOUNDS_OPSET = 11  # Clip-11 moved min/max from attributes to inputs

# How close a constant must be to 3, 6, 1/6 or 0.5: about 8 float32 ulps, so 1/6 spelled
# 0.16666667 or 0.1666667 (PaddlePaddle's slope, 0.16666670143...) matches, 0.167 does not.
CONST_RTOL = 1e-6
ONE_SIXTH = float(np.float32(1 / 6))

# Why a pattern whose wiring matched was left alone (statistics `skipped_<reason>`).
WRONG_CONSTANT = "constants"  # a constant is not 3 / 0 / 6 / 1/6 / 0.5
WRONG_DTYPE = "dtype"  # not float32 (the only type onnxruntime's kernels take)
SHARED = "shared"  # an intermediate value is read outside the pattern or is a graph output
RANK = "rank"  # a [1]-shaped constant and x of unknown rank: the result's shape may differ

# An operand that must hold a known number: a constant input (None when omitted) or an
# attribute value read off a node (Clip before opset 11, HardSigmoid).
Operand = Value | float | None


@dataclasses.dataclass(frozen=True)
class Candidate:
    """The wiring of one spelling around an anchor node; constants not yet checked."""

    anchor: Node  # the last node: its output becomes the fused op's output
    x: Value  # the activation's input
    nodes: tuple[Node, ...]  # every node of the spelling (the anchor among them)
    expected: tuple[tuple[Operand, float], ...]  # each constant operand and the value it needs

    def constant_values(self) -> Iterator[Value]:
        for operand, _ in self.expected:
            if isinstance(operand, Value):
                yield operand


Matcher = Callable[[Node], Iterator[Candidate]]


# The fused kernels round differently by an ulp per activation; through the 24 HardSwishes
# and 60 convolutions of PP-OCRv4 det that grows to 1.5e-5 of the output's scale (the
# probability map, on text-like 736x1280 inputs), over float_refold's default 1e-5.
TOLERANCE = Tolerance.float_refold(rtol=1e-4)


@register_pass("fuse_activations", tolerance=TOLERANCE)
def fuse_activations(graph: Graph, ctx: PassContext, *, hardswish: bool = True,
                     hardsigmoid: bool = True, upgrade_opset: bool = True) -> Stats:
    """Fuse HardSwish and HardSigmoid spelled with Add, Clip, Div and Mul into one op each.

    PaddlePaddle exports (PP-OCR, MobileNetV3) write HardSwish as x * Clip(x + 3, 0, 6) / 6:
    four passes over memory instead of one, and onnxruntime does not fuse them back.

    Algebra: with r(x) = Clip(x + 3, 0, 6) = 6 * max(0, min(1, x/6 + 1/2)),
      r(x) / 6 = r(x) * (1/6) = HardSigmoid(x; alpha=1/6, beta=1/2)
      x * r(x) / 6 = x * (r(x) / 6) = HardSwish(x).
    Spellings fused into HardSwish(x) (commutative operands in either order):
      Mul(x, Div(r(x), 6))    Mul(x, Mul(r(x), 1/6))    Mul(x, HardSigmoid(x; 1/6, 1/2))
      Div(Mul(x, r(x)), 6)    Mul(Mul(x, r(x)), 1/6)
    and into HardSigmoid(x; alpha=1/6, beta=1/2), where no HardSwish is fused around it
    (the gates of squeeze-excitation blocks): Div(r(x), 6) and Mul(r(x), 1/6).
    r(x) is Add(x, 3) followed by Clip with min 0 and max 6 (inputs from opset 11,
    attributes before); no other Clip bounds. The fused kernels compute x/6 + 1/2 where the
    spelling computes (x + 3)/6, which rounds differently by an ulp (near x = -3 that is a
    large relative error of a near-zero value, tiny against the output's scale): float_refold
    tolerance with rtol 1e-4, as a deep network amplifies those ulps (PP-OCRv4 det moves by
    1.5e-5 of its output's scale). Results agree for finite inputs.

    Conditions: constants are float32 scalars or [1]-shaped, initializers (not overridable
    graph inputs) or Constant node outputs, within a relative 1e-6 of 3, 6, 1/6 and 1/2
    (0 exactly); x is float32; every value inside a spelling is read only inside it and is
    not a graph output (the anchor's output, which keeps its name, may be read anywhere);
    with a [1]-shaped
    constant, x must be known to have rank >= 1 (else broadcasting would change the
    result's shape). The anchor (the last node: the outer Mul or Div) must be selected.
    Constants (initializers, Constant nodes) left without readers are removed.

    Opsets: HardSwish needs opset 14. A model below 14 with at least one HardSwish to fuse
    is converted with onnx's version converter (`homec.onnx_io.convert_opset`) when
    `upgrade_opset`, after checking with onnxruntime that the converted model gives the
    same outputs (float_refold) on the calibration samples, or on seeded random inputs
    without any; a conversion that changes the outputs raises UnsupportedError, one the
    converter or onnxruntime cannot do is skipped with a warning. HardSigmoid needs
    opset 6. What an opset too low blocks is counted in `skipped_opset`.

    Options:
      hardswish: fuse HardSwish spellings.
      hardsigmoid: fuse HardSigmoid spellings (gates inside fusable HardSwish spellings are
        fused into the HardSwish instead when `hardswish` is on and the opset allows).
      upgrade_opset: convert a model below opset 14 to 14 when it has a HardSwish to fuse.

    Statistics: hardswish_fused, hardsigmoid_fused, nodes_removed (the spellings' nodes
    less the fused ones, and Constant nodes left unread), opset_upgraded_to (when
    the model was converted); skipped_opset, skipped_constants, skipped_dtype,
    skipped_shared, skipped_rank count spellings whose wiring matched but were left alone.
    """
    st: Stats = {"hardswish_fused": 0, "hardsigmoid_fused": 0, "nodes_removed": 0,
                 "skipped_opset": 0, "skipped_constants": 0, "skipped_dtype": 0,
                 "skipped_shared": 0, "skipped_rank": 0}
    version = opset(graph)
    if hardswish and version < HARDSWISH_OPSET:
        pending = _count_fusable(graph, ctx, _hardswish_candidates)
        if pending and upgrade_opset and _upgrade(graph, ctx, HARDSWISH_OPSET):
            st["opset_upgraded_to"] = HARDSWISH_OPSET
            version = HARDSWISH_OPSET
        else:
            st["skipped_opset"] += pending
    if hardswish and version >= HARDSWISH_OPSET:
        _fuse_all(graph, ctx, _hardswish_candidates, "HardSwish", {}, "hardswish_fused", st)
    if hardsigmoid:
        if version >= HARDSIGMOID_OPSET:
            _fuse_all(graph, ctx, _hardsigmoid_candidates, "HardSigmoid",
                      {"alpha": ONE_SIXTH, "beta": 0.5}, "hardsigmoid_fused", st)
        else:
            st["skipped_opset"] += _count_fusable(graph, ctx, _hardsigmoid_candidates)
    return st


# ---------------------------------------------------------------------------------------
# Driver: find, check, rewrite
# ---------------------------------------------------------------------------------------


def _fuse_all(graph: Graph, ctx: PassContext, candidates: Matcher, op_type: str,
              attrs: dict[str, float], counter: str, st: Stats) -> None:
    types = Types(graph)
    names = Names(graph)
    for g in list(all_graphs(graph)):
        orphans: dict[int, Value] = {}
        for node in g.nodes:
            if node.graph is not g or not ctx.selected(node):
                continue  # removed by an earlier rewrite, or not ours to touch
            found, reason = _first_fusable(candidates(node), types)
            if found is None:
                if reason is not None:
                    st[f"skipped_{reason}"] += 1
                continue
            _rewrite(g, found, op_type, attrs, names)
            st[counter] += 1
            st["nodes_removed"] += len(found.nodes) - 1
            orphans.update((id(v), v) for v in found.constant_values())
        for v in orphans.values():
            if v.graph is None or v.uses or v.is_graph_output or v.is_graph_input:
                continue
            if v.producer is not None:  # a Constant node
                v.producer.graph.remove_nodes([v.producer])
                st["nodes_removed"] += 1
            else:
                remove_constant(v)


def _count_fusable(graph: Graph, ctx: PassContext, candidates: Matcher) -> int:
    """How many anchors have a spelling that passes its checks (nothing is changed)."""
    types = Types(graph)
    return sum(1 for g in all_graphs(graph) for node in g.nodes
               if ctx.selected(node) and _first_fusable(candidates(node), types)[0] is not None)


def _first_fusable(candidates: Iterator[Candidate], types: Types) -> tuple[Candidate | None, str | None]:
    """The first candidate passing `_check`, else None and the first candidate's reason
    (None when no spelling's wiring matched at all)."""
    first_reason = None
    for cand in candidates:
        reason = _check(cand, types)
        if reason is None:
            return cand, None
        first_reason = first_reason or reason
    return None, first_reason


def _check(cand: Candidate, types: Types) -> str | None:
    """Why `cand` may not be fused (a reason key), or None when it may."""
    needs_rank = False
    float32_constant = False  # a float32 tensor combined with x proves x is float32 too
    for operand, want in cand.expected:
        if isinstance(operand, Value):
            arr = constant_array(operand)
            if arr is None or arr.size != 1 or arr.ndim > 1:
                return WRONG_CONSTANT
            if arr.dtype != np.float32:
                return WRONG_DTYPE
            needs_rank |= arr.ndim == 1
            float32_constant = True
            value = float(arr.reshape(()))
        elif isinstance(operand, float):
            value = operand
        else:
            return WRONG_CONSTANT  # an omitted Clip bound means -inf / +inf
        if not _close(value, want):
            return WRONG_CONSTANT
    if types.elem(cand.x) != D.FLOAT and not (float32_constant and types.elem(cand.x) is None):
        return WRONG_DTYPE
    inside = {id(n) for n in cand.nodes}
    for node in cand.nodes:
        if node is cand.anchor:
            continue
        for out in node.outputs:
            if out is not None and (out.is_graph_output or
                                    any(id(user) not in inside for user in out.users)):
                return SHARED
    if needs_rank:
        rank = types.rank(cand.x)
        if rank is None or rank < 1:
            return RANK
    return None


def _close(value: float, want: float) -> bool:
    return value == want if want == 0 else abs(value - want) <= CONST_RTOL * abs(want)


def _rewrite(g: Graph, cand: Candidate, op_type: str, attrs: dict[str, float], names: Names) -> None:
    """Replace the spelling by one `op_type` node reading x; its output takes the anchor's
    output name."""
    old = cand.anchor.outputs[0]
    assert old is not None
    new = Value(names.fresh(old.name))
    g.insert(Node(op_type, [cand.x], [new], name=cand.anchor.name, attrs=dict(attrs)),
             before=cand.anchor)
    replaced = replace_value(old, new, names, keep_name=True)
    assert replaced, "a fresh node output can always take the anchor's name"
    g.remove_nodes(cand.nodes)


# ---------------------------------------------------------------------------------------
# Spellings: the wiring of each pattern (constants are checked by `_check`)
# ---------------------------------------------------------------------------------------


def _producer(v: Value | None, op_type: str, g: Graph | None) -> Node | None:
    """The node producing `v` when it is a default-domain `op_type` of graph `g`."""
    p = v.producer if v is not None else None
    if p is None or p.op_type != op_type or p.domain != "" or p.graph is not g:
        return None
    return p


def _both_orders(node: Node) -> Iterator[tuple[Value, Value]]:
    """(a, b) and (b, a) for a binary node's inputs a, b."""
    if len(node.inputs) == 2 and node.inputs[0] is not None and node.inputs[1] is not None:
        a, b = node.inputs
        yield a, b
        if a is not b:
            yield b, a


def _constant_like(v: Value) -> bool:
    """Could be one of the pattern's constants (its value is judged by `_check`)."""
    return v.const is not None or (v.producer is not None and v.producer.op_type == "Constant")


@dataclasses.dataclass(frozen=True)
class _Part:
    """A matched sub-expression of x."""

    x: Value
    nodes: tuple[Node, ...]
    expected: tuple[tuple[Operand, float], ...]


def _relu6_shifted(v: Value, g: Graph) -> Iterator[_Part]:
    """v = Clip(Add(x, 3), 0, 6)."""
    clip = _producer(v, "Clip", g)
    if clip is None or not clip.inputs:
        return
    add = _producer(clip.inputs[0], "Add", g)
    if add is None:
        return
    if opset(g) < CLIP_INPUT_BOUNDS_OPSET:
        lo: Operand = float(clip.attr("min", -3.4028234663852886e38))
        hi: Operand = float(clip.attr("max", 3.4028234663852886e38))
    else:
        lo = clip.inputs[1] if len(clip.inputs) > 1 else None
        hi = clip.inputs[2] if len(clip.inputs) > 2 else None
    for x, three in _both_orders(add):
        if _constant_like(three):
            yield _Part(x, (add, clip), ((three, 3.0), (lo, 0.0), (hi, 6.0)))


def _gate(v: Value, g: Graph) -> Iterator[_Part]:
    """v = HardSigmoid(x; 1/6, 1/2) in one of its spellings: Div(r, 6), Mul(r, 1/6), or
    the op itself."""
    div = _producer(v, "Div", g)
    if div is not None and len(div.inputs) == 2 and div.inputs[1] is not None \
            and _constant_like(div.inputs[1]):
        for r in _relu6_shifted(div.inputs[0], g):
            yield _Part(r.x, (*r.nodes, div), (*r.expected, (div.inputs[1], 6.0)))
    mul = _producer(v, "Mul", g)
    if mul is not None:
        for rv, sixth in _both_orders(mul):
            if _constant_like(sixth):
                for r in _relu6_shifted(rv, g):
                    yield _Part(r.x, (*r.nodes, mul), (*r.expected, (sixth, ONE_SIXTH)))
    hs = _producer(v, "HardSigmoid", g)
    if hs is not None and hs.inputs and hs.inputs[0] is not None:
        yield _Part(hs.inputs[0], (hs,), ((float(hs.attr("alpha", 0.2)), ONE_SIXTH),
                                          (float(hs.attr("beta", 0.5)), 0.5)))


def _x_times_relu6(v: Value, g: Graph) -> Iterator[_Part]:
    """v = Mul(x, r(x))."""
    mul = _producer(v, "Mul", g)
    if mul is None:
        return
    for x, rv in _both_orders(mul):
        for r in _relu6_shifted(rv, g):
            if r.x is x:
                yield _Part(x, (*r.nodes, mul), r.expected)


def _hardswish_candidates(node: Node) -> Iterator[Candidate]:
    """Spellings of HardSwish ending at `node`."""
    g = node.graph
    if node.domain != "" or len(node.inputs) != 2 or not node.outputs or node.outputs[0] is None:
        return
    if node.op_type == "Mul":
        for x, gv in _both_orders(node):  # Mul(x, gate(x))
            for p in _gate(gv, g):
                if p.x is x:
                    yield Candidate(node, x, (*p.nodes, node), p.expected)
        for prod, sixth in _both_orders(node):  # Mul(Mul(x, r(x)), 1/6)
            if _constant_like(sixth):
                for p in _x_times_relu6(prod, g):
                    yield Candidate(node, p.x, (*p.nodes, node), (*p.expected, (sixth, ONE_SIXTH)))
    elif node.op_type == "Div":  # Div(Mul(x, r(x)), 6)
        prod, six = node.inputs
        if prod is not None and six is not None and _constant_like(six):
            for p in _x_times_relu6(prod, g):
                yield Candidate(node, p.x, (*p.nodes, node), (*p.expected, (six, 6.0)))


def _hardsigmoid_candidates(node: Node) -> Iterator[Candidate]:
    """Spellings of HardSigmoid(x; 1/6, 1/2) ending at `node` (not the op itself)."""
    if node.op_type not in ("Div", "Mul") or not node.outputs or node.outputs[0] is None:
        return
    for p in _gate(node.outputs[0], node.graph):
        if p.nodes[-1] is node:
            yield Candidate(node, p.x, p.nodes, p.expected)


# ---------------------------------------------------------------------------------------
# Opset upgrade
# ---------------------------------------------------------------------------------------


def _upgrade(graph: Graph, ctx: PassContext, version: int) -> bool:
    """Convert the model to `version`, checked with onnxruntime (`_util.upgrade_opset`).

    False (graph untouched, a warning) when onnxruntime cannot run the model or the
    converter cannot convert it; UnsupportedError when the converted model runs differently.
    """
    try:
        upgrade_opset(graph, ctx, version, purpose="needed for HardSwish",
                      hint="run fuse_activations with upgrade_opset=false")
    except OpsetUpgradeError as e:
        if e.stage == "changed":
            raise
        ctx.warn(f"fuse_activations: HardSwish left unfused: {e.message}")
        return False
    return True
