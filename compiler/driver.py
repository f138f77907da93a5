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
from homec.errors import UsageError, VerificationError
from homec.ir import Graph
from homec.pipeline import PassRecord, PipelineRunner, RunOptions
from homec.registry import REGISTRY, Tolerance
from homec.schedule.ast import Program, Schedule

BUILTIN_TARGETS = ("cpu", "npu-int8", "mcu")
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
    from homec.analysis.shapes import infer_shapes

    try:
        types = infer_shapes(graph, input_shapes, symbolic_fallback=False)
    except UsageError:
        raise
    except Exception:  # shape inference failing must not fail a compile
        types = {}
    cost = analyze_cost(graph, types)
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
    target: str | None = None,
    calib: str | os.PathLike | CalibrationSet | None = None,
    verify: bool = False,
    tolerance: Tolerance | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    verify_each: bool = False,
    dump_dir: str | None = None,
    pass_limit: int | None = None,
    seed: int = 0,
    reproducer_dir: str | None = None,
    on_pass_start: Callable[[int, str], None] | None = None,
    on_pass_end: Callable[[PassRecord], None] | None = None,
) -> CompileResult:
    """Compile `model` with `schedule` (None: no passes) for `target`.

    Raises HomecError subclasses: UsageError/ScheduleError (2), InvalidModelError (3),
    UnsupportedError (4), VerificationError (5, with `.report`), InternalPassError (70).
    """
    from homec.onnx_io import load
    from homec.verify import compare_models, random_inputs

    t_start = time.perf_counter()
    if target is not None and target not in BUILTIN_TARGETS:
        raise UsageError(f"unknown target `{target}` (built-in targets: {', '.join(BUILTIN_TARGETS)})")
    if schedule is not None:
        sched, text, sched_path = load_schedule(schedule)
    else:
        sched, text, sched_path = Schedule(()), "", None
    calib_set = load_calibration(calib) if isinstance(calib, (str, os.PathLike)) else calib

    model_path = os.fspath(model) if isinstance(model, (str, os.PathLike)) else None
    graph = model if isinstance(model, Graph) else load(model)
    if calib_set is not None:
        calib_set.check_inputs([v.name for v in graph.inputs if not v.is_initializer])
    original = graph.to_onnx()
    before = graph_figures(graph, input_shapes)

    feeds = _verification_feeds(original, calib_set, seed, input_shapes, random_inputs)
    opts = RunOptions(target_name=target, target=None, calib=calib_set, verify_each=verify_each,
                      dump_dir=dump_dir, pass_limit=pass_limit, seed=seed,
                      verify_feeds=feeds if verify_each else (), reproducer_dir=reproducer_dir,
                      model_path=model_path, schedule_text=text, schedule_path=sched_path,
                      on_pass_start=on_pass_start, on_pass_end=on_pass_end)
    runner = PipelineRunner(graph, opts)
    records = runner.run(sched)
    graph.verify()
    out = graph.to_onnx()
    after = graph_figures(graph, input_shapes)

    report: dict[str, Any] = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "input": model_path,
        "schedule": sched_path,
        "target": target,
        "passes": [r.as_dict() for r in records],
        "pass_invocations": runner.invocations,
        "stopped_by_pass_limit": runner.stopped_by_limit,
        "before": before,
        "after": after,
        "warnings": runner.warnings,
        "verification": None,
    }
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


def _verification_feeds(model, calib_set, seed, input_shapes, random_inputs) -> list[dict]:
    if calib_set is not None and len(calib_set):
        return list(calib_set.samples[:8])
    return [random_inputs(model, seed=seed + i, input_shapes=input_shapes) for i in range(2)]
