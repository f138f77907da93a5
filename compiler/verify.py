"""Numerical verification with onnxruntime: run two models on the same inputs and compare.

The reference is onnxruntime with graph optimizations disabled, so what is compared is
what the ONNX graphs say, not what onnxruntime's own rewrites make of them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from homec.dtypes import numpy_dtype_of
from homec.errors import UnsupportedError
from homec.registry import Tolerance

Feeds = dict[str, np.ndarray]


def make_session(model: onnx.ModelProto, *, optimize: bool = False, threads: int = 1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    data = model.SerializeToString()
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def run_model(model: onnx.ModelProto, feeds: Feeds, *, optimize: bool = False) -> list[np.ndarray]:
    """Outputs of `model` on `feeds`, in graph-output order."""
    try:
        sess = make_session(model, optimize=optimize)
    except Exception as e:  # onnxruntime raises its own exception types
        raise UnsupportedError(f"onnxruntime cannot load the model: {_first_line(e)}") from None
    names = [i.name for i in sess.get_inputs()]
    try:
        return sess.run(None, {k: v for k, v in feeds.items() if k in names})
    except Exception as e:
        raise UnsupportedError(f"onnxruntime cannot run the model: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0][:300] if s else type(e).__name__


def random_inputs(model: onnx.ModelProto, *, seed: int = 0,
                  dim_values: Mapping[str, int] | None = None,
                  input_shapes: Mapping[str, Sequence[int]] | None = None) -> Feeds:
    """Seeded inputs of the right dtypes and shapes; symbolic dims take `dim_values` or 1
    (batch-like names) / 32 (others)."""
    rng = np.random.default_rng(seed)
    init_names = {t.name for t in model.graph.initializer}
    feeds: Feeds = {}
    for vi in model.graph.input:
        if vi.name in init_names:
            continue
        tt = vi.type.tensor_type
        if input_shapes and vi.name in input_shapes:
            shape = [int(d) for d in input_shapes[vi.name]]
        else:
            shape = []
            for i, d in enumerate(tt.shape.dim):
                if d.HasField("dim_value") and d.dim_value > 0:
                    shape.append(d.dim_value)
                elif dim_values and d.dim_param in dim_values:
                    shape.append(int(dim_values[d.dim_param]))
                else:
                    shape.append(1 if i == 0 else 32)
        dt = numpy_dtype_of(tt.elem_type)
        if dt == np.bool_:
            arr = rng.random(shape) > 0.5
        elif np.issubdtype(dt, np.integer):
            arr = rng.integers(0, 8, size=shape).astype(dt)
        else:
            arr = rng.standard_normal(shape).astype(dt)
        feeds[vi.name] = arr
    return feeds


@dataclasses.dataclass(frozen=True)
class OutputComparison:
    name: str
    max_abs: float
    max_rel: float
    cosine: float
    shape_ok: bool


@dataclasses.dataclass(frozen=True)
class Comparison:
    outputs: tuple[OutputComparison, ...]
    ok: bool
    tolerance: Tolerance

    def worst(self) -> OutputComparison | None:
        return max(self.outputs, key=lambda o: o.max_abs, default=None)

    def describe(self) -> str:
        parts = []
        for o in self.outputs:
            if not o.shape_ok:
                parts.append(f"{o.name}: shape or dtype differs")
            else:
                parts.append(f"{o.name}: max abs {o.max_abs:.3g}, cosine {o.cosine:.6f}")
        return "; ".join(parts)

    def as_dict(self) -> dict:
        return {
            "ok": self.ok,
            "outputs": [dataclasses.asdict(o) for o in self.outputs],
            "tolerance": dataclasses.asdict(self.tolerance),
        }


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64).ravel()
    b = b.astype(np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def compare_outputs(names: Sequence[str], ref: Sequence[np.ndarray], got: Sequence[np.ndarray],
                    tolerance: Tolerance) -> Comparison:
    outs = []
    ok = len(ref) == len(got)
    for name, r, g in zip(names, ref, got):
        r, g = np.asarray(r), np.asarray(g)
        if r.shape != g.shape or r.dtype != g.dtype:
            outs.append(OutputComparison(name, math.inf, math.inf, 0.0, False))
            ok = False
            continue
        if r.dtype.kind in "fc" or r.dtype.kind in "iub":
            rf, gf = r.astype(np.float64), g.astype(np.float64)
            both_nan = np.isnan(rf) & np.isnan(gf) if r.dtype.kind in "fc" else np.zeros(r.shape, bool)
            same_inf = (rf == gf)
            diff = np.where(both_nan | same_inf, 0.0, np.abs(rf - gf))
            diff = np.nan_to_num(diff, nan=math.inf)
            max_abs = float(diff.max()) if diff.size else 0.0
            denom = np.maximum(np.abs(rf), 1e-12)
            max_rel = float(np.max(diff / denom)) if diff.size else 0.0
            finite = np.isfinite(rf) & np.isfinite(gf)
            cos = _cosine(rf[finite], gf[finite]) if finite.any() else 1.0
            # The relative part is judged against the output's scale, not element by
            # element: float refolding moves near-zero elements by a few ulps of the output.
            scale = float(np.max(np.abs(rf[np.isfinite(rf)]))) if np.isfinite(rf).any() else 0.0
            within = diff <= tolerance.atol + tolerance.rtol * scale
            out_ok = bool(np.all(within)) or (tolerance.lossy and tolerance.atol == math.inf)
            if tolerance.min_cosine is not None and cos < tolerance.min_cosine:
                out_ok = False
        else:  # strings and objects: exact
            max_abs = 0.0 if np.array_equal(r, g) else math.inf
            max_rel, cos = max_abs, 1.0 if max_abs == 0 else 0.0
            out_ok = max_abs == 0
        outs.append(OutputComparison(name, max_abs, max_rel, cos, True))
        ok = ok and out_ok
    return Comparison(tuple(outs), ok, tolerance)


def compare_models(ref_model: onnx.ModelProto, new_model: onnx.ModelProto,
                   feeds_list: Sequence[Feeds], tolerance: Tolerance) -> Comparison:
    """Run both models on every feed set; the comparison keeps the worst figures."""
    names = [o.name for o in ref_model.graph.output]
    ref_sess = make_session(ref_model)
    try:
        new_sess = make_session(new_model)
    except Exception as e:
        raise UnsupportedError(f"onnxruntime cannot load the compiled model: {_first_line(e)}") from None
    worst: list[OutputComparison] | None = None
    ok = True
    for feeds in feeds_list:
        ref_in = {i.name for i in ref_sess.get_inputs()}
        new_in = {i.name for i in new_sess.get_inputs()}
        ref = ref_sess.run(None, {k: v for k, v in feeds.items() if k in ref_in})
        got = new_sess.run(None, {k: v for k, v in feeds.items() if k in new_in})
        c = compare_outputs(names, ref, got, tolerance)
        ok = ok and c.ok
        if worst is None:
            worst = list(c.outputs)
        else:
            worst = [OutputComparison(a.name, max(a.max_abs, b.max_abs), max(a.max_rel, b.max_rel),
                                      min(a.cosine, b.cosine), a.shape_ok and b.shape_ok)
                     for a, b in zip(worst, c.outputs)]
    return Comparison(tuple(worst or ()), ok, tolerance)
