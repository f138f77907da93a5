"""Pass registration: passes register by name with typed options taken from their signature.

A pass is a plain function

    @register_pass("eliminate_dead", tolerance=Tolerance.exact())
    def eliminate_dead(graph: Graph, ctx: PassContext, *, keep_inputs: bool = True) -> Stats:
        '''One-line summary.

        Longer docs: the algebra of the rewrite, what each option does.
        '''
        ...
        return {"removed_nodes": 3}

Options are the keyword-only parameters after `ctx`; their annotations give the types the
schedule language checks (`int`, `float`, `bool`, `str`, `Literal[...]` for enumerations,
`list[int]` / `list[str]` / ..., `X | None`), and `Annotated[int, Range(1, 64)]` adds bounds.
Every option needs a default. Registering a name twice is an error, never an overwrite.

Third-party passes: a package exposes an entry point in group `homec.passes`; loading it
(importing the module it names) registers its passes.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from importlib import metadata
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from homec.errors import HomecError, UsageError

Stats = dict[str, int | float]


@dataclasses.dataclass(frozen=True)
class Range:
    """Inclusive bounds for a numeric option (either may be None)."""

    min: float | None = None
    max: float | None = None


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """How far a pass may move the model's outputs (checked by --verify-each).

    A lossless pass is exact (atol = rtol = 0, outputs bit-identical up to float
    reassociation, which `rtol` covers for passes that refold arithmetic); a lossy pass
    declares bounds on the absolute error or on the cosine similarity of the outputs.
    """

    atol: float = 0.0
    rtol: float = 0.0
    min_cosine: float | None = None
    lossy: bool = False

    @classmethod
    def exact(cls) -> Tolerance:
        return cls()

    @classmethod
    def float_refold(cls, rtol: float = 1e-5, atol: float = 1e-6) -> Tolerance:
        """For lossless rewrites that re-associate float arithmetic (folding BN, constants)."""
        return cls(atol=atol, rtol=rtol)

    @classmethod
    def bounded(cls, *, min_cosine: float, atol: float = float("inf")) -> Tolerance:
        return cls(atol=atol, min_cosine=min_cosine, lossy=True)


@dataclasses.dataclass(frozen=True)
class OptionSpec:
    """One typed option of a pass."""

    name: str
    kind: str  # "int" | "float" | "bool" | "str" | "enum" | "list"
    default: Any
    choices: tuple[Any, ...] = ()  # for "enum"
    element: OptionSpec | None = None  # for "list"
    range: Range | None = None
    optional: bool = False  # None accepted

    def describe(self) -> str:
        if self.kind == "enum":
            t = " | ".join(repr(c) for c in self.choices)
        elif self.kind == "list":
            assert self.element is not None
            t = f"list[{self.element.describe()}]"
        else:
            t = self.kind
        if self.range is not None:
            lo, hi = self.range.min, self.range.max
            if lo is not None and hi is not None:
                t += f" in [{lo:g}, {hi:g}]"
            elif lo is not None:
                t += f" >= {lo:g}"
            elif hi is not None:
                t += f" <= {hi:g}"
        if self.optional:
            t += " | none"
        return t

    def check(self, value: Any) -> tuple[Any, str | None]:
        """Coerce `value` (a schedule literal) to this option's type, or say why not."""
        if value is None:
            return (None, None) if self.optional else (None, f"option `{self.name}` cannot be none")
        if self.kind == "bool":
            if isinstance(value, bool):
                return value, None
            return None, f"option `{self.name}` expects a bool (true/false), got {_show(value)}"
        if self.kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                return None, f"option `{self.name}` expects an int, got {_show(value)}"
            return self._bounded(value)
        if self.kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return None, f"option `{self.name}` expects a number, got {_show(value)}"
            return self._bounded(float(value))
        if self.kind == "str":
            if not isinstance(value, str):
                return None, f"option `{self.name}` expects a string, got {_show(value)}"
            return value, None
        if self.kind == "enum":
            if value in self.choices and type(value) is type(_match(self.choices, value)):
                return value, None
            opts = ", ".join(repr(c) if not isinstance(c, str) else f'"{c}"' for c in self.choices)
            return None, f"option `{self.name}` must be one of {opts}, got {_show(value)}"
        if self.kind == "list":
            assert self.element is not None
            if not isinstance(value, (list, tuple)):
                value = [value]
            out = []
            for item in value:
                v, err = self.element.check(item)
                if err:
                    old = f"option `{self.element.name}`"
                    new = f"elements of option `{self.name}`"
                    if err.startswith(old + " expects"):
                        return None, new + " expect" + err[len(old + " expects"):]
                    return None, err.replace(old, new, 1)
                out.append(v)
            return tuple(out), None
        raise AssertionError(self.kind)

    def _bounded(self, value: float) -> tuple[Any, str | None]:
        r = self.range
        if r is not None and ((r.min is not None and value < r.min) or (r.max is not None and value > r.max)):
            lo = "-inf" if r.min is None else f"{r.min:g}"
            hi = "inf" if r.max is None else f"{r.max:g}"
            return None, f"option `{self.name}` = {value:g} is out of range [{lo}, {hi}]"
        return value, None


def _match(choices: tuple[Any, ...], value: Any) -> Any:
    for c in choices:
        if c == value:
            return c
    return None


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return repr(value)


@dataclasses.dataclass(frozen=True)
class PassInfo:
    """A registered pass."""

    name: str
    fn: Callable[..., Stats]
    options: Mapping[str, OptionSpec]
    summary: str
    doc: str
    tolerance: Tolerance
    module: str
    needs_calibration: bool = False
    selectable: bool = True  # accepts `on OpType` / `where name ~ "glob"`

    def bind(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Full option values: defaults overlaid with `given` (already validated)."""
        out = {k: spec.default for k, spec in self.options.items()}
        out.update(given)
        return out


class RegistryError(HomecError):
    """A pass cannot be registered (duplicate name, untyped option): a bug in the pass."""


def _spec_from_annotation(name: str, annotation: Any, default: Any, owner: str) -> OptionSpec:
    rng: Range | None = None
    if get_origin(annotation) is Annotated:
        base, *extras = get_args(annotation)
        for e in extras:
            if isinstance(e, Range):
                rng = e
        annotation = base
    optional = False
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        optional = len(args) < len(get_args(annotation))
        if len(args) != 1:
            raise RegistryError(f"pass {owner!r}: option {name!r} has an unsupported union type")
        annotation = args[0]
        if get_origin(annotation) is Annotated:  # Annotated[int, Range(..)] | None
            base, *extras = get_args(annotation)
            rng = next((e for e in extras if isinstance(e, Range)), rng)
            annotation = base
        origin = get_origin(annotation)
    if annotation is bool:
        return OptionSpec(name, "bool", default, optional=optional)
    if annotation is int:
        return OptionSpec(name, "int", default, range=rng, optional=optional)
    if annotation is float:
        return OptionSpec(name, "float", default, range=rng, optional=optional)
    if annotation is str:
        return OptionSpec(name, "str", default, optional=optional)
    if origin is Literal:
        return OptionSpec(name, "enum", default, choices=get_args(annotation), optional=optional)
    if origin in (list, tuple):
        (elem, *_rest) = get_args(annotation) or (str,)
        espec = _spec_from_annotation(name, elem, None, owner)
        dflt = tuple(default) if isinstance(default, (list, tuple)) else default
        return OptionSpec(name, "list", dflt, element=espec, optional=optional)
    raise RegistryError(f"pass {owner!r}: option {name!r} has unsupported type {annotation!r}; "
                        "use int, float, bool, str, Literal[...], list[...] (optionally | None)")


def options_from_signature(fn: Callable[..., Any], owner: str) -> dict[str, OptionSpec]:
    sig = inspect.signature(fn)
    hints = typing.get_type_hints(fn, include_extras=True)
    params = list(sig.parameters.values())
    if len(params) < 2 or params[0].kind not in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
        raise RegistryError(f"pass {owner!r}: signature must be (graph, ctx, *, options...)")
    specs: dict[str, OptionSpec] = {}
    for p in params[2:]:
        if p.kind != p.KEYWORD_ONLY:
            raise RegistryError(f"pass {owner!r}: option {p.name!r} must be keyword-only (after *)")
        if p.default is p.empty:
            raise RegistryError(f"pass {owner!r}: option {p.name!r} needs a default")
        if p.name not in hints:
            raise RegistryError(f"pass {owner!r}: option {p.name!r} needs a type annotation")
        specs[p.name] = _spec_from_annotation(p.name, hints[p.name], p.default, owner)
    return specs


# Words that start constructs in the schedule language.
_RESERVED_NAMES = frozenset({"include", "pipeline", "schedule", "repeat", "fixpoint", "when",
                             "else", "on", "where", "true", "false", "none"})


class PassRegistry:
    def __init__(self, *, load_plugins: bool = True) -> None:
        """A registry; `load_plugins=False` makes a private one without built-ins or
        entry points (for tests and embedding)."""
        self._passes: dict[str, PassInfo] = {}
        self._plugins_loaded = not load_plugins
        self.plugin_errors: list[str] = []

    def add(self, info: PassInfo) -> PassInfo:
        if not info.name.isidentifier() or info.name in _RESERVED_NAMES:
            raise RegistryError(f"pass name {info.name!r} from {info.module} cannot be called "
                                "from a schedule; use an identifier that is not a keyword")
        if info.name in self._passes:
            other = self._passes[info.name]
            raise RegistryError(f"pass {info.name!r} from {info.module} is already registered "
                                f"by {other.module}; pass names must be unique")
        self._passes[info.name] = info
        return info

    def get(self, name: str) -> PassInfo | None:
        self.ensure_loaded()
        return self._passes.get(name)

    def names(self) -> list[str]:
        self.ensure_loaded()
        return sorted(self._passes)

    def all(self) -> list[PassInfo]:
        self.ensure_loaded()
        return [self._passes[n] for n in sorted(self._passes)]

    def ensure_loaded(self) -> None:
        if not self._plugins_loaded:
            self._plugins_loaded = True
            importlib.import_module("homec.passes")  # built-ins register on import
            self._load_entry_points()

    def _load_entry_points(self) -> None:
        for ep in metadata.entry_points(group="homec.passes"):
            try:
                ep.load()
            except RegistryError:
                raise
            except Exception as e:  # a broken plugin must not take the compiler down
                self.plugin_errors.append(f"plugin {ep.name!r} ({ep.value}) failed to load: "
                                          f"{type(e).__name__}: {e}")


REGISTRY = PassRegistry()


def register_pass(
    name: str,
    *,
    tolerance: Tolerance = Tolerance.exact(),
    needs_calibration: bool = False,
    selectable: bool = True,
    registry: PassRegistry | None = None,
) -> Callable[[Callable[..., Stats]], Callable[..., Stats]]:
    """Decorator registering a pass function under `name`."""

    def deco(fn: Callable[..., Stats]) -> Callable[..., Stats]:
        doc = inspect.cleandoc(fn.__doc__ or "")
        if not doc:
            raise RegistryError(f"pass {name!r} needs a docstring (summary line, algebra, options)")
        summary = doc.splitlines()[0].strip()
        info = PassInfo(
            name=name, fn=fn, options=options_from_signature(fn, name), summary=summary, doc=doc,
            tolerance=tolerance, module=fn.__module__, needs_calibration=needs_calibration,
            selectable=selectable)
        (registry or REGISTRY).add(info)
        fn.pass_info = info  # type: ignore[attr-defined]
        return fn

    return deco


def suggest(name: str, candidates: list[str]) -> str | None:
    """The closest candidate name, for 'did you mean' hints."""
    import difflib

    best = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return best[0] if best else None


def unknown_pass_message(name: str) -> str:
    hint = suggest(name, REGISTRY.names())
    return f"unknown pass `{name}`" + (f"; did you mean `{hint}`?" if hint else "")


__all__ = ["OptionSpec", "PassInfo", "PassRegistry", "REGISTRY", "Range", "RegistryError",
           "Stats", "Tolerance", "UsageError", "register_pass", "suggest", "unknown_pass_message"]
