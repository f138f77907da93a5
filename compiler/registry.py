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
A number may also admit a few words: `Annotated[float, Range(0, 1)] | Literal["auto"]` takes
0.25 or "auto". Every option needs a default. Registering a name twice is an error, never an
overwrite.

An option is named in schedules as its parameter is, except that a Python keyword spelt with
one trailing underscore (PEP 8: `global_`) is written without it (`global=true`); the pass
function is still called with `global_`.

Third-party passes: a package exposes an entry point in group `homec.passes`; loading it
(importing the module it names) registers its passes.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import keyword
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

    name: str  # as schedules, `homec passes` and reports write it
    kind: str  # "int" | "float" | "bool" | "str" | "enum" | "list"
    default: Any
    choices: tuple[Any, ...] = ()  # for "enum"
    element: OptionSpec | None = None  # for "list"
    range: Range | None = None
    optional: bool = False  # None accepted
    words: tuple[str, ...] = ()  # for "int" / "float": strings accepted instead of a number
    param: str = ""  # the pass function's parameter ("" = `name`); `global_` for `global`

    def __post_init__(self) -> None:
        if not self.param:
            object.__setattr__(self, "param", self.name)

    def describe(self) -> str:
        if self.kind == "enum":
            t = " | ".join(repr(c) for c in self.choices)
        elif self.kind == "list":
            assert self.element is not None
            t = f"list[{self.element.describe()}]"
        else:
            t = self.kind + self._bounds_text()
        t += "".join(f" | {_show(w)}" for w in self.words)
        if self.optional:
            t += " | none"
        return t

    def _bounds_text(self) -> str:
        """` in [0, 1]`, ` >= 1`, ` <= 8`, or nothing."""
        if self.range is None:
            return ""
        lo, hi = self.range.min, self.range.max
        if lo is not None and hi is not None:
            return f" in [{lo:g}, {hi:g}]"
        if lo is not None:
            return f" >= {lo:g}"
        if hi is not None:
            return f" <= {hi:g}"
        return ""

    def check(self, value: Any) -> tuple[Any, str | None]:
        """Coerce `value` (a schedule literal) to this option's type, or say why not."""
        if value is None:
            return (None, None) if self.optional else (None, f"option `{self.name}` cannot be none")
        if self.words:
            return self._check_number_or_word(value)
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

    def _check_number_or_word(self, value: Any) -> tuple[Any, str | None]:
        """A number (checked as a plain int/float option) or exactly one of `words`; a
        rejection names both, since either would have done."""
        if isinstance(value, str):
            if value in self.words:
                return value, None
        else:
            plain = dataclasses.replace(self, words=())
            number, problem = plain.check(value)
            if problem is None:
                return number, None
        noun = "an int" if self.kind == "int" else "a number"
        words = " or ".join(_show(w) for w in self.words)
        return None, (f"option `{self.name}` expects {noun}{self._bounds_text()} or {words}, "
                      f"got {_show(value)}")

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
        """Full option values: defaults overlaid with `given` (already validated), keyed by
        option name (`global`, not the parameter `global_`; `given` may use either). `fn`
        takes them as they are: for a pass with such a renamed option it is a wrapper that
        passes each value on under its parameter name."""
        renamed = {spec.param: name for name, spec in self.options.items() if spec.param != name}
        out = {k: spec.default for k, spec in self.options.items()}
        out.update({renamed.get(k, k): v for k, v in given.items()})
        return out


class RegistryError(HomecError):
    """A pass cannot be registered (duplicate name, untyped option): a bug in the pass."""


def _spec_from_annotation(name: str, annotation: Any, default: Any, owner: str,
                          param: str = "") -> OptionSpec:
    rng: Range | None = None
    if get_origin(annotation) is Annotated:
        base, *extras = get_args(annotation)
        for e in extras:
            if isinstance(e, Range):
                rng = e
        annotation = base
    optional = False
    words: tuple[Any, ...] = ()
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        optional = len(args) < len(get_args(annotation))
        if len(args) > 1:  # a number or some words: float | Literal["auto"]
            words = tuple(w for a in args if get_origin(a) is Literal for w in get_args(a))
            args = [a for a in args if get_origin(a) is not Literal]
            number = _unannotated(args[0]) if len(args) == 1 else None
            all_strings = all(isinstance(w, str) for w in words)
            if number not in (int, float) or not words or not all_strings:
                raise RegistryError(
                    f"pass {owner!r}: option {name!r} has an unsupported union type "
                    f"{annotation!r}; a union may only add None, or string words to one number "
                    "(e.g. `Annotated[float, Range(0, 1)] | Literal[\"auto\"]`)")
        annotation = args[0]
        if get_origin(annotation) is Annotated:  # Annotated[int, Range(..)] | None
            base, *extras = get_args(annotation)
            rng = next((e for e in extras if isinstance(e, Range)), rng)
            annotation = base
        origin = get_origin(annotation)
        if words:
            return OptionSpec(name, annotation.__name__, default, range=rng, optional=optional,
                              words=words, param=param)
    if annotation is bool:
        return OptionSpec(name, "bool", default, optional=optional, param=param)
    if annotation is int:
        return OptionSpec(name, "int", default, range=rng, optional=optional, param=param)
    if annotation is float:
        return OptionSpec(name, "float", default, range=rng, optional=optional, param=param)
    if annotation is str:
        return OptionSpec(name, "str", default, optional=optional, param=param)
    if origin is Literal:
        return OptionSpec(name, "enum", default, choices=get_args(annotation), optional=optional,
                          param=param)
    if origin in (list, tuple):
        (elem, *_rest) = get_args(annotation) or (str,)
        espec = _spec_from_annotation(name, elem, None, owner)
        dflt = tuple(default) if isinstance(default, (list, tuple)) else default
        return OptionSpec(name, "list", dflt, element=espec, optional=optional, param=param)
    raise RegistryError(f"pass {owner!r}: option {name!r} has unsupported type {annotation!r}; "
                        "use int, float, bool, str, Literal[...], list[...] (optionally | None)")


def _unannotated(annotation: Any) -> Any:
    """`Annotated[float, Range(0, 1)]` -> float (other types unchanged)."""
    return get_args(annotation)[0] if get_origin(annotation) is Annotated else annotation


def option_name(param: str) -> str:
    """The option name schedules use for pass parameter `param`: a Python keyword written
    with one trailing underscore (PEP 8's `global_`, `lambda_`) loses it, since the schedule
    language has no reason to avoid Python's keywords; every other name is kept."""
    if param.endswith("_") and keyword.iskeyword(param[:-1]):
        return param[:-1]
    return param


def _option_names(params: list[str], owner: str) -> dict[str, str]:
    """{option name: parameter name}, refusing two parameters that would share a name."""
    names: dict[str, str] = {}
    for param in params:
        name = option_name(param)
        if name in names:
            raise RegistryError(f"pass {owner!r}: parameters {names[name]!r} and {param!r} "
                                f"would both be option `{name}`; rename one")
        names[name] = param
    return names


def _called_by_option_names(fn: Callable[..., Stats], options: Mapping[str, OptionSpec]
                            ) -> Callable[..., Stats]:
    """`fn` itself when every option is named as its parameter; else a wrapper taking option
    names (`global=`) and calling `fn` with parameter names (`global_=`). Parameter names are
    passed through, so either spelling works."""
    renamed = {name: spec.param for name, spec in options.items() if spec.param != name}
    if not renamed:
        return fn

    @functools.wraps(fn)
    def call(graph: Any, ctx: Any, **values: Any) -> Stats:
        return fn(graph, ctx, **{renamed.get(k, k): v for k, v in values.items()})

    return call


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
    names = _option_names([p.name for p in params[2:]], owner)
    for name, param in names.items():
        specs[name] = _spec_from_annotation(name, hints[param], sig.parameters[param].default,
                                            owner, param=param)
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
        options = options_from_signature(fn, name)
        info = PassInfo(
            name=name, fn=_called_by_option_names(fn, options), options=options, summary=summary,
            doc=doc, tolerance=tolerance, module=fn.__module__,
            needs_calibration=needs_calibration, selectable=selectable)
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
           "Stats", "Tolerance", "UsageError", "option_name", "register_pass", "suggest",
           "unknown_pass_message"]
