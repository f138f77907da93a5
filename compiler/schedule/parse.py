"""Schedule text -> `Program` (homec.schedule.ast), with includes and friendly syntax errors.

    parse_file("kitchen.hc")          # reads the file and everything it includes
    parse_text(text, "kitchen.hc")    # the same from a string (includes relative to the name)

The grammar lives alone in grammar/schedule.lark; this module only turns Lark's tree into
frozen dataclasses and Lark's errors into `ScheduleError`s that say, in plain words, what
was expected where:

    schedule.hc:3:24: error: expected an option value, found `=`
        prune_channels(ratio==0.3)
                             ^

Which words fit an error is decided by the LALR state it happened in: the small malformed
examples in `_EXPECTED` label the states they fail in (Lark's `match_examples` idea, keyed
by state number; see `_labels`); states no example covers fall back to naming each
acceptable token (`_plain_words`). Token names such as RPAR never reach the user.

Includes are resolved relative to the including file and read once each (a file included
twice gives one `Program`, shared); an include cycle or an unreadable include is an error at
the `include` statement. Whether names exist, options type-check and there is exactly one
`schedule` block is for `homec.schedule.validate`.
"""

from __future__ import annotations

import functools
import math
import os
import string
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Any

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import (UnexpectedCharacters, UnexpectedEOF, UnexpectedInput,
                             UnexpectedToken, VisitError)
from lark.parsers.lalr_analysis import Reduce, Shift

from homec.context import Selector
from homec.schedule.ast import (Comment, Diagnostic, Fixpoint, Include, Option, PassCall,
                                PipelineDef, Pos, Program, Repeat, Schedule, ScheduleError,
                                Value, When)

__all__ = ["ScheduleError", "parse_file", "parse_text"]


# ---------------------------------------------------------------------------------------
# The parser
# ---------------------------------------------------------------------------------------


MAX_NESTING = 64  # blocks inside blocks, lists inside lists: deeper is surely a mistake


class _TooDeep(Exception):
    def __init__(self, tok: Token):
        self.tok = tok


class _NewlinesInBrackets:
    """Post-lexer: newlines inside `( )` and `[ ]` are not statement separators. Also
    refuses nesting deeper than MAX_NESTING (the tree walk after parsing is recursive)."""

    always_accept = ("_NL",)

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        depth = 0
        braces: list[Token] = []  # the `{` not yet closed, for "never closed" hints
        if _SINK.comments is not None:
            _SINK.open_braces = braces
        for tok in stream:
            if tok.type == "_NL":
                if depth:
                    continue
            elif tok.type in ("LPAR", "LSQB"):
                depth += 1
                if depth > MAX_NESTING:
                    raise _TooDeep(tok)
            elif tok.type in ("RPAR", "RSQB"):
                depth = max(depth - 1, 0)
            elif tok.type in ("LBRACE", "RBRACE"):  # never inside brackets: resynchronize
                depth = 0
                if tok.type == "LBRACE":
                    braces.append(tok)
                    if len(braces) > MAX_NESTING:
                        raise _TooDeep(tok)
                elif braces:
                    braces.pop()
            yield tok


class _CommentSink(threading.local):
    """What the current parse collects besides the tree (None/empty while Lark re-parses
    the error examples)."""

    comments: list[Token] | None = None
    open_braces: list[Token] = []  # noqa: RUF012 - replaced, never mutated, per parse


_SINK = _CommentSink()


def _on_comment(tok: Token) -> None:
    if _SINK.comments is not None:
        _SINK.comments.append(tok)


@functools.cache
def _parser() -> Lark:
    grammar = resources.files("homec.grammar").joinpath("schedule.lark").read_text("utf-8")
    return Lark(grammar, parser="lalr", lexer="contextual", propagate_positions=True,
                postlex=_NewlinesInBrackets(), maybe_placeholders=False,
                lexer_callbacks={"COMMENT": _on_comment})


def _lark_parse(text: str, comments: list[Token]) -> Tree:
    """Parse `text`, appending its comments (ignored by the grammar) to `comments`."""
    _SINK.comments = comments
    _SINK.open_braces = []
    try:
        return _parser().parse(text)
    finally:
        _SINK.comments = None


# ---------------------------------------------------------------------------------------
# Tree -> AST
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Lit:
    value: Value
    pos: Pos


@dataclass(frozen=True)
class _Where:
    glob: str
    pos: Pos


@dataclass(frozen=True)
class _Sel:
    selector: Selector
    pos: Pos


@dataclass(frozen=True)
class _Block:
    body: tuple[Any, ...]
    end_line: int


_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t", "r": "\r"}


class _ToAst(Transformer):
    def __init__(self, file: str, source: str):
        super().__init__(visit_tokens=True)
        self.file = file
        self.source = source

    def _pos(self, at: Token | Any) -> Pos:
        return Pos(self.file, at.line, at.column)

    def _error(self, message: str, pos: Pos) -> ScheduleError:
        return ScheduleError.at(message, pos, self.source)

    # -- literals --

    def INT(self, tok: Token) -> _Lit:
        return _Lit(int(tok), self._pos(tok))

    def FLOAT(self, tok: Token) -> _Lit:
        value = float(tok)
        if not math.isfinite(value):
            raise self._error(f"number `{tok}` is too large", self._pos(tok))
        return _Lit(value, self._pos(tok))

    def STRING(self, tok: Token) -> _Lit:
        return _Lit(self._unescape(tok), self._pos(tok))

    def TRUE(self, tok: Token) -> _Lit:
        return _Lit(True, self._pos(tok))

    def FALSE(self, tok: Token) -> _Lit:
        return _Lit(False, self._pos(tok))

    def NONE(self, tok: Token) -> _Lit:
        return _Lit(None, self._pos(tok))

    def _unescape(self, tok: Token) -> str:
        raw = str(tok)[1:-1]
        if "\\" not in raw:
            return raw
        out: list[str] = []
        i = 0
        while i < len(raw):
            c = raw[i]
            if c != "\\":
                out.append(c)
                i += 1
                continue
            esc = raw[i + 1]  # the grammar guarantees a character after a backslash
            where = Pos(self.file, tok.line, tok.column + 1 + i)
            if esc in _ESCAPES:
                out.append(_ESCAPES[esc])
                i += 2
            elif esc in "uU":
                width = 4 if esc == "u" else 8
                digits = raw[i + 2:i + 2 + width]
                if len(digits) != width or any(d not in string.hexdigits for d in digits):
                    raise self._error(f"`\\{esc}` needs {width} hex digits, as in "
                                      + ("`\\u00e9`" if esc == "u" else "`\\U0001f600`"),
                                      where)
                if int(digits, 16) > 0x10FFFF:
                    raise self._error(f"`\\{esc}{digits}` is not a Unicode character", where)
                out.append(chr(int(digits, 16)))
                i += 2 + width
            else:
                raise self._error(f"unknown escape `\\{esc}` in a string; the escapes are "
                                  "\\\" \\\\ \\n \\t \\r \\uXXXX \\UXXXXXXXX", where)
        return "".join(out)

    # -- options and selectors --

    @v_args(meta=True)
    def list(self, meta: Any, children: list[_Lit]) -> _Lit:
        return _Lit(tuple(c.value for c in children), self._pos(meta))

    def option(self, children: list[Any]) -> Option:
        name, lit = children
        return Option(str(name), lit.value, pos=self._pos(name), value_pos=lit.pos)

    def args(self, children: list[Option]) -> tuple[Option, ...]:
        return tuple(children)

    def where(self, children: list[Any]) -> _Where:
        kw, glob = children
        return _Where(glob.value, self._pos(kw))

    def selector(self, children: list[Any]) -> _Sel:
        if isinstance(children[0], _Where):  # `where` alone
            return _Sel(Selector(name_glob=children[0].glob), children[0].pos)
        on, *rest = children
        glob = rest.pop().glob if rest and isinstance(rest[-1], _Where) else None
        return _Sel(Selector(op_types=tuple(str(t) for t in rest), name_glob=glob),
                    self._pos(on))

    # -- statements --

    @v_args(meta=True)
    def call(self, meta: Any, children: list[Any]) -> PassCall:
        name, *rest = children
        options: tuple[Option, ...] = ()
        selector, selector_pos = None, Pos(self.file, 0, 0)
        for part in rest:
            if isinstance(part, _Sel):
                selector, selector_pos = part.selector, part.pos
            else:
                options = part
        return PassCall(str(name), options, selector, pos=self._pos(name),
                        selector_pos=selector_pos, end_line=meta.end_line)

    @v_args(meta=True)
    def block(self, meta: Any, children: list[Any]) -> _Block:
        return _Block(tuple(children), meta.end_line)

    def _whole(self, lit: _Lit) -> None:
        if not isinstance(lit.value, int):
            raise self._error(f"expected a whole number, found `{lit.value!r}`", lit.pos)

    def repeat(self, children: list[Any]) -> Repeat:
        kw, count, block = children
        self._whole(count)
        return Repeat(count.value, block.body, pos=self._pos(kw), count_pos=count.pos,
                      end_line=block.end_line)

    def fixpoint(self, children: list[Any]) -> Fixpoint:
        kw, limit, block = children
        self._whole(limit)
        return Fixpoint(limit.value, block.body, pos=self._pos(kw), max_pos=limit.pos,
                        end_line=block.end_line)

    def when(self, children: list[Any]) -> When:
        kw, op, target, then, *rest = children
        last = rest[-1] if rest else then  # rest: [ELSE, block] or []
        return When(str(op), target.value, then.body, last.body if rest else (),
                    pos=self._pos(kw), target_pos=target.pos, then_end_line=then.end_line,
                    end_line=last.end_line)

    # -- top level --

    def include(self, children: list[Any]) -> Include:
        kw, path = children
        return Include(path.value, pos=self._pos(kw))

    def pipeline_def(self, children: list[Any]) -> PipelineDef:
        kw, name, block = children
        return PipelineDef(str(name), block.body, pos=self._pos(kw), name_pos=self._pos(name),
                           end_line=block.end_line)

    def schedule(self, children: list[Any]) -> Schedule:
        kw, block = children
        return Schedule(block.body, pos=self._pos(kw), end_line=block.end_line)

    def start(self, children: list[Any]) -> tuple[Any, ...]:
        return tuple(children)


# ---------------------------------------------------------------------------------------
# Syntax errors in plain words
# ---------------------------------------------------------------------------------------

# label (what was expected) -> malformed examples that fail in the parser state it names.
# Keep each example failing in exactly the state its label describes (tests check it).
_EXPECTED: dict[str, list[str]] = {
    "`include`, `pipeline` or `schedule`": [
        "3", "cse", "schedule {}\n3", "schedule {}\ncse", "include \"a\"; 3"],
    "a newline or `;`": [
        "schedule {} x", "include \"a\" x", "pipeline p {} x",
        "schedule { cse(a=1) x }", "schedule { cse() x }", "schedule { cse on A x }",
        "schedule { cse on A, B x }", "schedule { cse on A where name ~ \"g\" x }",
        "schedule { cse where name ~ \"g\" x }", "schedule { cse(a=1) on A x }",
        "schedule { cse(a=1) where name ~ \"g\" x }",
        "schedule { repeat(2) {} x }", "schedule { fixpoint(max=2) {} x }",
        "schedule { when target == \"a\" {} else {} x }"],
    "`(`, a newline or `;`": ["schedule { cse x }"],
    "`else`, a newline or `;`": ["schedule { when target == \"a\" {} x }"],
    "a pass name or `}`": [
        "schedule { 3 }", "schedule {\n3 }", "schedule { cse; 3 }", "schedule { cse\n3 }",
        "schedule { cse;\n3 }"],
    "an option name or `)`": ["schedule { cse(3) }", "schedule { cse(a=1, 3) }",
                              "schedule { cse(a=1, b=2, 3) }"],
    "`=`": ["schedule { cse(a 1) }", "schedule { fixpoint(max 10) {} }"],
    "an option value": ["schedule { cse(a=) }", "schedule { cse(a=x) }"],
    "`,` or `)`": ["schedule { cse(a=1 b=2) }", "schedule { cse(a=[1] b=2) }",
                   "schedule { cse(a=\"s\" b=2) }", "schedule { cse(a=true b=2) }",
                   "schedule { cse(a=false b=2) }", "schedule { cse(a=none b=2) }",
                   "schedule { cse(a=1.5 b=2) }"],
    "an option value or `]`": ["schedule { cse(a=[) }", "schedule { cse(a=[1, ) }",
                               "schedule { cse(a=[1, 2, ) }"],
    "`,` or `]`": ["schedule { cse(a=[1 2]) }", "schedule { cse(a=[[1] 2]) }",
                   "schedule { cse(a=[\"s\" 2]) }", "schedule { cse(a=[true 2]) }",
                   "schedule { cse(a=[false 2]) }", "schedule { cse(a=[none 2]) }",
                   "schedule { cse(a=[1.5 2]) }"],
    "an op type": ["schedule { cse on 3 }", "schedule { cse on A, 3 }",
                   "schedule { cse on A, B, 3 }"],
    "`name`": ["schedule { cse where x }", "schedule { cse on A where x }"],
    "`~`": ["schedule { cse where name = \"g\" }", "schedule { cse on A where name = \"g\" }"],
    "a glob pattern in quotes": ["schedule { cse where name ~ x }",
                                 "schedule { cse on A where name ~ x }"],
    "a pipeline name": ["pipeline {}"],
    "`{`": ["schedule x", "pipeline p x", "schedule { repeat(2) x }",
            "schedule { fixpoint(max=2) x }", "schedule { when target == \"a\" x }",
            "schedule { when target == \"a\" {} else x }"],
    "a file name in quotes": ["include x"],
    "`(`": ["schedule { repeat 2 }", "schedule { fixpoint {} }"],
    "a whole number": ["schedule { repeat(x) }", "schedule { fixpoint(max=x) }"],
    "`)`": ["schedule { repeat(2 }", "schedule { fixpoint(max=2 }"],
    "`max`": ["schedule { fixpoint(10) }"],
    "`target`": ["schedule { when x }"],
    "`==` or `!=`": ["schedule { when target = \"a\" {} }"],
    "a target name in quotes": ["schedule { when target == x }"],
}

_VALUE_START = {"INT", "FLOAT", "STRING", "TRUE", "FALSE", "NONE", "LSQB"}
_STMT_START = {"NAME", "REPEAT", "FIXPOINT", "WHEN"}
_WORDS = {"NAME": "a name", "INT": "a whole number", "FLOAT": "a number", "STRING": "a string",
          "CMP": "`==` or `!=`", "$END": "the end of the file"}


def _plain_words(expected: set[str]) -> str:
    """Name every acceptable token in plain words (the fallback for unlabeled states)."""
    expected = set(expected)
    words: list[str] = []
    if _STMT_START <= expected:
        expected -= _STMT_START
        words.append("a pass name")
    if _VALUE_START <= expected:
        expected -= _VALUE_START
        words.append("an option value")
    separator = bool(expected & {"_NL", "SEMICOLON"})
    expected -= {"_NL", "SEMICOLON", "COMMENT", "WS"}
    terminals = {t.name: t for t in _parser().terminals}
    for name in sorted(expected):
        if name in _WORDS:
            words.append(_WORDS[name])
        elif name in terminals and terminals[name].pattern.type == "str":
            words.append(f"`{terminals[name].pattern.value}`")
        else:  # pragma: no cover - every terminal of the grammar is covered above
            words.append("something else")
    if separator:
        words.append("a newline or `;`")
    if not words:
        return "something else"
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _show(text: str, limit: int = 24) -> str:
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return f"`{text}`"


def _found(tok: Token) -> str:
    if tok.type == "$END":
        return "the end of the file"
    if tok.type == "_NL":
        return "the end of the line"
    return _show(str(tok))


def _end_of_text(text: str) -> tuple[int, int]:
    body = text.rstrip()
    line = body.count("\n") + 1
    return line, len(body) - (body.rfind("\n") + 1) + 1


def _hint(label: str, tok_type: str, value: str) -> str:
    if "an option value" in label and tok_type == "NAME":
        if value.lower() in ("true", "false", "none"):
            return f"; write `{value.lower()}`"
        return f'; enumeration values are strings: write "{value}"'
    if label == "`include`, `pipeline` or `schedule`" and tok_type == "NAME":
        return "; passes go inside `schedule { ... }` or `pipeline NAME { ... }`"
    if label == "`==` or `!=`" and value == "=":
        return "; compare with `==`"
    return ""


def _state(e: UnexpectedInput) -> int | None:
    """The LALR state an error happened in, after its default reductions.

    A state whose only actions reduce by one rule (`value: INT .`, `block: "{" ... "}" .`)
    is shared by every context that rule appears in; performing that reduction, as the
    parser would on any acceptable token, reaches the state of the actual context (a list
    or an option list; a `when` or a `schedule`), which says what may follow."""
    st = e.state
    stack = getattr(st, "state_stack", None)
    if stack is None:
        return st if isinstance(st, int) else None
    states = st.parse_conf.states
    stack = list(stack)
    for _ in range(64):
        actions = states[stack[-1]]
        rules = {id(arg): arg for action, arg in actions.values() if action is Reduce}
        if len(rules) != 1 or any(action is Shift for action, _ in actions.values()):
            break
        (rule,) = rules.values()
        if len(rule.expansion) >= len(stack):
            break
        if rule.expansion:
            del stack[-len(rule.expansion):]
        goto = states[stack[-1]].get(rule.origin.name)
        if goto is None or goto[0] is not Shift:
            break
        stack.append(goto[1])
    return stack[-1]


def _acceptable(e: UnexpectedInput, state: int | None) -> set[str]:
    """Every token the parser could take in `state` (where `e` happened)."""
    conf = getattr(e.state, "parse_conf", None)
    if conf is not None and state is not None:
        return {t for t in conf.states[state] if t.isupper()}
    return set(getattr(e, "expected", None) or getattr(e, "allowed", None) or ())


@functools.cache
def _labels() -> dict[int, str]:
    """LALR state -> what is expected there, in plain words (from `_EXPECTED`).

    This is Lark's `match_examples` idea keyed by the state number alone: `match_examples`
    compares whole parser stacks, so an example written at one nesting depth (or position
    in a block) would not match the same mistake made at another."""
    table: dict[int, str] = {}
    for label, examples in _EXPECTED.items():
        for example in examples:
            try:
                _parser().parse(example)
            except UnexpectedInput as e:
                state = _state(e)
                if state is not None:
                    table.setdefault(state, label)
    return table


def _syntax_error(e: UnexpectedInput, text: str, file: str) -> ScheduleError:
    state = _state(e)
    label = _labels().get(state) if state is not None else None
    if label is None:
        label = _plain_words(_acceptable(e, state))
    if isinstance(e, (UnexpectedToken, UnexpectedEOF)):
        tok = e.token
        message = f"expected {label}, found {_found(tok)}" + _hint(label, tok.type, str(tok))
        if tok.type == "$END":
            line, column = _end_of_text(text)
            if "`}`" in label and _SINK.open_braces:
                brace = _SINK.open_braces[-1]
                message += f"; the `{{` at line {brace.line} is never closed"
        else:
            line, column = tok.line, tok.column
    elif isinstance(e, UnexpectedCharacters):
        line, column = e.line, e.column
        char = text[e.pos_in_stream] if e.pos_in_stream < len(text) else ""
        if char == '"':
            message = 'unterminated string: a string ends with `"` on the same line'
        else:
            shown = _show(char) if char.isprintable() else f"U+{ord(char):04X}"
            message = f"expected {label}, found {shown}" + _hint(label, "", char)
    else:  # pragma: no cover - LALR raises only the kinds above
        line, column, message = getattr(e, "line", 1), getattr(e, "column", 1), str(e)
    return ScheduleError.at(message, Pos(file, line, column), text)


# ---------------------------------------------------------------------------------------
# Files and includes
# ---------------------------------------------------------------------------------------


class _Loader:
    def __init__(self) -> None:
        self.loaded: dict[str, Program] = {}  # realpath -> program
        self.stack: list[tuple[str, str]] = []  # (realpath, shown name) of files being read

    def program(self, text: str, file: str, real: str | None) -> Program:
        if text.startswith("\ufeff"):
            text = text[1:]
        comments: list[Token] = []
        try:
            tree = _lark_parse(text, comments)
        except UnexpectedInput as e:
            raise _syntax_error(e, text, file) from None
        except _TooDeep as e:
            raise ScheduleError.at(f"nested more than {MAX_NESTING} deep",
                                   Pos(file, e.tok.line, e.tok.column), text) from None
        try:
            items = _ToAst(file, text).transform(tree)
        except VisitError as e:
            if isinstance(e.orig_exc, ScheduleError):
                raise e.orig_exc from None
            raise
        if real is not None:
            self.stack.append((real, file))
        try:
            items = tuple(self._include(i, file, text) if isinstance(i, Include) else i
                          for i in items)
        finally:
            if real is not None:
                self.stack.pop()
        prog = Program(items, file=file, source=text,
                       comments=tuple(Comment(str(c).rstrip("\r"), c.line, c.column)
                                      for c in comments))
        if real is not None:
            self.loaded[real] = prog
        return prog

    def _include(self, inc: Include, file: str, text: str) -> Include:
        if not inc.path.strip():
            raise ScheduleError.at("an include needs a file name", inc.pos, text)
        base = os.path.dirname(file) if not file.startswith("<") else ""
        shown = os.path.normpath(os.path.join(base, inc.path))
        real = os.path.realpath(shown)
        for i, (r, _) in enumerate(self.stack):
            if r == real:
                chain = " -> ".join([f for _, f in self.stack[i:]] + [shown])
                raise ScheduleError.at(f"include cycle: {chain}", inc.pos, text)
        if real in self.loaded:
            return Include(inc.path, inc.pos, resolved=shown, program=self.loaded[real])
        try:
            source = _read(shown)
        except OSError as e:
            raise ScheduleError.at(f"cannot include `{inc.path}`: {_why(e)} ({shown})",
                                   inc.pos, text) from None
        except UnicodeDecodeError:
            raise ScheduleError.at(f"cannot include `{inc.path}`: not UTF-8 text ({shown})",
                                   inc.pos, text) from None
        return Include(inc.path, inc.pos, resolved=shown,
                       program=self.program(source, shown, real))


def _read(path: str) -> str:
    with open(path, encoding="utf-8", newline="") as f:
        return f.read()


def _why(e: OSError) -> str:
    if isinstance(e, FileNotFoundError):
        return "no such file"
    if isinstance(e, IsADirectoryError):
        return "it is a directory"
    if isinstance(e, PermissionError):
        return "permission denied"
    return e.strerror or type(e).__name__


def parse_text(text: str, filename: str = "<string>") -> Program:
    """Parse schedule source `text`; `filename` is used in positions and messages, and
    includes are resolved relative to its directory (the working directory for names like
    "<string>"). Raises ScheduleError."""
    loader = _Loader()
    real = None if filename.startswith("<") else os.path.realpath(filename)
    return loader.program(text, filename, real)


def parse_file(path: str | os.PathLike[str]) -> Program:
    """Read and parse the schedule file `path` and every file it includes. Raises
    ScheduleError (also when the file cannot be read)."""
    shown = os.fspath(path)
    try:
        text = _read(shown)
    except OSError as e:
        why = _why(e)
    except UnicodeDecodeError:
        why = "not UTF-8 text"
    else:
        return _Loader().program(text, shown, os.path.realpath(shown))
    raise ScheduleError(Diagnostic(f"cannot read the schedule: {why}", file=shown))
