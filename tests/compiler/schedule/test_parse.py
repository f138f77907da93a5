"""Parsing schedules: the reference example, values, separators, positions, includes, and
syntax errors in plain words with file:line:col and a caret."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lark import UnexpectedInput

from homec.context import Selector
from homec.errors import ExitCode, UsageError
from homec.schedule import parse as parse_mod
from homec.schedule.ast import (Fixpoint, Include, Option, PassCall, PipelineDef, Pos,
                                Program, Repeat, Schedule, ScheduleError, When)
from homec.schedule.parse import parse_file, parse_text


def sched(body: str) -> tuple:
    """The statements of `schedule { body }`."""
    (s,) = parse_text(f"schedule {{\n{body}\n}}\n").items
    return s.body


def opts(text: str) -> dict:
    """Option values of the single call `f(text)`."""
    (call,) = sched(f"f({text})")
    return {o.name: o.value for o in call.options}


def error_of(text: str, filename: str = "schedule.hc") -> ScheduleError:
    with pytest.raises(ScheduleError) as info:
        parse_text(text, filename)
    return info.value


# ---------------------------------------------------------------------------------------
# The reference example
# ---------------------------------------------------------------------------------------


def test_example_parses_exactly_as_written(example_dir: Path) -> None:
    prog = parse_file(example_dir / "schedule.hc")
    tidy = PipelineDef("tidy", (PassCall("fold_constants"), PassCall("eliminate_identity"),
                                PassCall("eliminate_dead"), PassCall("cse")))
    body = (
        PassCall("tidy"),
        PassCall("fold_batchnorm"),
        PassCall("prune_channels",
                 (Option("ratio", 0.3), Option("criterion", "l1"), Option("align", 16)),
                 Selector(("Conv",), "backbone.*")),
        PassCall("low_rank", (Option("energy", 0.95),), Selector(("MatMul", "Gemm"))),
        PassCall("quantize", (Option("weights", "int8"), Option("per_channel", True),
                              Option("activations", "uint8"),
                              Option("calibration", "percentile"))),
        PassCall("fold_qdq"),
        When("==", "npu-int8", (PassCall("legalize"),)),
        Fixpoint(10, (PassCall("tidy"),)),
        Repeat(2, (PassCall("cse"),)),
    )
    assert prog == Program((Include("common.hc"), tidy, Schedule(body)))
    inc = prog.items[0]
    assert isinstance(inc, Include)
    assert inc.resolved == str(example_dir / "common.hc")
    assert inc.program is not None
    assert inc.program.pipelines == (PipelineDef("common_tidy", (PassCall("eliminate_dead"),)),)
    assert [p.file for p in prog.files()] == [str(example_dir / "schedule.hc"),
                                             str(example_dir / "common.hc")]
    # Types survive, not just equality (True == 1, 16 == 16.0 in Python).
    ratio, criterion, align = body[2].options
    got = prog.schedules[0].body[2].options
    assert [type(o.value) for o in got] == [float, str, int]
    assert type(prog.schedules[0].body[4].options[1].value) is bool


def test_example_positions(example_dir: Path) -> None:
    path = str(example_dir / "schedule.hc")
    prog = parse_file(path)
    inc, tidy, schedule = prog.items
    assert inc.pos == Pos(path, 2, 1)
    assert tidy.pos == Pos(path, 3, 1) and tidy.name_pos == Pos(path, 3, 10)
    assert tidy.body[2].pos == Pos(path, 3, 53)  # eliminate_dead
    assert schedule.pos == Pos(path, 4, 1) and schedule.end_line == 14
    prune = schedule.body[2]
    assert prune.pos == Pos(path, 7, 3)
    assert prune.options[1].pos == Pos(path, 7, 29)  # criterion
    assert prune.options[1].value_pos == Pos(path, 7, 39)  # "l1"
    assert prune.selector_pos == Pos(path, 7, 55)  # on
    when = schedule.body[6]
    assert when.pos == Pos(path, 11, 3) and when.target_pos == Pos(path, 11, 18)
    assert schedule.body[7].max_pos == Pos(path, 12, 16)
    assert schedule.body[8].count_pos == Pos(path, 13, 10)
    assert [c.line for c in prog.comments] == [1, 2]
    assert prog.comments[1].text.startswith("# relative to this file")


def test_positions_are_metadata_not_identity() -> None:
    a = parse_text("schedule { cse }", "a.hc")
    b = parse_text("\n\nschedule {\n    cse\n}", "b.hc")
    assert a == b and hash(a.items[0]) == hash(b.items[0])
    assert a.items[0].body[0].pos != b.items[0].body[0].pos


# ---------------------------------------------------------------------------------------
# Values, selectors, statements, separators
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "value"), [
    ("0", 0), ("-3", -3), ("+7", 7), ("123456789012345678901234567890", 123456789012345678901234567890),
    ("0.5", 0.5), ("-2.25", -2.25), (".5", 0.5), ("1.", 1.0), ("1e-3", 1e-3), ("-1E+3", -1000.0),
    ("5e-324", 5e-324), ("1e16", 1e16),
    ("true", True), ("false", False), ("none", None),
    ('""', ""), ('"l1"', "l1"), ('"a\\"b"', 'a"b'), ('"back\\\\slash"', "back\\slash"),
    ('"tab\\there"', "tab\there"), ('"line\\nbreak\\r"', "line\nbreak\r"),
    ('"\\u00e9t\\u00E9"', "été"), ('"\\U0001F600"', "\U0001f600"), ('"ünïcödé ✓"', "ünïcödé ✓"),
    ('"# not a comment"', "# not a comment"),
    ("[]", ()), ("[1, 2]", (1, 2)), ('["a", "b",]', ("a", "b")), ("[1, [2.5, none]]", (1, (2.5, None))),
])
def test_values(text: str, value: object) -> None:
    got = opts(f"v={text}")["v"]
    assert got == value and type(got) is type(value)


def test_options_in_source_order_and_trailing_comma() -> None:
    (call,) = sched('q(b=1, a="x", c=[1,2],)')
    assert [o.name for o in call.options] == ["b", "a", "c"]
    (call,) = sched("q()")
    assert call.options == ()


def test_newlines_inside_brackets_are_ignored() -> None:
    (call,) = sched('quantize(\n  weights="int8",   # comment inside\n\n  exclude=[\n    "a",\n    "b",\n  ],\n)\ncse')[:1]
    assert call.kwargs == {"weights": "int8", "exclude": ("a", "b")}
    assert call.end_line == 9


@pytest.mark.parametrize(("text", "selector"), [
    ("cse on Conv", Selector(("Conv",))),
    ("cse on MatMul, Gemm", Selector(("MatMul", "Gemm"))),
    ('cse where name ~ "backbone.*"', Selector((), "backbone.*")),
    ('cse on Conv,Gemm where name ~ "*/head/*"', Selector(("Conv", "Gemm"), "*/head/*")),
    ('cse(a=1) on Conv', Selector(("Conv",))),
])
def test_selectors(text: str, selector: Selector) -> None:
    (call,) = sched(text)
    assert call.selector == selector


def test_statements() -> None:
    body = sched('when target != "cpu" { a } else { b; c }\n'
                 'when target == "mcu" {\n}\n'
                 "repeat(3) { fixpoint(max=-1) { } }")
    assert body == (When("!=", "cpu", (PassCall("a"),), (PassCall("b"), PassCall("c"))),
                    When("==", "mcu", ()),
                    Repeat(3, (Fixpoint(-1, ()),)))
    assert body[0].applies("npu-int8") and not body[0].applies("cpu") and body[0].applies(None)
    assert body[1].branch("mcu") == () and not body[1].applies(None)


@pytest.mark.parametrize("text", [
    "schedule { a; b; c }",
    "schedule {\n  a\n  b\n  c\n}",
    "schedule {;a;;b\n\n;c;}",
    "\n\n# leading comment\nschedule { # c\n a # c\n\n b;   c  # c\n}  # c\n\n",
    "schedule {\r\n  a\r\n  b\r\n  c\r\n}\r\n",
    "\ufeffschedule { a; b; c }",
    "schedule\t{\ta ;\tb ; c\t}",
])
def test_separators_and_comments(text: str) -> None:
    assert parse_text(text).schedules == (Schedule((PassCall("a"), PassCall("b"), PassCall("c"))),)


def test_top_level_items_and_empty_files() -> None:
    assert parse_text("").items == ()
    assert parse_text("# only a comment\n\n").items == ()
    prog = parse_text("pipeline p {}; pipeline q { a }\nschedule {}\nschedule { }")
    assert prog.pipelines == (PipelineDef("p", ()), PipelineDef("q", (PassCall("a"),)))
    assert prog.schedules == (Schedule(()), Schedule(()))  # more than one: validation's concern


def test_keywords_are_contextual_where_unambiguous() -> None:
    # `max`, `name`, `target` and `on`... are only keywords where they can start a construct
    (call,) = sched("f(max=1, name=2, target=3, on=4, where=5, pipeline=6)")
    assert [o.name for o in call.options] == ["max", "name", "target", "on", "where", "pipeline"]
    (call,) = sched("target")
    assert call.name == "target"


# ---------------------------------------------------------------------------------------
# Syntax errors
# ---------------------------------------------------------------------------------------


def test_syntax_error_format_exactly() -> None:
    text = "# comment\nschedule {\n  prune_channels(ratio==0.3)\n}\n"
    err = error_of(text, "schedule.hc")
    assert str(err) == (
        "schedule.hc:3:24: error: expected an option value, found `=`\n"
        "      prune_channels(ratio==0.3)\n"
        "                           ^"
    )
    assert err.message == "schedule.hc:3:24: error: expected an option value, found `=`"
    assert isinstance(err, UsageError) and err.exit_code == ExitCode.USAGE == 2
    assert len(err.diagnostics) == 1
    assert err.diagnostics[0].pos == Pos("schedule.hc", 3, 24)


def test_caret_keeps_tabs_aligned() -> None:
    err = error_of("schedule {\n\t\tcse x\n}")
    assert str(err).splitlines()[1:] == ["    \t\tcse x", "    \t\t    ^"]


# A dozen typical typos: (source, line, column, message)
TYPOS = [
    ("schedule {\n  prune_channels(ratio=0.3 align=16)\n}", 2, 28,
     "expected `,` or `)`, found `align`"),
    ("schedule {\n  prune_channels(ratio=0.3, criterion=l1)\n}", 2, 39,
     'expected an option value, found `l1`; enumeration values are strings: write "l1"'),
    ("schedule {\n  quantize(per_channel=True)\n}", 2, 24,
     "expected an option value, found `True`; write `true`"),
    ("schedule {\n  quantize(per_channel)\n}", 2, 23, "expected `=`, found `)`"),
    ("schedule {\n  fold_batchnorm cse\n}", 2, 18, "expected `(`, a newline or `;`, found `cse`"),
    ("schedule {\n  prune_channels(ratio=0.3\n  cse\n}", 3, 3, "expected `,` or `)`, found `cse`"),
    ("schedule {\n  low_rank on MatMul Gemm\n}", 2, 22, "expected a newline or `;`, found `Gemm`"),
    ('schedule {\n  cse where name = "a*"\n}', 2, 18, "expected `~`, found `=`"),
    ('schedule {\n  cse where name ~ a\n}', 2, 20, "expected a glob pattern in quotes, found `a`"),
    ('schedule {\n  when target = "mcu" { cse }\n}', 2, 15,
     "expected `==` or `!=`, found `=`; compare with `==`"),
    ("schedule {\n  when target == mcu { cse }\n}", 2, 18,
     "expected a target name in quotes, found `mcu`"),
    ("schedule {\n  repeat 2 { cse }\n}", 2, 10, "expected `(`, found `2`"),
    ("schedule {\n  repeat(2.5) { cse }\n}", 2, 10, "expected a whole number, found `2.5`"),
    ("schedule {\n  fixpoint(10) { cse }\n}", 2, 12, "expected `max`, found `10`"),
    ("schedule {\n  fixpoint(max=10)\n  { cse }\n}", 2, 19, "expected `{`, found the end of the line"),
    ("schedule {\n  cse\n", 2, 6, "expected a pass name or `}`, found the end of the file; "
                                   "the `{` at line 1 is never closed"),
    ("schedule {\n  cse }\n}", 3, 1, "expected `include`, `pipeline` or `schedule`, found `}`"),
    ("schedule {\n  (cse)\n}", 2, 3, "expected a pass name or `}`, found `(`"),
    ("fold_constants\n", 1, 1, "expected `include`, `pipeline` or `schedule`, found "
                             "`fold_constants`; passes go inside `schedule { ... }` or "
                             "`pipeline NAME { ... }`"),
    ("schedule\n{ cse }", 1, 9, "expected `{`, found the end of the line"),
    ("pipeline { cse }", 1, 10, "expected a pipeline name, found `{`"),
    ("pipeline 3tidy { cse }", 1, 10, "expected a pipeline name, found `3`"),
    ("include common.hc", 1, 9, "expected a file name in quotes, found `common`"),
    ('schedule {\n  cse(a=[1 2])\n}', 2, 12, "expected `,` or `]`, found `2`"),
    ('schedule {\n  cse(a=[1, ) \n}', 2, 13, "expected an option value or `]`, found `)`"),
    ('schedule {\n  cse on\n}', 2, 9, "expected an op type, found the end of the line"),
    ('schedule {\n  cse on Conv, \n}', 2, 16, "expected an op type, found the end of the line"),
    ('schedule {\n  when target == "x" { cse } els { cse }\n}', 2, 30,
     "expected `else`, a newline or `;`, found `els`"),
    ('schedule {\n  cse(3)\n}', 2, 7, "expected an option name or `)`, found `3`"),
    ('schedule {\n  cse(a=1) @\n}', 2, 12, "expected a newline or `;`, found `@`"),
    ('schedule {\n  cse(a="l1)\n}', 2, 9, 'unterminated string: a string ends with `"` on the same line'),
    ('schedule {\n  cse(a="x\\q")\n}', 2, 11,
     'unknown escape `\\q` in a string; the escapes are \\" \\\\ \\n \\t \\r \\uXXXX \\UXXXXXXXX'),
    ('schedule {\n  cse(a="\\u12")\n}', 2, 10, "`\\u` needs 4 hex digits, as in `\\u00e9`"),
    ('schedule {\n  cse(a="\\UFFFFFFFF")\n}', 2, 10, "`\\UFFFFFFFF` is not a Unicode character"),
    ("schedule {\n  cse(a=1e999)\n}", 2, 9, "number `1e999` is too large"),
    ("schedule {\n  cse(a=\x07)\n}", 2, 9, "expected an option value, found U+0007"),
]


@pytest.mark.parametrize(("text", "line", "column", "message"), TYPOS,
                         ids=[t[3][:40] for t in TYPOS])
def test_typos_in_plain_words(text: str, line: int, column: int, message: str) -> None:
    err = error_of(text, "s.hc")
    assert err.message == f"s.hc:{line}:{column}: error: {message}"
    rendered = str(err).split("\n")
    assert len(rendered) == 3
    src = text.split("\n")[line - 1]
    assert rendered[1] == "    " + src
    assert rendered[2] == "    " + " " * (column - 1) + "^"


NO_TOKEN_NAMES = re.compile(r"\b(__ANON\w*|[A-Z]{2,}[A-Z_]*|_NL|\$END)\b")


def _plain(message: str) -> bool:
    # Token names would look like RPAR, LSQB, __ANON_0, _NL, $END; backticked source text
    # (`Conv`, `NPU`) is allowed.
    outside = re.sub(r"`[^`]*`|\"[^\"]*\"", "", message)
    return not NO_TOKEN_NAMES.search(outside)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_example_errors_are_plain_words(example_text: str, data: st.DataObject) -> None:
    """Delete, duplicate or replace one token of the example: any syntax error names what
    was expected in plain words, at a real position, in the documented format."""
    toks = re.findall(r'"[^"\n]*"|[A-Za-z_][A-Za-z0-9_]*|-?[0-9.]+(?:e-?[0-9]+)?|==|\S|\n',
                      example_text.split("\n", 2)[2])  # without the comment and the include
    i = data.draw(st.integers(0, len(toks) - 1))
    how = data.draw(st.sampled_from(["delete", "duplicate", "replace"]))
    filler = data.draw(st.sampled_from(["(", ")", "{", "}", "[", "]", ",", "=", ";", "\n", "~",
                                        "on", "where", "when", "else", "repeat", "3", "1.5",
                                        '"s"', "name", "true", "x", "@", "==", '"', "max"]))
    toks = toks[:i] + {"delete": [], "duplicate": [toks[i], toks[i]],
                       "replace": [filler]}[how] + toks[i + 1:]
    text = " ".join(toks)
    try:
        parse_text(text, "m.hc")
    except ScheduleError as err:
        first, *rest = str(err).split("\n")
        assert first == err.message
        m = re.fullmatch(r"m\.hc:(\d+):(\d+): error: (.+)", first)
        assert m, first
        assert _plain(m.group(3)), m.group(3)
        assert len(rest) == 2 and rest[1].strip() == "^"
        assert rest[0] == "    " + text.split("\n")[int(m.group(1)) - 1]


def test_every_error_example_fails_in_its_own_state() -> None:
    """The examples behind the plain-word labels still fail (a grammar change would
    otherwise silently turn a label off), and no two labels share a parser state."""
    seen: dict[int, str] = {}
    for label, examples in parse_mod._EXPECTED.items():
        for example in examples:
            with pytest.raises(UnexpectedInput) as info:
                parse_mod._parser().parse(example)
            state = parse_mod._state(info.value)
            assert isinstance(state, int)
            assert seen.setdefault(state, label) == label, (example, label, seen[state])
    assert parse_mod._labels() == seen


def test_every_state_an_error_can_happen_in_has_words() -> None:
    """Errors happen in states entered by shifting a token (a reduction happens only on a
    token that fits); each such state that is not a pure reduction has a label, and so
    do the start state and the states pure reductions settle into (the typos cover those)."""
    from lark.parsers.lalr_analysis import Shift

    table = parse_mod._parser().parser.parser.parser.parse_table
    labels = parse_mod._labels()
    entered = {arg for actions in table.states.values() for sym, (action, arg) in actions.items()
               if action is Shift and sym.isupper()}
    for state in entered | set(table.start_states.values()):
        actions = table.states[state]
        pure_reduction = (not any(a is Shift for a, _ in actions.values())
                          and len({id(arg) for _, arg in actions.values()}) == 1)
        assert pure_reduction or state in labels, sorted(t for t in actions if t.isupper())


def test_labels_hold_at_any_depth() -> None:
    """The same mistake gets the same words wherever it is made."""
    for prefix, suffix in [("schedule {\n", "\n}"), ("schedule { a; b\n", " }"),
                           ("pipeline p { repeat(2) { fixpoint(max=1) {\n", "\n} } }"),
                           ('schedule { when target == "x" { a } else { b; ', " } }")]:
        err = error_of(prefix + "prune_channels(ratio==0.3)" + suffix)
        assert "expected an option value, found `=`" in err.message
        err = error_of(prefix + "a(x=[1 2])" + suffix)
        assert "expected `,` or `]`, found `2`" in err.message
        err = error_of(prefix + "fold_batchnorm cse" + suffix)
        assert "expected `(`, a newline or `;`, found `cse`" in err.message


def test_fallback_words_name_no_tokens() -> None:
    terms = {t.name for t in parse_mod._parser().terminals} | {"$END"}
    words = parse_mod._plain_words(terms)
    assert _plain(words), words
    assert "something else" not in words


# ---------------------------------------------------------------------------------------
# Files and includes
# ---------------------------------------------------------------------------------------


def test_include_is_relative_to_the_including_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "conf" / "lib").mkdir(parents=True)
    (tmp_path / "conf" / "main.hc").write_text('include "lib/a.hc"\nschedule { pa }\n')
    (tmp_path / "conf" / "lib" / "a.hc").write_text('include "../shared/b.hc"\npipeline pa { pb }\n')
    (tmp_path / "conf" / "shared").mkdir()
    (tmp_path / "conf" / "shared" / "b.hc").write_text("pipeline pb { cse }\n")
    monkeypatch.chdir(tmp_path)
    prog = parse_file("conf/main.hc")
    files = [p.file for p in prog.files()]
    assert files == ["conf/main.hc", os.path.join("conf", "lib", "a.hc"),
                     os.path.join("conf", "shared", "b.hc")]
    b = list(prog.files())[2]
    assert b.pipelines[0].pos == Pos(os.path.join("conf", "shared", "b.hc"), 1, 1)


def test_include_from_text_is_relative_to_its_name_or_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "c.hc").write_text("pipeline c { cse }\n")
    prog = parse_text('include "c.hc"', str(tmp_path / "x.hc"))
    assert prog.includes[0].program.pipelines[0].name == "c"
    monkeypatch.chdir(tmp_path)
    prog = parse_text('include "c.hc"')
    assert prog.includes[0].program.pipelines[0].name == "c"


def test_a_file_included_twice_is_read_once(tmp_path: Path) -> None:
    (tmp_path / "d.hc").write_text("pipeline d { cse }\n")
    (tmp_path / "b.hc").write_text('include "d.hc"\n')
    (tmp_path / "c.hc").write_text('include "./d.hc"\n')
    (tmp_path / "a.hc").write_text('include "b.hc"\ninclude "c.hc"\nschedule { d }\n')
    prog = parse_file(tmp_path / "a.hc")
    b, c = (i.program for i in prog.includes)
    assert b.includes[0].program is c.includes[0].program
    assert len(list(prog.files())) == 4


def test_missing_include_is_an_error_at_the_include(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "main.hc").write_text('# x\n  include "nope.hc"  # y\nschedule { cse }\n')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ScheduleError) as info:
        parse_file("main.hc")
    assert str(info.value) == ('main.hc:2:3: error: cannot include `nope.hc`: no such file (nope.hc)\n'
                               '      include "nope.hc"  # y\n'
                               "      ^")


def test_include_of_a_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "main.hc").write_text('include "sub"\n')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ScheduleError, match="cannot include `sub`: it is a directory"):
        parse_file("main.hc")


def test_include_cycle_names_the_chain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.hc").write_text('include "b.hc"\nschedule { cse }\n')
    (tmp_path / "b.hc").write_text('pipeline p { cse }\ninclude "sub/c.hc"\n')
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.hc").write_text('include "../a.hc"\n')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ScheduleError) as info:
        parse_file("a.hc")
    c = os.path.join("sub", "c.hc")
    assert info.value.message == f"{c}:1:1: error: include cycle: a.hc -> b.hc -> {c} -> a.hc"


def test_self_include(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.hc").write_text('schedule { cse }\ninclude "a.hc"\n')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ScheduleError) as info:
        parse_file("a.hc")
    assert info.value.message == "a.hc:2:1: error: include cycle: a.hc -> a.hc"


def test_syntax_error_in_an_included_file_points_into_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.hc").write_text('include "b.hc"\n')
    (tmp_path / "b.hc").write_text("pipeline p {\n  cse(\n}\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ScheduleError) as info:
        parse_file("a.hc")
    assert info.value.message == "b.hc:3:1: error: expected an option name or `)`, found `}`"


def test_unreadable_schedule_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.hc"
    with pytest.raises(ScheduleError) as info:
        parse_file(missing)
    assert str(info.value) == f"{missing}: error: cannot read the schedule: no such file"
    (tmp_path / "bin.hc").write_bytes(b"schedule { \xff }")
    with pytest.raises(ScheduleError, match="not UTF-8 text"):
        parse_file(tmp_path / "bin.hc")


def test_nesting_is_limited() -> None:
    deep = parse_mod.MAX_NESTING - 1  # inside `schedule {` and inside `f(`
    parse_text("schedule {" + "repeat(1) {" * deep + "cse" + "}" * deep + "}")
    parse_text("schedule { f(a=" + "[" * deep + "]" * deep + ") }")
    err = error_of("schedule {\n" + "repeat(1) {" * (deep + 1) + "cse" + "}" * (deep + 1) + "\n}")
    assert err.message == f"schedule.hc:2:{11 * deep + 11}: error: nested more than 64 deep"
    err = error_of("schedule { f(a=" + "[" * (deep + 1) + "]" * (deep + 1) + ") }")
    assert err.message.endswith("error: nested more than 64 deep")


def test_empty_include_path() -> None:
    assert error_of('include ""\n').message == "schedule.hc:1:1: error: an include needs a file name"
