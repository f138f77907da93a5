"""Dead code elimination: nodes, initializers and constant inputs nothing reads."""

from __future__ import annotations

from homec.context import PassContext
from homec.ir import Graph, Node
from homec.registry import Stats, Tolerance, register_pass

from ._util import all_graphs, ir_version, remove_constant

# Domains whose operators are side-effect free (all specified ONNX operators are, and so
# are onnxruntime's contrib ops); a node of any other domain may do something besides
# computing its outputs, so it is kept unless `remove_custom` is set.
_PURE_DOMAINS = frozenset({"", "ai.onnx.ml", "ai.onnx.preview.training", "com.microsoft"})


@register_pass("eliminate_dead", tolerance=Tolerance.exact())
def eliminate_dead(graph: Graph, ctx: PassContext, *, remove_custom: bool = False,
                   prune_ir3_inputs: bool = True) -> Stats:
    """Remove nodes whose outputs reach no graph output, and initializers nobody reads.

    Algebra: a node none of whose outputs is read (by a node of any scope, including reads
    captured by If/Loop/Scan bodies) and none of which is a graph output computes nothing
    observable: it is removed. Nodes are visited consumers first, so whole dead chains go
    in one run, and dead nodes inside subgraphs of live nodes are removed too. Graph inputs
    and outputs are never removed. An initializer that nothing reads and that is not a
    graph input or output is removed. Below IR version 4 every initializer is also listed
    as a graph input, but onnxruntime treats such inputs as constants and refuses feeds
    for them, so unused ones are removed from both lists (`prune_ir3_inputs`). Value
    descriptions (value_info) of removed values are not emitted.

    Only nodes of domains with side-effect-free semantics are removed: the default ONNX
    domain, ai.onnx.ml, ai.onnx.preview.training and com.microsoft; nodes of other (custom)
    domains and calls of model-local functions are kept (`kept_custom`) unless
    `remove_custom`.

    Under an `on`/`where` selector only selected nodes are removed and initializers are
    left alone.

    Options:
      remove_custom: also remove unused nodes of custom domains.
      prune_ir3_inputs: in IR < 4 models, remove unused initializers that are listed as
        graph inputs (they are constants there, not part of the interface).

    Statistics: removed_nodes, removed_initializers, and the observation kept_custom.
    """
    st = {"removed_nodes": 0, "removed_initializers": 0, "kept_custom": 0}
    kept: set[int] = set()
    # A subgraph may return a value of an enclosing scope directly; the IR records no use
    # for that (Value.is_graph_output only sees the defining graph's outputs), so collect
    # those values here and treat them as read.
    returned = {id(v) for sg in all_graphs(graph) if sg.parent is not None for v in sg.outputs
                if v.graph is not sg}
    _sweep(graph, ctx, remove_custom, st, kept, returned)
    st["kept_custom"] = len(kept)
    if not ctx.selector.is_empty:
        return st  # `on`/`where` restrict the pass to nodes: initializers are left alone
    for g in all_graphs(graph):
        st["removed_initializers"] += g.remove_unused_values()
        if prune_ir3_inputs and g.parent is None and ir_version(g) < 4:
            for v in list(g.initializers.values()):
                if v.is_graph_input and not v.uses and not v.is_graph_output:
                    remove_constant(v)
                    st["removed_initializers"] += 1
    return st


def _sweep(g: Graph, ctx: PassContext, remove_custom: bool, st: Stats, kept: set[int],
           returned: set[int]) -> None:
    """Remove dead nodes of `g`, consumers first, and recurse into live subgraph owners."""
    for node in reversed(g.nodes):
        if _dead(node, returned) and ctx.selected(node):
            if node.domain not in _PURE_DOMAINS and not remove_custom:
                kept.add(id(node))
                continue
            g.remove_nodes([node])
            st["removed_nodes"] += 1
            continue
        for sg in node.subgraphs():
            _sweep(sg, ctx, remove_custom, st, kept, returned)


def _dead(node: Node, returned: set[int]) -> bool:
    return all(o is None or (not o.uses and not o.is_graph_output and id(o) not in returned)
               for o in node.outputs)
