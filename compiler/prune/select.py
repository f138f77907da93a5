"""Which classes to remove: importance scores, per-group and global ratios, alignment, and what a
removal saves (MACs, parameters) computed exactly from the edits.

A *group* is the set of prunable classes owned by the same producers (`channels.group_of`).
Within a group every class has the same producers, so raw scores compare; across groups they
are normalized by the group's mean score before a global threshold is drawn.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np

from .channels import Analysis

__all__ = ["Group", "make_groups", "weight_norm_scores", "select_per_group", "select_global",
           "Footprint", "footprint"]


@dataclasses.dataclass
class Group:
    """Prunable classes sharing their producers; `width` channels per class in the producers'
    outputs (1, or `groups` for a grouped Conv whose local indices move together)."""

    key: tuple[int, ...]  # producer indices
    roots: np.ndarray  # prunable class roots, ascending
    total: int  # classes in the producers' outputs, pinned ones included
    width: int
    name: str  # first producer's node name, for reports


def make_groups(analysis: Analysis, excluded_roots: set[int] | None = None) -> list[Group]:
    """Groups of the unpinned classes, in producer order."""
    classes = analysis.classes()
    owner: dict[int, tuple[int, ...]] = {}
    for root, atoms in classes.items():
        prods = analysis.atom_producer[atoms]
        owner[root] = tuple(sorted(set(int(p) for p in prods if p >= 0)))
    by_key: dict[tuple[int, ...], list[int]] = {}
    for root in sorted(classes):
        if root in analysis.pins or not owner[root] or (excluded_roots and root in excluded_roots):
            continue
        by_key.setdefault(owner[root], []).append(root)
    groups = []
    for key, roots in sorted(by_key.items(), key=lambda kv: kv[0]):
        first = analysis.producers[key[0]]
        out_roots = analysis.parent[first.atoms]
        uniq, counts = np.unique(out_roots, return_counts=True)
        width = int(counts.max()) if counts.size else 1
        groups.append(Group(key, np.array(roots, np.int64), int(uniq.size), width,
                            analysis.node_names[first.node_index]))
    return groups


def weight_norm_scores(analysis: Analysis, weights: Mapping[int, np.ndarray], p: int) -> dict[int, float]:
    """L1 (p=1) or L2 (p=2) norm of each class's producer filters, summed over the producers.

    `weights[producer index]` is the producer's weight; its output channels lie along the
    producer's `weight_axis`."""
    scores: dict[int, float] = {}
    for idx, prod in enumerate(analysis.producers):
        w = weights.get(idx)
        if w is None:
            continue
        rows = np.moveaxis(w.astype(np.float64), prod.weight_axis, 0).reshape(w.shape[prod.weight_axis], -1)
        norms = np.abs(rows).sum(axis=1) if p == 1 else np.sqrt((rows * rows).sum(axis=1))
        for root, n in zip(analysis.parent[prod.atoms].tolist(), norms.tolist()):
            scores[root] = scores.get(root, 0.0) + n
    return scores


def _rounded_removal(group: Group, want: int, align: int, min_channels: int) -> int:
    """Classes to remove from `group` when `want` are asked: the kept channel count is rounded
    up to a multiple of `align` and at least `min_channels` (both in channels, so a grouped
    Conv's classes count `width` each); never more than the prunable classes."""
    n_prunable = int(group.roots.size)
    want = max(0, min(want, n_prunable))
    kept = (group.total - want) * group.width
    if align > 1:
        kept = int(math.ceil(kept / align) * align)
    kept = max(kept, min_channels)
    removed = group.total - int(math.ceil(kept / group.width))
    return max(0, min(removed, n_prunable))


def select_per_group(groups: Sequence[Group], scores: Mapping[int, float],
                     ratios: Mapping[tuple[int, ...], float], *, align: int = 1,
                     min_channels: int = 1) -> np.ndarray:
    """In each group, the `ratio` fraction of its prunable classes with the lowest scores
    (ties: the lower channel index goes first), after alignment."""
    out = []
    for g in groups:
        r = ratios.get(g.key, 0.0)
        if r <= 0:
            continue
        n = _rounded_removal(g, int(math.floor(r * g.total + 1e-9)), align, min_channels)
        if n:
            out.append(_lowest(g, scores, n))
    return np.sort(np.concatenate(out)) if out else np.zeros(0, np.int64)


def normalized(groups: Sequence[Group], scores: Mapping[int, float]) -> dict[int, float]:
    """Scores divided by their group's mean, so a global threshold compares groups fairly."""
    out = {}
    for g in groups:
        vals = np.array([scores.get(int(r), 0.0) for r in g.roots], np.float64)
        mean = float(vals.mean()) if vals.size else 0.0
        for r, v in zip(g.roots.tolist(), vals.tolist()):
            out[r] = v / mean if mean > 0 else 0.0
    return out


def select_global(groups: Sequence[Group], scores: Mapping[int, float], ratio: float, *,
                  align: int = 1, min_channels: int = 1) -> np.ndarray:
    """One threshold across all groups on normalized scores: the lowest `ratio` fraction of all
    channels, then each group's count is aligned and bounded as in the per-group case."""
    norm = normalized(groups, scores)
    total = sum(g.total for g in groups)
    want = int(math.floor(ratio * total + 1e-9))
    if want <= 0:
        return np.zeros(0, np.int64)
    pool = sorted((norm[int(r)], gi, int(r)) for gi, g in enumerate(groups) for r in g.roots)
    per_group = [0] * len(groups)
    for _, gi, _ in pool[:want]:
        per_group[gi] += 1
    out = []
    for g, n in zip(groups, per_group):
        n = _rounded_removal(g, n, align, min_channels) if n else 0
        if n:
            out.append(_lowest(g, scores, n))
    return np.sort(np.concatenate(out)) if out else np.zeros(0, np.int64)


def _lowest(group: Group, scores: Mapping[int, float], n: int) -> np.ndarray:
    vals = np.array([scores.get(int(r), 0.0) for r in group.roots], np.float64)
    order = np.lexsort((group.roots, vals))  # by score, then by class id: deterministic
    return group.roots[order[:n]]


@dataclasses.dataclass
class Footprint:
    macs: int
    params: int


def footprint(analysis: Analysis, const_sizes: Mapping[tuple[int, int], tuple[int, ...]],
              node_macs: Mapping[int, int], removed_roots: np.ndarray) -> Footprint:
    """MACs and parameters of the edited layers after removing `removed_roots`.

    A sliced constant keeps prod(kept fraction along each sliced axis) of its elements; a
    Conv/ConvTranspose/Gemm/MatMul's MACs scale with its weight's element count (its output
    positions do not change), so both are exact. `const_sizes[(node, slot)]` is the shape of
    each sliced constant, `node_macs[node]` the MACs of the weight-bearing nodes."""
    kept_frac: dict[tuple[int, int], float] = {}
    for e in analysis.edits:
        if e.kind != "slice":
            continue
        key = (e.node_index, e.slot)
        m = analysis.keep_mask(e.atoms, removed_roots)
        kept_frac[key] = kept_frac.get(key, 1.0) * (float(m.sum()) / max(1, m.size))
    params = 0
    for key, shape in const_sizes.items():
        params += int(round(int(np.prod(shape, dtype=np.int64)) * kept_frac.get(key, 1.0)))
    macs = 0
    for ni, mac in node_macs.items():
        macs += int(round(mac * kept_frac.get((ni, 1), 1.0)))
    return Footprint(macs, params)
