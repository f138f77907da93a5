"""onnxruntime as the reference semantics: run models, make inputs, compare outputs.

    run_ort(model, feeds)                  outputs, graph optimizations off, one thread
    random_feeds(model, seed)              inputs of the right dtypes and shapes
    compare(ref, got, tolerance)           per-output errors judged by a pass's Tolerance
    save_regression(model, seed, folder, reason)   keep a failing model for re-running

How `compare` judges (per output; `Tolerance` from homec.registry):

* shapes and dtypes must match, and NaNs must sit at the same places (an infinity must match
  exactly);
* exact tolerance (atol = rtol = 0, not lossy): the values must be equal;
* otherwise `max|got - ref| <= atol + rtol * max|ref|` -- the relative part is taken
  against the output's largest magnitude, not elementwise, so a value that cancels to
  almost zero inside a re-associated sum does not fail a float_refold pass;
* a lossy tolerance with `min_cosine` also needs cosine(ref, got) >= min_cosine.

Besides the verdict each output reports max abs error, max elementwise relative error
(|got - ref| / |ref| over |ref| > 1e-6 * max|ref|) and cosine similarity.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.numpy_helper

from homec.registry import Tolerance
from homec.verify import OutputVerdict, is_exact, judge_output

OutputComparison = OutputVerdict  # the name this module used before the judgement moved

__all__ = ["Comparison", "OutputComparison", "compare", "finite_summary", "model_proto",
           "random_feeds", "regression_info", "run_ort", "save_regression", "text_like_image"]

DEFAULT_SYMBOLIC_DIM = 2  # batch 2 catches passes that assume batch 1


def model_proto(model: Any) -> onnx.ModelProto:
    """A ModelProto from a ModelProto, a homec Graph, serialized bytes or a path."""
    if isinstance(model, onnx.ModelProto):
        return model
    if hasattr(model, "to_onnx"):
        return model.to_onnx()
    if isinstance(model, (bytes, bytearray)):
        m = onnx.ModelProto()
        m.ParseFromString(bytes(model))
        return m
    return onnx.load(os.fspath(model))


def _session(model: Any, optimize: bool):
    from homec.verify import make_session

    if isinstance(model, (str, os.PathLike)) and not isinstance(model, bytes):
        return make_session(os.fspath(model), optimize=optimize)
    return make_session(model_proto(model), optimize=optimize)


def run_ort(model: Any, feeds: Mapping[str, np.ndarray], *, optimize: bool = False) -> list[np.ndarray]:
    """Run `model` (ModelProto, homec Graph, bytes or path) on `feeds`; outputs in graph order.

    CPU provider, one thread, graph optimizations disabled unless `optimize` (so the
    reference is onnxruntime's kernels, not its own graph rewrites).
    """
    sess = _session(model, optimize)
    names = {i.name for i in sess.get_inputs()}
    return sess.run(None, {k: v for k, v in feeds.items() if k in names})


def _np_dtype(elem_type: int) -> np.dtype:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))


def random_feeds(model: Any, seed: int, *, dim_values: Mapping[str, int] | None = None,
                 override_initializers: bool = False) -> dict[str, np.ndarray]:
    """Random inputs for every graph input that is not an initializer.

    With `override_initializers`, graph inputs that also have an initializer (IR >= 4
    defaults a caller may override) are fed too: float ones with their default times a
    random factor in [0.5, 1.5) per element (signs kept, so variances stay positive),
    others with the default itself. A pass that wrongly treats such an input as a constant
    then shows up as an output mismatch.

    Floats are standard normal, signed ints uniform in [-5, 5), unsigned ints in [0, 10),
    bools fair coins. A symbolic dim takes `dim_values[param]` when given, else
    DEFAULT_SYMBOLIC_DIM (2); an unknown dim (no value, no name) takes 1.
    Deterministic: numpy default_rng(seed), inputs in graph order.
    """
    m = model_proto(model)
    rng = np.random.default_rng(seed)
    dim_values = dict(dim_values or {})
    inits = {t.name for t in m.graph.initializer} | {t.values.name for t in m.graph.sparse_initializer}
    feeds: dict[str, np.ndarray] = {}
    defaults = {t.name: t for t in m.graph.initializer}
    for vi in m.graph.input:
        if vi.name in inits:
            if override_initializers and vi.name in defaults:
                arr = onnx.numpy_helper.to_array(defaults[vi.name])
                if arr.dtype.kind == "f":
                    arr = (arr * rng.uniform(0.5, 1.5, arr.shape)).astype(arr.dtype)
                feeds[vi.name] = np.array(arr)
            continue
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            raise ValueError(f"random_feeds: input {vi.name!r} is not a tensor")
        shape = []
        for d in tt.shape.dim:
            if d.HasField("dim_value"):
                shape.append(d.dim_value)
            elif d.HasField("dim_param") and d.dim_param:
                shape.append(int(dim_values.get(d.dim_param, DEFAULT_SYMBOLIC_DIM)))
            else:
                shape.append(1)
        dt = _np_dtype(tt.elem_type)
        if dt.kind == "f":
            arr = rng.standard_normal(shape).astype(dt)
        elif dt.kind == "b":
            arr = rng.random(shape) < 0.5
        elif dt.kind == "u":
            arr = rng.integers(0, 10, shape).astype(dt)
        elif dt.kind == "i":
            arr = rng.integers(-5, 5, shape).astype(dt)
        else:
            raise ValueError(f"random_feeds: input {vi.name!r} has unsupported dtype {dt}")
        feeds[vi.name] = np.asarray(arr)
    return feeds


@dataclasses.dataclass
class Comparison:
    tolerance: Tolerance
    outputs: list[OutputVerdict]
    reason: str = ""  # a failure not tied to one output (e.g. output count)

    @property
    def ok(self) -> bool:
        return not self.reason and all(o.ok for o in self.outputs)

    @property
    def max_abs_err(self) -> float:
        return max((o.max_abs_err for o in self.outputs), default=0.0)

    @property
    def min_cosine(self) -> float:
        return min((o.cosine for o in self.outputs), default=1.0)

    def describe(self) -> str:
        t = self.tolerance
        tol = ("exact" if is_exact(t) else
               f"atol={t.atol:g} rtol={t.rtol:g}" + (f" min_cosine={t.min_cosine:g}" if t.min_cosine is not None else ""))
        lines = [f"{'ok' if self.ok else 'MISMATCH'} ({tol})"]
        if self.reason:
            lines.append("  " + self.reason)
        bad = [o for o in self.outputs if not o.ok]
        good = [o for o in self.outputs if o.ok]
        lines += ["  " + o.describe() for o in bad]
        if bad and good:
            lines.append(f"  ({len(good)} other output(s) within tolerance)")
        elif not bad:
            lines += ["  " + o.describe() for o in good]
        return "\n".join(lines)

    def __bool__(self) -> bool:
        return self.ok


def compare(ref: Sequence[np.ndarray], got: Sequence[np.ndarray], tolerance: Tolerance, *,
            names: Sequence[str] | None = None) -> Comparison:
    """Judge outputs `got` against reference outputs `ref` (same order) under `tolerance`."""
    names = list(names) if names is not None else [f"#{i}" for i in range(len(ref))]
    c = Comparison(tolerance, [])
    if len(ref) != len(got):
        c.reason = f"{len(got)} outputs, reference has {len(ref)}"
    for i, (r, g) in enumerate(zip(ref, got)):
        c.outputs.append(judge_output(i, names[i] if i < len(names) else f"#{i}", r, g, tolerance))
    return c


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+=\[\]-]+", "_", text).strip("_") or "model"


def save_regression(model: Any, seed: int, folder: str | os.PathLike, reason: str, *,
                    prefix: str = "regression", extra: Mapping[str, str] | None = None) -> Path:
    """Save `model` as `<folder>/<prefix>-<seed>.onnx`, recording why in its metadata.

    metadata_props gets `homec.regression.seed`, `homec.regression.reason` (first 2000
    characters) and `homec.regression.<key>` for each `extra` item (the differential test
    stores the pass name there). Returns the path. Existing keys of the same name are
    replaced; the rest of the model is saved unchanged.
    """
    m = onnx.ModelProto()
    m.CopyFrom(model_proto(model))
    props = {p.key: p.value for p in m.metadata_props}
    props["homec.regression.seed"] = str(seed)
    props["homec.regression.reason"] = reason[:2000]
    for k, v in (extra or {}).items():
        props[f"homec.regression.{k}"] = str(v)
    del m.metadata_props[:]
    onnx.helper.set_model_props(m, props)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{_safe(prefix)}-{int(seed)}.onnx"
    tmp = path.with_suffix(".onnx.tmp")
    tmp.write_bytes(m.SerializeToString(deterministic=True))
    os.replace(tmp, path)
    return path


def regression_info(model: Any) -> dict[str, str]:
    """The `homec.regression.*` metadata of a saved regression model (keys without prefix)."""
    m = model_proto(model)
    return {p.key.removeprefix("homec.regression."): p.value for p in m.metadata_props
            if p.key.startswith("homec.regression.")}


def finite_summary(outputs: Sequence[np.ndarray]) -> tuple[bool, float]:
    """(all float outputs finite, largest magnitude among them) -- a generator sanity check."""
    ok, big = True, 0.0
    for o in outputs:
        o = np.asarray(o)
        if o.dtype.kind == "f" and o.size:
            ok = ok and bool(np.isfinite(o).all())
            big = max(big, float(np.nanmax(np.abs(o))) if np.isfinite(o).any() else math.inf)
    return ok, big


def text_like_image(rng: np.random.Generator, shape) -> np.ndarray:
    """An [N, C, H, W] input for OCR models: dark glyph-like blocks in rows on a light page,
    normalized to [-1, 1] as PP-OCR expects. (Noise alone leaves a text detector's sigmoid
    map at ~1e-7 everywhere, where a relative comparison measures nothing.)"""
    _, _, hgt, wid = shape
    page = np.ones((hgt, wid), np.float32)
    for r in range(8, hgt - 8, 14):
        for col in range(6, wid - 6, 7):
            if rng.random() < 0.8:
                page[r:r + 8, col:col + 4] = 0.0
    page += rng.normal(0, 0.02, page.shape).astype(np.float32)
    return np.broadcast_to((page - 0.5) / 0.5, shape).astype(np.float32).copy()
