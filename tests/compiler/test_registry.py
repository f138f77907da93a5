"""Pass registration: typed options from signatures, duplicate names refused."""

from __future__ import annotations

from typing import Annotated, Literal

import pytest

from homec.registry import PassRegistry, Range, RegistryError, Tolerance, register_pass


def _fresh() -> PassRegistry:
    reg = PassRegistry()
    reg._plugins_loaded = True  # a private registry: no built-ins, no entry points
    return reg


def test_options_come_from_the_signature():
    reg = _fresh()

    @register_pass("p", registry=reg, tolerance=Tolerance.float_refold())
    def p(graph, ctx, *, ratio: Annotated[float, Range(0, 1)] = 0.3,
          criterion: Literal["l1", "l2"] = "l1", align: int = 1, per_channel: bool = True,
          names: list[str] = (), cap: int | None = None) -> dict:
        """Summary line.

        Details."""
        return {}

    info = reg.get("p")
    assert info.summary == "Summary line."
    assert [o for o in info.options] == ["ratio", "criterion", "align", "per_channel", "names", "cap"]
    assert info.options["ratio"].describe() == "float in [0, 1]"
    assert info.options["criterion"].describe() == "'l1' | 'l2'"
    assert info.options["cap"].optional
    assert info.options["ratio"].check(0.5) == (0.5, None)
    assert info.options["ratio"].check(1) == (1.0, None)
    assert "out of range" in info.options["ratio"].check(1.5)[1]
    assert "expects a number" in info.options["ratio"].check("x")[1]
    assert "must be one of" in info.options["criterion"].check("l3")[1]
    assert "expects an int" in info.options["align"].check(1.5)[1]
    assert "expects an int" in info.options["align"].check(True)[1]
    assert "expects a bool" in info.options["per_channel"].check(1)[1]
    assert info.options["names"].check(["a", "b"]) == (("a", "b"), None)
    assert "elements of option `names`" in info.options["names"].check([1])[1]
    assert info.options["cap"].check(None) == (None, None)
    assert info.bind({"align": 16})["align"] == 16
    assert info.bind({})["criterion"] == "l1"
    assert info.tolerance.rtol > 0


def test_duplicate_name_is_an_error_not_an_overwrite():
    reg = _fresh()

    @register_pass("dup", registry=reg)
    def a(graph, ctx) -> dict:
        """A."""
        return {}

    with pytest.raises(RegistryError, match="already registered"):
        @register_pass("dup", registry=reg)
        def b(graph, ctx) -> dict:
            """B."""
            return {}

    assert reg.get("dup").fn is a


@pytest.mark.parametrize("src", [
    "def f(graph, ctx, x: int) -> dict:\n    '''D.'''\n",          # not keyword-only
    "def f(graph, ctx, *, x: int) -> dict:\n    '''D.'''\n",        # no default
    "def f(graph, ctx, *, x=1) -> dict:\n    '''D.'''\n",            # no annotation
    "def f(graph, ctx, *, x: dict = None) -> dict:\n    '''D.'''\n",  # unsupported type
    "def f(graph, ctx, *, x: int = 1) -> dict:\n    pass\n",         # no docstring
])
def test_badly_declared_passes_are_refused(src):
    ns: dict = {}
    exec(src, ns)  # noqa: S102 — test-only construction of pass functions
    with pytest.raises(RegistryError):
        register_pass("bad", registry=_fresh())(ns["f"])


def test_builtin_passes_all_have_docs_stats_tolerance():
    from homec.registry import REGISTRY

    names = REGISTRY.names()
    assert names, "no built-in passes registered"
    for info in REGISTRY.all():
        assert info.summary and len(info.doc.splitlines()) >= 3, f"{info.name}: needs a docstring with algebra"
        assert isinstance(info.tolerance, Tolerance)


# ---------------------------------------------------------------------------------------
# A number or a few words: `Annotated[float, Range(0, 1)] | Literal["auto"]`
# ---------------------------------------------------------------------------------------


def _pass_with_words(reg: PassRegistry) -> None:
    @register_pass("shrink", registry=reg)
    def shrink(graph, ctx, *, ratio: Annotated[float, Range(0.0, 1.0)] | Literal["auto"] = 0.3,
               samples: int | Literal["auto", "max"] = "auto",
               budget: Annotated[float, Range(0, 1)] | Literal["auto"] | None = None,
               scale: Annotated[float | Literal["auto"], Range(0, 2)] = 1.0,
               steps: list[Annotated[int, Range(1, 4)] | Literal["last"]] = ()) -> dict:
        """Fake pass whose options take a number or a word."""
        return {}


def test_number_or_word_options_describe_both():
    reg = _fresh()
    _pass_with_words(reg)
    opts = reg.get("shrink").options
    assert opts["ratio"].kind == "float" and opts["ratio"].words == ("auto",)
    assert opts["ratio"].describe() == 'float in [0, 1] | "auto"'
    assert opts["samples"].describe() == 'int | "auto" | "max"'
    assert opts["budget"].describe() == 'float in [0, 1] | "auto" | none'
    assert opts["scale"].describe() == 'float in [0, 2] | "auto"'  # Range around the union
    assert opts["steps"].describe() == 'list[int in [1, 4] | "last"]'


def test_number_or_word_options_check_either():
    reg = _fresh()
    _pass_with_words(reg)
    opts = reg.get("shrink").options
    assert opts["ratio"].check("auto") == ("auto", None)
    assert opts["ratio"].check(0.25) == (0.25, None)
    assert opts["ratio"].check(1) == (1.0, None) and isinstance(opts["ratio"].check(1)[0], float)
    assert opts["samples"].check("max") == ("max", None)
    assert opts["samples"].check(64) == (64, None)
    assert opts["budget"].check(None) == (None, None)
    assert opts["steps"].check([2, "last"]) == ((2, "last"), None)
    assert opts["ratio"].check("fast") == (
        None, 'option `ratio` expects a number in [0, 1] or "auto", got "fast"')
    assert opts["ratio"].check(1.5) == (
        None, 'option `ratio` expects a number in [0, 1] or "auto", got 1.5')
    assert opts["ratio"].check("Auto")[1] is not None  # words are exact
    assert opts["ratio"].check(True) == (
        None, 'option `ratio` expects a number in [0, 1] or "auto", got true')
    assert opts["ratio"].check(None) == (None, "option `ratio` cannot be none")
    assert opts["samples"].check(2.5) == (
        None, 'option `samples` expects an int or "auto" or "max", got 2.5')
    assert opts["steps"].check([5])[1] == (
        'elements of option `steps` expect an int in [1, 4] or "last", got 5')


@pytest.mark.parametrize("annotation", [
    "int | str",
    "int | float",
    'int | float | Literal["a"] | Literal["b"]',
    'Literal["a"] | Literal["b"]',
    'bool | Literal["auto"]',
    'str | Literal["auto"]',
    'int | Literal[1, 2]',
    'list[int] | Literal["auto"]',
])
def test_other_unions_are_refused(annotation):
    src = ("from typing import Literal\n"
           f"def f(graph, ctx, *, x: {annotation} = None) -> dict:\n    '''D.'''\n")
    ns: dict = {}
    exec(src, ns)  # noqa: S102 — test-only construction of pass functions
    with pytest.raises(RegistryError, match="unsupported union type"):
        register_pass("bad", registry=_fresh())(ns["f"])


# ---------------------------------------------------------------------------------------
# Options named like Python keywords: parameter `global_`, option `global`
# ---------------------------------------------------------------------------------------


def test_option_name_drops_the_underscore_of_keywords_only():
    from homec.registry import option_name

    assert option_name("global_") == "global"
    assert option_name("lambda_") == "lambda"
    assert option_name("class_") == "class"
    assert option_name("global__") == "global__"  # one underscore only
    assert option_name("ratio_") == "ratio_"  # not a keyword: kept as written
    assert option_name("match_") == "match_"  # soft keywords are not keywords
    assert option_name("global") == "global"


def test_two_parameters_sharing_an_option_name_are_refused():
    # Python itself forbids a parameter named `global`, so the clash is checked on names.
    from homec.registry import _option_names

    assert _option_names(["ratio", "global_"], "p") == {"ratio": "ratio", "global": "global_"}
    with pytest.raises(RegistryError, match="'global_' and 'global' would both be option `global`"):
        _option_names(["global_", "global"], "p")


def _pass_with_keyword_option(reg: PassRegistry, calls: list[dict]) -> None:
    @register_pass("shrink", registry=reg)
    def shrink(graph, ctx, *, ratio: Annotated[float, Range(0.0, 1.0)] | Literal["auto"] = 0.3,
               global_: bool = False, lambda_: Annotated[float, Range(0, 10)] = 1.0) -> dict:
        """Fake pass recording the keyword arguments it is called with.

        Algebra: none; it records its arguments.
        """
        calls.append({"ratio": ratio, "global_": global_, "lambda_": lambda_})
        return {}


def test_keyword_options_are_named_without_the_underscore():
    reg = _fresh()
    calls: list[dict] = []
    _pass_with_keyword_option(reg, calls)
    info = reg.get("shrink")
    assert list(info.options) == ["ratio", "global", "lambda"]
    assert info.options["global"].name == "global" and info.options["global"].param == "global_"
    assert info.options["ratio"].param == "ratio"
    # bind() keys by option name (either spelling accepted); fn takes those keys and calls
    # the function with its parameter names
    assert info.bind({"global": True}) == {"ratio": 0.3, "global": True, "lambda": 1.0}
    assert info.bind({"global_": True}) == info.bind({"global": True})
    info.fn(None, None, **info.bind({"global": True, "lambda": 2.0}))
    assert calls == [{"ratio": 0.3, "global_": True, "lambda_": 2.0}]


# ---------------------------------------------------------------------------------------
# Both, through schedules: validate, bind, run, report, format, `homec passes`
# ---------------------------------------------------------------------------------------


def _validate(text: str, reg: PassRegistry):
    from homec.schedule.parse import parse_text
    from homec.schedule.validate import validate

    return validate(parse_text(text, "s.hc"), reg)


def test_schedules_use_words_numbers_and_keyword_options():
    reg = _fresh()
    calls: list[dict] = []
    _pass_with_keyword_option(reg, calls)
    sched = _validate('schedule { shrink(ratio="auto", global=true); shrink(ratio=0.25, lambda=3) }',
                      reg)
    first, second = sched.body
    assert first.kwargs == {"ratio": "auto", "global": True}
    assert second.kwargs == {"ratio": 0.25, "lambda": 3.0}
    for call in sched.body:
        call.info.fn(None, None, **call.info.bind(call.kwargs))
    assert calls == [{"ratio": "auto", "global_": True, "lambda_": 1.0},
                     {"ratio": 0.25, "global_": False, "lambda_": 3.0}]


def test_schedule_errors_for_words_and_keyword_options():
    from homec.schedule.ast import ScheduleError

    reg = _fresh()
    _pass_with_keyword_option(reg, [])
    with pytest.raises(ScheduleError) as err:
        _validate('schedule {\n  shrink(ratio="fast", globl=true, global_=true)\n}', reg)
    lines = [d.render().split("\n")[0] for d in err.value.diagnostics]
    assert lines == [
        's.hc:2:16: error: option `ratio` expects a number in [0, 1] or "auto", got "fast" '
        "(pass `shrink`)",
        "s.hc:2:24: error: pass `shrink` has no option `globl`; did you mean `global`?",
        "s.hc:2:36: error: pass `shrink` has no option `global_`; did you mean `global`?",
    ]


def test_keyword_option_in_the_pass_record_and_formatter():
    import homec
    import onnx.helper as oh

    from homec.pipeline import PipelineRunner, RunOptions
    from homec.schedule.fmt import format_program
    from homec.schedule.parse import parse_text

    reg = _fresh()
    calls: list[dict] = []
    _pass_with_keyword_option(reg, calls)
    text = 'schedule {\n  shrink(ratio="auto", global=true)\n}\n'
    assert format_program(parse_text(text, "s.hc")) == text
    node = oh.make_node("Relu", ["x"], ["y"], name="relu")
    graph = oh.make_graph([node], "g", [oh.make_tensor_value_info("x", 1, [2])],
                          [oh.make_tensor_value_info("y", 1, [2])])
    g = homec.load(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]))
    (record,) = PipelineRunner(g, RunOptions()).run(_validate(text, reg))
    assert record.options == {"ratio": "auto", "global": True, "lambda": 1.0}
    assert calls == [{"ratio": "auto", "global_": True, "lambda_": 1.0}]


def test_homec_passes_shows_option_names_and_number_or_word_types(monkeypatch, capsys):
    import json

    import homec.registry
    from homec import cli

    reg = _fresh()
    _pass_with_keyword_option(reg, [])
    monkeypatch.setattr(homec.registry, "REGISTRY", reg)
    assert cli.main(["passes", "shrink"]) == 0
    out = capsys.readouterr().out
    assert '    ratio: float in [0, 1] | "auto" = 0.3\n' in out
    assert "    global: bool = false\n" in out
    assert "global_" not in out
    assert cli.main(["passes", "shrink", "--json"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert [(o["name"], o["type"]) for o in entry["options"]] == [
        ("ratio", 'float in [0, 1] | "auto"'), ("global", "bool"), ("lambda", "float in [0, 10]")]
