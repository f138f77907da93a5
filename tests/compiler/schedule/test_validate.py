"""Validating schedules against a (private, fake) pass registry: name resolution, option
checks, pipelines, targets, schedule blocks; every error collected, each with its place."""

from __future__ import annotations

from pathlib import Path

import pytest

from homec.context import Selector
from homec.registry import PassRegistry
from homec.schedule.ast import (Fixpoint, Option, PassCall, PipelineRef, Pos, Program, Repeat,
                                Schedule, ScheduleError, Stmt, When, walk)
from homec.schedule.parse import parse_file, parse_text
from homec.schedule.validate import validate

TARGETS = {"cpu", "npu-int8", "mcu"}


def check(text: str, registry: PassRegistry, targets: set[str] | None = TARGETS,
          filename: str = "s.hc") -> Schedule:
    return validate(parse_text(text, filename), registry, targets)


def errors(text: str, registry: PassRegistry, targets: set[str] | None = TARGETS) -> list[str]:
    """The first line of every diagnostic, for `text` (positions as `line:col`)."""
    with pytest.raises(ScheduleError) as info:
        check(text, registry, targets)
    return [d.render().split("\n")[0].removeprefix("s.hc:") for d in info.value.diagnostics]


# ---------------------------------------------------------------------------------------
# The reference example
# ---------------------------------------------------------------------------------------


def test_example_validates_and_resolves(example_dir: Path, registry: PassRegistry) -> None:
    schedule = validate(parse_file(example_dir / "schedule.hc"), registry, TARGETS)
    tidy_body = (PassCall("fold_constants"), PassCall("eliminate_identity"),
                 PassCall("eliminate_dead"), PassCall("cse"))
    tidy = PipelineRef("tidy", tidy_body)
    assert schedule == Schedule((
        tidy,
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
        Fixpoint(10, (tidy,)),
        Repeat(2, (PassCall("cse"),)),
    ))
    # every pass call carries its PassInfo; both invocations of `tidy` share one body
    calls = [s for s in walk(schedule.body) if isinstance(s, PassCall)]
    assert all(c.info is registry.get(c.name) for c in calls)
    assert schedule.body[0].body is schedule.body[7].body[0].body
    prune = schedule.body[2]
    assert prune.info.bind(prune.kwargs) == {"ratio": 0.3, "criterion": "l1", "align": 16}
    assert schedule.pos.line == 4 and prune.pos.line == 7


def test_a_runner_walks_the_schedule(example_dir: Path, registry: PassRegistry) -> None:
    """How a runner executes a validated Schedule (the shape pipeline.py will have)."""
    schedule = validate(parse_file(example_dir / "schedule.hc"), registry, TARGETS)
    ran: list[str] = []
    changes = iter([1, 1, 0] + [0] * 100)  # what `cse` reports: changed, changed, then not

    def run(stmts: tuple[Stmt, ...], target: str | None) -> bool:
        changed = False
        for s in stmts:
            if isinstance(s, PassCall):
                kwargs = s.info.bind(s.kwargs)  # defaults + the given options
                ran.append(s.name + ("@" + ",".join(s.selector.op_types) if s.selector else ""))
                assert set(kwargs) == set(s.info.options)
                changed |= bool(next(changes)) if s.name == "cse" else False
            elif isinstance(s, PipelineRef):
                changed |= run(s.body, target)
            elif isinstance(s, Repeat):
                for _ in range(s.count):
                    changed |= run(s.body, target)
            elif isinstance(s, Fixpoint):
                for _ in range(s.max):
                    if not run(s.body, target):
                        break
                    changed = True
            elif isinstance(s, When):
                changed |= run(s.branch(target), target)
        return changed

    run(schedule.body, "npu-int8")
    tidy = ["fold_constants", "eliminate_identity", "eliminate_dead", "cse"]
    assert ran == (tidy + ["fold_batchnorm", "prune_channels@Conv", "low_rank@MatMul,Gemm",
                           "quantize", "fold_qdq", "legalize"]
                   + tidy + tidy  # fixpoint: 2nd iteration reports no change
                   + ["cse", "cse"])
    ran.clear()
    run(schedule.body, "cpu")
    assert "legalize" not in ran


def test_options_are_coerced(registry: PassRegistry) -> None:
    s = check('schedule { prune_channels(ratio=1, align=-3); quantize(exclude=["a"], bits=none) }\n'
              'pipeline p { quantize(exclude="one", bits=4) }', registry)
    prune, quant = s.body
    assert prune.kwargs == {"ratio": 1.0, "align": -3} and type(prune.kwargs["ratio"]) is float
    assert quant.kwargs == {"exclude": ("a",), "bits": None}


def test_every_pipeline_is_checked_and_included_ones_are_visible(tmp_path: Path,
                                                                 registry: PassRegistry) -> None:
    (tmp_path / "lib.hc").write_text("pipeline lib { cse }\npipeline unused { nope }\n")
    (tmp_path / "main.hc").write_text('include "lib.hc"\nschedule { lib }\n')
    with pytest.raises(ScheduleError) as info:
        validate(parse_file(tmp_path / "main.hc"), registry)
    assert info.value.message == f"{tmp_path / 'lib.hc'}:2:19: error: unknown pass `nope`"
    (tmp_path / "lib.hc").write_text("pipeline lib { cse }\npipeline unused { cse }\n")
    s = validate(parse_file(tmp_path / "main.hc"), registry)
    assert s.body == (PipelineRef("lib", (PassCall("cse"),)),)


# ---------------------------------------------------------------------------------------
# Each kind of error, with its exact message and place
# ---------------------------------------------------------------------------------------


def test_unknown_pass_suggests_the_closest_name(registry: PassRegistry) -> None:
    with pytest.raises(ScheduleError) as info:
        check("schedule {\n  prune_chanels(ratio=0.5)\n}", registry, filename="schedule.hc")
    assert str(info.value) == ("schedule.hc:2:3: error: unknown pass `prune_chanels`; "
                               "did you mean `prune_channels`?\n"
                               "      prune_chanels(ratio=0.5)\n"
                               "      ^")
    assert info.value.exit_code == 2
    assert errors("pipeline tidy_up { cse }\nschedule { tidyup; frobnicate }", registry) == [
        "2:12: error: unknown pass `tidyup`; did you mean `tidy_up`?",
        "2:20: error: unknown pass `frobnicate`",
    ]


@pytest.mark.parametrize(("call", "col", "message"), [
    ("prune_channels(ration=0.5)", 16,
     "pass `prune_channels` has no option `ration`; did you mean `ratio`?"),
    ("prune_channels(zzz=0.5)", 16,
     "pass `prune_channels` has no option `zzz`; its options are `ratio`, `criterion`, `align`"),
    ("cse(aggressive=true)", 5, "pass `cse` has no option `aggressive`; it takes no options"),
    ("prune_channels(ratio=1.5)", 22,
     "option `ratio` = 1.5 is out of range [0, 1] (pass `prune_channels`)"),
    ("prune_channels(ratio=-1)", 22,
     "option `ratio` = -1 is out of range [0, 1] (pass `prune_channels`)"),
    ('prune_channels(ratio="half")', 22,
     'option `ratio` expects a number, got "half" (pass `prune_channels`)'),
    ("prune_channels(align=2.0)", 22,
     "option `align` expects an int, got 2.0 (pass `prune_channels`)"),
    ("prune_channels(align=true)", 22,
     "option `align` expects an int, got true (pass `prune_channels`)"),
    ('prune_channels(criterion="l3")', 26,
     'option `criterion` must be one of "l1", "l2", "bn_gamma", got "l3" (pass `prune_channels`)'),
    ("prune_channels(criterion=none)", 26,
     "option `criterion` cannot be none (pass `prune_channels`)"),
    ('quantize(per_channel="yes")', 22,
     'option `per_channel` expects a bool (true/false), got "yes" (pass `quantize`)'),
    ("quantize(bits=9)", 15, "option `bits` = 9 is out of range [2, 8] (pass `quantize`)"),
    ("quantize(exclude=[1])", 18,
     "elements of option `exclude` expect a string, got 1 (pass `quantize`)"),
    ("prune_channels(ratio=0.1, ratio=0.2)", 27, "option `ratio` is given twice"),
])
def test_option_errors(registry: PassRegistry, call: str, col: int, message: str) -> None:
    assert errors(f"schedule {{\n{call}\n}}", registry) == [f"2:{col}: error: {message}"]


def test_selector_on_a_pass_that_takes_none(registry: PassRegistry) -> None:
    assert errors('schedule {\n  fold_qdq on QuantizeLinear\n  legalize where name ~ "x*"\n}',
                  registry) == [
        "2:12: error: pass `fold_qdq` works on the whole graph and takes no selector (`on` / `where`)",
        "3:12: error: pass `legalize` works on the whole graph and takes no selector (`on` / `where`)",
    ]


def test_pipeline_errors(registry: PassRegistry) -> None:
    text = ("pipeline a { b }\n"
            "pipeline b { c; cse }\n"
            "pipeline c { a }\n"
            "pipeline self { self }\n"
            "pipeline cse { fold_constants }\n"
            "pipeline b { nope }\n"
            "schedule {\n"
            "  a(x=1)\n"
            "  b on Conv\n"
            "}\n")
    assert errors(text, registry) == [
        "3:14: error: pipeline `a` calls itself: a -> b -> c -> a",
        "4:17: error: pipeline `self` calls itself: self -> self",
        "5:10: error: pipeline `cse` has the name of a pass; pick another name",
        "6:10: error: pipeline `b` is already defined at s.hc:2:10",
        "6:14: error: unknown pass `nope`",
        "8:5: error: pipeline `a` takes no options",
        "9:5: error: pipeline `b` takes no selector; put `on` / `where` on the passes inside it",
    ]


def test_duplicate_pipeline_across_files(tmp_path: Path, registry: PassRegistry) -> None:
    (tmp_path / "lib.hc").write_text("pipeline tidy { cse }\n")
    (tmp_path / "main.hc").write_text('include "lib.hc"\npipeline tidy { cse }\nschedule { tidy }\n')
    with pytest.raises(ScheduleError) as info:
        validate(parse_file(tmp_path / "main.hc"), registry)
    lib = tmp_path / "lib.hc"
    assert info.value.message == (f"{tmp_path / 'main.hc'}:2:10: error: pipeline `tidy` is "
                                  f"already defined at {lib}:1:10")
    # the include comes first, so the included definition is the first one
    (tmp_path / "main.hc").write_text('pipeline tidy { cse }\ninclude "lib.hc"\nschedule { tidy }\n')
    with pytest.raises(ScheduleError) as info:
        validate(parse_file(tmp_path / "main.hc"), registry)
    assert info.value.message == (f"{lib}:1:10: error: pipeline `tidy` is already defined at "
                                  f"{tmp_path / 'main.hc'}:1:10")


def test_targets(registry: PassRegistry) -> None:
    text = ('schedule {\n  when target == "npu_int8" { legalize }\n'
            '  when target != "dsp" { cse } else { cse }\n}')
    assert errors(text, registry) == [
        "2:18: error: unknown target `npu_int8`; did you mean `npu-int8`?",
        "3:18: error: unknown target `dsp`; known targets: cpu, mcu, npu-int8",
    ]
    assert errors('schedule { when target == "npu" { cse } }', registry) == [
        "1:27: error: unknown target `npu`; did you mean `npu-int8`?"]  # not `cpu`
    assert errors("schedule { prune; fold }", registry) == [
        "1:12: error: unknown pass `prune`; did you mean `prune_channels`?",
        "1:19: error: unknown pass `fold`; did you mean one of `fold_batchnorm`, "
        "`fold_constants`, `fold_qdq`?"]
    check(text, registry, targets=None)  # no target list: any name goes
    check(text, registry, targets={"npu_int8", "dsp"})


def test_repeat_and_fixpoint_counts(registry: PassRegistry) -> None:
    assert errors("schedule {\n  repeat(0) { cse }\n  fixpoint(max=-2) { cse }\n"
                  "  repeat(1) { fixpoint(max=1) { } }\n}", registry) == [
        "2:10: error: repeat count must be at least 1, got 0",
        "3:16: error: fixpoint max must be at least 1, got -2",
    ]


def test_all_errors_are_collected_in_file_order(registry: PassRegistry) -> None:
    text = ("schedule {\n"
            "  prune_chanels\n"
            "  prune_channels(ratio=2, criterion=\"l3\", alin=3)\n"
            "  fold_qdq on Conv\n"
            '  when target == "npu" { repeat(0) { cse(x=1) } }\n'
            "}\n"
            "pipeline late { nope }\n")
    got = errors(text, registry)
    assert [e.split(": error:")[0] for e in got] == [
        "2:3", "3:24", "3:37", "3:43", "4:12", "5:18", "5:33", "5:42", "7:17"]
    with pytest.raises(ScheduleError) as info:
        check(text, registry)
    rendered = str(info.value).split("\n")
    assert len(rendered) == 3 * 9  # each: message, source line, caret
    assert info.value.message == rendered[0]


# ---------------------------------------------------------------------------------------
# Exactly one schedule block per file set
# ---------------------------------------------------------------------------------------


def test_no_schedule_block(registry: PassRegistry) -> None:
    with pytest.raises(ScheduleError) as info:
        check("pipeline p { cse }\n", registry, filename="lib.hc")
    assert str(info.value) == ("lib.hc: error: no `schedule { ... }` block (in this file or "
                               "the files it includes)")


def test_two_schedule_blocks(registry: PassRegistry) -> None:
    assert errors("schedule { cse }\n\nschedule { cse }\n", registry) == [
        "3:1: error: a second `schedule` block (the first is at s.hc:1:1); "
        "a file set has exactly one"]


def test_schedule_in_an_included_file(tmp_path: Path, registry: PassRegistry) -> None:
    (tmp_path / "full.hc").write_text("pipeline p { cse }\nschedule { p; cse }\n")
    # the main file has none: the included file's schedule is the one
    (tmp_path / "main.hc").write_text('include "full.hc"\n')
    s = validate(parse_file(tmp_path / "main.hc"), registry)
    assert s == Schedule((PipelineRef("p", (PassCall("cse"),)), PassCall("cse")))
    assert s.pos == Pos(str(tmp_path / "full.hc"), 2, 1)
    # the main file has one too: the included one is an error
    (tmp_path / "main.hc").write_text('include "full.hc"\nschedule { p }\n')
    with pytest.raises(ScheduleError) as info:
        validate(parse_file(tmp_path / "main.hc"), registry)
    assert info.value.message == (
        f"{tmp_path / 'full.hc'}:2:1: error: a `schedule` block in an included file; "
        f"{tmp_path / 'main.hc'} has its own (at {tmp_path / 'main.hc'}:2:1), which is the one "
        "that runs")
    # two included files with one each, none in main: the second is an error
    (tmp_path / "other.hc").write_text("schedule { cse }\n")
    (tmp_path / "main.hc").write_text('include "full.hc"\ninclude "other.hc"\n')
    with pytest.raises(ScheduleError) as info:
        validate(parse_file(tmp_path / "main.hc"), registry)
    assert info.value.message == (
        f"{tmp_path / 'other.hc'}:1:1: error: a second `schedule` block (the first is at "
        f"{tmp_path / 'full.hc'}:2:1); a file set has exactly one")


def test_validating_twice_is_harmless(registry: PassRegistry) -> None:
    s = check("pipeline p { cse }\nschedule { p; prune_channels(ratio=1) }", registry)
    again = validate(Program((s,)), registry)
    assert again == s
