"""Activation calibration for post-training quantization: statistics, then clipping ranges.

    collect_stats(graph, names, samples)   run the model once per sample with onnxruntime,
                                           keeping running min/max, a histogram and (on request)
                                           per-channel means of every named tensor
    compute_range(stats, method, ...)      [rmin, rmax] for `numerics.choose_qparams`:
                                           minmax, percentile, entropy (KL) or mse

Memory stays bounded by one sample's requested activations plus fixed-size statistics: each
sample is run once with all requested tensors as extra outputs, folded into the statistics and
dropped. Only when one sample's requested tensors would exceed `memory_budget_mb` are the names
split into groups, one pass over the samples per group.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Literal

import numpy as np

from homec import dtypes as D
from homec.errors import HomecError, UnsupportedError, UsageError
from homec.ir import Graph
from homec.quant.numerics import QType

Method = Literal["minmax", "percentile", "entropy", "mse"]

_FLOAT_ELEMS = {D.FLOAT, D.FLOAT16, D.DOUBLE}
_CHUNK = 1 << 16  # elements binned at a time: small temporaries that stay in cache


@dataclasses.dataclass
class Histogram:
    """Counts of values over `bins` equal bins spanning [-absmax, absmax].

    `bins` is even, so 0 is an edge: bin bins//2 + k holds [k w, (k+1) w) and bin bins//2 - 1 - k
    holds [-(k+1) w, -k w) with w = 2 absmax / bins (the last bin also holds +absmax). While
    absmax is 0 every count sits in bin bins//2 (only zeros were seen).
    """

    counts: np.ndarray  # int64 [bins]
    absmax: float

    @classmethod
    def empty(cls, bins: int) -> Histogram:
        if bins < 2 or bins % 2:
            raise UsageError(f"histogram bins must be an even number >= 2 (got {bins})")
        return cls(np.zeros(bins, np.int64), 0.0)

    @property
    def bins(self) -> int:
        return int(self.counts.size)

    @property
    def width(self) -> float:
        return 2.0 * self.absmax / self.bins

    def edges(self) -> np.ndarray:
        return np.linspace(-self.absmax, self.absmax, self.bins + 1)

    def total(self) -> int:
        return int(self.counts.sum())

    def grow(self, needed: float) -> None:
        """Widen the range to cover [-needed, needed], re-binning the counts seen so far.

        The new absmax is an integer multiple f of the old one, so the new bin width is f old
        widths and, 0 being an edge of both grids, every old bin lies wholly inside one new bin:
        re-binning moves no count across a true boundary. The only error is resolution: values
        binned before the growth are known to one new (f times wider) bin, exactly what binning
        them afresh would give. The price is that absmax may overshoot the largest magnitude
        seen, but by less than the previous absmax, so it always stays below twice that value.
        """
        if needed <= self.absmax:
            return
        if self.absmax == 0.0:  # only zeros so far; they stay in bin bins//2 of any grid
            self.absmax = float(needed)
            return
        factor = math.ceil(needed / self.absmax)
        half = self.bins // 2
        # old bin index relative to 0 -> new one; a factor above bins//2 already maps every old
        # bin into the two bins around 0, so capping it keeps the integer arithmetic small
        rel = np.arange(self.bins, dtype=np.int64) - half
        target = rel // min(factor, self.bins) + half
        counts = np.zeros_like(self.counts)
        np.add.at(counts, target, self.counts)
        self.counts = counts
        self.absmax = self.absmax * factor

    def add(self, values: np.ndarray, absmax: float | None = None) -> None:
        """Count finite `values` (any shape); `absmax`, if given, must bound their magnitudes."""
        flat = np.asarray(values).reshape(-1)
        if flat.size == 0:
            return
        if absmax is None:
            absmax = float(np.max(np.abs(flat)))
        self.grow(absmax)
        half = self.bins // 2
        if self.absmax == 0.0:
            self.counts[half] += flat.size
            return
        # float32 data is binned in float32: an index error of ~1e-4 bins only moves values
        # lying within that distance of an edge, far below the histogram's resolution
        ftype = np.float64 if flat.dtype == np.float64 else np.float32
        scale, offset = ftype(half / self.absmax), ftype(half)
        chunk = min(_CHUNK, flat.size)
        pos, index = np.empty(chunk, ftype), np.empty(chunk, np.intp)
        counts = np.zeros(self.bins + 1, np.int64)
        for start in range(0, flat.size, chunk):
            part = flat[start:start + chunk]
            n = part.size
            np.multiply(part, scale, out=pos[:n])
            pos[:n] += offset
            # in [0, bins] as |values| <= absmax; the cast truncates, so a rounding to -1e-7
            # still lands in bin 0, and +absmax (index bins) is folded into the last bin below
            index[:n] = pos[:n]
            counts += np.bincount(index[:n], minlength=self.bins + 1)
        counts[-2] += counts[-1]
        self.counts += counts[:-1]

    def magnitudes(self, side: Literal["abs", "negative", "positive"]) -> np.ndarray:
        """Counts over |x| in bins [k w, (k+1) w), k < bins//2, for one side or both."""
        half = self.bins // 2
        pos, neg = self.counts[half:], self.counts[:half][::-1]
        if side == "positive":
            return pos.copy()
        if side == "negative":
            return neg.copy()
        return pos + neg

    def quantile(self, q: float) -> float:
        """The value below which a fraction q of the counts lies (linear inside a bin)."""
        return _quantile(self.counts, -self.absmax, self.width, q)


@dataclasses.dataclass
class TensorStats:
    """What calibration saw of one tensor. min/max/histogram/channel_mean cover its finite
    values only; `nonfinite` counts the NaN and infinite ones (included in `count`), which
    callers should warn about. With no finite value seen, min is +inf and max is -inf."""

    name: str
    min: float
    max: float
    count: int  # number of elements seen
    histogram: Histogram | None  # None when histograms were not requested
    channel_mean: np.ndarray | None  # mean over all axes but `channel_axis`, when requested
    nonfinite: int = 0

    @property
    def finite_count(self) -> int:
        return self.count - self.nonfinite


class _Accumulator:
    """Running statistics of one tensor, folded in sample by sample."""

    def __init__(self, name: str, bins: int | None, channel_axis: int | None):
        self.name = name
        self.min, self.max = math.inf, -math.inf
        self.count = self.nonfinite = 0
        self.histogram = Histogram.empty(bins) if bins else None
        self.channel_axis = channel_axis
        self.channel_sum: np.ndarray | None = None
        self.channel_n: np.ndarray | None = None

    def update(self, x: np.ndarray) -> None:
        self.count += x.size
        if x.size == 0:
            return
        lo, hi = x.min(), x.max()  # NaN propagates into both, so one check finds non-finites
        finite_mask = None
        finite = x
        if not (np.isfinite(lo) and np.isfinite(hi)):
            finite_mask = np.isfinite(x)
            finite = x[finite_mask]
            self.nonfinite += x.size - finite.size
            lo, hi = (finite.min(), finite.max()) if finite.size else (None, None)
        if lo is not None:
            self.min = min(self.min, float(lo))
            self.max = max(self.max, float(hi))
            if self.histogram is not None:
                self.histogram.add(finite, max(-float(lo), float(hi)))
        if self.channel_axis is not None:
            self._add_channels(x, finite_mask)

    def _add_channels(self, x: np.ndarray, finite_mask: np.ndarray | None) -> None:
        if not -x.ndim <= self.channel_axis < x.ndim:
            raise UsageError(f"channel mean of {self.name!r}: axis {self.channel_axis} is out of "
                             f"range for shape {x.shape}")
        axis = self.channel_axis % x.ndim
        others = tuple(a for a in range(x.ndim) if a != axis)
        if finite_mask is None:
            total = np.sum(x, axis=others, dtype=np.float64)
            n = np.full(x.shape[axis], x.size // max(x.shape[axis], 1), np.int64)
        else:
            total = np.sum(np.where(finite_mask, x, 0), axis=others, dtype=np.float64)
            n = np.sum(finite_mask, axis=others, dtype=np.int64)
        if self.channel_sum is None:
            self.channel_sum, self.channel_n = total, n
        elif self.channel_sum.shape != total.shape:
            raise UsageError(f"channel mean of {self.name!r}: samples disagree on the number of "
                             f"channels ({self.channel_sum.size} vs {total.size})")
        else:
            self.channel_sum += total
            self.channel_n += n

    def result(self) -> TensorStats:
        mean = None
        if self.channel_sum is not None:
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = np.where(self.channel_n > 0, self.channel_sum / self.channel_n, np.nan)
        return TensorStats(self.name, self.min, self.max, self.count, self.histogram, mean,
                           self.nonfinite)


# ---------------------------------------------------------------------------------------
# Collection
# ---------------------------------------------------------------------------------------


def collect_stats(graph: Graph, names: Sequence[str], samples: Iterable[Mapping[str, np.ndarray]], *,
                  histograms: bool = True, bins: int = 2048, channel_means: Collection[str] = (),
                  channel_axis: int = 1, memory_budget_mb: int = 1024, threads: int = 1,
                  progress: Callable[[int], None] | None = None) -> dict[str, TensorStats]:
    """Statistics of the float tensors `names` of the top-level graph over `samples`.

    Each sample (a dict input name -> array; shapes may differ between samples) is run once
    with onnxruntime (graph optimizations off) with every requested tensor as an extra output;
    graph inputs are read from the sample itself. Non-float tensors, initializers and unknown
    names are refused with a UsageError listing them (constants have no activation range;
    quantize them with `numerics.weight_qparams`).

    Memory: the requested tensors of one sample are held at once. Their size is estimated
    from the first sample (shape inference pinned to its input shapes, or, when that leaves
    some shape unknown, by running it with all outputs); if it exceeds `memory_budget_mb` the
    names are split into groups under the budget, in the given order, and the samples are
    run once per group. That is the only case with more than one pass (a one-shot iterator
    of samples is then kept in a list; inputs are far smaller than activations). A single
    tensor larger than the budget forms a group of its own. Every tensor sees the samples in
    the same order whatever the grouping, so the statistics do not depend on it.

    Options:
      histograms: keep a `bins`-bin histogram per tensor (needed by all methods but minmax).
      channel_means: names whose per-channel mean over axis `channel_axis` is wanted.
      threads: onnxruntime intra-op threads.
      progress: called after each onnxruntime run with the number of runs so far.
    """
    names = list(dict.fromkeys(names))
    not_requested = sorted(set(channel_means) - set(names))
    if not_requested:
        raise UsageError(f"channel means asked for tensors not in `names`: {', '.join(not_requested)}")
    from_feeds = _check_names(graph, names)
    accumulators = {n: _Accumulator(n, bins if histograms else None,
                                    channel_axis if n in channel_means else None) for n in names}
    computed = [n for n in names if n not in from_feeds]
    graph_inputs = [v.name for v in graph.inputs if not v.is_initializer]

    it = iter(samples)
    first = next(it, None)
    if first is None:
        return {n: a.result() for n, a in accumulators.items()}
    feeds = _feeds(first, graph_inputs)
    runs = 0

    sizes = _estimated_bytes(graph, computed, feeds)
    first_done = False
    if sizes is None:  # some shape is data dependent: measure by running the first sample
        arrays = _run(graph, computed, threads, feeds, from_feeds)
        sizes = {n: arrays[n].nbytes for n in computed}
        _fold(accumulators, arrays)
        del arrays
        first_done = True
        runs = 1
        if progress is not None:
            progress(runs)

    groups = _groups(computed, sizes, memory_budget_mb * 1024 * 1024)
    if from_feeds:  # read from the samples, they cost no output memory
        groups = [[*groups[0], *from_feeds], *groups[1:]] if groups else [list(from_feeds)]

    # every pass covers the samples not yet folded in for its names: all of them, or all but
    # the first when the measuring run already did it for every name
    rest: Iterable[Mapping[str, np.ndarray]] = it if first_done else itertools.chain([first], it)
    reiterable = iter(samples) is not samples
    if len(groups) > 1 and not reiterable:
        rest = list(rest)
    for index, group in enumerate(groups):
        if index and reiterable:  # a sequence (or CalibrationSet) is iterated afresh
            rest = itertools.islice(iter(samples), 1 if first_done else 0, None)
        group_feeds = [n for n in group if n in from_feeds]
        group_outputs = [n for n in group if n not in from_feeds]
        session = _session(graph, group_outputs, threads) if group_outputs else None
        for sample in rest:
            arrays = _fetch(session, group_outputs, _feeds(sample, graph_inputs), group_feeds)
            _fold(accumulators, arrays)
            del arrays
            runs += 1
            if progress is not None:
                progress(runs)
        del session
    return {n: a.result() for n, a in accumulators.items()}


def _check_names(graph: Graph, names: Sequence[str]) -> list[str]:
    """Refuse names that are unknown, constant or declared non-float; return graph inputs."""
    if graph.parent is not None:
        raise UsageError("calibration runs a top-level graph, not a subgraph")
    unknown, constant, not_float = [], [], []
    from_feeds = []
    for n in names:
        v = graph.value(n) if n else None
        if v is None:
            unknown.append(n)
            continue
        if v.is_initializer:
            constant.append(n)
            continue
        t = v.tensor_type()
        if v.type is not None and (t is None or t.elem_type and t.elem_type not in _FLOAT_ELEMS):
            not_float.append(f"{n} ({D.dtype_name(t.elem_type) if t else type(v.type).__name__})")
        if v.is_graph_input:
            from_feeds.append(n)
    problems = []
    if unknown:
        problems.append(f"not values of the top-level graph: {', '.join(map(repr, unknown))}")
    if constant:
        problems.append(f"constants (initializers), which have no activation range: {', '.join(constant)}")
    if not_float:
        problems.append(f"not float tensors: {', '.join(not_float)}")
    if problems:
        raise UsageError("cannot calibrate: " + "; ".join(problems))
    return from_feeds


def _feeds(sample: Mapping[str, np.ndarray], graph_inputs: Sequence[str]) -> dict[str, np.ndarray]:
    missing = [n for n in graph_inputs if n not in sample]
    if missing:
        raise UsageError(f"calibration sample lacks input(s) {', '.join(missing)}")
    return {n: np.asarray(sample[n]) for n in graph_inputs}


def _estimated_bytes(graph: Graph, names: Sequence[str], feeds: Mapping[str, np.ndarray]) -> dict[str, int] | None:
    """Bytes of each named tensor for these feeds from shape inference; None if any is unknown."""
    if not names:
        return {}
    from homec.analysis.shapes import infer_shapes

    try:
        types = infer_shapes(graph, {k: a.shape for k, a in feeds.items()})
    except HomecError:
        return None
    # inference knows more types than the graph declares: refuse non-float tensors before any
    # run (an output declared float but computed as int would not even load in onnxruntime)
    not_float = [f"{n} ({D.dtype_name(types[n].elem_type)})" for n in names
                 if n in types and types[n].elem_type and types[n].elem_type not in _FLOAT_ELEMS]
    if not_float:
        raise UsageError(f"cannot calibrate: not float tensors: {', '.join(not_float)}")
    sizes = {}
    for n in names:
        t = types.get(n)
        shape = t.static_shape() if t is not None else None
        if shape is None or not t.elem_type:
            return None
        sizes[n] = math.prod(shape) * D.itemsize_bits(t.elem_type) // 8
    return sizes


def _groups(names: Sequence[str], sizes: Mapping[str, int], budget: int) -> list[list[str]]:
    """Consecutive runs of names whose summed size stays within the budget."""
    groups: list[list[str]] = []
    used = 0
    for n in names:
        if groups and used + sizes[n] <= budget:
            groups[-1].append(n)
            used += sizes[n]
        else:
            groups.append([n])
            used = sizes[n]
    return groups


def _session(graph: Graph, names: Sequence[str], threads: int):
    from homec.onnx_io import export_with_outputs
    from homec.verify import first_line, make_session

    try:
        return make_session(export_with_outputs(graph, names), threads=threads, quiet=True)
    except Exception as e:  # onnxruntime raises its own exception types
        raise UnsupportedError(f"onnxruntime cannot load the model for calibration: {first_line(e)}") from None


def _run(graph: Graph, names: Sequence[str], threads: int, feeds: Mapping[str, np.ndarray],
         from_feeds: Collection[str]) -> dict[str, np.ndarray]:
    session = _session(graph, names, threads) if names else None
    return _fetch(session, names, feeds, from_feeds)


def _fetch(session, names: Sequence[str], feeds: Mapping[str, np.ndarray],
           from_feeds: Collection[str]) -> dict[str, np.ndarray]:
    arrays = {n: feeds[n] for n in from_feeds}
    if names:
        from homec.verify import first_line

        try:
            outs = session.run(list(names), dict(feeds))
        except Exception as e:
            raise UnsupportedError(f"onnxruntime cannot run a calibration sample: {first_line(e)}") from None
        arrays.update(zip(names, outs))
    not_float = [f"{n} ({a.dtype})" for n, a in arrays.items() if np.asarray(a).dtype.kind != "f"]
    if not_float:
        raise UsageError(f"cannot calibrate: not float tensors: {', '.join(not_float)}")
    return arrays


def _fold(accumulators: Mapping[str, _Accumulator], arrays: Mapping[str, np.ndarray]) -> None:
    for n, a in arrays.items():
        accumulators[n].update(np.asarray(a))


# ---------------------------------------------------------------------------------------
# Ranges
# ---------------------------------------------------------------------------------------


def compute_range(stats: TensorStats, method: Method, *, qtype: QType, symmetric: bool,
                  percentile: float = 99.999) -> tuple[float, float]:
    """The [rmin, rmax] to quantize `stats`' tensor with: always contains 0, never beyond the
    observed min/max (except for including 0).

    A tensor that is never negative gets [0, t] (never positive: [-t, 0]). A signed tensor
    gets one threshold t on |x| when `symmetric` ([max(-t, min), min(t, max)]); otherwise each
    tail is clipped on its own, [-t_neg, t_pos]:

      minmax      the observed min and max.
      percentile  t = the `percentile`-th percentile of |x|; asymmetric: the (100 - p)-th and
                  p-th percentiles of x. From the histogram, linear inside a bin.
      entropy     TensorRT's KL search: for each candidate threshold (a bin edge of the |x|
                  histogram), the reference distribution is the bins below it with the
                  outliers folded into the last one; the candidate is those bins merged into
                  as many levels as the type has on that side and spread back over their
                  non-empty bins; t minimizes KL(reference || candidate). Levels: all of them
                  (256 for 8 bits) for a one-sided tensor with an asymmetric type, half (128)
                  for symmetric types; for an asymmetric type on a signed tensor each tail is
                  searched separately with half the levels. As in TensorRT the search starts
                  at `levels` bins, so the lowest threshold it can pick is levels / (bins/2)
                  of the histogram's absmax (with 2048 bins and 128 levels: 1/8 of it, i.e.
                  1/8 to 1/4 of the largest |x|); outliers further out need more bins.
                  Candidates whose last kept bin is empty while outliers are folded into it
                  have infinite divergence and are skipped (no smoothing).
      mse         t minimizes the expected squared error: clipping error of the values beyond
                  the range (from bin centres) plus step^2 / 12 per value inside it, with the
                  step `choose_qparams` would use. Asymmetric on a signed tensor: the (t_neg,
                  t_pos) pair minimizing it jointly, over all pairs of bin edges.
    """
    if not stats.finite_count or not stats.min <= stats.max:
        return 0.0, 0.0
    lo, hi = min(stats.min, 0.0), max(stats.max, 0.0)
    if method == "minmax":
        return float(lo), float(hi)
    if method not in ("percentile", "entropy", "mse"):
        raise UsageError(f"unknown calibration method {method!r} (minmax, percentile, entropy, mse)")
    h = stats.histogram
    if h is None:
        raise UsageError(f"{method} calibration of {stats.name!r} needs a histogram "
                         "(collect_stats(histograms=True))")
    if not 0 < percentile <= 100:
        raise UsageError(f"percentile must be in (0, 100] (got {percentile})")
    if h.absmax == 0.0:
        return float(lo), float(hi)
    q = percentile / 100.0
    levels = qtype.qmax - qtype.qmin + 1
    one_sided = lo == 0.0 or hi == 0.0
    if one_sided or symmetric:
        limit = max(-lo, hi)
        mags = h.magnitudes("abs")
        if method == "percentile":
            t = _quantile(mags, 0.0, h.width, q)
        elif method == "entropy":
            t = _kl_threshold(mags, h.width, limit, levels if one_sided and not symmetric else levels // 2)
        else:
            steps = (qtype.qmax - qtype.qmin) / 2.0 if symmetric else float(qtype.qmax - qtype.qmin)
            t = _mse_threshold(mags, h.width, limit, steps)
        t = min(t, limit)
        return float(max(-t, lo)), float(min(t, hi))
    if method == "percentile":
        return float(min(max(h.quantile(1.0 - q), lo), 0.0)), float(max(min(h.quantile(q), hi), 0.0))
    neg, pos = h.magnitudes("negative"), h.magnitudes("positive")
    if method == "entropy":
        t_neg = _kl_threshold(neg, h.width, -lo, levels // 2)
        t_pos = _kl_threshold(pos, h.width, hi, levels // 2)
    else:
        t_neg, t_pos = _mse_pair(neg, pos, h.width, -lo, hi, float(qtype.qmax - qtype.qmin))
    return float(max(-t_neg, lo)), float(min(t_pos, hi))


def _quantile(counts: np.ndarray, start: float, width: float, q: float) -> float:
    """Quantile of a histogram with bins [start + k width, start + (k+1) width)."""
    cum = np.cumsum(counts)
    total = int(cum[-1])
    if total == 0:
        return 0.0
    target = q * total
    k = int(np.searchsorted(cum, target, side="left"))
    k = min(k, counts.size - 1)
    before = int(cum[k - 1]) if k else 0
    inside = (target - before) / counts[k] if counts[k] else 1.0
    return start + (k + min(max(inside, 0.0), 1.0)) * width


def _used_bins(counts: np.ndarray, width: float, limit: float) -> int:
    """Bins up to the one holding `limit` (the histogram may reach up to 2x beyond it)."""
    return max(1, min(counts.size, math.ceil(limit / width - 1e-9)))


def _kl_threshold(counts: np.ndarray, width: float, limit: float, levels: int) -> float:
    """The magnitude threshold minimizing KL(reference || quantized) over bin edges."""
    n = _used_bins(counts, width, limit)
    if n <= levels or counts[:n].sum() == 0:
        return limit  # no coarser quantization than the histogram itself: keep everything
    c = counts[:n].astype(np.float64)
    c[-1] += counts[n:].sum()
    best_i, best_kl = n, math.inf
    for start in range(levels, n + 1, 512):  # blocks of candidates bound the [block, levels] arrays
        kept_bins = np.arange(start, min(start + 512, n + 1))
        kl = _kl_divergences(c, levels, kept_bins)
        k = int(np.argmin(kl))
        if kl[k] < best_kl:
            best_i, best_kl = int(kept_bins[k]), float(kl[k])
    return best_i * width


def _kl_divergences(c: np.ndarray, levels: int, kept_bins: np.ndarray) -> np.ndarray:
    """KL(P_i || Q_i) for each candidate i in `kept_bins` (inf where Q_i misses mass of P_i).

    P_i: the first i bins of c with the rest folded into bin i-1, over the total T. Q_i: the
    same i bins (without the fold) merged into `levels` groups, bin j in group j*levels // i,
    each group's sum spread evenly over its non-empty bins, over their sum K_i. Per group g
    (sum S_g, Z_g non-empty bins, mean a_g = S_g / Z_g), before the fold:

        sum_j (c_j/T) log((c_j/T) / (a_g/K_i)) = (sum c_j log c_j - K_i log(T/K_i)) / T
                                                  - sum_g (S_g/T) log a_g

    and the fold only changes bin i-1's term. Prefix sums make each candidate O(levels).
    """
    total = c.sum()
    zero = np.zeros(1)
    prefix = np.concatenate([zero, np.cumsum(c)])
    prefix_nonzero = np.concatenate([zero, np.cumsum(c > 0)])
    safe = np.where(c > 0, c, 1.0)
    prefix_clog = np.concatenate([zero, np.cumsum(c * np.log(safe))])
    i = kept_bins[:, None]
    g = np.arange(levels + 1)[None, :]
    bounds = (g * i + levels - 1) // levels  # first bin of each group; the last bound is i
    sums = np.diff(prefix[bounds], axis=1)
    nonzero = np.diff(prefix_nonzero[bounds], axis=1)
    mean = sums / np.maximum(nonzero, 1)
    group_term = np.sum(sums * np.log(np.where(sums > 0, mean, 1.0)), axis=1)
    kept = prefix[kept_bins]
    u = c[kept_bins - 1]  # bin i-1 before the fold, in P's sum; after it, v
    v = u + (total - kept)
    with np.errstate(divide="ignore", invalid="ignore"):  # kept == 0 or u == 0: masked below
        kl = (prefix_clog[kept_bins] - kept * np.log(total / kept) - group_term) / total
        q_last = mean[:, -1] / kept  # bin i-1 is in the last group
        kl += (np.where(v > 0, v * np.log(v / total / q_last), 0.0)
               - np.where(u > 0, u * np.log(u / total / q_last), 0.0)) / total
    return np.where((u == 0) & (v > 0) | (kept == 0), np.inf, kl)


def _clip_errors(counts: np.ndarray, width: float, limit: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate thresholds t (inner bin edges, then `limit`), the squared clipping error of
    the values beyond each, and how many values lie within each."""
    n = _used_bins(counts, width, limit)
    c = counts[:n].astype(np.float64)
    c[-1] += counts[n:].sum()
    centres = np.minimum((np.arange(n) + 0.5) * width, limit)
    t = np.append(np.arange(1, n) * width, limit)
    # suffix sums of c, c x, c x^2 over the bins beyond each candidate
    s0 = np.cumsum(c[::-1])[::-1]
    s1 = np.cumsum((c * centres)[::-1])[::-1]
    s2 = np.cumsum((c * centres**2)[::-1])[::-1]
    beyond0, beyond1, beyond2 = (np.append(s[1:], 0.0) for s in (s0, s1, s2))
    clip = np.maximum(beyond2 - 2 * t * beyond1 + t**2 * beyond0, 0.0)
    return t, clip, s0[0] - beyond0


def _mse_threshold(counts: np.ndarray, width: float, limit: float, steps: float) -> float:
    t, clip, inside = _clip_errors(counts, width, limit)
    err = clip + inside * (t / steps) ** 2 / 12.0
    return float(t[int(np.argmin(err))])


def _mse_pair(neg: np.ndarray, pos: np.ndarray, width: float, neg_limit: float, pos_limit: float,
              steps: float) -> tuple[float, float]:
    """The (t_neg, t_pos) minimizing the error over all pairs of candidates, a block of
    negative candidates at a time (the full grid of 8192-bin histograms would take 128 MB)."""
    tn, clip_n, in_n = _clip_errors(neg, width, neg_limit)
    tp, clip_p, in_p = _clip_errors(pos, width, pos_limit)
    best = (math.inf, 0.0, 0.0)
    for start in range(0, tn.size, 256):
        block = slice(start, start + 256)
        step = (tn[block, None] + tp[None, :]) / steps
        err = clip_n[block, None] + clip_p[None, :] + (in_n[block, None] + in_p[None, :]) * step**2 / 12.0
        i, j = np.unravel_index(int(np.argmin(err)), err.shape)
        if err[i, j] < best[0]:
            best = (float(err[i, j]), float(tn[start + i]), float(tp[j]))
    return best[1], best[2]


__all__ = ["Histogram", "Method", "TensorStats", "collect_stats", "compute_range"]
