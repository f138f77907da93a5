"""The schedule language's syntax tree: frozen dataclasses with source positions.

One set of classes serves both stages:

* `parse` gives a `Program` per file: its top-level `Include`s, `PipelineDef`s and
  `Schedule` blocks, in source order. Every name statement is a `PassCall` there (the
  parser cannot tell a pass from a pipeline), and option values are the literals as written.
* `validate` gives one `Schedule` whose statements are resolved: a `PassCall` names a
  registered pass, carries its `PassInfo` and has option values coerced to the option types;
  a pipeline invocation is a `PipelineRef` holding the pipeline's (resolved) body.

Positions (`pos` and the other `*_pos` fields), the parsed `PassInfo`, the source text and
included programs are metadata: they take no part in `==` or `hash`, so two trees are equal
when they say the same thing, wherever it was written.

Option values are plain Python values: int, float, bool, str, None, or a tuple of values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

from homec.context import Selector
from homec.errors import UsageError

if TYPE_CHECKING:
    from homec.registry import PassInfo

Value = Union[int, float, bool, str, None, tuple["Value", ...]]


@dataclass(frozen=True, order=True)
class Pos:
    """A place in a schedule file: 1-based line and column (a tab counts as one column)."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


NOWHERE = Pos("", 0, 0)  # for nodes built in code rather than parsed


def _meta(default: Any = NOWHERE) -> Any:
    return field(default=default, compare=False, repr=False)


@dataclass(frozen=True)
class Option:
    """`name=value` in a pass call; `pos` is the name's, `value_pos` the value's."""

    name: str
    value: Value
    pos: Pos = _meta()
    value_pos: Pos = _meta()


@dataclass(frozen=True)
class PassCall:
    """`name(options) on OpTypes where name ~ "glob"`: a pass (or, before validation, a
    pipeline invoked by name). `info` is set by validation."""

    name: str
    options: tuple[Option, ...] = ()
    selector: Selector | None = None
    pos: Pos = _meta()
    selector_pos: Pos = _meta()  # of `on` (or of `where` when there is no `on`)
    info: PassInfo | None = _meta(None)
    end_line: int = _meta(0)  # last line of the call (options may span lines)

    def __post_init__(self) -> None:
        if self.selector is not None and self.selector.is_empty:
            object.__setattr__(self, "selector", None)  # an empty selector selects all nodes

    @property
    def kwargs(self) -> dict[str, Value]:
        """The options as given (after validation: coerced), for `PassInfo.bind`."""
        return {o.name: o.value for o in self.options}


@dataclass(frozen=True)
class PipelineRef:
    """A pipeline invoked by name (validated schedules only): run `body` in order."""

    name: str
    body: tuple[Stmt, ...]
    pos: Pos = _meta()


@dataclass(frozen=True)
class Repeat:
    """`repeat(count) { body }`: run body `count` times."""

    count: int
    body: tuple[Stmt, ...]
    pos: Pos = _meta()
    count_pos: Pos = _meta()
    end_line: int = _meta(0)  # line of the closing `}` (for the formatter's comments)


@dataclass(frozen=True)
class Fixpoint:
    """`fixpoint(max=n) { body }`: run body until an iteration in which no pass reports a
    change, at most `max` times."""

    max: int
    body: tuple[Stmt, ...]
    pos: Pos = _meta()
    max_pos: Pos = _meta()
    end_line: int = _meta(0)  # line of the closing `}` (for the formatter's comments)


@dataclass(frozen=True)
class When:
    """`when target == "x" { then } else { orelse }` (`op` is "==" or "!=")."""

    op: str
    target: str
    then: tuple[Stmt, ...]
    orelse: tuple[Stmt, ...] = ()
    pos: Pos = _meta()
    target_pos: Pos = _meta()
    then_end_line: int = _meta(0)  # line of the `}` closing `then`
    end_line: int = _meta(0)  # line of the last `}`

    def applies(self, target: str | None) -> bool:
        """Whether `then` runs when compiling for `target` (None: no target given, which
        equals no target name)."""
        return (target == self.target) == (self.op == "==")

    def branch(self, target: str | None) -> tuple[Stmt, ...]:
        return self.then if self.applies(target) else self.orelse


Stmt = Union[PassCall, PipelineRef, Repeat, Fixpoint, When]


@dataclass(frozen=True)
class PipelineDef:
    """`pipeline name { body }` (top level)."""

    name: str
    body: tuple[Stmt, ...]
    pos: Pos = _meta()  # of the `pipeline` keyword
    name_pos: Pos = _meta()
    end_line: int = _meta(0)


@dataclass(frozen=True)
class Schedule:
    """`schedule { body }`: what runs. `validate` returns one with a resolved body."""

    body: tuple[Stmt, ...]
    pos: Pos = _meta()
    end_line: int = _meta(0)


@dataclass(frozen=True)
class Include:
    """`include "path"`: `path` as written; `resolved` is the path that was read and
    `program` what it holds (the same object for every include of one file)."""

    path: str
    pos: Pos = _meta()
    resolved: str = _meta("")
    program: Program | None = _meta(None)


TopItem = Union[Include, PipelineDef, Schedule]


@dataclass(frozen=True)
class Comment:
    """A `# ...` comment (kept for the formatter); `text` includes the `#`."""

    text: str
    line: int
    column: int


@dataclass(frozen=True)
class Program:
    """One parsed file: its top-level items in source order."""

    items: tuple[TopItem, ...]
    file: str = _meta("<string>")
    source: str = _meta("")
    comments: tuple[Comment, ...] = _meta(())

    @property
    def includes(self) -> tuple[Include, ...]:
        return tuple(i for i in self.items if isinstance(i, Include))

    @property
    def pipelines(self) -> tuple[PipelineDef, ...]:
        """This file's own pipeline definitions (not those of included files)."""
        return tuple(i for i in self.items if isinstance(i, PipelineDef))

    @property
    def schedules(self) -> tuple[Schedule, ...]:
        """This file's own `schedule` blocks (validation wants exactly one in the file set)."""
        return tuple(i for i in self.items if isinstance(i, Schedule))

    def files(self) -> Iterator[Program]:
        """This program, then every included program (depth first, each file once)."""
        seen: set[int] = set()

        def walk(p: Program) -> Iterator[Program]:
            if id(p) in seen:
                return
            seen.add(id(p))
            yield p
            for inc in p.includes:
                if inc.program is not None:
                    yield from walk(inc.program)

        return walk(self)


def walk(stmts: tuple[Stmt, ...]) -> Iterator[Stmt]:
    """Every statement in `stmts` and in the blocks nested in them, in source order
    (pipeline bodies behind a `PipelineRef` included)."""
    for s in stmts:
        yield s
        if isinstance(s, (PipelineRef, Repeat, Fixpoint)):
            yield from walk(s.body)
        elif isinstance(s, When):
            yield from walk(s.then)
            yield from walk(s.orelse)


# ---------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Diagnostic:
    """One error at a place in a schedule file, with the source line it points into."""

    message: str
    pos: Pos | None = None
    line_text: str | None = None
    file: str = ""  # for errors without a position (pos.file otherwise)

    def render(self) -> str:
        """`file:line:col: error: message`, then the source line and a caret under the
        column (each indented by four spaces); `file: error: message` without a position."""
        if self.pos is None or self.pos.line <= 0:
            where = self.file or (self.pos.file if self.pos else "")
            return f"{where}: error: {self.message}" if where else f"error: {self.message}"
        head = f"{self.pos}: error: {self.message}"
        if self.line_text is None:
            return head
        line = self.line_text.rstrip("\r\n")
        lead = "".join("\t" if c == "\t" else " " for c in line[: max(self.pos.column - 1, 0)])
        lead += " " * max(self.pos.column - 1 - len(line), 0)
        return f"{head}\n    {line}\n    {lead}^"


def source_line(text: str, line: int) -> str | None:
    """Line `line` (1-based) of `text`, without its line break; None past the end."""
    lines = text.split("\n")
    if 1 <= line <= len(lines):
        return lines[line - 1].rstrip("\r")
    return None


class ScheduleError(UsageError):
    """A schedule that does not parse or does not validate (exit code 2).

    `diagnostics` holds every error found; `str(err)` is all of them rendered, one after
    the other; `err.message` is the first line (`file:line:col: error: ...`).
    """

    def __init__(self, diagnostics: list[Diagnostic] | tuple[Diagnostic, ...] | Diagnostic):
        if isinstance(diagnostics, Diagnostic):
            diagnostics = (diagnostics,)
        self.diagnostics: tuple[Diagnostic, ...] = tuple(diagnostics)
        assert self.diagnostics, "a ScheduleError needs at least one diagnostic"
        text = "\n".join(d.render() for d in self.diagnostics)
        super().__init__(text)
        self.message = text.split("\n", 1)[0]

    @classmethod
    def at(cls, message: str, pos: Pos, source: str | None) -> ScheduleError:
        line = source_line(source, pos.line) if source is not None else None
        return cls(Diagnostic(message, pos, line))


def replace(node: Any, **changes: Any) -> Any:
    """`dataclasses.replace` (re-exported for building trees in code)."""
    return dataclasses.replace(node, **changes)


__all__ = ["Comment", "Diagnostic", "Fixpoint", "Include", "NOWHERE", "Option", "PassCall",
           "PipelineDef", "PipelineRef", "Pos", "Program", "Repeat", "Schedule",
           "ScheduleError", "Selector", "Stmt", "TopItem", "Value", "When", "replace",
           "source_line", "walk"]
