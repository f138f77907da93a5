"""Constant folding: Constant nodes become initializers, constant subgraphs are evaluated."""

from __future__ import annotations

from typing import Annotated

import numpy as np

from homec.context import PassContext
from homec.dtypes import itemsize_bits
from homec.ir import Graph, Node, Value
from homec.registry import Range, Stats, Tolerance, register_pass

from ._ort import EvalError, as_tensor, evaluate
from ._util import (NONDETERMINISTIC, STANDARD_DOMAINS, Names, Types, all_graphs,
                    can_add_constant, constant_in_place, constant_node_data, is_const)

MiB = 1 << 20

# Ops whose outputs are not tensors (sequences, optionals): nothing to store as initializer.
_NON_TENSOR_OPS = frozenset({
    "SequenceConstruct", "SequenceEmpty", "SequenceInsert", "SequenceErase", "SequenceAt",
    "SequenceLength", "SequenceMap", "SplitToSequence", "Optional", "OptionalGetElement",
    "OptionalHasElement",
})


@register_pass("fold_constants", tolerance=Tolerance.float_refold())
def fold_constants(
    graph: Graph,
    ctx: PassContext,
    *,
    max_output_bytes: Annotated[int, Range(0, None)] = 64 * MiB,
    fold_dequantize: bool = False,
    cap_weights: bool = False,
) -> Stats:
    """Replace Constant nodes by initializers and nodes with all-constant inputs by their values.

    Algebra: `y = Constant<value=t>()` becomes the initializer `y = t`. A node `y = op(c1..cn)`
    whose inputs are all constants (initializers a caller cannot override, see
    passes/_util.py) is evaluated once by onnxruntime under the model's own opset imports,
    and `y` becomes an initializer holding the result; chains of such nodes are evaluated
    together (one onnxruntime session per graph), and only values read by the rest of the
    graph (or graph outputs) are stored. Folded values keep their names, so graph outputs
    keep theirs. Results are what onnxruntime computes, hence the float_refold tolerance.

    Never folded (counted in `skipped_*`): random ops (RandomNormal*, RandomUniform*,
    Multinomial, Bernoulli), ops with subgraphs (If/Loop/Scan), ops of custom domains
    (only the default and ai.onnx.ml domains are evaluated), sequence/optional ops,
    DequantizeLinear unless `fold_dequantize` (folding it would undo a quantized-weight
    format), values larger than `max_output_bytes` (predicted from inferred shapes before
    running, or measured after), and nodes onnxruntime fails on. Subgraphs of IR < 4 models
    are left alone (their initializers would have to be subgraph inputs).

    Options:
      max_output_bytes: the largest value stored as an initializer (default 64 MiB, which
        folds every ConstantOfShape weight of ResNet50/DenseNet-size models); a larger value
        stays computed at run time and is reported as `skipped_too_large`.
      fold_dequantize: also fold DequantizeLinear of constant (quantized) weights.
      cap_weights: apply `max_output_bytes` to layer weights too. By default a value read
        only as the weight or bias of Conv/ConvTranspose/Gemm/MatMul is folded whatever its
        size: a runtime materializes it anyway, and pruning, low-rank factorization and
        quantization need weights as initializers (the cap exists so Tile/Expand of
        activations cannot blow the model up).

    Statistics: lifted_constants (Constant nodes made initializers), folded_nodes (evaluated
    nodes removed), new_initializers (initializers created), and the observations
    skipped_too_large, skipped_nondeterministic, skipped_subgraph, skipped_custom_domain,
    skipped_non_tensor, skipped_dequantize, skipped_failed.
    """
    st = dict.fromkeys(("lifted_constants", "folded_nodes", "new_initializers",
                        "skipped_too_large", "skipped_nondeterministic", "skipped_subgraph",
                        "skipped_custom_domain", "skipped_non_tensor", "skipped_dequantize",
                        "skipped_failed"), 0)
    types = Types(graph)  # inferred lazily, after the Constant nodes of the root are lifted
    names = Names(graph)
    for g in list(all_graphs(graph)):
        if not can_add_constant(g):
            continue
        _lift_constants(g, ctx, st, names)
        _fold_graph(g, ctx, st, types, max_output_bytes, fold_dequantize, names, cap_weights)
    return st


# ---------------------------------------------------------------------------------------
# Constant nodes
# ---------------------------------------------------------------------------------------


def _lift_constants(g: Graph, ctx: PassContext, st: Stats, names: Names) -> None:
    for node in g.nodes:
        if node.op_type != "Constant" or node.domain != "" or not ctx.selected(node):
            continue
        out = node.outputs[0] if node.outputs else None
        if out is None or len(node.outputs) != 1:
            continue
        data = constant_node_data(node)
        if data is None:
            continue
        constant_in_place(out, data, names)
        g.remove_nodes([node])
        st["lifted_constants"] += 1
        st["new_initializers"] += 1


# ---------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------


def _skip_reason(node: Node, ctx: PassContext, fold_dequantize: bool) -> str | None:
    if node.domain not in STANDARD_DOMAINS:
        return "skipped_custom_domain"
    if node.op_type in NONDETERMINISTIC:
        return "skipped_nondeterministic"
    if node.subgraphs():
        return "skipped_subgraph"
    if node.op_type in _NON_TENSOR_OPS:
        return "skipped_non_tensor"
    if node.op_type == "DequantizeLinear" and not fold_dequantize:
        return "skipped_dequantize"
    return None


def _predicted_bytes(v: Value, types: Types) -> int | None:
    t = types.of(v)
    if t is None or not t.elem_type:
        return None
    shape = t.static_shape()
    bits = itemsize_bits(t.elem_type)
    if shape is None or bits == 0:
        return None
    return (int(np.prod(shape, dtype=np.int64)) * bits + 7) // 8


_WEIGHT_READERS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "ConvInteger",
                             "MatMulInteger"})


def _is_weight(v: Value) -> bool:
    """Read only as a weight or bias (input 1 or later) of a linear layer."""
    uses = v.uses
    return bool(uses) and not v.is_graph_output and all(
        n.op_type in _WEIGHT_READERS and n.domain == "" and slot >= 1 for n, slot in uses)


# Ops a weight may pass through on its way to the layer (casts, reshapes, scaling).
_WEIGHT_PATH = frozenset({"Cast", "Reshape", "Transpose", "Identity", "Squeeze", "Unsqueeze",
                          "Flatten", "Mul", "Add", "Sub", "Div"})


def _feeds_weight(v: Value, depth: int = 8) -> bool:
    """`v` reaches only weight/bias inputs, directly or through a single-consumer chain."""
    for _ in range(depth):
        if _is_weight(v):
            return True
        uses = v.uses
        if len(uses) != 1 or v.is_graph_output:
            return False
        n = uses[0][0]
        if n.op_type not in _WEIGHT_PATH or n.domain != "" or not n.outputs or n.outputs[0] is None:
            return False
        v = n.outputs[0]
    return False


def _fold_graph(g: Graph, ctx: PassContext, st: Stats, types: Types, cap: int,
                fold_dequantize: bool, names: Names, cap_weights: bool = False) -> None:
    def too_large(o: Value, size: int | None) -> bool:
        return size is not None and size > cap and (cap_weights or not _feeds_weight(o))

    batch: list[Node] = []
    in_batch: set[int] = set()
    for node in g.nodes:
        ins = [v for v in node.inputs if v is not None]
        if node.op_type == "Constant" or not ctx.selected(node):
            continue
        if not all(is_const(v) or (v.producer is not None and id(v.producer) in in_batch)
                   for v in ins):
            continue
        if not ins and node.domain in STANDARD_DOMAINS and node.op_type not in NONDETERMINISTIC:
            continue  # nothing to fold from (a zero-input op other than Constant/Random*)
        reason = _skip_reason(node, ctx, fold_dequantize)
        if reason is None:
            if any(too_large(o, _predicted_bytes(o, types)) for o in node.outputs if o is not None):
                reason = "skipped_too_large"
        if reason is not None:
            st[reason] += 1
            continue
        batch.append(node)
        in_batch.add(id(node))
    if not batch:
        return

    results = _evaluate(g, batch, st)

    # Decide, consumers first, which outputs must be stored and which nodes must stay.
    keep: set[int] = set()
    store: list[tuple[Value, np.ndarray]] = []
    for node in reversed(batch):
        if id(node) not in results:
            keep.add(id(node))
            continue
        needed = [o for o in node.outputs if o is not None and _needed_outside(o, in_batch, keep)]
        arrays = {id(o): as_tensor(r) for o, r in zip(node.outputs, results[id(node)])
                  if o is not None}
        if any(arrays.get(id(o)) is None for o in needed):
            keep.add(id(node))
            st["skipped_non_tensor"] += 1
            continue
        if any(too_large(o, arrays[id(o)].nbytes) for o in needed):
            keep.add(id(node))
            st["skipped_too_large"] += 1
            continue
        store.extend((o, arrays[id(o)]) for o in needed)

    for old, arr in reversed(store):  # topological order of producers
        constant_in_place(old, np.ascontiguousarray(arr), names)
        st["new_initializers"] += 1
    doomed = [n for n in batch if id(n) not in keep]
    if doomed:
        g.remove_nodes(doomed)
        st["folded_nodes"] += len(doomed)


def _needed_outside(v: Value, in_batch: set[int], keep: set[int]) -> bool:
    if v.is_graph_output:
        return True
    for user in v.users:
        if user.graph is not v.graph or id(user) not in in_batch or id(user) in keep:
            return True
    return False


def _evaluate(g: Graph, batch: list[Node], st: Stats) -> dict[int, list]:
    """Results per node uid: one onnxruntime run for the batch, node by node on failure."""
    outs = [o for n in batch for o in n.outputs if o is not None]
    try:
        flat = evaluate(g, batch, outs)
    except EvalError:
        flat = None
    results: dict[int, list] = {}
    if flat is not None:
        i = 0
        for n in batch:
            k = sum(o is not None for o in n.outputs)
            vals = iter(flat[i:i + k])
            results[id(n)] = [next(vals) if o is not None else None for o in n.outputs]
            i += k
        return results
    known: dict[Value, np.ndarray] = {}
    for n in batch:
        ins = [v for v in n.inputs if v is not None]
        if not all(is_const(v) or v in known for v in ins):
            continue  # an input failed to evaluate; this node stays too (counted there)
        present = [o for o in n.outputs if o is not None]
        try:
            vals = evaluate(g, [n], present, {v: known[v] for v in ins if v in known})
        except EvalError:
            st["skipped_failed"] += 1
            continue
        it = iter(vals)
        results[id(n)] = [next(it) if o is not None else None for o in n.outputs]
        for o, r in zip(present, vals):
            if isinstance(r, np.ndarray):
                known[o] = r
    return results

