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
