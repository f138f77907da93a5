"""`homec inspect`: one JSON-able summary of a graph and its human rendering.

`inspect_graph` gathers shapes (analysis.shapes), MACs and parameters (analysis.cost) and
peak activation memory (analysis.memory) into a dict with stable keys; `format_inspect`
renders that dict as text. The dict is the boundary format (JSON output, reports); inside,
the typed reports of the analysis modules are used.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from homec.analysis.cost import CostReport, analyze_cost
from homec.analysis.memory import LiveTensor, MemoryReport, human_bytes, peak_activation_memory
from homec.analysis.shapes import infer_shapes
from homec.dtypes import dtype_name
from homec.ir import Graph, TensorType, Value

__all__ = ["inspect_graph", "format_inspect"]

SCHEMA_VERSION = 1


def inspect_graph(graph: Graph, input_shapes: Mapping[str, Sequence[int]] | None = None) -> dict[str, Any]:
    """Summarize `graph`: I/O types, op histogram, parameters, per-layer MACs, peak memory.

    `input_shapes` pins input dims before shape inference (UsageError for an unknown input or
    a wrong rank). Symbolic dims appear as strings, unknown ones as "?", an unknown rank as
    null. Keys are stable; see `format_inspect` for the human form.
    """
    types = infer_shapes(graph, input_shapes)
    cost = analyze_cost(graph, types)
    memory = peak_activation_memory(graph, types)
    nodes = graph.nodes
    hist = Counter(n.qualified_op for n in nodes)
    return {
        "schema_version": SCHEMA_VERSION,
        "graph": graph.name,
        "input_shapes": {k: list(v) for k, v in (input_shapes or {}).items()},
        "inputs": [_io_entry(v, types) for v in graph.inputs if not v.is_initializer],
        "outputs": [_io_entry(v, types) for v in graph.outputs],
        "nodes": len(nodes),
        "subgraph_nodes": sum(1 for _ in graph.all_nodes()) - len(nodes),
        "op_histogram": dict(sorted(hist.items())),
        "parameters": cost.params.count,
        "parameter_bytes": cost.params.bytes,
        "parameter_tensors": cost.params.tensors,
        "macs": _macs_entry(cost),
        "memory": _memory_entry(memory),
    }


def _shape_json(t: TensorType | None) -> list[int | str] | None:
    if t is None or t.shape is None:
        return None
    return [d.value if d.value is not None else str(d) for d in t.shape]


def _io_entry(v: Value, types: Mapping[str, TensorType]) -> dict[str, Any]:
    t = types.get(v.name) or v.tensor_type()
    return {"name": v.name, "dtype": dtype_name(t.elem_type) if t is not None else None,
            "shape": _shape_json(t)}


def _macs_entry(cost: CostReport) -> dict[str, Any]:
    return {
        "total": cost.total_macs,
        "complete": cost.complete,
        "by_op": cost.macs_by_op(),
        "layers": [{"node": c.node, "op": c.op_type, "macs": c.macs,
                    "attention_like": c.attention_like, "note": c.note} for c in cost.layers],
    }


def _live_json(t: LiveTensor) -> dict[str, Any]:
    return {"name": t.name, "bytes": t.bytes, "shape": _shape_json(t.type),
            "dtype": dtype_name(t.type.elem_type) if t.type is not None else None}


def _memory_entry(m: MemoryReport) -> dict[str, Any]:
    return {
        "peak_bytes": m.peak_bytes,
        "lower_bound": m.is_lower_bound,
        "peak_step": m.peak_step,
        "peak_node": m.peak_node,
        "steps": m.steps,
        "live_at_peak": [_live_json(t) for t in m.live_at_peak],
        "unknown_tensors": list(m.unknown),
    }


# ---------------------------------------------------------------------------------------
# Human rendering
# ---------------------------------------------------------------------------------------


def _si(n: int | float, unit: str = "") -> str:
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= factor:
            return f"{n / factor:.2f} {prefix}{unit}"
    return f"{n:g} {unit}".rstrip()


def _bytes(n: int | None) -> str:
    return human_bytes(n, 2)


def _shape_text(shape: list[int | str] | None) -> str:
    return "?" if shape is None else "[" + ",".join(str(d) for d in shape) + "]"


def _table(rows: list[list[str]], right: set[int] = frozenset()) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.rjust(w) if i in right else c.ljust(w)
                             for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in rows]


def format_inspect(d: Mapping[str, Any], *, top_layers: int = 15) -> str:
    """Render an `inspect_graph` dict as a readable text report."""
    lines: list[str] = [f"graph {d['graph']!r}"]
    if d.get("input_shapes"):
        pins = ", ".join(f"{k}={'x'.join(map(str, v))}" for k, v in d["input_shapes"].items())
        lines.append(f"input shapes: {pins}")
    for title in ("inputs", "outputs"):
        lines.append(f"{title}:")
        rows = [[e["name"], e["dtype"] or "?", _shape_text(e["shape"])] for e in d[title]]
        lines.extend(_table(rows) if rows else ["  (none)"])

    macs = d["macs"]
    mem = d["memory"]
    nested = f" (+{d['subgraph_nodes']} in subgraphs)" if d.get("subgraph_nodes") else ""
    lines.append("")
    lines.append(f"nodes:       {d['nodes']}{nested}")
    lines.append(f"parameters:  {_si(d['parameters'])} ({d['parameters']:,}) in "
                 f"{d['parameter_tensors']} tensors, {_bytes(d['parameter_bytes'])}")
    unknown_layers = sum(1 for layer in macs["layers"] if layer["macs"] is None)
    if not macs["complete"] and macs["total"] == 0:
        lines.append(f"MACs:        unknown ({unknown_layers} layers not counted: symbolic shapes)")
    else:
        bound = "" if macs["complete"] else f"  (lower bound: {unknown_layers} layers not counted)"
        lines.append(f"MACs:        {_si(macs['total'])} ({macs['total']:,}){bound}")
    n_unknown = len(mem["unknown_tensors"])
    if mem["lower_bound"] and mem["peak_bytes"] == 0:
        lines.append(f"peak memory: unknown ({n_unknown} tensors of unknown size; "
                     "fix the input dims with --input-shape)")
    else:
        at = f" at step {mem['peak_step']} ({mem['peak_node']})" if mem["peak_step"] is not None else ""
        lb = f"  (lower bound: {n_unknown} tensors of unknown size)" if mem["lower_bound"] else ""
        lines.append(f"peak memory: {_bytes(mem['peak_bytes'])} ({mem['peak_bytes']:,} B){at}{lb}")

    if mem["live_at_peak"] and mem["peak_bytes"]:
        lines.append("largest tensors live at the peak:")
        lines.extend(_table([[t["name"], t["dtype"] or "?", _shape_text(t["shape"]), _bytes(t["bytes"])]
                             for t in mem["live_at_peak"]], right={3}))

    hist = sorted(d["op_histogram"].items(), key=lambda kv: (-kv[1], kv[0]))
    if hist:
        lines.append("ops:")
        lines.extend(_table([[op, str(n), _si(macs["by_op"][op]) if op in macs["by_op"] else ""]
                             for op, n in hist], right={1, 2}))

    layers = macs["layers"]
    if layers:
        total = macs["total"] or 1
        ranked = sorted(layers, key=lambda x: -(x["macs"] if x["macs"] is not None else -1))
        shown = ranked[:top_layers]
        lines.append(f"layers by MACs (top {len(shown)} of {len(layers)}):")
        rows = []
        for x in shown:
            flag = " attention-like" if x["attention_like"] else ""
            if x["macs"] is None:
                rows.append([x["node"], x["op"], "?", "", (x["note"] + flag).strip()])
            else:
                rows.append([x["node"], x["op"], _si(x["macs"]), f"{100 * x['macs'] / total:.1f}%",
                             (x["note"] + flag).strip()])
        lines.extend(_table(rows, right={2, 3}))
    return "\n".join(lines)
