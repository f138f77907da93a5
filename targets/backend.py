"""The backend of one target: legalization schedules, then placement, memory plan, estimates,
budgets and the manifest.

    pre  = legalization_before(target, graph, input_shapes)   # upgrade_opset, freeze_shapes, decompose
    ... the user's schedule ...
    post = legalization_after(target, graph, has_calib)       # quantize if needed, fold_qdq to the form
    result = analyze(graph, target, input_shapes)             # placement, memory plan, estimate
    check(result, target)                                     # exit 4 (cannot run) / exit 6 (budget)

Legalization is schedule text run by the same pipeline as the user's passes, so its passes get
statistics, timing, `--verify-each`, `--dump-dir` and reproducers like any other.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from homec.ir import Graph, Node
from homec.targets.descriptor import Target

__all__ = [
    "MANIFEST_SCHEMA_VERSION", "TargetAnalysis", "analyze", "check", "io_quantization",
    "legalization_after", "legalization_before", "manifest",
]

MANIFEST_SCHEMA_VERSION = 1
LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def legalization_before(target: Target, graph: Graph, input_shapes: Mapping[str, Sequence[int]] | None) -> str:
    """Schedule text run before the user's schedule: the opset the target reads, static
    shapes when it needs them, decompositions of the operators it lacks."""
    steps = []
    model_opset = graph.opset("") or 0
    if target.opset is not None and model_opset != target.opset:
        steps.append("upgrade_opset")  # raises (exit 4) rather than downgrading
    if target.static_shapes:
        steps.append("freeze_shapes")
    if not target.all_ops or target.decompose:
        steps.append("decompose")
    return _schedule(steps)


def legalization_after(target: Target, graph: Graph, *, has_calib: bool) -> tuple[str, list[str]]:
    """Schedule text run after the user's schedule, and warnings: accelerators get
    `fuse_activations`, `decompose` and `cleanup`;
    int8 targets quantize a float model with the target's rules (from --calib, else random
    calibration, warned); QDQ is put in the form the target executes."""
    warnings: list[str] = []
    steps = []
    if not target.all_ops:
        # exporters spell HardSwish/HardSigmoid as Add/Clip/Div/Mul; an accelerator runs
        # the fused op (or gets it decomposed next into what it has), not a float Div
        steps.append("fuse_activations")
    if not target.all_ops or target.decompose:
        steps.append("decompose")  # again: the schedule may have fused what was decomposed
    if not target.all_ops:
        # An accelerator runs inference graphs: batch norms folded, identities and dropouts
        # gone, constant subgraphs folded (lossless; a no-op after the user's own cleanup).
        steps.append("cleanup")
    q = target.quantization
    if q.required and float_layers(graph):
        calibration = "data" if has_calib else "random"
        if not has_calib:  # quantize itself warns that random ranges are poor
            warnings.append(f"target `{target.name}` runs int8: the float model was quantized "
                            "(schedule `quantize` yourself to choose how)")
        weights = q.weights
        steps.append(f'quantize(calibration="{calibration}", method="mse", weights="{weights}", '
                     f'per_channel={str(q.per_channel).lower()}, activations="{q.activations}", '
                     'ops=["Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Mul"])')
    if has_qdq(graph) or steps:
        steps.append(f'fold_qdq(form="{q.form}")')
    return _schedule(steps), warnings


def _schedule(steps: list[str]) -> str:
    return "schedule {\n" + "".join(f"  {s}\n" for s in steps) + "}\n"


def float_layers(graph: Graph) -> list[Node]:
    """Conv/ConvTranspose/Gemm/MatMul nodes whose weight is a float constant (not behind a
    DequantizeLinear): what an int8 target still has to quantize."""
    from homec.analysis.cost import is_constant
    from homec.targets.device_view import value_dtype

    memo: dict[int, bool] = {}
    out = []
    for node in graph.nodes:
        if node.op_type not in LAYER_OPS or node.domain != "":
            continue
        w = node.inputs[1] if len(node.inputs) > 1 else None
        if w is None or not is_constant(w, memo):
            continue
        p = w.producer
        if p is not None and p.op_type == "DequantizeLinear":
            continue
        if value_dtype(w, {}) in ("float32", "float16", "float64", "bfloat16"):
            out.append(node)
    return out


def has_qdq(graph: Graph) -> bool:
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.domain == ""
               for n in graph.nodes)


@dataclasses.dataclass
class TargetAnalysis:
    """What the backend knows about a graph on a target."""

    placement: Any  # homec.targets.placement.Placement
    memory: Any  # homec.targets.memory_plan.MemoryPlan
    estimate: Any  # homec.targets.estimate.Estimate
    types: Mapping[str, Any]


def analyze(graph: Graph, target: Target, input_shapes: Mapping[str, Sequence[int]] | None) -> TargetAnalysis:
    """Placement, the arena plan and the roofline estimate of `graph` on `target`."""
    from homec.analysis.shapes import infer_shapes
    from homec.targets.estimate import estimate
    from homec.targets.memory_plan import plan_memory
    from homec.targets.placement import place

    types = _types(graph, input_shapes, infer_shapes)
    qdq_fused = target.quantization.form == "qdq" and target.device != "cpu"
    placement = place(graph, target, types)
    plan = plan_memory(graph, types, qdq_fused=qdq_fused)
    devices = {p.node: p.device for p in placement.nodes}
    est = estimate(graph, types, target, devices, qdq_fused=qdq_fused)
    return TargetAnalysis(placement, plan, est, types)


def _types(graph, input_shapes, infer_shapes):
    from homec.errors import UsageError

    try:
        return infer_shapes(graph, input_shapes)
    except UsageError:
        raise
    except Exception:  # shape inference failing must not fail a compile; sizes become unknown
        return {}


def check(analysis: TargetAnalysis, target: Target) -> None:
    """Exit 4 when a node cannot run and the target has no fallback; exit 6 over budget."""
    from homec.targets.memory_plan import check_budget
    from homec.targets.placement import require_placeable

    require_placeable(analysis.placement, target)
    check_budget(analysis.memory, target)


def io_quantization(graph: Graph) -> dict[str, list[dict[str, Any]]]:
    """Each graph input/output with its dtype, shape and, when the model quantizes it right
    at the boundary, the (scale, zero_point, dtype) the application uses to convert."""
    from homec.targets.device_view import value_dtype

    def shape(v) -> list[Any] | None:
        t = v.tensor_type()
        if t is None or t.shape is None:
            return None
        return [d.value if d.is_static else (d.param or None) for d in t.shape]

    def params(node: Node | None) -> dict[str, Any] | None:
        if node is None:
            return None
        scale = node.input_const(1)
        zp = node.input_const(2) if len(node.inputs) > 2 and node.inputs[2] is not None else None
        if scale is None:
            return None
        dtype = str(zp.dtype) if zp is not None else "uint8"
        return {"scale": [float(x) for x in scale.reshape(-1)] if scale.size > 1 else float(scale),
                "zero_point": ([int(x) for x in zp.reshape(-1)] if zp.size > 1 else int(zp))
                if zp is not None else 0,
                "dtype": dtype, "axis": node.attr("axis", 1) if scale.size > 1 else None}

    def input_q(v) -> Node | None:
        users = v.users
        if users and all(u.op_type == "QuantizeLinear" for u in users):
            ps = [params(u) for u in users]
            if all(p == ps[0] for p in ps):
                return users[0]
        return None

    def output_dq(v) -> Node | None:
        p = v.producer
        return p if p is not None and p.op_type == "DequantizeLinear" else None

    inputs = [{"name": v.name, "dtype": value_dtype(v, {}), "shape": shape(v),
               "quantization": params(input_q(v))}
              for v in graph.inputs if not v.is_initializer]
    outputs = [{"name": v.name, "dtype": value_dtype(v, {}), "shape": shape(v),
                "quantization": params(output_dq(v))} for v in graph.outputs]
    return {"inputs": inputs, "outputs": outputs}


def manifest(graph: Graph, target: Target, analysis: TargetAnalysis, *,
             model_file: str | None, measured: dict[str, Any] | None) -> dict[str, Any]:
    """The JSON manifest written beside the compiled model (same schema for every target;
    no timings or absolute paths unless `--measure` asked for a measurement)."""
    return {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "model": model_file,
        "target": target.as_dict(),
        "io": io_quantization(graph),
        "placement": analysis.placement.as_dict(),
        "memory": analysis.memory.as_dict(),
        "estimate": analysis.estimate.as_dict(),
        "measured": measured,
    }
