"""What removing input channels of a consumer layer costs, and the least-squares refit that
recovers most of it, computed from the Gram statistics of `gram` alone.

Notation. The consumer is y = W x + b with W (O, F) in float64 (a Conv weight reshaped to
(O, C*K), see `gram`), b (O,). z = [x; 1] is the augmented row and G = E[z z^T] (F+1, F+1)
its second moment over the calibration rows (index F = the constant). Whole channels are
removed, but everything here works on features: `keep` is a boolean mask over the F
features, K = the kept features, R = the removed ones, K1 = K followed by the constant.
[W | b] is the (O, F+1) matrix acting on z.

Any replacement that reads the kept features, y' = W' x_K + b', differs from the original
output by D z with D = [W' | b'] scattered on K1 minus [W | b], so its mean squared output
error (summed over the O outputs, averaged over rows) is the quadratic form

    E ||y' - y||^2 = tr(D G D^T)                                       (`output_error`)

and no rows are needed. The least-squares replacement (`refit`) is written as a correction
of the plain pruned weights:

    [W' | b'] = [W_K | b] + W_R G[R, K1] (G[K1, K1] + lam P)^-1

with P = diag(1 on the kept features, 0 on the constant) and lam = ridge * mean(diag(G[K, K])).
With ridge = 0 and G[K1, K1] invertible it is the exact least-squares optimum; it is
exactly [W_K | b] when the removed features are uncorrelated with the kept ones and the
constant (G[R, K1] = 0, e.g. channels that are always zero), and when nothing is removed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np


# Relative size of a Cholesky pivot below which a row of the system is taken as dependent.
_DEPENDENT = 1e3 * np.finfo(np.float64).eps
# Smallest relative ridge that bounds the condition number well enough (<~ F / ridge) for a
# direct solve without the dependence test.
_REGULARIZING = 1e-10

# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------


def _as_layer(W: np.ndarray, b: np.ndarray | None, G: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    W = np.asarray(W, dtype=np.float64)
    if W.ndim != 2:
        raise ValueError(f"W must be (O, F), got shape {W.shape}")
    out, features = W.shape
    b = np.zeros(out) if b is None else np.asarray(b, dtype=np.float64).reshape(-1)
    if b.shape != (out,):
        raise ValueError(f"bias has shape {b.shape}, expected ({out},)")
    G = np.asarray(G, dtype=np.float64)
    if G.shape != (features + 1, features + 1):
        raise ValueError(f"G has shape {G.shape}, expected {(features + 1,) * 2}")
    return W, b, G


def _split(keep: np.ndarray, features: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(kept feature indices, removed feature indices, K1 = kept + the constant's index)."""
    keep = np.asarray(keep)
    if keep.dtype != bool or keep.shape != (features,):
        raise ValueError(f"keep must be a boolean mask of {features} features, got "
                         f"{keep.dtype} {keep.shape}")
    kept = np.flatnonzero(keep)
    return kept, np.flatnonzero(~keep), np.append(kept, features)


def solve_psd(M: np.ndarray, rhs: np.ndarray, *, regularized: bool = False) -> np.ndarray:
    """M^-1 rhs for a symmetric positive semi-definite M; the minimum-norm least-squares
    solution when M is singular (e.g. ridge = 0 with duplicated or constant features),
    which still minimizes the error.

    A `regularized` M (ridge > 0 on the features) is positive definite with a bounded
    condition number, so it is solved directly. Otherwise a Cholesky factorization first
    tests for dependent rows: pivot_i^2 / M_ii is the part of variable i not explained by
    the ones before it (scale-free), and at rounding level a direct solve would return huge,
    cancelling weights instead of the minimum-norm solution."""
    try:
        if not regularized:
            pivots = np.diag(np.linalg.cholesky(M)) ** 2
            if np.min(pivots / np.diag(M)) <= M.shape[0] * _DEPENDENT:
                raise np.linalg.LinAlgError("dependent rows")
        x = np.linalg.solve(M, rhs)
        if np.all(np.isfinite(x)):
            return x
    except np.linalg.LinAlgError:
        pass
    return np.linalg.lstsq(M, rhs, rcond=None)[0]


def _add_ridge(M: np.ndarray, ridge: float) -> bool:
    """Add lam P to the system M = G[K1, K1] in place, lam = ridge * mean of the kept
    features' second moments, on the feature part of the diagonal only. True if the ridge
    is large enough to make M safely invertible (`_REGULARIZING`).

    The constant is left unpenalized: the bias is the one free parameter that absorbs the
    removed channels' mean, and shrinking it would leave a mean shift in every output; its
    diagonal entry G[F, F] = 1 also never makes the system singular (the Schur complement of
    the constant is the kept features' covariance, so lam > 0 on the features alone makes
    G[K1, K1] + lam P positive definite). Scaling lam by the features' own second moments
    makes `ridge` independent of the activations' units."""
    k = M.shape[0] - 1
    lam = ridge * float(np.mean(np.diag(M)[:k])) if k and ridge > 0 else 0.0
    if lam > 0:
        M[np.arange(k), np.arange(k)] += lam
    return lam > 0 and ridge >= _REGULARIZING


def _scatter(W_new: np.ndarray, b_new: np.ndarray, K1: np.ndarray, out: int, features: int
             ) -> np.ndarray:
    """[W_new | b_new] (O, |K1|) placed on the columns K1 of an (O, F+1) zero matrix."""
    full = np.zeros((out, features + 1))
    full[:, K1[:-1]] = W_new
    full[:, features] = b_new
    return full


def _quadratic(D: np.ndarray, G: np.ndarray) -> float:
    """tr(D G D^T), clipped at 0 (rounding can make a zero error slightly negative)."""
    return max(float(np.sum((D @ G) * D)), 0.0)


# ---------------------------------------------------------------------------------------
# Costs
# ---------------------------------------------------------------------------------------


def removal_error(W: np.ndarray, G: np.ndarray, blocks: Sequence[np.ndarray], *,
                  centered: bool) -> np.ndarray:
    """Per channel c (its feature indices blocks[c]), the mean squared output error when only
    that channel is removed and nothing is compensated:

        e_c = tr(W_c S_cc W_c^T),   W_c = W[:, blocks[c]],  S_cc = S[blocks[c], blocks[c]]

    S = E[x x^T] (centered = False: plain removal) or the covariance (centered = True: the
    bias absorbs the channel's mean, which is `mean_fold`'s error). Vectorized over the
    channels of each block size. Returns (len(blocks),) float64.
    """
    W = np.asarray(W, dtype=np.float64)
    G = np.asarray(G, dtype=np.float64)
    if W.ndim != 2 or G.shape != (W.shape[1] + 1,) * 2:
        raise ValueError(f"W {W.shape} and G {G.shape} do not match")
    errors = np.zeros(len(blocks))
    by_size: dict[int, list[int]] = defaultdict(list)
    for c, block in enumerate(blocks):
        by_size[np.size(block)].append(c)
    for size, channels in by_size.items():
        if not size:
            continue
        idx = np.stack([np.asarray(blocks[c], dtype=np.int64).reshape(-1) for c in channels])
        W_blocks = W[:, idx]  # (O, channels, size)
        S_blocks = G[idx[:, :, None], idx[:, None, :]]  # (channels, size, size)
        if centered:  # only the diagonal blocks of the covariance are needed
            mean = G[idx, -1]
            S_blocks = S_blocks - mean[:, :, None] * mean[:, None, :]
        errors[channels] = np.einsum("ock,ckl,ocl->c", W_blocks, S_blocks, W_blocks,
                                     optimize=True)
    return np.maximum(errors, 0.0)


def output_energy(W: np.ndarray, b: np.ndarray | None, G: np.ndarray) -> float:
    """E ||W x + b||^2 = tr([W | b] G [W | b]^T): the mean squared original output."""
    W, b, G = _as_layer(W, b, G)
    return _quadratic(np.column_stack([W, b]), G)


def output_error(W: np.ndarray, b: np.ndarray | None, G: np.ndarray, keep: np.ndarray,
                 W_new: np.ndarray, b_new: np.ndarray) -> float:
    """Exact E ||W_new x_K + b_new - (W x + b)||^2 over the rows behind G:

        tr(D G D^T),  D = [W_new | b_new] on the columns K1  -  [W | b]
    """
    W, b, G = _as_layer(W, b, G)
    out, features = W.shape
    _, _, K1 = _split(keep, features)
    W_new = np.asarray(W_new, dtype=np.float64)
    b_new = np.asarray(b_new, dtype=np.float64).reshape(-1)
    if W_new.shape != (out, K1.size - 1) or b_new.shape != (out,):
        raise ValueError(f"replacement {W_new.shape}, {b_new.shape} does not fit "
                         f"({out}, {K1.size - 1}) and ({out},)")
    D = _scatter(W_new, b_new, K1, out, features) - np.column_stack([W, b])
    return _quadratic(D, G)


def relative_error(W: np.ndarray, b: np.ndarray | None, G: np.ndarray, keep: np.ndarray,
                   W_new: np.ndarray, b_new: np.ndarray) -> float:
    """output_error / output_energy: the error relative to E ||W x + b||^2 (0 when both are
    0, inf when only the energy is)."""
    error = output_error(W, b, G, keep, W_new, b_new)
    energy = output_energy(W, b, G)
    if energy > 0:
        return error / energy
    return 0.0 if error == 0 else float("inf")


# ---------------------------------------------------------------------------------------
# Replacements
# ---------------------------------------------------------------------------------------


def prune_plain(W: np.ndarray, b: np.ndarray | None, keep: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """No compensation: (W_K, b)."""
    W = np.asarray(W, dtype=np.float64)
    b = np.zeros(W.shape[0]) if b is None else np.asarray(b, dtype=np.float64).reshape(-1)
    kept, _, _ = _split(keep, W.shape[1])
    return W[:, kept], b.copy()


def mean_fold(W: np.ndarray, b: np.ndarray | None, G: np.ndarray, keep: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
    """Bias-only compensation, each removed feature replaced by its mean:
    (W_K, b + W_R E[x_R]) with E[x_R] = G[R, F]."""
    W, b, G = _as_layer(W, b, G)
    kept, removed, _ = _split(keep, W.shape[1])
    return W[:, kept], b + W[:, removed] @ G[removed, -1]


def refit(W: np.ndarray, b: np.ndarray | None, G: np.ndarray, keep: np.ndarray, *,
          ridge: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares refit of the kept weights and the bias:

        minimize  E || [x_K; 1]^T theta - (W x + b) ||^2   over theta = [W' | b']^T

    solved in correction form (the normal equations G[K1,K1] theta = G[K1,:] [W | b]^T,
    with W x + b = [W_K | b] [x_K; 1] + W_R x_R):

        [W' | b'] = [W_K | b] + W_R G[R, K1] (G[K1, K1] + lam P)^-1

    The ridge lam P (see `_add_ridge`) shrinks the correction towards plain pruning, not
    the weights towards 0. Returns W' (O, |K|) (kept features in ascending order) and b' (O,).
    """
    W, b, G = _as_layer(W, b, G)
    kept, removed, K1 = _split(keep, W.shape[1])
    base = np.column_stack([W[:, kept], b])
    if removed.size:
        # (G[K1,K1] + lam P) correction^T = G[K1, R] W_R^T  (the system is symmetric).
        rhs = G[np.ix_(K1, removed)] @ W[:, removed].T
        system = G[np.ix_(K1, K1)]  # a copy: the ridge goes in place
        regularized = _add_ridge(system, ridge)
        base = base + solve_psd(system, rhs, regularized=regularized).T
    return base[:, :-1], base[:, -1].copy()


def refit_cross(W: np.ndarray, b: np.ndarray | None, A: np.ndarray, C: np.ndarray,
                keep_a: np.ndarray, *, ridge: float = 1e-6,
                anchor: tuple[np.ndarray, np.ndarray] | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Refit from a different input: the rows a (Fa features, e.g. the consumer's input in
    the pruned model, in which earlier layers are already pruned and refit) to the original
    layer's outputs on the rows b (the input of the unpruned model, F = W's features):

        minimize  E || [a_K; 1]^T theta - [W | b] [b; 1] ||^2

    with A = E[[a;1][a;1]^T] and C = E[[a;1][b;1]^T] (`gram.CrossGramAccumulator`); K are
    the features of a kept by `keep_a` (all-true when a holds the kept channels only).
    Normal equations, anchored at theta0 = `anchor` (W0 (O, |K|), b0 (O,); zeros if None):

        theta = theta0 + (A[K1,K1] + lam P)^-1 (C[K1, :] [W | b]^T - A[K1, K1] theta0)

    which is (A[K1,K1] + lam P)^-1 C[K1,:] [W | b]^T for a zero anchor, and in general the
    ridge shrinks towards the anchor (e.g. the `refit` result of a first round). Returns
    W' (O, |K|) and b' (O,).
    """
    W = np.asarray(W, dtype=np.float64)
    out, features = W.shape
    b = np.zeros(out) if b is None else np.asarray(b, dtype=np.float64).reshape(-1)
    A = np.asarray(A, dtype=np.float64)
    C = np.asarray(C, dtype=np.float64)
    if C.shape[1] != features + 1 or A.shape != (C.shape[0],) * 2 or b.shape != (out,):
        raise ValueError(f"W {W.shape}, b {b.shape}, A {A.shape}, C {C.shape} do not match")
    _, _, K1 = _split(keep_a, A.shape[0] - 1)
    A_K1K1 = A[np.ix_(K1, K1)]  # a copy: the ridge goes in place
    target = C[K1] @ np.column_stack([W, b]).T  # (|K1|, O)
    theta0 = np.zeros((K1.size, out))
    if anchor is not None:
        W0 = np.asarray(anchor[0], dtype=np.float64)
        b0 = np.asarray(anchor[1], dtype=np.float64).reshape(-1)
        if W0.shape != (out, K1.size - 1) or b0.shape != (out,):
            raise ValueError(f"anchor {W0.shape}, {b0.shape} does not fit ({out}, "
                             f"{K1.size - 1})")
        theta0 = np.column_stack([W0, b0]).T
    rhs = target - A_K1K1 @ theta0
    regularized = _add_ridge(A_K1K1, ridge)
    theta = theta0 + solve_psd(A_K1K1, rhs, regularized=regularized)
    return theta[:-1].T, theta[-1].copy()


def cross_output_error(W: np.ndarray, b: np.ndarray | None, A: np.ndarray, B: np.ndarray,
                       C: np.ndarray, keep_a: np.ndarray, W_new: np.ndarray,
                       b_new: np.ndarray) -> float:
    """Exact E || W_new a_K + b_new - (W b + b) ||^2 over the paired rows, with theta =
    [W_new | b_new]^T on K1 and V = [W | b]:

        tr(theta^T A[K1,K1] theta) - 2 tr(theta^T C[K1,:] V^T) + tr(V B V^T)
    """
    W = np.asarray(W, dtype=np.float64)
    out = W.shape[0]
    b = np.zeros(out) if b is None else np.asarray(b, dtype=np.float64).reshape(-1)
    A, B, C = (np.asarray(m, dtype=np.float64) for m in (A, B, C))
    _, _, K1 = _split(keep_a, A.shape[0] - 1)
    theta = np.column_stack([np.asarray(W_new, dtype=np.float64),
                             np.asarray(b_new, dtype=np.float64).reshape(-1)]).T
    V = np.column_stack([W, b])
    if theta.shape != (K1.size, out) or B.shape != (V.shape[1],) * 2:
        raise ValueError("replacement or statistics do not match the layer")
    error = (np.sum((A[np.ix_(K1, K1)] @ theta) * theta)
             - 2.0 * np.sum((C[K1] @ V.T) * theta) + np.sum((V @ B) * V))
    return max(float(error), 0.0)
