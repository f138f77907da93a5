"""`homec.compile()`: the one entry point the CLI and the Python API share.

load -> validate schedule -> run passes (pipeline) -> verify -> report. Nothing here reads
argv or prints; progress reaches the caller through callbacks.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import onnx

from homec.calib import CalibrationSet, load_calibration
from homec.errors import HomecError, UsageError, VerificationError
from homec.ir import Graph
from homec.pipeline import PassRecord, PipelineRunner, RunOptions
from homec.registry import REGISTRY, Tolerance
from homec.schedule.ast import Program, Schedule

from homec.targets.descriptor import BUILTIN_TARGETS  # noqa: E402  (re-exported)
REPORT_SCHEMA_VERSION = 1


@dataclasses.dataclass
class CompileResult:
    model: onnx.ModelProto
    graph: Graph
    report: dict[str, Any]
    records: list[PassRecord]


def load_schedule(schedule: Schedule | Program | str | os.PathLike, *,
                  targets: Sequence[str] = BUILTIN_TARGETS) -> tuple[Schedule, str | None, str | None]:
    """A validated Schedule from a path (`.hc` file), schedule text, or a parsed Program.

    A str is a path when such a file exists or it ends in `.hc`; otherwise it is schedule
    text. Returns (schedule, source text, path).
    """
    from homec.schedule.parse import parse_file, parse_text
    from homec.schedule.validate import validate

    if isinstance(schedule, Schedule) and _is_resolved(schedule):
        return schedule, None, None
    path = None
    if isinstance(schedule, Program):
        program = schedule
    elif isinstance(schedule, Schedule):
        program = Program((schedule,))
    else:
        s = os.fspath(schedule)
        if os.path.exists(s) or s.endswith(".hc"):
            if not os.path.isfile(s):
                raise UsageError("schedule file not found", path=s)
            path = s
            program = parse_file(s)
        else:
            program = parse_text(s, "<schedule>")
    validated = validate(program, REGISTRY, targets=set(targets))
    return validated, program.source or None, path


def _is_resolved(schedule: Schedule) -> bool:
    from homec.schedule.ast import PassCall, walk

    return all(s.info is not None for s in walk(schedule.body) if isinstance(s, PassCall))


def graph_figures(graph: Graph, input_shapes: Mapping[str, Sequence[int]] | None = None) -> dict[str, Any]:
    """Size figures for the report: nodes, parameters, bytes, MACs (None if unknown)."""
    from homec.analysis.cost import analyze_cost

    cost = analyze_cost(graph, _safe_types(graph, input_shapes))
    return {
        "nodes": len(graph),
        "parameters": cost.params.count,
        "parameter_bytes": cost.params.bytes,
        "macs": cost.total_macs if cost.complete else None,
        "macs_known": cost.total_macs,
    }


def combined_tolerance(records: Sequence[PassRecord]) -> Tolerance:
    """The tolerance a whole compile is held to: the sum of the declared tolerances of the
    passes that changed the graph (all exact -> exact).

    Once a lossy pass changed the graph, the element-wise bound is the sum of the lossy
    passes' own bounds only (infinite when one of them bounds just the cosine): the small
    atol/rtol of a lossless refold says nothing about an output quantized to int8.
    """
    atol = rtol = 0.0
    lossy_atol = 0.0
    cos: float | None = None
    lossy = False
    for r in records:
        if not r.modified:
            continue
        info = REGISTRY.get(r.name)
        if info is None:
            continue
        t = info.tolerance
        atol += t.atol if math.isfinite(t.atol) else 0.0
        rtol += t.rtol
        if t.lossy:
            lossy = True
            lossy_atol += t.atol
        if t.min_cosine is not None:
            cos = t.min_cosine if cos is None else min(cos, t.min_cosine) - (1 - t.min_cosine)
    if lossy:
        return Tolerance(atol=lossy_atol + atol, rtol=rtol, min_cosine=cos, lossy=True)
    return Tolerance(atol=atol, rtol=rtol)


def compile(  # noqa: A001 — the public name users expect: homec.compile
    model: str | os.PathLike | onnx.ModelProto | Graph,
    schedule: Schedule | Program | str | os.PathLike | None = None,
    *,
    target: str | os.PathLike | Any | None = None,
    calib: str | os.PathLike | CalibrationSet | None = None,
    verify: bool = False,
    tolerance: Tolerance | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    verify_each: bool = False,
    dump_dir: str | None = None,
    pass_limit: int | None = None,
    seed: int = 0,
    reproducer_dir: str | None = None,
    measure: bool = False,
    on_pass_start: Callable[[int, str], None] | None = None,
    on_pass_end: Callable[[PassRecord], None] | None = None,
) -> CompileResult:
    """Compile `model` with `schedule` (None: no passes) for `target` (a built-in name, a
    .toml descriptor path or a homec.targets.descriptor.Target; None: no target backend).

    With a target: its legalization passes run before and after the schedule, then placement,
    the memory plan and the estimates; the result's report holds the manifest.

    Raises HomecError subclasses: UsageError/ScheduleError (2), InvalidModelError (3),
    UnsupportedError (4: a node the target cannot run, no fallback), VerificationError (5),
    ResourceLimitError (6: over the target's SRAM/flash budget), InternalPassError (70).
    The errors raised after the passes ran (4 from placement, 5, 6) carry `.report`.
    """
    from homec.onnx_io import load
    from homec.targets.descriptor import Target, load_target
    from homec.verify import compare_models, random_inputs

    t_start = time.perf_counter()
    tgt = target if isinstance(target, Target) or target is None else load_target(target)
    names = BUILTIN_TARGETS + ((tgt.name,) if tgt is not None else ())
    if schedule is not None:
        sched, text, sched_path = load_schedule(schedule, targets=names)
    else:
        sched, text, sched_path = Schedule(()), "", None
    calib_set = load_calibration(calib) if isinstance(calib, (str, os.PathLike)) else calib
    shapes = {k: tuple(int(d) for d in v) for k, v in input_shapes.items()} if input_shapes else None

    model_path = os.fspath(model) if isinstance(model, (str, os.PathLike)) else None
    graph = model if isinstance(model, Graph) else load(model)
    if calib_set is not None:
        calib_set.check_inputs([v.name for v in graph.inputs if not v.is_initializer])
    original = graph.to_onnx()
    before = graph_figures(graph, input_shapes)
    layers_before = layer_table(graph, input_shapes)
    memory_steps = [{"step": 0, "pass": "(input)", "phase": "input", "nodes": len(graph),
                     "peak_bytes": peak_bytes(graph, input_shapes)}]

    def pass_ended(record: PassRecord) -> None:
        memory_steps.append({"step": record.index, "pass": record.name, "phase": record.phase,
                             "nodes": record.nodes_after,
                             "peak_bytes": peak_bytes(graph, input_shapes) if record.modified
                             else memory_steps[-1]["peak_bytes"]})
        if on_pass_end is not None:
            on_pass_end(record)

    feeds = _verification_feeds(original, calib_set, seed, input_shapes, random_inputs)
    opts = RunOptions(target_name=tgt.name if tgt else None, target=tgt, calib=calib_set,
                      input_shapes=shapes, verify_each=verify_each,
                      dump_dir=dump_dir, pass_limit=pass_limit, seed=seed,
                      verify_feeds=feeds if verify_each else (), reproducer_dir=reproducer_dir,
                      model_path=model_path, schedule_text=text, schedule_path=sched_path,
                      on_pass_start=on_pass_start, on_pass_end=pass_ended)
    runner = PipelineRunner(graph, opts)
    warnings: list[str] = []
    if tgt is not None:
        from homec.targets import backend

        runner.run(load_schedule(backend.legalization_before(tgt, graph, shapes), targets=names)[0],
                   phase="legalize-before")
        runner.run(sched)
        post, post_warnings = backend.legalization_after(tgt, graph, has_calib=calib_set is not None)
        warnings.extend(post_warnings)
        records = runner.run(load_schedule(post, targets=names)[0], phase="legalize-after")
    else:
        records = runner.run(sched)
    graph.verify()
    out = graph.to_onnx()
    after = graph_figures(graph, input_shapes)

    report: dict[str, Any] = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "homec_version": _version(),
        "input": model_path,
        "schedule": sched_path,
        "target": tgt.name if tgt else None,
        "passes": [r.as_dict() for r in records],
        "pass_invocations": runner.invocations,
        "stopped_by_pass_limit": runner.stopped_by_limit,
        "before": before,
        "after": after,
        "layers": {"before": layers_before, "after": layer_table(graph, input_shapes)},
        "memory_over_schedule": memory_steps,
        "warnings": warnings + runner.warnings,
        "verification": None,
        "manifest": None,
    }
    analysis = None
    if tgt is not None:
        from homec.targets import backend

        analysis = backend.analyze(graph, tgt, shapes)
        original_analysis = backend.analyze(load(original), tgt, shapes)
        before["estimated_ms"] = original_analysis.estimate.as_dict()["total_ms"]
        before["arena_bytes"] = original_analysis.memory.arena_bytes
        after["estimated_ms"] = analysis.estimate.as_dict()["total_ms"]
        after["arena_bytes"] = analysis.memory.arena_bytes
        report["manifest"] = backend.manifest(graph, tgt, analysis, model_file=None,
                                              measured=None)
        try:  # a model the device cannot run or hold fails before its outputs are compared
            backend.check(analysis, tgt)
        except HomecError as e:
            report["seconds"] = time.perf_counter() - t_start
            e.report = report  # type: ignore[attr-defined]
            raise
        if measure:
            from homec.targets.estimate import measure_latency

            report["manifest"]["measured"] = {"before": measure_latency(original, feeds),
                                              "after": measure_latency(out, feeds)}
    if verify:
        tol = tolerance if tolerance is not None else combined_tolerance(records)
        cmp = compare_models(original, out, feeds, tol)
        report["verification"] = {**cmp.as_dict(), "samples": len(feeds),
                                  "inputs": "calibration" if calib_set is not None else "random"}
        if not cmp.ok:
            report["seconds"] = time.perf_counter() - t_start
            err = VerificationError(f"verification failed: {cmp.describe()} "
                                    f"(tolerance: atol {tol.atol:g}, rtol {tol.rtol:g}"
                                    + (f", cosine >= {tol.min_cosine:g}" if tol.min_cosine else "")
                                    + ")", path=model_path)
            err.report = report  # type: ignore[attr-defined]
            raise err
    report["seconds"] = time.perf_counter() - t_start
    return CompileResult(out, graph, report, records)


def _version() -> str:
    from homec import __version__

    return __version__


def layer_table(graph: Graph, input_shapes: Mapping[str, Sequence[int]] | None) -> list[dict[str, Any]]:
    """[{node, op, macs, weight_dtype}] of the layers the cost analysis counts (macs None:
    unknown; weight_dtype: the stored type of the largest constant input, seen through a
    DequantizeLinear, or None)."""
    from homec.analysis.cost import layer_costs

    from homec.targets.device_view import node_label

    by_name = {node_label(n): n for n in graph.nodes}
    return [{"node": c.node, "op": c.op_type, "macs": c.macs,
             "weight_dtype": _weight_dtype(by_name.get(c.node))}
            for c in layer_costs(graph, _safe_types(graph, input_shapes))]


def _weight_dtype(node) -> str | None:
    from homec.analysis.cost import is_constant
    from homec.targets.device_view import value_dtype

    if node is None:
        return None
    best, size = None, -1
    for v in node.inputs:
        if v is None or not is_constant(v):
            continue
        src = v.producer.inputs[0] if v.producer is not None and v.producer.op_type == "DequantizeLinear" else v
        t = src.tensor_type() if src is not None else None
        n = math.prod(d.value or 1 for d in t.shape) if t is not None and t.shape is not None else 0
        if n > size:
            best, size = value_dtype(src, {}), n
    return best


def peak_bytes(graph: Graph, input_shapes: Mapping[str, Sequence[int]] | None) -> int | None:
    """Peak live activation bytes (the liveness lower bound; None when some size is unknown)."""
    from homec.analysis.memory import peak_activation_memory

    rep = peak_activation_memory(graph, _safe_types(graph, input_shapes))
    return None if rep.is_lower_bound else rep.peak_bytes


def _safe_types(graph: Graph, input_shapes):
    from homec.analysis.shapes import infer_shapes

    try:
        return infer_shapes(graph, input_shapes, symbolic_fallback=False)
    except UsageError:
        raise
    except Exception:  # shape inference failing must not fail a compile
        return {}


def _verification_feeds(model, calib_set, seed, input_shapes, random_inputs) -> list[dict]:
    if calib_set is not None and len(calib_set):
        return list(calib_set.samples[:8])
    return [random_inputs(model, seed=seed + i, input_shapes=input_shapes) for i in range(2)]
