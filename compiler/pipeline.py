"""Runs a validated Schedule over a Graph: statistics, timing, verify-each, dumps, pass-limit.

Every pass invocation gets an index (1, 2, ... in execution order, counting each repetition),
which `--pass-limit N` uses to run only the first N (bisection, like LLVM's opt-bisect),
`--dump-dir` uses to name the models it writes, and a crash reproducer records.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import onnx

from homec.context import PassContext, Selector
from homec.errors import ExitCode, HomecError, IRError, VerificationError
from homec.ir import Graph, gc_paused
from homec.registry import PassInfo, Tolerance
from homec.schedule.ast import Fixpoint, PassCall, PipelineRef, Repeat, Schedule, Stmt, When

# Statistic keys with these prefixes describe what a pass looked at or declined to do;
# they do not count as changes.
INFORMATIONAL_PREFIXES = ("skipped", "refused", "kept", "checked", "seen", "candidates", "iterations")


def is_modified(stats: dict[str, Any]) -> bool:
    """A pass changed the graph iff a non-informational statistic is non-zero."""
    return any(bool(v) for k, v in stats.items()
               if isinstance(v, (int, float)) and not k.startswith(INFORMATIONAL_PREFIXES))


@dataclasses.dataclass
class PassRecord:
    """One pass invocation's outcome."""

    index: int
    name: str
    options: dict[str, Any]
    selector: str | None
    seconds: float
    stats: dict[str, Any]
    modified: bool
    nodes_before: int
    nodes_after: int
    verification: dict[str, Any] | None = None
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    # "schedule" for the user's passes; "legalize-before" / "legalize-after" for the ones the
    # target runs around it
    phase: str = "schedule"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class RunOptions:
    target_name: str | None = None
    target: Any | None = None
    calib: Any | None = None
    input_shapes: dict[str, tuple[int, ...]] | None = None
    verify_each: bool = False
    dump_dir: str | None = None
    pass_limit: int | None = None
    seed: int = 0
    verify_feeds: Sequence[dict] = ()  # inputs for the onnxruntime comparison of verify-each
    reproducer_dir: str | None = None
    model_path: str | None = None
    schedule_text: str | None = None
    schedule_path: str | None = None
    on_pass_start: Callable[[int, str], None] | None = None
    on_pass_end: Callable[[PassRecord], None] | None = None


class InternalPassError(HomecError):
    """A pass raised an unexpected exception (exit 70); a reproducer was written."""

    exit_code = ExitCode.INTERNAL


def _describe_selector(sel: Selector | None) -> str | None:
    if sel is None or sel.is_empty:
        return None
    parts = []
    if sel.op_types:
        parts.append("on " + ", ".join(sel.op_types))
    if sel.name_glob is not None:
        parts.append(f'where name ~ "{sel.name_glob}"')
    return " ".join(parts)


def _fingerprint(model: onnx.ModelProto) -> str:
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()


class PipelineRunner:
    def __init__(self, graph: Graph, options: RunOptions):
        self.graph = graph
        self.opts = options
        self.records: list[PassRecord] = []
        self.warnings: list[str] = []
        self.invocations = 0
        self.stopped_by_limit = False
        self.phase = "schedule"
        self._prev_model: onnx.ModelProto | None = None
        self._prev_checker_ok = True
        if options.verify_each:
            self._prev_model = graph.to_onnx()
            self._prev_checker_ok = _checker_ok(self._prev_model)

    # -- walking the schedule ---------------------------------------------------------------
    def run(self, schedule: Schedule, *, phase: str = "schedule") -> list[PassRecord]:
        """Run `schedule`; its records are tagged with `phase`. May be called again (the
        target's legalization runs around the user's schedule); indices keep counting."""
        self.phase = phase
        self._run_block(schedule.body)
        return self.records

    def _run_block(self, stmts: Sequence[Stmt]) -> bool:
        """Run statements; True if any pass reported a change."""
        changed = False
        for s in stmts:
            if self.stopped_by_limit:
                break
            changed |= self._run_stmt(s)
        return changed

    def _run_stmt(self, s: Stmt) -> bool:
        if isinstance(s, PassCall):
            return self._run_pass(s)
        if isinstance(s, PipelineRef):
            return self._run_block(s.body)
        if isinstance(s, Repeat):
            changed = False
            for _ in range(s.count):
                changed |= self._run_block(s.body)
            return changed
        if isinstance(s, Fixpoint):
            changed = False
            for _ in range(s.max):
                if not self._run_block(s.body):
                    break
                changed = True
            return changed
        if isinstance(s, When):
            return self._run_block(s.branch(self.opts.target_name))
        raise AssertionError(f"unknown statement {s!r}")

    # -- one pass ---------------------------------------------------------------------------
    def _run_pass(self, call: PassCall) -> bool:
        info = call.info
        assert info is not None, "run a validated schedule"
        if self.opts.pass_limit is not None and self.invocations >= self.opts.pass_limit:
            self.stopped_by_limit = True
            return False
        self.invocations += 1
        index = self.invocations
        options = info.bind(call.kwargs)
        ctx = PassContext(selector=call.selector or Selector(), target=self.opts.target,
                          calib=self.opts.calib, seed=self.opts.seed,
                          input_shapes=self.opts.input_shapes)
        if self.opts.on_pass_start:
            self.opts.on_pass_start(index, info.name)
        before_fp = _fingerprint(self._prev_model) if self._prev_model is not None else None
        nodes_before = len(self.graph)
        t0 = time.perf_counter()
        try:
            with gc_paused():
                stats = info.fn(self.graph, ctx, **options)
        except HomecError:
            raise
        except Exception as e:
            path = self._write_reproducer(index, info, e)
            raise InternalPassError(
                f"pass `{info.name}` (invocation {index}) crashed: {type(e).__name__}: {e}; "
                f"reproducer written to {path}") from e
        seconds = time.perf_counter() - t0
        if not isinstance(stats, dict):
            raise InternalPassError(f"pass `{info.name}` returned {type(stats).__name__}, "
                                    "not a dict of statistics")
        modified = is_modified(stats)
        self.warnings.extend(f"{info.name}: {w}" for w in ctx.warnings)
        record = PassRecord(index, info.name, {k: _jsonable(v) for k, v in options.items()},
                            _describe_selector(call.selector), seconds, dict(stats), modified,
                            nodes_before, len(self.graph), details=dict(ctx.details),
                            phase=self.phase)
        if self.opts.verify_each:
            record.verification = self._verify_after(info, record, before_fp)
        self.records.append(record)
        if self.opts.dump_dir:
            from homec.onnx_io import save

            os.makedirs(self.opts.dump_dir, exist_ok=True)
            save(self.graph, os.path.join(self.opts.dump_dir, f"{index:03d}-{info.name}.onnx"))
        if self.opts.on_pass_end:
            self.opts.on_pass_end(record)
        return modified

    def _verify_after(self, info: PassInfo, record: PassRecord, before_fp: str | None) -> dict:
        from homec.verify import compare_models

        where = f"after pass `{info.name}` (invocation {record.index})"
        try:
            self.graph.verify()
        except IRError as e:
            raise VerificationError(f"{where}: the IR is inconsistent: {e.message}") from None
        model = self.graph.to_onnx()
        fp = _fingerprint(model)
        if fp != before_fp and not record.modified:
            raise VerificationError(f"{where}: the pass changed the graph but its statistics "
                                    f"report no change ({record.stats}); a pass must count "
                                    "what it changes")
        result: dict[str, Any] = {"graph": "ok", "checker": "skipped", "onnxruntime": "skipped"}
        if self._prev_checker_ok:
            try:
                onnx.checker.check_model(model, full_check=True)
                result["checker"] = "ok"
            except Exception as e:
                raise VerificationError(f"{where}: onnx.checker rejects the model: "
                                        f"{str(e).strip().splitlines()[0]}") from None
        if fp != before_fp and self.opts.verify_feeds:
            assert self._prev_model is not None
            cmp = compare_models(self._prev_model, model, self.opts.verify_feeds, info.tolerance)
            result["onnxruntime"] = cmp.as_dict()
            if not cmp.ok:
                raise VerificationError(f"{where}: outputs moved beyond the pass's declared "
                                        f"tolerance ({_tol(info.tolerance)}): {cmp.describe()}")
        elif fp == before_fp:
            result["onnxruntime"] = "unchanged"
        self._prev_model = model
        return result

    def _write_reproducer(self, index: int, info: PassInfo, exc: BaseException) -> str:
        folder = self.opts.reproducer_dir or os.getcwd()
        path = os.path.join(folder, f"homec-crash-{index:03d}-{info.name}")
        try:
            os.makedirs(path, exist_ok=True)
            with open(os.path.join(path, "README.txt"), "w") as f:
                f.write(f"pass: {info.name}\ninvocation index: {index}\n"
                        f"model: {self.opts.model_path}\nschedule: {self.opts.schedule_path}\n"
                        f"target: {self.opts.target_name}\n\n"
                        f"Reproduce: homec {self.opts.model_path} -p schedule.hc "
                        f"--pass-limit {index}"
                        + (f" -t {self.opts.target_name}" if self.opts.target_name else "")
                        + "\n\n" + "".join(traceback.format_exception(exc)))
            if self.opts.schedule_text is not None:
                with open(os.path.join(path, "schedule.hc"), "w") as f:
                    f.write(self.opts.schedule_text)
            from homec.onnx_io import save

            try:  # the graph as the crashing pass left it may be broken; best effort
                save(self.graph, os.path.join(path, "graph-at-crash.onnx"))
            except Exception:
                pass
        except OSError:
            return "(could not write the reproducer)"
        return path


def _tol(t: Tolerance) -> str:
    if not t.lossy and t.atol == 0 and t.rtol == 0:
        return "exact"
    parts = []
    if t.atol not in (0, float("inf")):
        parts.append(f"atol {t.atol:g}")
    if t.rtol:
        parts.append(f"rtol {t.rtol:g}")
    if t.min_cosine is not None:
        parts.append(f"cosine >= {t.min_cosine:g}")
    return ", ".join(parts) or "bounded"


def _checker_ok(model: onnx.ModelProto) -> bool:
    try:
        onnx.checker.check_model(model, full_check=True)
        return True
    except Exception:
        return False


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    return v
