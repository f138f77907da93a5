"""Low-rank factorizations of a layer's weight, plain (closest in weights) or data-aware
(closest in outputs, from calibration statistics). Pure numpy, float64 throughout.

Notation. A layer is y = W x + b with W (O, F). For a Conv weight K (O, C, *k) with
T = prod(k) taps, W = K.reshape(O, C*T) and feature f = c*T + tap (tap in C order over the
kernel dims): the im2col patch features of `homec.prune.gram.conv_patches`. Statistics come
as the AUGMENTED second moment G = E[[x;1][x;1]^T] (F+1, F+1) of
`homec.prune.gram.GramAccumulator`: mean mu = G[:F, F], covariance
Sigma = G[:F, :F] - mu mu^T. Every result is a `Factors`: the factor weights in the order
they are applied, the rank(s), and `bias_delta`, to be added to the layer's bias (it goes
on the last factor).

Decompositions (r = the rank kept):

* Matrix SVD (`matrix_svd`, MatMul/Gemm). W = U S V^T; W' = A B with A = U_r S_r^1/2
  (O, r) and B = S_r^1/2 V_r^T (r, F), so x -> B x -> A (B x). The split is balanced
  (column i of A and row i of B have the same norm), which keeps both factors in the same
  numeric range. Eckart-Young: ||W - W'||_F^2 = sum of the dropped s_i^2, the least of
  any rank-r matrix. Exact when r >= rank(W), in particular at r = min(O, F).
* Channel SVD (`channel_svd`, Conv). The matrix SVD of K.reshape(O, C*T): a Conv with r
  filters of the full kernel geometry, K1 = B.reshape(r, C, *k), then a 1x1 Conv
  K2 = A.reshape(O, r, 1, ..., 1). Exact at r = min(O, C*T).
* Spatial SVD (`spatial_svd`, 2-D Conv). Rearrange K as M[(c,i), (o,j)] = K[o,c,i,j],
  (C*kh, O*kw), and factor M = U S V^T. The rank-r part is a kh x 1 Conv
  V1[r', c, i, 0] = (U_r S_r^1/2)[(c,i), r'] followed by a 1 x kw Conv
  H[o, r', 0, j] = (S_r^1/2 V_r^T)[r', (o,j)], since
      conv(x, K)[o, y, w] = sum_{c,i,j} K[o,c,i,j] x[c, y sh + i dh, w sw + j dw]
                          = sum_{r',j} H[o,r',j] t[r', y, w sw + j dw],
      t[r', y, .] = sum_{c,i} V1[r',c,i] x[c, y sh + i dh, .]   (the kh x 1 Conv)
  with the vertical geometry (pads top/bottom, stride and dilation along H) on V1 and the
  horizontal one on H. Exact at r = min(C*kh, O*kw).
* Tucker-2 (`tucker2`, Conv of any dimension). HOSVD of K along its output and input
  channel modes: U_out (O, r2) = leading left singular vectors of K.reshape(O, -1), U_in
  (C, r1) = those of the mode-1 unfolding K.transpose(1, 0, ...).reshape(C, -1), and the
  core = K x_0 U_out^T x_1 U_in^T (r2, r1, *k). Three Convs: 1x1 C -> r1 (U_in^T), the
  core with K's geometry, 1x1 r2 -> O (U_out): K' = K x_0 U_out U_out^T x_1 U_in U_in^T,
  the projection of K on both channel subspaces. Exact at r1 = C and r2 = O.

In every chain only the LAST factor may carry a bias, and the earlier ones must have
none: then a zero (padded) input stays zero through them, which is what makes the padded
composition equal to the original Conv.

Data-aware factorization. What matters is the output, so instead of ||W - W'||_F it
minimizes E ||Y - Y'||^2 over the calibration rows, with Y' = W' x + b + delta:

    E ||(W - W') x - delta||^2 = tr((W - W') Sigma (W - W')^T) + ||(W - W') mu - delta||^2

The bias shift delta = (W - W') mu zeroes the second term (the mean output is kept), and
the first is ||(W - W') Sigma^1/2||_F^2: a weighted Eckart-Young problem, solved by the
left singular vectors of W Sigma^1/2 (`matrix_svd`). Its error is the dropped part of
`spectrum(W, gram)`. Spatial SVD and Tucker-2 keep their first factor from the plain
decomposition; the rest is then a linear least-squares fit of the remaining factors on the
data, through the linear map P from the original patch features x to the features z = P x
that the later factors read (see `spatial_svd` and `tucker2`). Directions the data never
excites (a zero part of the whitened spectrum) cost nothing in the output, so any choice
there is optimal; they are then filled with the original weight's own directions, so that
full rank reproduces W even with a singular covariance.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from homec.prune.gram import covariance_from_gram
from homec.prune.refit import solve_psd

__all__ = ["Factors", "spectrum", "rank_for_energy", "matrix_svd", "channel_svd",
           "spatial_svd", "tucker2", "factored_matrix", "relative_output_error"]

# Singular values below this fraction of the largest are "not excited by the data": the
# square root of eigenvalues clipped at 0 leaves noise of ~sqrt(eps) ~ 1.5e-8 there.
_NULL = 1e-7
# A feature whose variance is below this fraction of the largest one is taken as constant.
_ZERO_VARIANCE = 1e-14
# Relative size below which what remains of a matrix after a projection is rounding noise.
_RESIDUAL = 1e-10


@dataclasses.dataclass(frozen=True)
class Factors:
    """A factorization: `weights` in application order (the first one reads the layer's
    input), float64; `bias_delta` (O,) to add to the layer's original bias (zeros for a
    plain factorization); `ranks`: (r,) for the SVDs, (rank_in, rank_out) for Tucker-2."""

    weights: tuple[np.ndarray, ...]
    bias_delta: np.ndarray
    ranks: tuple[int, ...]


# ---------------------------------------------------------------------------------------
# Checks and shared numerics
# ---------------------------------------------------------------------------------------


def _as_matrix(W: np.ndarray) -> np.ndarray:
    W = np.asarray(W, dtype=np.float64)
    if W.ndim != 2 or 0 in W.shape:
        raise ValueError(f"W must be a non-empty (O, F) matrix, got shape {W.shape}")
    return W


def _as_kernel(K: np.ndarray, *, spatial_dims: int | None = None) -> np.ndarray:
    K = np.asarray(K, dtype=np.float64)
    if K.ndim < 3 or 0 in K.shape:
        raise ValueError(f"a Conv weight (O, C, *kernel) is needed, got shape {K.shape}")
    if spatial_dims is not None and K.ndim != 2 + spatial_dims:
        raise ValueError(f"a {spatial_dims}-D Conv weight is needed, got shape {K.shape}")
    return K


def _check_rank(rank, limit: int, what: str = "rank") -> int:
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)):
        raise ValueError(f"{what} must be an integer, got {rank!r}")
    if not 1 <= rank <= limit:
        raise ValueError(f"{what} must be in [1, {limit}], got {rank}")
    return int(rank)


def _check_gram(gram: np.ndarray, features: int) -> np.ndarray:
    G = np.asarray(gram, dtype=np.float64)
    if G.shape != (features + 1, features + 1):
        raise ValueError(f"gram has shape {G.shape}, expected {(features + 1,) * 2}")
    if not np.all(np.isfinite(G)):
        raise ValueError("gram has non-finite entries")
    return G


def _centered(gram: np.ndarray, features: int, ridge: float
              ) -> tuple[np.ndarray, np.ndarray]:
    """(Sigma + ridge * mean(diag Sigma) I, mu) from the augmented gram, symmetrized."""
    if not ridge >= 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    G = _check_gram(gram, features)
    sigma = covariance_from_gram(G)
    sigma = 0.5 * (sigma + sigma.T)
    if ridge > 0:
        sigma[np.diag_indices(features)] += ridge * float(np.mean(np.diag(sigma)))
    return sigma, G[:features, features].copy()


def _whitened(W: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """A matrix with the singular values and left singular vectors of W Sigma^1/2 (O, <= F
    columns): W L for any L with L L^T = Sigma, since then L = Sigma^1/2 R with R
    orthogonal (its Gram W Sigma W^T is the same). A zero-variance feature has a zero row
    and column in Sigma (Cauchy-Schwarz) and adds nothing, so it is left out; L is then the
    Cholesky factor of the rest, or, if that is still singular, E Lambda^1/2 from
    Sigma = E Lambda E^T with negative eigenvalues clipped to 0. (Cholesky is ~10x faster
    than eigh, which matters at F in the thousands.)"""
    variance = np.diag(sigma)
    top = float(variance.max()) if variance.size else 0.0
    active = np.flatnonzero(variance > _ZERO_VARIANCE * top) if top > 0 else np.arange(0)
    if not active.size:
        return np.zeros((W.shape[0], 1))
    W, sigma = W[:, active], sigma[np.ix_(active, active)]
    try:
        return W @ np.linalg.cholesky(sigma)
    except np.linalg.LinAlgError:
        eigenvalues, eigenvectors = np.linalg.eigh(sigma)
        return (W @ eigenvectors) * np.sqrt(np.clip(eigenvalues, 0.0, None))


def _extend_basis(basis: np.ndarray, directions: np.ndarray, rank: int) -> np.ndarray:
    """An orthonormal (n, rank) basis: `basis` (n, m <= rank, orthonormal) followed by the
    leading directions of `directions` (n, k) outside span(basis), then by any orthonormal
    complement if those run out."""
    n, m = basis.shape
    if m >= rank:
        return basis[:, :rank]
    residual = directions - basis @ (basis.T @ directions)
    scale = np.linalg.norm(directions, 2) if directions.size else 0.0
    U, s, _ = np.linalg.svd(residual, full_matrices=False)
    useful = int(np.count_nonzero(s > _RESIDUAL * scale)) if scale > 0 else 0
    basis = np.column_stack([basis, U[:, :min(rank - m, useful)]])
    if basis.shape[1] < rank:
        complete, _ = np.linalg.qr(basis, mode="complete")
        basis = np.column_stack([basis, complete[:, basis.shape[1]:rank]])
    return basis


def _leading_basis(vectors: np.ndarray, strengths: np.ndarray, rank: int,
                   fallback: np.ndarray) -> np.ndarray:
    """The first `rank` columns of `vectors` (orthonormal, by decreasing `strengths` >= 0),
    except the ones of negligible strength (the data does not excite them, every choice
    there is equally good): those are replaced by the leading directions of `fallback`
    (the original weight) outside the span of the strong ones."""
    top = float(strengths.max()) if strengths.size else 0.0
    strong = int(np.count_nonzero(strengths > _NULL * top)) if top > 0 else 0
    return _extend_basis(vectors[:, :min(rank, strong)], fallback, rank)


def _leading_left_vectors(M: np.ndarray, rank: int) -> np.ndarray:
    """(rows, rank) leading left singular vectors of M; completed by an orthonormal
    complement (singular value 0) when rank > min(M.shape)."""
    U = np.linalg.svd(M, full_matrices=False)[0]
    return _extend_basis(U[:, :rank], np.zeros((M.shape[0], 0)), rank)


def _fit_through(W: np.ndarray, P: np.ndarray, sigma: np.ndarray, mean: np.ndarray,
                 ridge: float, anchor: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centered least squares of the layer's output W x through the features z = P x,
    with a ridge towards `anchor` (the plain decomposition's map, O x P.shape[0]):

        minimize E ||N z + beta - W x||^2 + lam ||N - anchor||_F^2
        ->  N = (W Sigma P^T + lam anchor) (Q + lam I)^-1,   beta = W mu - N P mu

    with Q = P Sigma P^T and lam = ridge * mean(diag Q); ridge = 0 is the exact
    least-squares optimum. Shrinking towards the anchor rather than towards 0 means that
    wherever the anchor is already exact (W = anchor P, e.g. at full rank) the ridge changes
    nothing: then W Sigma P^T = anchor Q and N = anchor. Solved in correction form,
    N = anchor + (W Sigma P^T - anchor Q)(Q + lam I)^-1. Returns (N, beta, Q)."""
    sigma_pt = sigma @ P.T
    Q = P @ sigma_pt
    Q = 0.5 * (Q + Q.T)
    system = Q.copy()
    if ridge > 0 and Q.shape[0]:
        system[np.diag_indices(Q.shape[0])] += ridge * float(np.mean(np.diag(Q)))
    N = anchor + solve_psd(system, sigma_pt.T @ W.T - Q @ anchor.T).T
    return N, W @ mean - N @ (P @ mean), Q


def _ones_kernel(spatial_dims: int) -> tuple[int, ...]:
    return (1,) * spatial_dims


# ---------------------------------------------------------------------------------------
# Spectra and ranks
# ---------------------------------------------------------------------------------------


def spectrum(W: np.ndarray, gram: np.ndarray | None = None) -> np.ndarray:
    """Singular values, descending: of W (plain), or of W Sigma^1/2 (data-aware, Sigma
    the covariance of the gram), whose dropped squares are the data-aware truncation's
    E ||Y - Y'||^2 (`matrix_svd`). The Conv weight's matrix W = K.reshape(O, -1) is the
    channel-SVD spectrum."""
    W = _as_matrix(W)
    if gram is None:
        return np.linalg.svd(W, compute_uv=False)
    sigma, _ = _centered(gram, W.shape[1], 0.0)
    values = np.linalg.svd(_whitened(W, sigma), compute_uv=False)
    # Constant features leave fewer columns; their part of the spectrum is 0.
    return np.pad(values, (0, min(W.shape) - values.size))


def rank_for_energy(s: np.ndarray, energy: float) -> int:
    """Smallest r >= 1 with sum(s[:r]^2) >= energy * sum(s^2), for singular values s in
    descending order and energy in (0, 1]. All-zero s gives 1."""
    s = np.asarray(s, dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"s must be a non-empty vector, got shape {s.shape}")
    if not np.all(np.isfinite(s)) or s.min() < 0:
        raise ValueError("singular values must be finite and >= 0")
    if not 0 < energy <= 1:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    cumulative = np.cumsum(s ** 2)
    # Compare with the cumulative sum's own total, so that energy = 1 reaches it exactly.
    target = energy * cumulative[-1]
    return max(int(np.searchsorted(cumulative, target, side="left")) + 1, 1)


# ---------------------------------------------------------------------------------------
# Decompositions
# ---------------------------------------------------------------------------------------


# From this many rows and columns on, a truncated plain SVD takes the leading singular
# vectors from the eigendecomposition of the smaller Gram matrix W Wᵀ or Wᵀ W instead of a
# full SVD (a 4096 x 25088 Gemm of VGG19: ~3 min for the SVD, seconds this way).
LARGE_SVD = 1024


def _large_truncated_svd(W: np.ndarray, rank: int) -> Factors:
    """The rank-r truncated SVD from eigh of the smaller Gram: with W Wᵀ = U S² Uᵀ the
    factors are A = U_r √S_r and B = √S_r⁻¹ U_rᵀ W (B's rows are S_r V_rᵀ/√S_r = √S_r V_rᵀ);
    A B = U_r U_rᵀ W is the projection onto the leading left singular vectors, the
    Eckart–Young optimum. Squaring only blurs singular values below ~1e-8 of the largest,
    which the truncation drops anyway (or keeps as harmless near-zero directions)."""
    out, features = W.shape
    transposed = out > features
    M = W.T if transposed else W  # (m, n) with m <= n
    values, vectors = np.linalg.eigh(M @ M.T)
    order = np.argsort(values)[::-1][:rank]
    U_r = vectors[:, order]
    s = np.sqrt(np.clip(values[order], 0.0, None))
    root = np.sqrt(s)
    inv = np.divide(1.0, root, out=np.zeros_like(root), where=root > 0)
    left, right = U_r * root, inv[:, None] * (U_r.T @ M)  # M' = left @ right
    if transposed:  # W' = M'ᵀ = rightᵀ leftᵀ: A = rightᵀ (O, r), B = leftᵀ (r, F)
        return Factors((left.T, right.T), np.zeros(out), (rank,))
    return Factors((right, left), np.zeros(out), (rank,))


def matrix_svd(W: np.ndarray, rank: int, gram: np.ndarray | None = None, *,
               ridge: float = 0.0) -> Factors:
    """W (O, F) ~ A B: weights = (B (r, F), A (O, r)), W' = A @ B.

    Plain: the truncated SVD, A = U_r S_r^1/2, B = S_r^1/2 V_r^T; bias_delta = 0.

    Data-aware (gram given): U_r = leading left singular vectors of M = W Sigma^1/2
    (Sigma the covariance plus ridge * mean(diag Sigma) on its diagonal; M is computed
    through a Cholesky factor, or eigh with clipping when Sigma is singular, see
    `_whitened`; directions of zero whitened energy are filled from W, see
    `_leading_basis`), W' = U_r U_r^T W and
    bias_delta = (W - W') mu. This is the optimum of min over rank-r W' of
    E ||(W - W')(x - mu)||^2 = ||(W - W') Sigma^1/2||_F^2 with no inverse of Sigma: for any
    rank-r W', W' Sigma^1/2 has rank <= r, so by Eckart-Young the error is at least the
    dropped part of M's spectrum, and U_r U_r^T M (= W' Sigma^1/2 for this W') attains it.
    The split A = U_r D, B = D^-1 U_r^T W with D = diag(sqrt ||row_i(U_r^T W)||) (1 for a
    zero row) makes column i of A and row i of B equal in norm.

    1 <= rank <= min(O, F); at rank = min(O, F) W' = W to rounding.
    """
    W = _as_matrix(W)
    out, features = W.shape
    rank = _check_rank(rank, min(out, features))
    if gram is None:
        if min(out, features) >= LARGE_SVD and rank < min(out, features):
            return _large_truncated_svd(W, rank)
        U, s, Vt = np.linalg.svd(W, full_matrices=False)
        root = np.sqrt(s[:rank])
        return Factors((root[:, None] * Vt[:rank], U[:, :rank] * root), np.zeros(out),
                       (rank,))
    sigma, mean = _centered(gram, features, ridge)
    U, s, _ = np.linalg.svd(_whitened(W, sigma), full_matrices=False)
    U_r = _leading_basis(U, s, rank, W)
    coefficients = U_r.T @ W  # (r, F): W' = U_r coefficients
    scale = np.sqrt(np.linalg.norm(coefficients, axis=1))
    scale[scale == 0] = 1.0
    W_new = U_r @ coefficients
    return Factors((coefficients / scale[:, None], U_r * scale), (W - W_new) @ mean,
                   (rank,))


def channel_svd(K: np.ndarray, rank: int, gram: np.ndarray | None = None, *,
                ridge: float = 0.0) -> Factors:
    """K (O, C, *k) ~ a Conv with r filters of the full kernel, then a 1x1 Conv:
    weights = (K1 (r, C, *k), K2 (O, r, 1, ..., 1)), the `matrix_svd` of K.reshape(O, -1)
    (gram over the patch features, F = C * prod(k)). K1 takes K's strides, pads and
    dilations and no bias; K2 stride 1, no pads, and the bias. 1 <= rank <= min(O, F)."""
    K = _as_kernel(K)
    out = K.shape[0]
    factors = matrix_svd(K.reshape(out, -1), rank, gram, ridge=ridge)
    B, A = factors.weights
    rank = factors.ranks[0]
    ones = _ones_kernel(K.ndim - 2)
    return Factors((B.reshape((rank,) + K.shape[1:]), A.reshape((out, rank) + ones)),
                   factors.bias_delta, factors.ranks)


def _vertical_map(V1: np.ndarray, kw: int) -> np.ndarray:
    """P (r*kw, C*kh*kw) with P[(r', j), (c, i, j')] = V1[r', c, i, 0] [j == j']: the
    horizontal Conv's patch features as a linear map of the original patch features."""
    rank = V1.shape[0]
    return np.kron(V1.reshape(rank, -1), np.eye(kw))


def spatial_svd(K: np.ndarray, rank: int, gram: np.ndarray | None = None, *,
                ridge: float = 1e-6) -> Factors:
    """K (O, C, kh, kw) ~ a kh x 1 Conv with r outputs, then a 1 x kw Conv:
    weights = (V1 (r, C, kh, 1), H (O, r, 1, kw)).

    Plain: M[(c,i), (o,j)] = K[o,c,i,j] (C*kh, O*kw) = U S V^T, V1 from U_r S_r^1/2,
    H from S_r^1/2 V_r^T. V1 takes the vertical geometry (pads [top, 0, bottom, 0],
    strides (sh, 1), dilations (dh, 1)) and no bias; H the horizontal one (pads
    [0, left, 0, right], strides (1, sw), dilations (1, dw)) and the bias. The composition
    equals conv(x, K) at rank = min(C*kh, O*kw); 1 <= rank <= that.

    Data-aware (gram over the ORIGINAL patch features x, F = C*kh*kw, f = (c*kh + i)*kw + j):
    V1 stays; H and the bias are refit by least squares. H reads, at an output position,
    the patch z (r*kw features, index r'*kw + j) of the vertical Conv's output t, and
        z[r', j] = t[r', y, w*sw + j*dw]   (t zero-padded left/right)
                 = sum_{c,i} V1[r',c,i] x[c, i, j]
    i.e. z = P x with P[(r', j), (c, i, j')] = V1[r', c, i, 0] [j == j']. For a column of
    t inside the input this is the vertical Conv itself (its rows i reach the same
    vertically padded input rows as the original patch); for a column in the horizontal
    padding, t is 0 there, and so is the original patch's column j (it lies in the same
    padding) times V1: the vertical Conv has no bias, so zero input gives zero output.
    Then with Q = P Sigma P^T, lam = ridge * mean(diag Q) and H0 the plain H as (O, r*kw):
        H_mat = (W Sigma P^T + lam H0)(Q + lam I)^-1 (O, r*kw),  bias_delta = W mu - H_mat P mu
    minimize E ||H_mat z + b + bias_delta - (W x + b)||^2 (+ lam ||H_mat - H0||^2; exactly
    the least-squares optimum for ridge = 0), and H = H_mat.reshape(O, r, 1, kw). The ridge
    shrinks towards the plain H, so full rank (where the plain H is exact) stays exact for
    any ridge.
    """
    K = _as_kernel(K, spatial_dims=2)
    out, channels, kh, kw = K.shape
    rank = _check_rank(rank, min(channels * kh, out * kw))
    M = K.transpose(1, 2, 0, 3).reshape(channels * kh, out * kw)
    U, s, Vt = np.linalg.svd(M, full_matrices=False)
    root = np.sqrt(s[:rank])
    V1 = (U[:, :rank] * root).T.reshape(rank, channels, kh, 1)
    H = (root[:, None] * Vt[:rank]).reshape(rank, out, kw).transpose(1, 0, 2)
    if gram is None:
        return Factors((V1, H.reshape(out, rank, 1, kw)), np.zeros(out), (rank,))
    W = K.reshape(out, -1)
    sigma, mean = _centered(gram, W.shape[1], 0.0)
    H_mat, bias_delta, _ = _fit_through(W, _vertical_map(V1, kw), sigma, mean, ridge,
                                        anchor=H.reshape(out, rank * kw))
    return Factors((V1, H_mat.reshape(out, rank, 1, kw)), bias_delta, (rank,))


def tucker2(K: np.ndarray, rank_in: int, rank_out: int, gram: np.ndarray | None = None, *,
            ridge: float = 1e-6) -> Factors:
    """K (O, C, *k) ~ 1x1 Conv C -> r1, Conv r1 -> r2 with the kernel, 1x1 Conv r2 -> O:
    weights = (first (r1, C, 1..1) = U_in^T, core (r2, r1, *k), last (O, r2, 1..1) = U_out);
    ranks = (rank_in, rank_out), 1 <= rank_in <= C, 1 <= rank_out <= O. The core takes K's
    geometry; the first Conv has no bias (so that the core's zero padding is the image of
    the input's), the last one the bias.

    Plain (HOSVD): U_out = leading left singular vectors of K.reshape(O, -1), U_in those of
    K.transpose(1, 0, ...).reshape(C, -1), core = K x_0 U_out^T x_1 U_in^T. Exact at
    r1 = C, r2 = O (orthonormal bases).

    Data-aware: U_in as above, so the core reads z = P x with P = U_in^T (x) I_T (feature
    s*T + t of z is sum_c U_in[c, s] x[c*T + t]). With Q = P Sigma P^T and the centered
    least-squares map M* = (W Sigma P^T + lam W P^T)(Q + lam I)^-1 (O, r1*T; the ridge
    lam = ridge * mean(diag Q) shrinks it towards the plain input projection W P^T, which
    is exact at r1 = C), U_out = the leading eigenvectors of M* Q M*^T,
    core_mat = U_out^T M*, bias_delta = W mu - U_out core_mat P mu.
    Why this is optimal given U_in (ridge = 0): the residual e = W x_c - M* z_c is
    uncorrelated with z_c (normal equations), so for any orthonormal U (O, r2) and core N
        E ||U N z_c - W x_c||^2 = E ||U N z_c - M* z_c||^2 + E ||e||^2
            = E ||U (N - U^T M*) z_c||^2 + E ||(I - U U^T) M* z_c||^2 + E ||e||^2
    (the first two terms are in span(U) and its complement). Only the first depends on N,
    and N = U^T M* zeroes it; the rest, tr((I - U U^T) M* Q M*^T) + E ||e||^2, is smallest
    for U spanning the leading eigenvectors of M* Q M*^T (Ky Fan). The bias takes the mean.
    """
    K = _as_kernel(K)
    out, channels = K.shape[:2]
    kernel = K.shape[2:]
    taps = math.prod(kernel)
    rank_in = _check_rank(rank_in, channels, "rank_in")
    rank_out = _check_rank(rank_out, out, "rank_out")
    ones = _ones_kernel(len(kernel))
    W = K.reshape(out, -1)
    U_in = _leading_left_vectors(np.moveaxis(K, 1, 0).reshape(channels, -1), rank_in)
    first = U_in.T.reshape((rank_in, channels) + ones)
    if gram is None:
        U_out = _leading_left_vectors(W, rank_out)
        core = np.einsum("oc...,or,cs->rs...", K, U_out, U_in, optimize=True)
        return Factors((first, core, U_out.reshape((out, rank_out) + ones)), np.zeros(out),
                       (rank_in, rank_out))
    sigma, mean = _centered(gram, W.shape[1], 0.0)
    P = np.kron(U_in.T, np.eye(taps))
    # The anchor W P^T is the plain input projection (W P^T P = W projected on U_in).
    M_star, _, Q = _fit_through(W, P, sigma, mean, ridge, anchor=W @ P.T)
    # Leading eigenvectors of M* Q M*^T = left singular vectors of M* Q^1/2 (no squaring).
    U, s, _ = np.linalg.svd(_whitened(M_star, Q), full_matrices=False)
    U_out = _leading_basis(U, s, rank_out, W)
    core_mat = U_out.T @ M_star
    bias_delta = W @ mean - U_out @ (core_mat @ (P @ mean))
    return Factors((first, core_mat.reshape((rank_out, rank_in) + kernel),
                    U_out.reshape((out, rank_out) + ones)), bias_delta, (rank_in, rank_out))


# ---------------------------------------------------------------------------------------
# What the factors compute, and how well
# ---------------------------------------------------------------------------------------


def factored_matrix(f: Factors, kind: str, K_shape: Sequence[int]) -> np.ndarray:
    """The (O, F) matrix the factors compute, F = prod(K_shape[1:]) (K_shape = the original
    weight's shape: (O, F) for "svd", (O, C, *k) for the Conv kinds "channel_svd",
    "spatial_svd" and "tucker2"), in the patch-feature order of W = K.reshape(O, -1)."""
    K_shape = tuple(int(d) for d in K_shape)
    if len(K_shape) < 2:
        raise ValueError(f"K_shape {K_shape} is not a weight shape")
    if kind == "svd":
        B, A = f.weights
        matrix = A @ B
    elif kind == "channel_svd":
        K1, K2 = f.weights
        matrix = K2.reshape(K2.shape[0], -1) @ K1.reshape(K1.shape[0], -1)
    elif kind == "spatial_svd":
        V1, H = f.weights
        matrix = np.einsum("rci,orj->ocij", V1[..., 0], H[:, :, 0, :], optimize=True)
    elif kind == "tucker2":
        first, core, last = f.weights
        matrix = np.einsum("or,rs...,sc->oc...", last.reshape(last.shape[:2]), core,
                           first.reshape(first.shape[:2]), optimize=True)
    else:
        raise ValueError(f"unknown factorization kind {kind!r}")
    expected = (K_shape[0], math.prod(K_shape[1:]))
    if matrix.size != math.prod(expected) or matrix.shape[0] != expected[0]:
        raise ValueError(f"factors compute {matrix.shape}, not a weight of shape {K_shape}")
    return matrix.reshape(expected)


def output_error_terms(W: np.ndarray, W_approx: np.ndarray, bias_delta: np.ndarray,
                       gram: np.ndarray) -> tuple[float, float]:
    """(E ||(W' - W) x + bias_delta||^2, E ||W x||^2) over the rows behind the augmented gram,
    as quadratic forms: D = [W' - W | bias_delta], tr(D G D^T) and tr(W G[:F, :F] W^T).
    Summed over a grouped layer's groups they give the layer's relative error."""
    W = _as_matrix(W)
    out, features = W.shape
    W_approx = np.asarray(W_approx, dtype=np.float64)
    bias_delta = np.asarray(bias_delta, dtype=np.float64).reshape(-1)
    if W_approx.shape != W.shape or bias_delta.shape != (out,):
        raise ValueError(f"W' {W_approx.shape} and bias_delta {bias_delta.shape} do not fit "
                         f"W {W.shape}")
    G = _check_gram(gram, features)
    D = np.column_stack([W_approx - W, bias_delta])
    error = max(float(np.sum((D @ G) * D)), 0.0)
    energy = max(float(np.sum((W @ G[:features, :features]) * W)), 0.0)
    return error, energy


def relative_output_error(W: np.ndarray, W_approx: np.ndarray, bias_delta: np.ndarray,
                          gram: np.ndarray) -> float:
    """sqrt(E ||(W' - W) x + bias_delta||^2 / E ||W x||^2) (`output_error_terms`). 0 when
    both vanish, inf when only the energy does."""
    error, energy = output_error_terms(W, W_approx, bias_delta, gram)
    if energy > 0:
        return math.sqrt(error / energy)
    return 0.0 if error == 0 else math.inf
