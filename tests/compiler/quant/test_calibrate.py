"""quant.calibrate: activation statistics from onnxruntime runs, and the clipping ranges
(minmax / percentile / entropy / mse) derived from them."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import pytest

from homec.errors import UsageError
from homec.ir import Dim, Graph, ModelInfo, Node, TensorType
from homec.quant import numerics as N
from homec.quant.calibrate import Histogram, TensorStats, collect_stats, compute_range
from homec.verify import make_session

F32, I64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
INT8, UINT8 = N.QTYPES["int8"], N.QTYPES["uint8"]
METHODS = ("minmax", "percentile", "entropy", "mse")
TYPES = [(INT8, True), (UINT8, False), (INT8, False), (UINT8, True)]


def tt(*dims, elem=F32) -> TensorType:
    return TensorType(elem, tuple(Dim(value=d) if isinstance(d, int) else Dim(param=d) for d in dims))


def conv_relu_matmul() -> Graph:
    """x[N,3,H,6] -> Conv(4x3x3x3, pad 1) -> c -> Relu -> r -> MatMul(6x5) -> y."""
    rng = np.random.default_rng(7)
    g = Graph("crm")
    g.model = ModelInfo(opset_imports=[("", 17)])
    x = g.add_input("x", tt("N", 3, "H", 6))
    w = g.add_initializer("w", rng.standard_normal((4, 3, 3, 3)).astype(np.float32))
    b = g.add_initializer("b", rng.standard_normal(4).astype(np.float32))
    m = g.add_initializer("m", rng.standard_normal((6, 5)).astype(np.float32))
    c = g.append(Node("Conv", [x, w, b], ["c"], name="conv", attrs={"pads": [1, 1, 1, 1]}))
    r = g.append(Node("Relu", [c.outputs[0]], ["r"], name="relu"))
    y = g.append(Node("MatMul", [r.outputs[0], m], ["y"], name="matmul"))
    g.set_outputs([y.outputs[0]])
    return g


def samples_of_different_shapes(seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": (rng.standard_normal((n, 3, h, 6)) * s).astype(np.float32)}
            for n, h, s in [(1, 5, 1.0), (2, 7, 3.0), (1, 4, 0.5), (1, 9, 6.0)]]


def by_hand(graph: Graph, names: list[str], samples) -> dict[str, list[np.ndarray]]:
    """Each named tensor on every sample, from a session on a model whose outputs we add."""
    model = graph.to_onnx()
    del model.graph.output[:]
    model.graph.output.extend(oh.make_tensor_value_info(n, F32, None) for n in names)
    sess = make_session(model)
    out: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for s in samples:
        for n, a in zip(names, sess.run(names, s)):
            out[n].append(a)
    return out


def stats_of(arrays, bins: int = 2048) -> TensorStats:
    h = Histogram.empty(bins)
    for a in arrays:
        h.add(a)
    flat = np.concatenate([np.ravel(a) for a in arrays])
    return TensorStats("t", float(flat.min()), float(flat.max()), flat.size, h, None)


def quant_mse(x: np.ndarray, rng_: tuple[float, float], qt: N.QType, symmetric: bool) -> float:
    scale, zp = N.choose_qparams(*rng_, qt, symmetric=symmetric)
    return float(np.mean((N.fake_quantize(x, scale, zp, qt).astype(np.float64) - x) ** 2))


# -- collect_stats ------------------------------------------------------------------------


def test_end_to_end_stats_equal_onnxruntime_by_hand():
    g = conv_relu_matmul()
    samples = samples_of_different_shapes()
    names = ["x", "c", "r", "y"]
    seen = []
    stats = collect_stats(g, names, samples, channel_means=["c", "x"], progress=seen.append)
    assert seen == [1, 2, 3, 4]  # one run per sample, all tensors at once
    ref = by_hand(g, ["c", "r", "y"], samples)
    ref["x"] = [s["x"] for s in samples]
    for n in names:
        flat = np.concatenate([a.ravel() for a in ref[n]])
        st = stats[n]
        assert (st.min, st.max, st.count, st.nonfinite) == (flat.min(), flat.max(), flat.size, 0)
        h = st.histogram
        assert h.counts.dtype == np.int64 and h.total() == flat.size
        assert flat.max() <= h.absmax < 2 * np.abs(flat).max()
        want, _ = np.histogram(flat, bins=h.bins, range=(-h.absmax, h.absmax))
        assert np.abs(h.counts - want).sum() <= 2  # float32 vs float64 binning at an edge
    assert stats["r"].min == 0.0 and stats["y"].channel_mean is None
    for n in ("c", "x"):
        total = sum(a.sum(axis=(0, 2, 3), dtype=np.float64) for a in ref[n])
        count = sum(a.size // a.shape[1] for a in ref[n])
        np.testing.assert_allclose(stats[n].channel_mean, total / count, rtol=1e-9)


def test_channel_mean_on_another_axis_matches_numpy():
    g = conv_relu_matmul()
    samples = samples_of_different_shapes(3)
    stats = collect_stats(g, ["y"], samples, histograms=False, channel_means=["y"], channel_axis=-1)
    ys = by_hand(g, ["y"], samples)["y"]
    want = np.concatenate([a.reshape(-1, 5) for a in ys]).astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(stats["y"].channel_mean, want, rtol=1e-9)
    assert stats["y"].histogram is None


def _same(a: TensorStats, b: TensorStats) -> None:
    assert (a.min, a.max, a.count, a.nonfinite) == (b.min, b.max, b.count, b.nonfinite)
    assert a.histogram.absmax == b.histogram.absmax
    np.testing.assert_array_equal(a.histogram.counts, b.histogram.counts)
    if a.channel_mean is not None:
        np.testing.assert_array_equal(a.channel_mean, b.channel_mean)


@pytest.mark.parametrize("one_shot", [False, True])
def test_tiny_memory_budget_splits_passes_with_identical_stats(one_shot):
    g = conv_relu_matmul()
    samples = samples_of_different_shapes()
    names = ["c", "r", "x", "y"]
    one = collect_stats(g, names, samples, channel_means=["c"])
    runs = []
    # budget 0: every computed tensor alone, one pass each (a list is iterated again, a
    # one-shot iterator is kept in a list)
    split = collect_stats(g, names, iter(samples) if one_shot else samples, channel_means=["c"],
                          memory_budget_mb=0, progress=runs.append)
    assert runs[-1] == 3 * len(samples)
    for n in names:
        _same(one[n], split[n])


def reshape_model() -> Graph:
    """x -> Reshape(x, shape) -> v -> Tanh -> y: v's shape depends on the data of `shape`."""
    g = Graph("rs")
    g.model = ModelInfo(opset_imports=[("", 17)])
    x = g.add_input("x", tt("N", 12))
    shape = g.add_input("shape", tt(2, elem=I64))
    v = g.append(Node("Reshape", [x, shape], ["v"], name="reshape"))
    y = g.append(Node("Tanh", [v.outputs[0]], ["y"], name="tanh"))
    g.set_outputs([y.outputs[0]])
    return g


@pytest.mark.parametrize("one_shot", [False, True])
def test_data_dependent_shapes_measured_by_the_first_run(one_shot):
    g = reshape_model()
    rng = np.random.default_rng(1)
    samples = [{"x": rng.standard_normal((k, 12)).astype(np.float32) * (k + 1),
                "shape": np.array([k * 3, 4], np.int64)} for k in (2, 1, 5)]
    one_runs, split_runs = [], []
    one = collect_stats(g, ["v", "y"], samples, channel_means=["v"], progress=one_runs.append)
    split = collect_stats(g, ["v", "y"], iter(samples) if one_shot else samples, channel_means=["v"],
                          memory_budget_mb=0, progress=split_runs.append)
    assert one_runs == [1, 2, 3]
    assert split_runs == [1, 2, 3, 4, 5]  # sample 0 once with everything, then a pass per tensor
    for n in ("v", "y"):
        _same(one[n], split[n])
    flat = np.concatenate([s["x"].ravel() for s in samples])
    assert (one["v"].min, one["v"].max) == (flat.min(), flat.max())
    np.testing.assert_allclose(one["v"].channel_mean,
                               np.concatenate([s["x"].reshape(-1, 4) for s in samples]).mean(0), rtol=1e-6)


def test_nan_and_inf_are_counted_and_ignored():
    g = conv_relu_matmul()
    samples = samples_of_different_shapes()
    samples[1]["x"][0, 1, 2, 3] = np.nan
    samples[2]["x"][0, 0, 0, 0] = np.inf
    samples[2]["x"][0, 2, 1, 1] = -np.inf
    st = collect_stats(g, ["x"], samples, channel_means=["x"])["x"]
    flat = np.concatenate([s["x"].ravel() for s in samples])
    finite = flat[np.isfinite(flat)]
    assert (st.count, st.nonfinite, st.finite_count) == (flat.size, 3, finite.size)
    assert (st.min, st.max) == (finite.min(), finite.max())
    assert st.histogram.total() == finite.size
    moved = np.concatenate([np.moveaxis(s["x"], 1, 0).reshape(3, -1) for s in samples], axis=1)
    moved = np.where(np.isfinite(moved), moved, np.nan).astype(np.float64)
    np.testing.assert_allclose(st.channel_mean, np.nanmean(moved, axis=1), rtol=1e-9)


def test_refuses_non_float_constant_and_unknown_names():
    g = conv_relu_matmul()
    s = g.append(Node("Shape", [g.value("x")], ["s"], name="shape"))
    g.set_outputs([g.value("y"), s.outputs[0]])  # s's type is left to inference: int64
    samples = samples_of_different_shapes()
    with pytest.raises(UsageError, match=r"not float tensors: s \(int64\)"):
        collect_stats(g, ["c", "s"], samples)
    with pytest.raises(UsageError, match=r"top-level graph: 'nope'; constants .*: w, m$"):
        collect_stats(g, ["w", "nope", "m"], samples)
    with pytest.raises(UsageError, match="not in `names`"):
        collect_stats(g, ["c"], samples, channel_means=["r"])


def test_no_samples_gives_empty_stats():
    st = collect_stats(conv_relu_matmul(), ["c"], [])["c"]
    assert (st.count, st.min, st.max, st.histogram.total()) == (0, np.inf, -np.inf, 0)
    assert compute_range(st, "mse", qtype=INT8, symmetric=True) == (0.0, 0.0)


# -- Histogram ----------------------------------------------------------------------------


def test_growth_merges_whole_bins():
    h = Histogram.empty(4)
    h.add(np.array([0.25, -0.75, 0.9, 1.0], np.float32))  # absmax 1: bins of 0.5
    np.testing.assert_array_equal(h.counts, [1, 0, 1, 2])
    h.add(np.array([2.5], np.float32))  # factor 3: bins of 1.5, each old bin inside one new one
    assert h.absmax == 3.0
    np.testing.assert_array_equal(h.counts, [0, 1, 3, 1])
    np.testing.assert_array_equal(h.edges(), [-3.0, -1.5, 0.0, 1.5, 3.0])
    with pytest.raises(UsageError):
        Histogram.empty(7)


def test_growth_from_only_zeros_keeps_them_at_zero():
    h = Histogram.empty(8)
    h.add(np.zeros(5, np.float32))
    assert (h.absmax, h.counts[4]) == (0.0, 5)
    h.add(np.array([-4.0, 3.0], np.float32))
    np.testing.assert_array_equal(h.counts, [1, 0, 0, 0, 5, 0, 0, 1])  # 3.0 in [3, 4)


def test_rebinning_keeps_total_and_distribution():
    rng = np.random.default_rng(2)
    batches = [rng.standard_normal(20000).astype(np.float32) * s for s in (0.3, 1.0, 1.1, 7.0, 40.0)]
    h = Histogram.empty(512)
    for b in batches:
        h.add(b)
    flat = np.concatenate(batches)
    assert h.total() == flat.size
    assert 40.0 < h.absmax < 2 * np.abs(flat).max()
    # binning everything afresh on the final grid gives the same histogram: old bins were
    # merged whole, so only a value rounding across an edge can differ
    fresh, _ = np.histogram(flat, bins=h.bins, range=(-h.absmax, h.absmax))
    assert np.abs(h.counts - fresh).sum() <= 4
    # and the distribution is still the mixture's: its quantiles sit within a bin
    for q in (0.01, 0.2, 0.5, 0.9, 0.999):
        assert abs(h.quantile(q) - np.quantile(flat, q)) <= h.width


# -- compute_range -------------------------------------------------------------------------


@pytest.mark.parametrize("p", [99.0, 99.9, 99.999])
def test_percentile_matches_numpy_within_a_bin(p):
    # numpy's 'inverted_cdf' is the order statistic itself; its default interpolates between
    # two of them, which in a sparse tail may lie many bins apart, where a histogram cannot go
    rng = np.random.default_rng(3)
    arrays = [rng.standard_normal(30000).astype(np.float32) * 2 + 1,
              rng.gamma(2.0, 1.5, size=(40, 500)).astype(np.float32) - 2]
    flat = np.concatenate([a.ravel() for a in arrays])
    st = stats_of(arrays)
    w = st.histogram.width
    lo, hi = compute_range(st, "percentile", qtype=INT8, symmetric=True, percentile=p)
    t = np.percentile(np.abs(flat), p, method="inverted_cdf")
    assert abs(hi - min(t, flat.max())) <= w and abs(lo + min(t, -flat.min())) <= w
    lo, hi = compute_range(st, "percentile", qtype=UINT8, symmetric=False, percentile=p)
    assert abs(lo - np.percentile(flat, 100 - p, method="inverted_cdf")) <= w
    assert abs(hi - np.percentile(flat, p, method="inverted_cdf")) <= w


def gaussian_with_outliers(n: int = 1_000_000) -> np.ndarray:
    x = np.random.default_rng(4).standard_normal(n).astype(np.float32)
    x[[10, n // 3, n - 5]] = [60.0, -80.0, 100.0]  # 12x-20x the bulk's largest values
    return x


@pytest.mark.parametrize("method", ["entropy", "mse"])
@pytest.mark.parametrize("qt,symmetric", [(INT8, True), (UINT8, False)])
def test_entropy_and_mse_clip_outliers_and_beat_minmax(method, qt, symmetric):
    x = gaussian_with_outliers()
    # the KL search starts at `levels` bins (as TensorRT's), so the bulk must span more than
    # that many bins: with 100 on a grown range < 200, 16384 bins give it ~200
    st = stats_of([x[:400000], x[400000:]], bins=16384)
    lo, hi = compute_range(st, method, qtype=qt, symmetric=symmetric)
    assert lo < 0 < hi
    assert max(-lo, hi) < 50.0  # half the largest outlier at most
    assert lo >= -80.0 and hi <= 100.0
    err = quant_mse(x, (lo, hi), qt, symmetric)
    assert err < 0.5 * quant_mse(x, compute_range(st, "minmax", qtype=qt, symmetric=symmetric), qt, symmetric)


def test_mse_threshold_is_the_best_clip_measured():
    """The mse threshold's measured error is within 10% of the best of a scan of thresholds."""
    x = gaussian_with_outliers(400_000)
    st = stats_of([x])
    lo, hi = compute_range(st, "mse", qtype=INT8, symmetric=True)
    scan = min(quant_mse(x, (-t, t), INT8, True) for t in np.linspace(2.0, 100.0, 50))
    assert quant_mse(x, (lo, hi), INT8, True) <= 1.1 * scan


def test_entropy_on_relu_output_uses_all_uint8_levels():
    rng = np.random.default_rng(5)
    x = np.maximum(rng.standard_normal(1_000_000).astype(np.float32), 0)
    x[[3, 30]] = [70.0, 90.0]
    st = stats_of([x], bins=16384)
    for method in ("entropy", "mse", "percentile"):
        lo, hi = compute_range(st, method, qtype=UINT8, symmetric=False)
        assert lo == 0.0 and 2.0 < hi < 60.0  # below both outliers
    # only mse weighs how far the clipped outliers move; KL and percentiles ignore it
    mse = compute_range(st, "mse", qtype=UINT8, symmetric=False)
    assert quant_mse(x, mse, UINT8, False) < quant_mse(x, (0.0, 90.0), UINT8, False)
    # 256 levels on one side resolve more than 128 on each of two: a lower threshold cannot win
    one_sided = compute_range(st, "entropy", qtype=UINT8, symmetric=False)[1]
    symmetric = compute_range(st, "entropy", qtype=INT8, symmetric=True)[1]
    assert one_sided >= symmetric


@pytest.mark.parametrize("method", ["entropy", "mse"])
def test_uniform_tensor_keeps_its_range(method):
    x = np.random.default_rng(6).uniform(-3.0, 5.0, 500_000).astype(np.float32)
    st = stats_of([x])
    lo, hi = compute_range(st, method, qtype=INT8, symmetric=True)
    assert hi >= 0.95 * 5.0 and lo == pytest.approx(-3.0, abs=0.01)  # clipped to the observed min


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("qt,symmetric", TYPES)
@pytest.mark.parametrize("shift", [-0.1, 0.0, 3.0, -20.0])
def test_ranges_contain_zero_and_stay_within_observed(method, qt, symmetric, shift):
    rng = np.random.default_rng(8)
    x = rng.gamma(1.5, 1.0, 20000).astype(np.float32) + np.float32(shift)
    x[:3] = [shift + 40.0, shift + 30.0, shift + 25.0]
    st = stats_of([x], bins=256)
    lo, hi = compute_range(st, method, qtype=qt, symmetric=symmetric)
    assert isinstance(lo, float) and isinstance(hi, float)
    assert lo <= 0.0 <= hi
    assert lo >= min(st.min, 0.0) and hi <= max(st.max, 0.0)
    if st.min >= 0:
        assert lo == 0.0
    if st.max <= 0:
        assert hi == 0.0


def test_methods_need_a_histogram():
    st = collect_stats(conv_relu_matmul(), ["c"], samples_of_different_shapes(), histograms=False)["c"]
    assert compute_range(st, "minmax", qtype=INT8, symmetric=True) == (min(st.min, 0.0), st.max)
    with pytest.raises(UsageError, match="needs a histogram"):
        compute_range(st, "entropy", qtype=INT8, symmetric=True)
