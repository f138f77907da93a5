"""Print a `Program` in the one normal form `homec fmt` writes.

* two-space indentation, one statement per line, `{` on the header's line;
* options in source order as `name=value`, `f()` printed as `f`;
* strings double-quoted, re-escaped (`\\"`, `\\\\`, `\\n`, `\\t`, `\\r`; other control,
  format and separator characters as `\\uXXXX` / `\\UXXXXXXXX`); floats printed with
  `repr`, which reads back to the same float; ints, `true`, `false`, `none`, `[a, b]`;
* empty blocks as `{}`, an empty `else` dropped;
* comments kept: on their own line before the statement that followed them, or at the end
  of the line they ended (after two spaces); at most one blank line kept where the source
  had blank lines; no blank line right after `{`.

`parse_text(format_program(p)) == p` for every program `p` (positions aside), and formatting
is idempotent. Only the given file is printed: an include stays `include "path"`.
"""

from __future__ import annotations

import re
import unicodedata

from homec.schedule.ast import (Comment, Fixpoint, Include, Option, PassCall, PipelineDef,
                                PipelineRef, Program, Repeat, Schedule, Stmt, Value, When)

__all__ = ["format_program", "format_value", "quote"]

INDENT = "  "
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SIMPLE = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}
_ESCAPED_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Zl", "Zp"}


def quote(text: str) -> str:
    """`text` as a schedule string literal."""
    out = ['"']
    for ch in text:
        if ch in _SIMPLE:
            out.append(_SIMPLE[ch])
        elif unicodedata.category(ch) in _ESCAPED_CATEGORIES:
            code = ord(ch)
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def format_value(value: Value) -> str:
    """An option value as schedule source."""
    if value is None:
        return "none"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{value!r} cannot be written in a schedule")
        return repr(value)
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    raise TypeError(f"not a schedule value: {value!r}")


def _name(name: str) -> str:
    if not _IDENT.fullmatch(name):
        raise ValueError(f"{name!r} is not a name the schedule language can write")
    return name


def _option(o: Option) -> str:
    return f"{_name(o.name)}={format_value(o.value)}"


def _call(c: PassCall) -> str:
    text = _name(c.name)
    if c.options:
        text += "(" + ", ".join(_option(o) for o in c.options) + ")"
    sel = c.selector
    if sel is not None:
        if sel.op_types:
            text += " on " + ", ".join(_name(t) for t in sel.op_types)
        if sel.name_glob is not None:
            text += f" where name ~ {quote(sel.name_glob)}"
    return text


class _Printer:
    def __init__(self, program: Program):
        self.out: list[str] = []
        self.comments: list[Comment] = sorted(program.comments, key=lambda c: (c.line, c.column))
        self.next = 0  # index of the first comment not printed yet
        lines = program.source.split("\n")
        self.blank = {i + 1 for i, line in enumerate(lines) if not line.strip()}
        self.last = 0  # last source line printed (0: none yet, or no positions)

    # -- lines, comments, blank lines --

    def emit(self, depth: int, text: str) -> None:
        self.out.append(INDENT * depth + text)

    def gap(self, line: int) -> None:
        """One blank line if the source had one between the last printed line and `line`."""
        if line <= 0 or self.last <= 0 or not self.out:
            return
        prev = self.out[-1]
        if not prev or prev.endswith("{"):
            return
        if any(n in self.blank for n in range(self.last + 1, line)):
            self.out.append("")

    def comments_before(self, line: int, depth: int) -> None:
        """Print the comments that start before source line `line` on their own lines."""
        if line <= 0:
            return
        while self.next < len(self.comments) and self.comments[self.next].line < line:
            c = self.comments[self.next]
            self.next += 1
            self.gap(c.line)
            self.emit(depth, c.text)
            self.last = c.line

    def trailing(self, line: int) -> str:
        """The comment ending source line `line`, as a line suffix (or "")."""
        if line > 0 and self.next < len(self.comments) and self.comments[self.next].line == line:
            c = self.comments[self.next]
            self.next += 1
            return "  " + c.text
        return ""

    def start(self, line: int, depth: int) -> None:
        self.comments_before(line, depth)
        self.gap(line)
        if line > 0:
            self.last = line

    def has_comments_before(self, line: int) -> bool:
        return line > 0 and self.next < len(self.comments) and self.comments[self.next].line < line

    # -- blocks and statements --

    def block(self, header: str, body: tuple[Stmt, ...], depth: int, line: int,
              end_line: int, closing: str = "}") -> None:
        """`header {` body `}`; `closing` may continue (as in `} else {`)."""
        if not body and not self.has_comments_before(end_line) and closing == "}":
            self.emit(depth, f"{header} {{}}" + self.trailing(line))
            if end_line > 0:
                self.last = max(self.last, end_line)
            return
        self.emit(depth, f"{header} {{" + self.trailing(line))
        for s in body:
            self.stmt(s, depth + 1)
        self.comments_before(end_line, depth + 1)
        if closing == "}":
            self.emit(depth, "}" + self.trailing(end_line))
            if end_line > 0:
                self.last = max(self.last, end_line)

    def stmt(self, s: Stmt, depth: int) -> None:
        line = s.pos.line
        self.start(line, depth)
        if isinstance(s, PassCall):
            self.emit(depth, _call(s) + self.trailing(line))
            if s.end_line > line > 0:  # comments inside a call spread over lines
                comments = self.comments
                while self.next < len(comments) and comments[self.next].line <= s.end_line:
                    self.emit(depth, comments[self.next].text)
                    self.next += 1
                self.last = s.end_line
        elif isinstance(s, PipelineRef):  # a validated schedule: print the invocation
            self.emit(depth, _name(s.name) + self.trailing(line))
        elif isinstance(s, Repeat):
            self.block(f"repeat({s.count})", s.body, depth, line, s.end_line)
        elif isinstance(s, Fixpoint):
            self.block(f"fixpoint(max={s.max})", s.body, depth, line, s.end_line)
        elif isinstance(s, When):
            header = f"when target {s.op} {quote(s.target)}"
            if not s.orelse:
                self.block(header, s.then, depth, line, s.end_line)
            else:
                self.block(header, s.then, depth, line, s.then_end_line, closing="} else")
                self.block("} else", s.orelse, depth, s.then_end_line, s.end_line)
        else:
            raise TypeError(f"not a schedule statement: {s!r}")

    def item(self, item: Include | PipelineDef | Schedule) -> None:
        line = item.pos.line
        self.start(line, 0)
        if isinstance(item, Include):
            self.emit(0, f"include {quote(item.path)}" + self.trailing(line))
        elif isinstance(item, PipelineDef):
            self.block(f"pipeline {_name(item.name)}", item.body, 0, line, item.end_line)
        elif isinstance(item, Schedule):
            self.block("schedule", item.body, 0, line, item.end_line)
        else:
            raise TypeError(f"not a top-level item: {item!r}")

    def program(self, program: Program) -> str:
        for item in program.items:
            self.item(item)
        while self.next < len(self.comments):  # comments after the last item
            c = self.comments[self.next]
            self.next += 1
            self.gap(c.line)
            self.emit(0, c.text)
            self.last = c.line
        return "".join(line.rstrip() + "\n" for line in self.out)


def format_program(program: Program) -> str:
    """`program` (one file, as parsed) in normal form, ending with a newline."""
    return _Printer(program).program(program)
