"""The formatter: normal form, comments kept, parse(format(p)) == p, idempotent."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from homec.context import Selector
from homec.schedule.ast import (Fixpoint, Include, Option, PassCall, PipelineDef, Program,
                                Repeat, Schedule, When)
from homec.schedule.fmt import format_program, format_value, quote
from homec.schedule.parse import parse_file, parse_text

EXAMPLE_FORMATTED = '''\
# kitchen-camera classifier for the int8 NPU
include "common.hc"  # relative to this file; include cycles are an error
pipeline tidy {
  fold_constants
  eliminate_identity
  eliminate_dead
  cse
}
schedule {
  tidy
  fold_batchnorm
  prune_channels(ratio=0.3, criterion="l1", align=16) on Conv where name ~ "backbone.*"
  low_rank(energy=0.95) on MatMul, Gemm
  quantize(weights="int8", per_channel=true, activations="uint8", calibration="percentile")
  fold_qdq
  when target == "npu-int8" {
    legalize
  }
  fixpoint(max=10) {
    tidy
  }
  repeat(2) {
    cse
  }
}
'''


def strict(x: object) -> object:
    """A comparable form that also tells True from 1 and 1 from 1.0."""
    if isinstance(x, (list, tuple)):
        return tuple(strict(i) for i in x)
    if isinstance(x, (Program, Schedule, PipelineDef, PassCall, Option, Repeat, Fixpoint,
                      When, Include, Selector)):
        return (type(x).__name__, tuple(strict(getattr(x, f)) for f in x.__dataclass_fields__
                                        if x.__dataclass_fields__[f].compare))
    if isinstance(x, float) and x == 0:
        return ("float", math.copysign(1, x))
    return (type(x).__name__, x)


def roundtrip(text: str, filename: str = "<string>") -> str:
    prog = parse_text(text, filename)
    out = format_program(prog)
    again = parse_text(out, filename)
    assert strict(again) == strict(prog)
    assert format_program(again) == out  # idempotent
    return out


def test_example(example_dir: Path) -> None:
    prog = parse_file(example_dir / "schedule.hc")
    out = format_program(prog)
    assert out == EXAMPLE_FORMATTED
    (example_dir / "formatted.hc").write_text(out)
    again = parse_file(example_dir / "formatted.hc")
    assert again == prog and strict(again) == strict(prog)
    assert format_program(again) == out


def test_normal_form() -> None:
    text = ('pipeline p{x( a = 1 ,b=[ 1,2, ] , );y on A,B where name~"g"}\n'
            'schedule{ when target!="cpu"{x}else{y} ; repeat( 3 ){} ; fixpoint( max = 2 ) { p } ;'
            ' f() ; g(s="q\\"\\\\\\n\\t\\r\\u0001\\u00e9", f=-0.0, e=1e-3, big=1e16, n=none, '
            'l=[[], [true, false]]) }\n')
    out = format_program(parse_text(text))
    assert out == (
        "pipeline p {\n"
        "  x(a=1, b=[1, 2])\n"
        '  y on A, B where name ~ "g"\n'
        "}\n"
        "schedule {\n"
        '  when target != "cpu" {\n'
        "    x\n"
        "  } else {\n"
        "    y\n"
        "  }\n"
        "  repeat(3) {}\n"
        "  fixpoint(max=2) {\n"
        "    p\n"
        "  }\n"
        "  f\n"
        '  g(s="q\\"\\\\\\n\\t\\r\\u0001é", f=-0.0, e=0.001, big=1e+16, n=none, l=[[], [true, false]])\n'
        "}\n")
    assert roundtrip(out) == out


def test_include_is_printed_not_inlined(tmp_path: Path) -> None:
    (tmp_path / "lib.hc").write_text("pipeline lib { cse }\n")
    prog = parse_text('include "lib.hc"\nschedule { lib }', str(tmp_path / "main.hc"))
    assert format_program(prog) == 'include "lib.hc"\nschedule {\n  lib\n}\n'


@pytest.mark.parametrize(("source", "formatted"), [
    # own-line comments before statements, at the statement's depth
    ("# head\nschedule {\n    # about a\n  a\n        # about b\n  b\n}\n",
     "# head\nschedule {\n  # about a\n  a\n  # about b\n  b\n}\n"),
    # trailing comments stay at the end of their line
    ("schedule { # s\n a    # a\n repeat(2) { # r\n b } # end r\n}   # end s\n",
     "schedule {  # s\n  a  # a\n  repeat(2) {  # r\n    b  # end r\n  }\n}  # end s\n"),
    # comments before a closing brace stay inside the block; at the end of the file, at the end
    ("schedule {\n  a\n  # last words\n}\n\n\n# bye\n",
     "schedule {\n  a\n  # last words\n}\n\n# bye\n"),
    # blank lines: at most one kept, none right after `{`
    ("schedule {\n\n\n  a\n\n\n\n  b\n  c\n}\n\n\n\npipeline p { a }\n",
     "schedule {\n  a\n\n  b\n  c\n}\n\npipeline p {\n  a\n}\n"),
    # a comment in an empty block keeps the block open
    ("schedule { repeat(2) {\n # nothing yet\n } }\n",
     "schedule {\n  repeat(2) {\n    # nothing yet\n  }\n}\n"),
    # comments inside a call spread over lines follow the call
    ('schedule {\n  q(  # zero\n    a=1,  # one\n    b=2,  # two\n  )\n  r\n}\n',
     "schedule {\n  q(a=1, b=2)  # zero\n  # one\n  # two\n  r\n}\n"),
    # else
    ('schedule {\n  when target == "x" {  # then\n    a\n  } else {  # else\n    b\n  }  # done\n}\n',
     'schedule {\n  when target == "x" {  # then\n    a\n  } else {  # else\n    b\n  }  # done\n}\n'),
    # a file of only comments
    ("# a\n\n\n# b\n", "# a\n\n# b\n"),
    ("", ""),
])
def test_comments_and_blank_lines(source: str, formatted: str) -> None:
    assert roundtrip(source) == formatted


@pytest.mark.parametrize("value", [
    0.1, 0.3, 1e-3, 1e-300, 5e-324, 1e16, 1.7976931348623157e308, -2.5, -0.0, 0.0, 123456.789,
    1 / 3, 2**53 + 0.0, 3.0,
])
def test_floats_round_trip(value: float) -> None:
    text = format_value(value)
    (call,) = parse_text(f"schedule {{ f(v={text}) }}").schedules[0].body
    got = call.options[0].value
    assert type(got) is float and got == value and math.copysign(1, got) == math.copysign(1, value)


def test_values_that_cannot_be_written() -> None:
    with pytest.raises(ValueError):
        format_value(math.inf)
    with pytest.raises(ValueError):
        format_value(math.nan)
    with pytest.raises(TypeError):
        format_value(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a name"):
        format_program(Program((Schedule((PassCall("not-a-name"),)),)))


def test_quote_escapes_what_would_break_a_line() -> None:
    assert quote('a"b\\c') == '"a\\"b\\\\c"'
    assert quote("\n\t\r\x00\x7f\u2028\u200b\U000e0001é✓") == (
        '"\\n\\t\\r\\u0000\\u007f\\u2028\\u200b\\U000e0001é✓"')


# ---------------------------------------------------------------------------------------
# Property: any tree the language can express survives format -> parse
# ---------------------------------------------------------------------------------------

KEYWORDS = {"include", "pipeline", "schedule", "repeat", "fixpoint", "when", "else", "on",
            "where", "true", "false", "none", "name", "max", "target"}
_FIRST = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_"
names = st.builds(lambda a, b: a + b, st.sampled_from(_FIRST),
                  st.text(_FIRST + "0123456789", max_size=8)).filter(lambda n: n not in KEYWORDS)
texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
scalars = (st.none() | st.booleans() | st.integers()
           | st.floats(allow_nan=False, allow_infinity=False) | texts)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3).map(tuple), max_leaves=4)
options = st.lists(st.builds(Option, names, values), max_size=3)
selectors = st.none() | st.builds(Selector, st.lists(names, max_size=3).map(tuple),
                                  st.none() | texts)
calls = st.builds(PassCall, names, options.map(tuple), selectors)


def _stmts(children: st.SearchStrategy) -> st.SearchStrategy:
    body = st.lists(children, max_size=3).map(tuple)
    return (st.builds(Repeat, st.integers(-3, 10**6), body)
            | st.builds(Fixpoint, st.integers(-3, 10**6), body)
            | st.builds(When, st.sampled_from(["==", "!="]), texts, body, body))


stmts = st.recursive(calls, _stmts, max_leaves=6)
bodies = st.lists(stmts, max_size=4).map(tuple)
items = st.one_of(st.builds(PipelineDef, names, bodies), st.builds(Schedule, bodies))
programs = st.lists(items, max_size=3).map(lambda xs: Program(tuple(xs)))


@settings(max_examples=200, deadline=None)
@given(programs)
def test_format_then_parse_gives_the_same_tree(program: Program) -> None:
    text = format_program(program)
    again = parse_text(text)
    assert strict(again) == strict(program)
    assert format_program(again) == text


@settings(max_examples=200, deadline=None)
@given(values)
def test_values_round_trip(value: object) -> None:
    text = format_value(value)
    (call,) = parse_text(f"schedule {{ f(v={text}) }}").schedules[0].body
    assert strict(call.options[0].value) == strict(value)
