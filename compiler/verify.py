"""Numerical verification with onnxruntime: run two models on the same inputs and compare.

The reference is onnxruntime with graph optimizations disabled, so what is compared is
what the ONNX graphs say, not what onnxruntime's own rewrites make of them.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from homec.dtypes import numpy_dtype_of
from homec.errors import UnsupportedError
from homec.registry import Tolerance

Feeds = dict[str, np.ndarray]


def make_session(model: onnx.ModelProto | bytes | str | os.PathLike, *, optimize: bool = False,
                 threads: int = 1, quiet: bool = False):
    """An onnxruntime CPU session: graph optimizations off unless `optimize` (so the
    reference is onnxruntime's kernels, not its own rewrites); `quiet` silences its log."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 4 if quiet else 3
    if isinstance(model, onnx.ModelProto):
        src = model.SerializeToString()
    elif isinstance(model, (bytes, bytearray)):
        src = bytes(model)
    else:
        src = os.fspath(model)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def run_model(model: onnx.ModelProto, feeds: Feeds, *, optimize: bool = False) -> list[np.ndarray]:
    """Outputs of `model` on `feeds`, in graph-output order."""
    try:
        sess = make_session(model, optimize=optimize)
    except Exception as e:  # onnxruntime raises its own exception types
        raise UnsupportedError(f"onnxruntime cannot load the model: {first_line(e)}") from None
    names = [i.name for i in sess.get_inputs()]
    try:
        return sess.run(None, {k: v for k, v in feeds.items() if k in names})
    except Exception as e:
        raise UnsupportedError(f"onnxruntime cannot run the model: {first_line(e)}") from None


def first_line(e: BaseException) -> str:
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


@dataclasses.dataclass
class OutputVerdict:
    """The judgement of one output against its reference (see `judge_output`)."""

    index: int
    name: str
    ok: bool
    reason: str = ""
    max_abs_err: float = 0.0
    max_rel_err: float = 0.0
    cosine: float = 1.0
    ref_max_abs: float = 0.0
    bound: float = 0.0  # the allowed max abs error

    def describe(self) -> str:
        head = f"output {self.index} {self.name!r}: {'ok' if self.ok else 'FAIL'}"
        nums = (f"max_abs_err={self.max_abs_err:.3g} (allowed {self.bound:.3g}), "
                f"max_rel_err={self.max_rel_err:.3g}, cosine={self.cosine:.9f}, "
                f"max|ref|={self.ref_max_abs:.3g}")
        return f"{head}: {self.reason + '; ' if self.reason else ''}{nums}"


def is_exact(t: Tolerance) -> bool:
    return t.atol == 0 and t.rtol == 0 and not t.lossy and t.min_cosine is None


def judge_output(i: int, name: str, ref: np.ndarray, got: np.ndarray, t: Tolerance) -> OutputVerdict:
    """Compare one output with its reference under `t`.

    Shapes and dtypes must match, NaNs and infinities must sit in the same places; over the
    finite values the max abs error must stay within `atol + rtol * max|ref|` (the relative
    part is judged against the output's scale, not element by element: refolded float
    arithmetic moves near-zero elements by a few ulps of the output), and the cosine
    similarity must reach `min_cosine` when one is declared. Exact means bit-equal values.
    """
    ref = np.asarray(ref)
    got = np.asarray(got)
    oc = OutputVerdict(i, name, True)
    if ref.shape != got.shape:
        oc.ok, oc.reason = False, f"shape {got.shape} != reference {ref.shape}"
        return oc
    if ref.dtype != got.dtype:
        oc.ok, oc.reason = False, f"dtype {got.dtype} != reference {ref.dtype}"
        return oc
    if ref.size == 0:
        return oc
    if ref.dtype.kind not in "biufc":  # strings and objects: exact
        if not np.array_equal(ref, got):
            oc.ok, oc.reason, oc.max_abs_err, oc.cosine = False, "values differ", math.inf, 0.0
        return oc
    r = ref.astype(np.float64)
    g = got.astype(np.float64)
    rnan, gnan = np.isnan(r), np.isnan(g)
    if not np.array_equal(rnan, gnan):
        oc.ok, oc.reason = False, f"NaN at {int((rnan ^ gnan).sum())} places where the other has a number"
    rinf, ginf = np.isinf(r), np.isinf(g)
    if not np.array_equal(np.where(rinf, r, 0), np.where(ginf, g, 0)):
        oc.ok, oc.reason = False, "infinities differ"
    fin = ~(rnan | gnan | rinf | ginf)
    rf, gf = r[fin], g[fin]
    diff = np.abs(gf - rf)
    oc.max_abs_err = float(diff.max()) if diff.size else 0.0
    oc.ref_max_abs = float(np.abs(rf).max()) if rf.size else 0.0
    big = np.abs(rf) > 1e-6 * oc.ref_max_abs
    oc.max_rel_err = float((diff[big] / np.abs(rf[big])).max()) if big.any() else 0.0
    oc.cosine = cosine(rf, gf)
    if not oc.ok:
        return oc
    if is_exact(t):
        oc.bound = 0.0
        if oc.max_abs_err > 0:
            n = int((diff > 0).sum())
            oc.ok, oc.reason = False, f"{n} of {diff.size} values differ (exact tolerance)"
        return oc
    oc.bound = t.atol + t.rtol * oc.ref_max_abs
    if not oc.max_abs_err <= oc.bound:  # also catches an infinite atol vs nan
        n = int((diff > oc.bound).sum())
        oc.ok, oc.reason = False, f"{n} of {diff.size} values off by more than {oc.bound:.3g}"
    if t.min_cosine is not None and oc.cosine < t.min_cosine:
        oc.ok = False
        oc.reason = (oc.reason + "; " if oc.reason else "") + f"cosine {oc.cosine:.6f} < {t.min_cosine}"
    return oc


@dataclasses.dataclass(frozen=True)
class OutputComparison:
    """One output's figures in a report."""

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
    reasons: tuple[str, ...] = ()

    def worst(self) -> OutputComparison | None:
        return max(self.outputs, key=lambda o: o.max_abs, default=None)

    def describe(self) -> str:
        parts = []
        for o in self.outputs:
            if not o.shape_ok:
                parts.append(f"{o.name}: shape or dtype differs")
            else:
                parts.append(f"{o.name}: max abs {o.max_abs:.3g}, cosine {o.cosine:.6f}")
        return "; ".join(parts + list(self.reasons))

    def as_dict(self) -> dict:
        return {
            "ok": self.ok,
            "outputs": [dataclasses.asdict(o) for o in self.outputs],
            "tolerance": dataclasses.asdict(self.tolerance),
        }


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity in float64; 1 when both are zero, 0 when only one is."""
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
    """Judge every output (`judge_output`) and keep the figures a report shows."""
    ok = len(ref) == len(got)
    outs, reasons = [], []
    for i, (name, r, g) in enumerate(zip(names, ref, got)):
        v = judge_output(i, name, r, g, tolerance)
        shape_ok = not v.reason.startswith(("shape", "dtype"))
        outs.append(OutputComparison(name, v.max_abs_err if shape_ok else math.inf,
                                     v.max_rel_err if shape_ok else math.inf,
                                     v.cosine if shape_ok else 0.0, shape_ok))
        if not v.ok:
            ok = False
            if v.reason and shape_ok:
                reasons.append(f"{name}: {v.reason}")
    return Comparison(tuple(outs), ok, tolerance, tuple(reasons))


def compare_models(ref_model: onnx.ModelProto, new_model: onnx.ModelProto,
                   feeds_list: Sequence[Feeds], tolerance: Tolerance) -> Comparison:
    """Run both models on every feed set; the comparison keeps the worst figures."""
    names = [o.name for o in ref_model.graph.output]
    ref_sess = make_session(ref_model)
    try:
        new_sess = make_session(new_model)
    except Exception as e:
        raise UnsupportedError(f"onnxruntime cannot load the compiled model: {first_line(e)}") from None
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
