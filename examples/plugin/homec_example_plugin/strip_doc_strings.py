"""`strip_doc_strings`: drop documentation text from a model to save bytes on the device."""

from __future__ import annotations

from homec.context import PassContext
from homec.ir import Graph
from homec.registry import Stats, Tolerance, register_pass


@register_pass("strip_doc_strings", tolerance=Tolerance.exact())
def strip_doc_strings(graph: Graph, ctx: PassContext, *, keep_graph_doc: bool = False) -> Stats:
    """Remove doc strings from nodes (and the graph's own, unless asked to keep it).

    Algebra: none — doc strings carry no semantics, so outputs are bit-identical.
    Respects node selectors: only selected nodes lose their doc string.

    Options:
      keep_graph_doc: keep the top-level graph's doc string.
    """
    nodes = 0
    for node in graph.all_nodes():
        if node.doc_string and ctx.selected(node):
            node.doc_string = ""
            nodes += 1
    graph_doc = 0
    if graph.doc_string and not keep_graph_doc:
        graph.doc_string = ""
        graph_doc = 1
    return {"node_doc_strings_removed": nodes, "graph_doc_strings_removed": graph_doc}
