"""Check a parsed `Program` against the pass registry and resolve it into a runnable
`Schedule`.

    schedule = validate(parse_file("kitchen.hc"), targets={"cpu", "npu-int8", "mcu"})

Every problem is collected (not just the first) and raised together as one ScheduleError,
each rendered `file:line:col: error: ...` with its source line and a caret, in file order:

* a name that is neither a registered pass nor a pipeline (with a "did you mean");
* options: unknown (with a suggestion), given twice, wrong type, out of range, none where
  not optional; options or a selector given to a pipeline;
* a selector (`on` / `where`) on a pass registered with selectable=False;
* pipelines: defined twice, named like a pass, calling themselves (directly or not);
* `when target == "x"` naming an unknown target (only when `targets` is given);
* `repeat(n)` with n < 1, `fixpoint(max=n)` with n < 1;
* not exactly one `schedule` block in the file set: the main file's, or, when the main file
  has none, a single one in an included file.

Every pipeline definition is checked, used or not. The result is the schedule block with:

* each pass call a `PassCall` whose `info` is its `PassInfo` and whose option values are
  coerced by the option specs (ints widened to float, lists to tuples); defaults are not
  filled in (`call.info.bind(call.kwargs)` gives the full keyword arguments);
* each pipeline invocation a `PipelineRef(name, body)`, the body resolved the same way
  (the same tuple object for every invocation of one pipeline).
"""

from __future__ import annotations

from collections.abc import Iterable

from homec.registry import REGISTRY, PassRegistry, suggest
from homec.schedule.ast import (Diagnostic, Fixpoint, Include, Option, PassCall, PipelineDef,
                                PipelineRef, Pos, Program, Repeat, Schedule, ScheduleError,
                                Stmt, When, source_line)

__all__ = ["ScheduleError", "validate"]


def _did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """A "did you mean" for a misspelt name: the candidates it is the start of (`npu` ->
    `npu-int8`; a few at most), else the closest by spelling (registry.suggest)."""
    names = sorted(set(candidates))
    starts = [c for c in names if len(name) >= 3 and c.startswith(name)]
    if len(starts) == 1:
        return f"; did you mean `{starts[0]}`?"
    if 1 < len(starts) <= 4:
        return "; did you mean one of " + ", ".join(f"`{c}`" for c in starts) + "?"
    hint = suggest(name, names)
    return f"; did you mean `{hint}`?" if hint else ""


class _Validator:
    def __init__(self, program: Program, registry: PassRegistry, targets: set[str] | None):
        self.program = program
        self.registry = registry
        self.targets = targets
        self.files = list(program.files())
        self.sources = {p.file: p.source for p in self.files}
        self.order = {p.file: i for i, p in enumerate(self.files)}
        self.errors: list[Diagnostic] = []
        self.pipelines: dict[str, PipelineDef] = {}
        self.rejected: list[PipelineDef] = []  # defined twice, or named like a pass
        self.resolved: dict[str, tuple[Stmt, ...]] = {}
        self.resolving: list[str] = []  # pipelines being resolved (outermost first)
        self.pass_names = set(registry.names())

    def error(self, message: str, pos: Pos) -> None:
        line = source_line(self.sources[pos.file], pos.line) if pos.file in self.sources else None
        self.errors.append(Diagnostic(message, pos, line))

    # -- the file set --

    def run(self) -> Schedule:
        for p in self.definitions(self.program, set()):
            self.define(p)
        for name in self.pipelines:
            self.resolve_pipeline(name)
        for p in self.rejected:  # still report what is wrong inside them
            self.resolve(p.body)
        schedule = self.pick_schedule()
        body = self.resolve(schedule.body) if schedule is not None else ()
        if self.errors:
            self.errors.sort(key=lambda d: (self.order.get(d.pos.file, -1) if d.pos else -1,
                                            d.pos.line if d.pos else 0,
                                            d.pos.column if d.pos else 0))
            raise ScheduleError(self.errors)
        assert schedule is not None
        return Schedule(body, pos=schedule.pos, end_line=schedule.end_line)

    def definitions(self, prog: Program, seen: set[int]) -> Iterable[PipelineDef]:
        """Pipeline definitions in reading order: an include's where the include is."""
        seen.add(id(prog))
        for item in prog.items:
            if isinstance(item, PipelineDef):
                yield item
            elif isinstance(item, Include) and item.program is not None \
                    and id(item.program) not in seen:
                yield from self.definitions(item.program, seen)

    def define(self, p: PipelineDef) -> None:
        if p.name in self.pipelines:
            first = self.pipelines[p.name]
            self.error(f"pipeline `{p.name}` is already defined at {first.name_pos}", p.name_pos)
            self.rejected.append(p)
        elif p.name in self.pass_names:
            self.error(f"pipeline `{p.name}` has the name of a pass; pick another name",
                       p.name_pos)
            self.rejected.append(p)
        else:
            self.pipelines[p.name] = p

    def pick_schedule(self) -> Schedule | None:
        main = self.program.schedules
        included = [s for prog in self.files[1:] for s in prog.schedules]
        if main:
            for extra in main[1:]:
                self.error(f"a second `schedule` block (the first is at {main[0].pos}); "
                           "a file set has exactly one", extra.pos)
            for s in included:
                self.error(f"a `schedule` block in an included file; {self.program.file} "
                           f"has its own (at {main[0].pos}), which is the one that runs",
                           s.pos)
            return main[0]
        if included:
            for extra in included[1:]:
                self.error(f"a second `schedule` block (the first is at {included[0].pos}); "
                           "a file set has exactly one", extra.pos)
            return included[0]
        self.errors.append(Diagnostic("no `schedule { ... }` block (in this file or the "
                                      "files it includes)", file=self.program.file))
        return None

    # -- pipelines --

    def resolve_pipeline(self, name: str) -> tuple[Stmt, ...]:
        if name not in self.resolved:
            self.resolving.append(name)
            body = self.resolve(self.pipelines[name].body)
            self.resolving.pop()
            self.resolved[name] = body
        return self.resolved[name]

    def pipeline_ref(self, call: PassCall) -> PipelineRef:
        if call.options:
            self.error(f"pipeline `{call.name}` takes no options", call.options[0].pos)
        if call.selector is not None:
            self.error(f"pipeline `{call.name}` takes no selector; put `on` / `where` on "
                       "the passes inside it", call.selector_pos)
        if call.name in self.resolving:
            chain = self.resolving[self.resolving.index(call.name):] + [call.name]
            self.error(f"pipeline `{call.name}` calls itself: {' -> '.join(chain)}", call.pos)
            return PipelineRef(call.name, (), pos=call.pos)
        return PipelineRef(call.name, self.resolve_pipeline(call.name), pos=call.pos)

    # -- statements --

    def resolve(self, stmts: tuple[Stmt, ...]) -> tuple[Stmt, ...]:
        out: list[Stmt] = []
        for s in stmts:
            if isinstance(s, PassCall):
                out.append(self.pipeline_ref(s) if s.name in self.pipelines else self.call(s))
            elif isinstance(s, Repeat):
                if s.count < 1:
                    self.error(f"repeat count must be at least 1, got {s.count}", s.count_pos)
                out.append(Repeat(s.count, self.resolve(s.body), pos=s.pos,
                                  count_pos=s.count_pos, end_line=s.end_line))
            elif isinstance(s, Fixpoint):
                if s.max < 1:
                    self.error(f"fixpoint max must be at least 1, got {s.max}", s.max_pos)
                out.append(Fixpoint(s.max, self.resolve(s.body), pos=s.pos, max_pos=s.max_pos,
                                    end_line=s.end_line))
            elif isinstance(s, When):
                if self.targets is not None and s.target not in self.targets:
                    hint = _did_you_mean(s.target, self.targets)
                    known = "" if hint else "; known targets: " + ", ".join(sorted(self.targets))
                    self.error(f"unknown target `{s.target}`{hint}{known}", s.target_pos)
                out.append(When(s.op, s.target, self.resolve(s.then), self.resolve(s.orelse),
                                pos=s.pos, target_pos=s.target_pos,
                                then_end_line=s.then_end_line, end_line=s.end_line))
            elif isinstance(s, PipelineRef):  # already resolved (validating a validated tree)
                out.append(s)
            else:  # pragma: no cover
                raise TypeError(f"not a schedule statement: {s!r}")
        return tuple(out)

    def call(self, call: PassCall) -> PassCall:
        info = self.registry.get(call.name)
        if info is None:
            self.error(f"unknown pass `{call.name}`"
                       + _did_you_mean(call.name, self.pass_names | set(self.pipelines)),
                       call.pos)
            return call
        if call.selector is not None and not info.selectable:
            self.error(f"pass `{call.name}` works on the whole graph and takes no selector "
                       "(`on` / `where`)", call.selector_pos)
        options: list[Option] = []
        seen: set[str] = set()
        for opt in call.options:
            if opt.name in seen:
                self.error(f"option `{opt.name}` is given twice", opt.pos)
                continue
            seen.add(opt.name)
            spec = info.options.get(opt.name)
            if spec is None:
                hint = _did_you_mean(opt.name, info.options)
                if not hint:
                    hint = ("; it takes no options" if not info.options else
                            "; its options are " + ", ".join(f"`{o}`" for o in info.options))
                self.error(f"pass `{call.name}` has no option `{opt.name}`{hint}", opt.pos)
                continue
            value, problem = spec.check(opt.value)
            if problem:
                self.error(f"{problem} (pass `{call.name}`)", opt.value_pos)
                continue
            options.append(Option(opt.name, value, pos=opt.pos, value_pos=opt.value_pos))
        return PassCall(call.name, tuple(options), call.selector, pos=call.pos,
                        selector_pos=call.selector_pos, info=info, end_line=call.end_line)


def validate(program: Program, registry: PassRegistry = REGISTRY,
             targets: set[str] | None = None) -> Schedule:
    """Check `program` (and what it includes) against `registry`, and return its schedule
    block, resolved. `targets`: the target names `when` may compare with (None: any).
    Raises ScheduleError holding every error found."""
    return _Validator(program, registry, set(targets) if targets is not None else None).run()
