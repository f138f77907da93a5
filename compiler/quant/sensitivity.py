"""Per-layer sensitivity: quantize one layer at a time and measure how far the outputs move.

The float model and each single-layer variant run on the same calibration samples; a layer's
sensitivity is the mean over samples and outputs of the relative L2 error
||y_q - y|| / ||y|| of the model outputs (the cosine is reported too). Layers whose
quantization hurts most are the ones worth keeping in float (`keep_float=N`, `error_budget`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from homec.ir import Graph
from homec.quant.static import Layer, Plan, QParams, apply_plan


@dataclasses.dataclass(frozen=True)
class OutputError:
    rel_l2: float
    cosine: float


@dataclasses.dataclass(frozen=True)
class LayerSensitivity:
    key: str
    name: str
    op_type: str
    rel_l2: float
    cosine: float

    def as_dict(self) -> dict:
        return {"layer": self.name, "tensor": self.key, "op_type": self.op_type,
                "rel_l2": round(self.rel_l2, 6), "cosine": round(self.cosine, 6)}


class OutputErrorMeter:
    """Runs variants of a model on fixed samples and measures their outputs' error against
    the float model's (computed once)."""

    def __init__(self, float_model: bytes, samples: Sequence[Mapping[str, np.ndarray]], threads: int = 1):
        from homec.verify import make_session

        self.samples = list(samples)
        self.threads = threads
        sess = make_session(float_model, threads=threads, quiet=True)
        self.names = [o.name for o in sess.get_outputs()]
        self.reference = [sess.run(None, dict(s)) for s in self.samples]

    def measure(self, model: bytes) -> OutputError:
        from homec.verify import cosine, make_session

        sess = make_session(model, threads=self.threads, quiet=True)
        rels, coss = [], []
        for feed, ref in zip(self.samples, self.reference):
            got = sess.run(self.names, dict(feed))
            for r, g in zip(ref, got):
                r64, g64 = np.asarray(r, np.float64).ravel(), np.asarray(g, np.float64).ravel()
                if r64.size == 0 or not np.issubdtype(np.asarray(r).dtype, np.floating):
                    continue
                rn, dn = np.linalg.norm(r64), np.linalg.norm(g64 - r64)
                rels.append(dn / rn if rn > 0 else (0.0 if dn == 0 else float("inf")))
                coss.append(cosine(r64, g64))  # the same measure --verify judges
        if not rels:
            return OutputError(0.0, 1.0)
        return OutputError(float(np.mean(rels)), float(np.mean(coss)))


def quantized_variant(float_model: bytes, plan: Plan, params: dict[str, QParams],
                      layers: Sequence[Layer] | None) -> bytes:
    """The float model with only `layers` quantized (None: all), serialized."""
    from homec.onnx_io import load

    g: Graph = load(float_model)
    apply_plan(g, plan, params, layers=layers)
    return g.to_onnx().SerializeToString()


def layer_sensitivities(float_model: bytes, plan: Plan, params: dict[str, QParams],
                        meter: OutputErrorMeter,
                        progress: Callable[[int, int], None] | None = None) -> list[LayerSensitivity]:
    """Sensitivity of every layer of the plan, most sensitive first (ties: plan order)."""
    out = []
    for i, layer in enumerate(plan.layers):
        err = meter.measure(quantized_variant(float_model, plan, params, [layer]))
        out.append(LayerSensitivity(layer.key, layer.label, layer.node.op_type, err.rel_l2, err.cosine))
        if progress:
            progress(i + 1, len(plan.layers))
    order = sorted(range(len(out)), key=lambda i: (-out[i].rel_l2, i))
    return [out[i] for i in order]


def keep_within_budget(float_model: bytes, plan: Plan, params: dict[str, QParams],
                       ranking: Sequence[LayerSensitivity], meter: OutputErrorMeter,
                       budget: float) -> tuple[int, OutputError]:
    """The fewest most-sensitive layers to keep in float so the fully quantized model's
    output error is within `budget` (relative L2): a doubling search, then bisection.
    Returns (count, error at that count); count = len(ranking) if even that is not enough."""
    cache: dict[int, OutputError] = {}

    def error_keeping(k: int) -> OutputError:
        if k not in cache:
            kept = {s.key for s in ranking[:k]}
            layers = [la for la in plan.layers if la.key not in kept]
            cache[k] = meter.measure(quantized_variant(float_model, plan, params, layers))
        return cache[k]

    n = len(ranking)
    if error_keeping(0).rel_l2 <= budget:
        return 0, cache[0]
    lo, hi = 0, 1
    while hi < n and error_keeping(hi).rel_l2 > budget:
        lo, hi = hi, min(n, hi * 2)
    if hi >= n and error_keeping(n).rel_l2 > budget:
        return n, error_keeping(n)
    while hi - lo > 1:  # error(lo) > budget >= error(hi)
        mid = (lo + hi) // 2
        if error_keeping(mid).rel_l2 <= budget:
            hi = mid
        else:
            lo = mid
    return hi, error_keeping(hi)


def pick_threshold(thresholds: Sequence[float], pick: Callable[[float], Any],
                   saved: Callable[[Any], float], measure: Callable[[Any], float], budget: float,
                   objective: str, warn: Callable[[str], None], *, empty: Any) -> Any:
    """The greedy budget selection shared by pruning and low-rank factorization (AIMET's
    compression-ratio selection). Every layer/group has a measured error per candidate;
    `pick(tau)` takes each one's most compressing candidate with error <= tau, a monotone
    function of tau. With objective "macs"/"params": the smallest tau whose pick saves at
    least `budget` (a fraction; `saved` measures it), or the largest tau with a warning when
    none does. With "error": the largest tau whose pick's measured whole-model error
    (`measure`) stays within `budget` (`empty` when none does). Bisection over the sorted
    distinct `thresholds`."""
    lo, hi = 0, len(thresholds) - 1
    if objective in ("macs", "params"):
        most = pick(thresholds[hi])
        if saved(most) < budget:
            warn(f"budget {budget:g} of the {objective} not reachable within the candidates "
                 f"measured (at most {saved(most):.3f})")
            return most
        while lo < hi:
            mid = (lo + hi) // 2
            if saved(pick(thresholds[mid])) >= budget:
                hi = mid
            else:
                lo = mid + 1
        return pick(thresholds[lo])
    chosen = empty
    while lo <= hi:
        mid = (lo + hi) // 2
        cand = pick(thresholds[mid])
        if measure(cand) <= budget:
            chosen, lo = cand, mid + 1
        else:
            hi = mid - 1
    return chosen
