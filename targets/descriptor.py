"""Target descriptors: what an appliance runs, read from a TOML file (data, not code).

    target = load_target("npu-int8")          # a built-in (targets/npu-int8.toml)
    target = load_target("boards/oven.toml")  # a user's file, possibly `extends = "mcu"`

The format is documented in docs/targets.md. Every key is checked: an unknown key, a wrong
type or an impossible value is a UsageError naming the file and the key (`oven.toml:
memory.sram_kib: expected a positive integer, got "big"`), so a typo never silently turns a
limit off. A user file may start from a built-in with `extends = "NAME"`: its tables are
merged into the built-in's key by key (an `[ops.X]` table replaces the built-in's rule for X;
`ops_remove = ["X"]` drops one).
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from collections.abc import Mapping
from importlib import resources
from typing import Any

from homec.analysis.memory import format_bytes
from homec.errors import UsageError
from homec.ir import Node

__all__ = [
    "BUILTIN_TARGETS", "ComputeModel", "MemoryBudget", "OpRule", "QuantRules", "Target",
    "builtin_target_path", "load_target", "target_from_dict",
]

BUILTIN_TARGETS = ("cpu", "npu-int8", "mcu")
FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")
INT_DTYPES = ("int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "bool")
KNOWN_DTYPES = FLOAT_DTYPES + INT_DTYPES
GROUP_KINDS = ("regular", "depthwise", "grouped")
FORMS = ("qdq", "integer", "float")


@dataclasses.dataclass(frozen=True)
class OpRule:
    """What the accelerator accepts of one operator.

    `dtypes`: element types of the compute (a float op between DequantizeLinear and
    QuantizeLinear counts as its quantized type; None: any). `attributes`: allowed values
    per attribute (a missing attribute is checked through its ONNX default when `defaults`
    gives one). `max`: largest allowed element per integer (list) attribute. `groups`: which
    Conv groupings run ("regular" group=1, "depthwise" group=C_in=C_out/m, "grouped" others).
    `rank_max`: largest tensor rank of any input or output.
    """

    op_type: str
    domain: str = ""
    dtypes: tuple[str, ...] | None = None
    attributes: Mapping[str, tuple[Any, ...]] = dataclasses.field(default_factory=dict)
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    max: Mapping[str, int] = dataclasses.field(default_factory=dict)
    groups: tuple[str, ...] | None = None
    rank_max: int | None = None

    def attribute_violation(self, node: Node) -> str | None:
        """Why `node`'s attributes fall outside this rule (None: they do not)."""
        for name, allowed in sorted(self.attributes.items()):
            value = node.attr(name, self.defaults.get(name))
            if value is None:
                continue
            if isinstance(value, bytes):
                value = value.decode("utf-8", "replace")
            if isinstance(value, (list, tuple)):
                bad = [v for v in value if v not in allowed]
                if bad:
                    return f"{name}={list(value)} (allowed: {_show(allowed)})"
            elif value not in allowed:
                return f"{name}={value!r} (allowed: {_show(allowed)})"
        for name, limit in sorted(self.max.items()):
            value = node.attr(name, self.defaults.get(name))
            if value is None:
                continue
            values = value if isinstance(value, (list, tuple)) else [value]
            if any(int(v) > limit for v in values):
                return f"{name}={list(values) if len(values) > 1 else values[0]} (max {limit})"
        return None


def _show(values: tuple[Any, ...]) -> str:
    return ", ".join(str(v) for v in values)


@dataclasses.dataclass(frozen=True)
class QuantRules:
    """How the target wants numbers. `required`: compute must be integer to run on the
    accelerator (a float node falls back or, without fallback, fails). `form`: what
    fold_qdq leaves (qdq: QuantizeLinear/DequantizeLinear around float ops; integer:
    QLinearConv/QLinearMatMul/ConvInteger...; float: dequantized back)."""

    required: bool = False
    weights: str = "int8"
    per_channel: bool = True
    weight_symmetric: bool = True
    activations: str = "uint8"
    form: str = "qdq"


@dataclasses.dataclass(frozen=True)
class MemoryBudget:
    """Bytes, or None for no limit: `sram` holds the activation arena, `flash` the weights."""

    sram: int | None = None
    flash: int | None = None


@dataclasses.dataclass(frozen=True)
class ComputeModel:
    """A roofline: `macs_per_cycle` per compute dtype ("float32", "int8", ...; "default"
    for the rest), `clock_hz`, `bandwidth` in bytes per second, and a fixed per-node
    `overhead_cycles` (kernel launch / loop setup)."""

    macs_per_cycle: Mapping[str, float]
    clock_hz: float
    bandwidth: float
    overhead_cycles: float = 0.0

    def throughput(self, dtype: str | None) -> float:
        """MACs per cycle for compute in `dtype`."""
        if dtype is not None and dtype in self.macs_per_cycle:
            return float(self.macs_per_cycle[dtype])
        # unsigned kernels run at their signed twin's rate (the same MAC units)
        twin = {"uint8": "int8", "uint16": "int16", "uint32": "int32", "uint64": "int64"}.get(dtype or "")
        if twin in self.macs_per_cycle:
            return float(self.macs_per_cycle[twin])
        return float(self.macs_per_cycle.get("default", min(self.macs_per_cycle.values())))


@dataclasses.dataclass(frozen=True)
class Target:
    """One appliance class. `device` names the accelerator ("cpu" for the cpu target, whose
    placement is all-CPU); `fallback` is "cpu" or None (no fallback: anything the
    accelerator cannot run fails the build)."""

    name: str
    description: str
    device: str
    fallback: str | None
    opset: int | None  # the opset the target's toolchain reads (None: any; models below are upgraded)
    static_shapes: bool
    channel_alignment: int
    quantization: QuantRules
    memory: MemoryBudget
    compute: ComputeModel
    fallback_compute: ComputeModel | None
    transition_us: float
    ops: Mapping[str, OpRule]  # "Conv" or "com.microsoft::QGemm" -> rule; None: every op
    all_ops: bool  # true: every op runs on the device (the cpu target)
    path: str | None = None  # the file it was read from (a built-in's packaged file)
    decompose: tuple[str, ...] = ()  # ops to decompose even when listed (legalization)

    @property
    def integer_kernels(self) -> bool | None:
        """fold_qdq's `form="auto"`: integer kernels (True), dequantized float (False), or
        None for QDQ."""
        return {"integer": True, "float": False}.get(self.quantization.form)

    def rule(self, node: Node) -> OpRule | None:
        """The accelerator's rule for `node`'s operator, or None when it has none."""
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        return self.ops.get(key)

    def summary(self) -> str:
        """One line for `homec targets`."""
        parts = [f"{self.device}"]
        parts.append("int8 only" if self.quantization.required else "float or int8")
        if not self.all_ops:
            parts.append(f"{len(self.ops)} ops")
        if not self.all_ops:
            parts.append("fallback: " + (self.fallback or "none"))
        if self.channel_alignment > 1:
            parts.append(f"align {self.channel_alignment}")
        if self.memory.sram is not None:
            parts.append(f"SRAM {format_bytes(self.memory.sram)}")
        if self.memory.flash is not None:
            parts.append(f"flash {format_bytes(self.memory.flash)}")
        if self.static_shapes:
            parts.append("static shapes")
        if self.opset is not None:
            parts.append(f"opset {self.opset}")
        return ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        """The descriptor as the report and manifest show it (JSON-ready, sorted)."""
        return {
            "name": self.name,
            "description": self.description,
            "device": self.device,
            "fallback": self.fallback,
            "opset": self.opset,
            "static_shapes": self.static_shapes,
            "channel_alignment": self.channel_alignment,
            "quantization": dataclasses.asdict(self.quantization),
            "memory": {"sram_bytes": self.memory.sram, "flash_bytes": self.memory.flash},
            "ops": None if self.all_ops else sorted(self.ops),
        }


# ---------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------


def builtin_target_path(name: str) -> str:
    """The packaged TOML file of a built-in target."""
    return str(resources.files("homec.targets").joinpath(f"{name}.toml"))


def load_target(spec: str | os.PathLike) -> Target:
    """A built-in target by name, or a TOML file by path (anything ending in .toml or
    containing a path separator is a path)."""
    s = os.fspath(spec)
    if s in BUILTIN_TARGETS:
        return _load_file(builtin_target_path(s), display=s)
    if s.endswith(".toml") or os.sep in s or "/" in s:
        if not os.path.isfile(s):
            raise UsageError("target file not found", path=s)
        return _load_file(s, display=s)
    raise UsageError(f"unknown target `{s}` (built-in targets: {', '.join(BUILTIN_TARGETS)}; "
                     "or give a .toml descriptor file)")


def _read_toml(path: str, display: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"not valid TOML: {e}", path=display) from None
    except OSError as e:
        raise UsageError(f"cannot read the target file ({e.strerror or e})", path=display) from None


def _load_file(path: str, display: str, _seen: tuple[str, ...] = ()) -> Target:
    data = _read_toml(path, display)
    base = data.get("extends")
    if base is not None:
        if not isinstance(base, str) or base not in BUILTIN_TARGETS:
            raise UsageError(f"extends: expected one of {', '.join(BUILTIN_TARGETS)}, got {base!r}",
                             path=display)
        data = _merge(_read_toml(builtin_target_path(base), base), data, display)
        data.pop("extends", None)
    target = target_from_dict(data, source=display)
    return dataclasses.replace(target, path=os.path.abspath(path))


def _merge(base: dict[str, Any], over: dict[str, Any], source: str) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if key == "ops" and isinstance(value, dict) and isinstance(base.get("ops"), dict):
            out["ops"] = {**base["ops"], **value}
        elif isinstance(value, dict) and isinstance(base.get(key), dict) and key != "ops":
            out[key] = {**base[key], **value}
        else:
            out[key] = value
    if over.get("fallback") == "none" and "fallback_compute" not in over:
        out.pop("fallback_compute", None)  # the base's fallback CPU goes with its fallback
    removed = out.pop("ops_remove", None)
    if removed is not None:
        if not isinstance(removed, list) or not all(isinstance(x, str) for x in removed):
            raise UsageError(f"ops_remove: expected a list of operator names, got {removed!r}",
                             path=source)
        ops = out.get("ops", {})
        if not isinstance(ops, dict):
            raise UsageError('ops_remove: the base runs every operator (ops = "all"); list '
                             "[ops.NAME] tables instead", path=source)
        for name in removed:
            if name not in ops:
                raise UsageError(f"ops_remove: `{name}` is not an operator of the base target"
                                 + _hint(name, set(ops)), path=source)
        out["ops"] = {k: v for k, v in ops.items() if k not in removed}
    return out


class _Reader:
    """Typed access to one TOML table, with errors naming `file: table.key`."""

    def __init__(self, table: Mapping[str, Any], source: str, prefix: str = ""):
        self.table = table
        self.source = source
        self.prefix = prefix
        self.used: set[str] = set()

    def fail(self, key: str, message: str) -> UsageError:
        return UsageError(f"{self.prefix}{key}: {message}", path=self.source)

    def get(self, key: str, default: Any = None) -> Any:
        self.used.add(key)
        return self.table.get(key, default)

    def string(self, key: str, default: str | None = None, choices: tuple[str, ...] | None = None):
        v = self.get(key, default)
        if v is None:
            return None
        if not isinstance(v, str):
            raise self.fail(key, f"expected a string, got {v!r}")
        if choices is not None and v not in choices:
            raise self.fail(key, f"expected one of {', '.join(choices)}, got {v!r}")
        return v

    def boolean(self, key: str, default: bool) -> bool:
        v = self.get(key, default)
        if not isinstance(v, bool):
            raise self.fail(key, f"expected true or false, got {v!r}")
        return v

    def number(self, key: str, default: float | None = None, *, positive: bool = True,
               integer: bool = False) -> Any:
        v = self.get(key, default)
        if v is None:
            return None
        kind = "integer" if integer else "number"
        ok = isinstance(v, int) if integer else isinstance(v, (int, float))
        if isinstance(v, bool) or not ok or (isinstance(v, float) and not math.isfinite(v)):
            raise self.fail(key, f"expected a {'positive ' if positive else ''}{kind}, got {v!r}")
        if positive and v <= 0 or not positive and v < 0:
            raise self.fail(key, f"expected a {'positive' if positive else 'non-negative'} "
                                 f"{kind}, got {v!r}")
        return v

    def strings(self, key: str, choices: tuple[str, ...] | None = None) -> tuple[str, ...] | None:
        v = self.get(key)
        if v is None:
            return None
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise self.fail(key, f"expected a list of strings, got {v!r}")
        if choices is not None:
            for x in v:
                if x not in choices:
                    raise self.fail(key, f"unknown value {x!r} (one of {', '.join(choices)})")
        return tuple(v)

    def table_of(self, key: str) -> _Reader:
        v = self.get(key, {})
        if not isinstance(v, dict):
            raise self.fail(key, f"expected a table, got {v!r}")
        return _Reader(v, self.source, f"{self.prefix}{key}.")

    def finish(self) -> None:
        """Unknown keys are errors: a misspelt limit must not be silently ignored."""
        extra = sorted(set(self.table) - self.used)
        if extra:
            raise self.fail(extra[0], "unknown key" + _hint(extra[0], self.used))


def _hint(key: str, known: set[str]) -> str:
    import difflib

    match = difflib.get_close_matches(key, sorted(known), n=1)
    return f" (did you mean `{match[0]}`?)" if match else ""


def _kib_bytes(r: _Reader, key: str) -> int | None:
    v = r.number(key, integer=True)
    return None if v is None else int(v) * 1024


def _compute(r: _Reader, key: str, required: bool) -> ComputeModel | None:
    if key not in r.table:
        if required:
            raise r.fail(key, "missing table (macs_per_cycle, clock_mhz, bandwidth_gbps)")
        r.used.add(key)
        return None
    t = r.table_of(key)
    macs = t.get("macs_per_cycle")
    if isinstance(macs, (int, float)) and not isinstance(macs, bool):
        macs = {"default": macs}
    if not isinstance(macs, dict) or not macs:
        raise t.fail("macs_per_cycle", "expected a number or a table of dtype = number")
    for dtype, v in macs.items():
        if dtype != "default" and dtype not in KNOWN_DTYPES:
            raise t.fail(f"macs_per_cycle.{dtype}", "unknown dtype")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
            raise t.fail(f"macs_per_cycle.{dtype}", f"expected a positive number, got {v!r}")
    model = ComputeModel(
        macs_per_cycle={k: float(v) for k, v in sorted(macs.items())},
        clock_hz=float(t.number("clock_mhz")) * 1e6 if "clock_mhz" in t.table else _missing(t, "clock_mhz"),
        bandwidth=float(t.number("bandwidth_gbps")) * 1e9 if "bandwidth_gbps" in t.table else _missing(t, "bandwidth_gbps"),
        overhead_cycles=float(t.number("overhead_cycles", 0, positive=False)),
    )
    t.finish()
    return model


def _missing(r: _Reader, key: str):
    raise r.fail(key, "missing")


def _op_rule(name: str, table: Any, source: str) -> OpRule:
    if not isinstance(table, dict):
        raise UsageError(f"ops.{name}: expected a table, got {table!r}", path=source)
    r = _Reader(table, source, f"ops.{name}.")
    domain, _, op_type = name.rpartition("::")
    attrs = r.table_of("attributes")
    allowed: dict[str, tuple[Any, ...]] = {}
    for key in sorted(attrs.table):
        v = attrs.get(key)
        allowed[key] = tuple(v) if isinstance(v, list) else (v,)
    defaults = r.table_of("defaults")
    default_values = {k: defaults.get(k) for k in sorted(defaults.table)}
    limits = r.table_of("max")
    max_values: dict[str, int] = {}
    for key in sorted(limits.table):
        max_values[key] = int(limits.number(key, integer=True))
    rule = OpRule(
        op_type=op_type, domain=domain,
        dtypes=r.strings("dtypes", KNOWN_DTYPES),
        attributes=allowed, defaults=default_values, max=max_values,
        groups=r.strings("groups", GROUP_KINDS),
        rank_max=r.number("rank_max", integer=True),
    )
    r.finish()
    return rule


def target_from_dict(data: Mapping[str, Any], *, source: str = "<target>") -> Target:
    """A Target from parsed TOML (see docs/targets.md for every key)."""
    r = _Reader(data, source)
    name = r.string("name")
    if not name:
        raise r.fail("name", "missing (a short name such as `oven-npu`)")
    device = r.string("device", "npu")
    fallback = r.string("fallback", "none", ("cpu", "none"))
    q = r.table_of("quantization")
    quant = QuantRules(
        required=q.boolean("required", False),
        weights=q.string("weights", "int8", ("int8", "uint8", "int4")),
        per_channel=q.boolean("per_channel", True),
        weight_symmetric=q.boolean("weight_symmetric", True),
        activations=q.string("activations", "uint8", ("int8", "uint8")),
        form=q.string("form", "qdq", FORMS),
    )
    if quant.weight_symmetric != (quant.weights != "uint8"):
        raise q.fail("weight_symmetric", "int8/int4 weights are symmetric and uint8 weights "
                                         "asymmetric (what `quantize` produces)")
    q.finish()
    m = r.table_of("memory")
    memory = MemoryBudget(sram=_kib_bytes(m, "sram_kib"), flash=_kib_bytes(m, "flash_kib"))
    m.finish()
    ops_value = r.get("ops", {})
    all_ops = ops_value == "all"
    ops: dict[str, OpRule] = {}
    if not all_ops:
        if not isinstance(ops_value, dict):
            raise r.fail("ops", 'expected a table of operator rules or "all"')
        for op_name in sorted(ops_value):
            ops[op_name] = _op_rule(op_name, ops_value[op_name], source)
    fb = None if fallback == "none" else fallback
    target = Target(
        name=name,
        description=r.string("description", ""),
        device=device,
        fallback=fb,
        opset=r.number("opset", integer=True),
        static_shapes=r.boolean("static_shapes", False),
        channel_alignment=int(r.number("channel_alignment", 1, integer=True)),
        quantization=quant,
        memory=memory,
        compute=_compute(r, "compute", True),
        fallback_compute=_compute(r, "fallback_compute", fb is not None),
        transition_us=float(r.number("transition_us", 0, positive=False)),
        ops=ops,
        all_ops=all_ops,
        decompose=r.strings("decompose") or (),
    )
    r.finish()
    if fb is None and target.fallback_compute is not None:
        raise r.fail("fallback_compute", 'given but fallback = "none"')
    if quant.required and quant.form == "float":
        raise UsageError('quantization.form = "float" contradicts required = true', path=source)
    return target
