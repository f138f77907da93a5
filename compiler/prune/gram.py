"""Second-moment statistics of a consumer layer's input, gathered on calibration data.

A consumer is a layer y = W x + b that reads (possibly pruned) channels: a Conv with
group = 1 (1-D, 2-D or 3-D), or a Gemm / MatMul with a constant weight. All of them are
matrix products over "features":

* Conv: the im2col patch features. With K = prod(kernel_shape) taps, feature
  f = c * K + tap (tap in C order over the kernel dims), which is the column order of
  W.reshape(O, C * K). One row per (image, output position).
* Gemm / MatMul: f = the input feature along the contraction axis; one row per remaining
  index of the input.

For the rows x (F features) of the calibration set, `GramAccumulator` keeps, in float64,

    G = (1/n) sum_rows [x; 1] [x; 1]^T          shape (F+1, F+1)

The appended constant makes the bias part of the same quadratic form: G[:F, :F] = E[x x^T],
G[:F, F] = E[x] (the mean) and G[F, F] = 1. Every error of a linear replacement of the layer
is a quadratic form in G (see `refit`), so G is all that reconstruction needs.

A large conv input has far too many patch rows to materialize (a 640x640 image with 96
channels and a 9x9 kernel is ~400k rows of 7776 features); each `add_*` call therefore
keeps a seeded uniform subset of at most `max_rows_per_sample` rows, gathered without
building the other rows. The subset depends only on (seed, call index), so runs repeat.
Note that every call then weighs the same (each contributes at most that many rows),
whatever its number of images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

# ---------------------------------------------------------------------------------------
# Rows of a consumer's input
# ---------------------------------------------------------------------------------------


def _conv_geometry(x_shape: Sequence[int], kernel_shape: Sequence[int], strides, pads,
                   dilations) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...],
                                       tuple[int, ...]]:
    """Validated (strides, pads, dilations, output spatial shape) of an ONNX Conv.

    Output size per spatial dim: (S + pad_begin + pad_end - dilation (k - 1) - 1) // stride + 1.
    """
    d = len(kernel_shape)
    if d < 1 or len(x_shape) != d + 2:
        raise ValueError(f"input of rank {len(x_shape)} does not match a {d}-D kernel")
    strides = tuple(int(s) for s in (strides if strides is not None else (1,) * d))
    pads = tuple(int(p) for p in (pads if pads is not None else (0,) * (2 * d)))
    dilations = tuple(int(v) for v in (dilations if dilations is not None else (1,) * d))
    if len(strides) != d or len(dilations) != d or len(pads) != 2 * d:
        raise ValueError(f"strides {strides}, pads {pads}, dilations {dilations} do not fit "
                         f"a {d}-D kernel")
    if min(strides) < 1 or min(dilations) < 1 or min(pads) < 0 or min(kernel_shape) < 1:
        raise ValueError("strides, dilations and kernel sizes must be >= 1, pads >= 0")
    out = []
    for i, k in enumerate(kernel_shape):
        span = x_shape[2 + i] + pads[i] + pads[d + i] - dilations[i] * (k - 1) - 1
        if span < 0:
            raise ValueError(f"kernel {tuple(kernel_shape)} does not fit the padded input "
                             f"{tuple(x_shape[2:])}")
        out.append(span // strides[i] + 1)
    return strides, pads, dilations, tuple(out)


def conv_output_shape(x_shape: Sequence[int], kernel_shape: Sequence[int], *, strides=None,
                      pads=None, dilations=None) -> tuple[int, ...]:
    """Spatial shape of the Conv output (ONNX explicit pads, layout [begin..., end...])."""
    return _conv_geometry(x_shape, kernel_shape, strides, pads, dilations)[3]


def conv_patches(x: np.ndarray, kernel_shape: Sequence[int], *, strides=None, pads=None,
                 dilations=None, positions: np.ndarray | None = None) -> np.ndarray:
    """The im2col rows of an ONNX Conv (group = 1): rows (N*L, C*K), where L is the number
    of output positions and K = prod(kernel_shape).

    Row r = n * L + l holds image n at output position l (C order over the output spatial
    dims); column f = c * K + tap. So for a weight W (O, C, *kernel) and bias B

        conv_patches(x, ...) @ W.reshape(O, -1).T + B  ==  Conv(x).moveaxis(1, -1).reshape(-1, O)

    Padding is zeros; `pads` is ONNX's [begin..., end...] (resolve auto_pad before calling).
    `positions` (indices into the N*L rows) returns only those rows, in that order, gathered
    from a strided view: the other patches are never built. The dtype is x's.
    """
    x = np.asarray(x)
    kernel_shape = tuple(int(k) for k in kernel_shape)
    d = len(kernel_shape)
    strides, pads, dilations, out = _conv_geometry(x.shape, kernel_shape, strides, pads,
                                                   dilations)
    if any(pads):
        x = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[d + i]) for i in range(d)])
    spatial = tuple(range(2, 2 + d))
    reach = tuple(dilations[i] * (kernel_shape[i] - 1) + 1 for i in range(d))
    # (N, C, *window starts, *reach): a view, nothing copied yet.
    windows = sliding_window_view(x, reach, axis=spatial)
    windows = windows[(slice(None), slice(None))
                      + tuple(slice(None, None, s) for s in strides)
                      + tuple(slice(None, None, v) for v in dilations)]
    # (N, *out, C, *kernel): the row axes first, the feature axes last (still a view).
    windows = windows.transpose((0,) + tuple(range(2, 2 + d)) + (1,)
                                + tuple(range(2 + d, 2 + 2 * d)))
    n, c = x.shape[0], x.shape[1]
    features = c * math.prod(kernel_shape)
    if positions is None:
        return windows.reshape(n * math.prod(out), features)
    positions = np.asarray(positions, dtype=np.int64).reshape(-1)
    total = n * math.prod(out)
    if positions.size and (positions.min() < -total or positions.max() >= total):
        raise IndexError(f"positions out of range for {total} rows")
    index = np.unravel_index(positions % total if total else positions, (n,) + out)
    return windows[index].reshape(positions.size, features)


def feature_rows(x: np.ndarray, axis: int) -> np.ndarray:
    """Rows of a Gemm / MatMul input: `axis` (the contraction axis) moved last, the other
    axes flattened, giving (-1, x.shape[axis])."""
    x = np.asarray(x)
    return np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis])


def channel_features(channels: int, taps: int) -> list[np.ndarray]:
    """Feature indices of each input channel (c * taps ... c * taps + taps - 1): the blocks
    that `refit.removal_error` takes. taps = prod(kernel_shape) for Conv, 1 for Gemm/MatMul."""
    return list(np.arange(channels * taps, dtype=np.int64).reshape(channels, taps))


def feature_mask(channel_keep: np.ndarray, taps: int) -> np.ndarray:
    """A per-channel keep mask expanded to the features (every tap of a kept channel)."""
    return np.repeat(np.asarray(channel_keep, dtype=bool), taps)


def sample_positions(total: int, limit: int | None, seed: int, call_index: int
                     ) -> np.ndarray | None:
    """Which of `total` rows an accumulator keeps at its `call_index`-th call: None (all of
    them) when total <= limit or limit is None, else `limit` distinct indices drawn
    uniformly by np.random.default_rng((seed, call_index)), sorted (memory order)."""
    if limit is None or total <= limit:
        return None
    if limit < 1:
        raise ValueError(f"max_rows_per_sample must be >= 1, got {limit}")
    rng = np.random.default_rng((seed, call_index))
    return np.sort(rng.choice(total, size=limit, replace=False))


def _augmented(rows: np.ndarray) -> np.ndarray:
    """[rows, 1] in float64."""
    z = np.empty((rows.shape[0], rows.shape[1] + 1), dtype=np.float64)
    z[:, :-1] = rows
    z[:, -1] = 1.0
    return z


def _check_rows(rows: np.ndarray, features: int, what: str = "rows") -> np.ndarray:
    rows = np.asarray(rows)
    if rows.ndim != 2 or rows.shape[1] != features:
        raise ValueError(f"{what} have shape {rows.shape}, expected (n, {features})")
    return rows


# ---------------------------------------------------------------------------------------
# Accumulators
# ---------------------------------------------------------------------------------------


class GramAccumulator:
    """Running G = (1/n) sum [x; 1][x; 1]^T over the rows x (F features), float64.

    `add_conv` takes a Conv input (N, C, *spatial), `add_rows` ready-made rows (n, F). A call
    with more than `max_rows_per_sample` rows (None: no limit) keeps a seeded uniform subset
    of them (`sample_positions(total, max_rows_per_sample, seed, call_index)`).
    """

    def __init__(self, features: int, *, max_rows_per_sample: int | None = 4096,
                 seed: int = 0):
        self.features = int(features)
        self.max_rows_per_sample = max_rows_per_sample
        self.seed = int(seed)
        self.calls = 0
        self._sum = np.zeros((self.features + 1, self.features + 1), dtype=np.float64)
        self._rows = 0

    def add_conv(self, x: np.ndarray, kernel_shape: Sequence[int], strides=None, pads=None,
                 dilations=None) -> None:
        """Add the (sampled) patch rows of a Conv input x (N, C, *spatial)."""
        out = conv_output_shape(np.shape(x), kernel_shape, strides=strides, pads=pads,
                                dilations=dilations)
        positions = self._next_positions(np.shape(x)[0] * math.prod(out))
        self._accumulate(conv_patches(x, kernel_shape, strides=strides, pads=pads,
                                      dilations=dilations, positions=positions))

    def add_rows(self, rows: np.ndarray) -> None:
        """Add (sampled) rows (n, F)."""
        rows = _check_rows(rows, self.features)
        positions = self._next_positions(rows.shape[0])
        self._accumulate(rows if positions is None else rows[positions])

    def _next_positions(self, total: int) -> np.ndarray | None:
        positions = sample_positions(total, self.max_rows_per_sample, self.seed, self.calls)
        self.calls += 1
        return positions

    def _accumulate(self, rows: np.ndarray) -> None:
        rows = _check_rows(rows, self.features)
        z = _augmented(rows)
        self._sum += z.T @ z
        self._rows += rows.shape[0]

    @property
    def rows(self) -> int:
        """Number of rows accumulated so far (after sampling)."""
        return self._rows

    @property
    def gram(self) -> np.ndarray:
        """G (F+1, F+1): E[[x;1][x;1]^T] over the accumulated rows."""
        if not self._rows:
            raise ValueError("no rows accumulated")
        return self._sum / self._rows

    @property
    def mean(self) -> np.ndarray:
        """E[x] (F,) = G[:F, F]."""
        return self.gram[:self.features, self.features].copy()

    @property
    def covariance(self) -> np.ndarray:
        """E[(x - E x)(x - E x)^T] (F, F) = G[:F, :F] - mean mean^T."""
        return covariance_from_gram(self.gram)


def covariance_from_gram(gram: np.ndarray) -> np.ndarray:
    """Centered second moment from an augmented G: G[:F, :F] - G[:F, F] G[:F, F]^T."""
    gram = np.asarray(gram, dtype=np.float64)
    mean = gram[:-1, -1]
    return gram[:-1, :-1] - np.outer(mean, mean)


class CrossGramAccumulator:
    """Statistics of two inputs a (Fa features) and b (Fb features) read at the SAME rows
    (same images, same sampled positions):

        A = (1/n) sum [a;1][a;1]^T,  B = (1/n) sum [b;1][b;1]^T,  C = (1/n) sum [a;1][b;1]^T

    Typically a is the consumer's input in the pruned model and b the one in the original
    model, so that the consumer can be refit from what it will see (a) to what the original
    layer produced (from b): see `refit.refit_cross`. B gives the error of that fit
    (`refit.cross_output_error`).
    """

    def __init__(self, features_a: int, features_b: int, *,
                 max_rows_per_sample: int | None = 4096, seed: int = 0):
        self.features_a = int(features_a)
        self.features_b = int(features_b)
        self.max_rows_per_sample = max_rows_per_sample
        self.seed = int(seed)
        self.calls = 0
        self._aa = np.zeros((self.features_a + 1,) * 2, dtype=np.float64)
        self._bb = np.zeros((self.features_b + 1,) * 2, dtype=np.float64)
        self._ab = np.zeros((self.features_a + 1, self.features_b + 1), dtype=np.float64)
        self._rows = 0

    def add_conv_pair(self, xa: np.ndarray, xb: np.ndarray, kernel_shape: Sequence[int],
                      strides=None, pads=None, dilations=None) -> None:
        """Add the patch rows of two Conv inputs of the same batch and spatial shape (their
        channel counts may differ), at the same sampled output positions."""
        xa_shape, xb_shape = np.shape(xa), np.shape(xb)
        if xa_shape[:1] + xa_shape[2:] != xb_shape[:1] + xb_shape[2:]:
            raise ValueError(f"inputs {xa_shape} and {xb_shape} differ outside the channels")
        out = conv_output_shape(xa_shape, kernel_shape, strides=strides, pads=pads,
                                dilations=dilations)
        positions = self._next_positions(xa_shape[0] * math.prod(out))
        geometry = dict(strides=strides, pads=pads, dilations=dilations, positions=positions)
        self._accumulate(conv_patches(xa, kernel_shape, **geometry),
                         conv_patches(xb, kernel_shape, **geometry))

    def add_rows_pair(self, rows_a: np.ndarray, rows_b: np.ndarray) -> None:
        """Add rows (n, Fa) and (n, Fb) that belong together row by row."""
        rows_a = _check_rows(rows_a, self.features_a, "rows_a")
        rows_b = _check_rows(rows_b, self.features_b, "rows_b")
        if rows_a.shape[0] != rows_b.shape[0]:
            raise ValueError(f"{rows_a.shape[0]} rows of a but {rows_b.shape[0]} rows of b")
        positions = self._next_positions(rows_a.shape[0])
        if positions is not None:
            rows_a, rows_b = rows_a[positions], rows_b[positions]
        self._accumulate(rows_a, rows_b)

    def _next_positions(self, total: int) -> np.ndarray | None:
        positions = sample_positions(total, self.max_rows_per_sample, self.seed, self.calls)
        self.calls += 1
        return positions

    def _accumulate(self, rows_a: np.ndarray, rows_b: np.ndarray) -> None:
        za = _augmented(_check_rows(rows_a, self.features_a, "rows_a"))
        zb = _augmented(_check_rows(rows_b, self.features_b, "rows_b"))
        self._aa += za.T @ za
        self._bb += zb.T @ zb
        self._ab += za.T @ zb
        self._rows += za.shape[0]

    @property
    def rows(self) -> int:
        return self._rows

    def _mean_of(self, total: np.ndarray) -> np.ndarray:
        if not self._rows:
            raise ValueError("no rows accumulated")
        return total / self._rows

    @property
    def gram_a(self) -> np.ndarray:
        """A (Fa+1, Fa+1) = E[[a;1][a;1]^T]."""
        return self._mean_of(self._aa)

    @property
    def gram_b(self) -> np.ndarray:
        """B (Fb+1, Fb+1) = E[[b;1][b;1]^T]."""
        return self._mean_of(self._bb)

    @property
    def cross(self) -> np.ndarray:
        """C (Fa+1, Fb+1) = E[[a;1][b;1]^T]."""
        return self._mean_of(self._ab)


class ChannelStats:
    """Per-channel activation statistics for data-driven pruning criteria, float64:
    mean of x, mean of |x|, and the fraction of exact zeros (APoZ, "average percentage of
    zeros", after a ReLU). `axis` is the channel axis of the tensors passed to `add`."""

    def __init__(self, channels: int, axis: int = 1):
        self.channels = int(channels)
        self.axis = int(axis)
        self._sum = np.zeros(self.channels, dtype=np.float64)
        self._abs_sum = np.zeros(self.channels, dtype=np.float64)
        self._zeros = np.zeros(self.channels, dtype=np.int64)
        self._count = 0

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x)
        if x.ndim == 0 or x.shape[self.axis] != self.channels:
            raise ValueError(f"tensor {x.shape} has no {self.channels} channels on axis "
                             f"{self.axis}")
        others = tuple(i for i in range(x.ndim) if i != self.axis % x.ndim)
        # dtype=float64 sums without a float64 copy of x (numpy converts in chunks).
        self._sum += np.sum(x, axis=others, dtype=np.float64)
        self._abs_sum += np.sum(np.abs(x), axis=others, dtype=np.float64)
        self._zeros += np.count_nonzero(x == 0, axis=others)
        self._count += x.size // self.channels

    @property
    def count(self) -> int:
        """Values seen per channel."""
        return self._count

    def _per_value(self, total: np.ndarray) -> np.ndarray:
        if not self._count:
            raise ValueError("no data accumulated")
        return total / self._count

    @property
    def mean(self) -> np.ndarray:
        return self._per_value(self._sum)

    @property
    def mean_abs(self) -> np.ndarray:
        return self._per_value(self._abs_sum)

    @property
    def zero_fraction(self) -> np.ndarray:
        """Fraction of values exactly 0 (APoZ)."""
        return self._per_value(self._zeros.astype(np.float64))
