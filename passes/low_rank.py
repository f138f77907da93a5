"""Low-rank factorization: replace MatMul/Gemm/Conv layers by cheaper products of factors."""

from __future__ import annotations

import math
from typing import Annotated, Literal

import numpy as np

from homec.context import PassContext
from homec.errors import UsageError
from homec.ir import Graph
from homec.registry import Range, Stats, Tolerance, register_pass

from ._util import calibration_samples, sample_input_shapes, smallest_samples

Method = Literal["auto", "channel_svd", "spatial_svd", "tucker2"]
AUTO_FRACTIONS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75)
REPORT_LIMIT = 200
# Calibration rows per input feature below which a layer's input covariance is not trusted
# (its estimate would describe the calibration set, not the inputs): weight SVD instead.
ROWS_PER_FEATURE = 2


@register_pass("low_rank", tolerance=Tolerance.bounded(min_cosine=0.9))
def low_rank(
    graph: Graph,
    ctx: PassContext,
    *,
    rank: Annotated[int, Range(1, None)] | None = None,
    ratio: Annotated[float, Range(0.0, 1.0)] | None = None,
    energy: Annotated[float, Range(0.0, 1.0)] | None = None,
    budget: Annotated[float, Range(0.0, None)] | None = None,
    objective: Literal["macs", "params", "error"] = "macs",
    method: Method = "auto",
    align: Annotated[int, Range(1, 1024)] | None = None,
    data_aware: bool | None = None,
    samples: Annotated[int, Range(1, None)] = 32,
    sensitivity_samples: Annotated[int, Range(1, None)] = 2,
    ridge: Annotated[float, Range(0.0, None)] = 1e-6,
    force: bool = False,
) -> Stats:
    """Factorize weight matrices and convolution kernels into cheaper products.

    A layer y = W x + b with a constant W (O, F) (homec.lowrank.layers) becomes a product of
    thinner factors:

      MatMul/Gemm  W ≈ A B, A (O, r), B (r, F): two MatMuls (or Gemms; alpha, beta, transA,
                   transB and C kept; C goes on the second Gemm). Plain: the truncated SVD
                   W = U S Vᵀ, A = U_r √S_r, B = √S_r V_rᵀ. Output error on any input rows X:
                   ‖X (W - W')ᵀ‖_F ≤ ‖X‖_F σ_{r+1}.
      channel_svd  a k×k Conv with r filters, then a 1×1 Conv mixing them into the O outputs
                   (the SVD of K.reshape(O, C·k·k)).
      spatial_svd  a kh×1 Conv with r channels, then a 1×kw Conv (the SVD of the kernel
                   rearranged as M[(c,i),(o,j)] = K[o,c,i,j]); pads, strides and dilations
                   split by axis, so the product equals the Conv at full rank.
      tucker2      1×1 (C→r1), k×k core (r1→r2), 1×1 (r2→O), by HOSVD.
    Grouped convs are factorized per group (every factor keeps the group count); depthwise
    convs are skipped. Bias and geometry are kept exactly; a layer is rewritten only when the
    product is cheaper in both MACs and parameters (unless `force`).

    data_aware (needs --calib): minimize the layer's output error E‖W x - W' x‖² instead of
    ‖W - W'‖. With Σ the covariance of x over calibration data the rank-r optimum is
    W' = U_r U_rᵀ W, U_r the top left singular vectors of W Σ^½ (channel_svd and MatMul/Gemm);
    spatial_svd and tucker2 re-fit their last factor (core) by least squares. The mean output
    is kept exact: b' = b + (W - W') E[x].

    Options (exactly one of rank, ratio, energy, budget):
      rank        keep this rank (per group; tucker2: both ranks), at most the full rank.
      ratio       keep ceil(ratio × full rank); 1 reproduces the layer.
      energy      the smallest rank keeping this fraction of Σσ² (of W, or of W Σ^½ when
                  data-aware; tucker2: of each mode's unfolding).
      budget, objective  remove at least `budget` (a fraction) of the model's MACs ("macs")
                  or weight parameters ("params"), or the most MACs whose output error
                  (relative L2 on the sensitivity samples) stays within `budget` ("error").
                  Every layer is factorized alone at 1/8…3/4 of its full rank (with every
                  method when method="auto") and the model's output error measured with
                  onnxruntime; each layer then takes its cheapest candidate within a common
                  error threshold, the smallest threshold meeting the budget wins.
      method      for Conv: auto (fixed ranks: spatial_svd for 2-D kernels wider than 1 in
                  both dims, else channel_svd; with a budget: all of them), channel_svd,
                  spatial_svd or tucker2. MatMul/Gemm always use the SVD.
      align       round ranks up to a multiple (default: the target's channel alignment, else 1).
      data_aware  default: on when calibration data is given. A layer whose input gives fewer
                  than 2 calibration rows per feature (an SE block's 1x1 convs see one row per
                  image) is factorized from its weights.
      samples     calibration samples used (the first ones); the smallest
                  sensitivity_samples of them run the budget search.
      ridge       relative ridge of the data-aware covariance (× mean of its diagonal).
      force       factorize even when the product is not cheaper (for analysis and tests).

    Statistics: layers_factorized, by method (svd, channel_svd, spatial_svd, tucker2),
    data_aware_layers, macs_before/after and params_before/after of the model (params_after
    counts the bias constants a data-aware rewrite adds), skipped_not_cheaper, skipped_layers
    (unsupported), candidates_measured (budget search). Details: "layers" (node,
    method, ranks, full ranks, MACs/params before and after, estimated relative error),
    "skipped", and with a budget "sensitivity" and "auto". Tolerance: lossy, exact at full rank.
    """
    from homec.lowrank import layers as L
    from homec.prune.channels import InferredTypes

    given = [n for n, v in (("rank", rank), ("ratio", ratio), ("energy", energy), ("budget", budget))
             if v is not None]
    if len(given) != 1:
        raise UsageError("low_rank needs exactly one of rank, ratio, energy, budget"
                         + (f" (got {', '.join(given)})" if given else ""))
    if energy is not None and energy <= 0 or ratio is not None and ratio <= 0:
        raise UsageError("low_rank: ratio and energy must be > 0")
    samples_list = calibration_samples(ctx, samples)
    if data_aware is None:
        data_aware = bool(samples_list)
    elif data_aware and not samples_list:
        raise UsageError("low_rank(data_aware=true) needs calibration data: pass --calib FILE.npz|FOLDER")
    if budget is not None and not samples_list:
        raise UsageError("low_rank(budget=...) needs calibration data to measure the error: pass "
                         "--calib FILE.npz|FOLDER")
    if align is None:
        align = int(getattr(ctx.target, "channel_alignment", 1) or 1) if ctx.target is not None else 1

    types = InferredTypes(graph, sample_input_shapes(graph, samples_list))
    layers, skipped = L.find_layers(graph, types, ctx.selected)
    st: Stats = {}
    macs_total, params_total = _model_totals(graph, types)
    grams = {}
    if data_aware and layers:
        from homec.lowrank.stats import collect

        grams = collect(graph, layers, samples_list, seed=ctx.seed, max_rows_per_sample=2048)
    factorizer = Factorizer(grams if data_aware else {}, ridge)

    not_cheaper = 0
    if budget is not None:
        plans = _auto(graph, layers, factorizer, method, align, force, budget, objective,
                      macs_total, params_total, smallest_samples(samples_list, sensitivity_samples), ctx, st)
    else:
        plans = {}
        for layer in layers:
            m = _fixed_method(layer, method)
            if m is None:
                skipped.append({"node": layer.name, "op": layer.node.op_type,
                                "reason": f"{method} does not apply to a {_shape_text(layer)} layer"})
                continue
            ranks = _fixed_ranks(layer, m, rank, ratio, energy, factorizer)
            plan = L.Plan(m, _aligned(ranks, L.full_ranks(layer, m), align))
            if not force and not L.cheaper(layer, plan):
                not_cheaper += 1
                continue
            plans[layer.index] = plan

    per_layer = []
    saved_macs = saved_params = 0
    counts: dict[str, int] = {}
    for layer in layers:
        plan = plans.get(layer.index)
        if plan is None:
            continue
        result = factorizer.factorize(layer, plan)
        grown = L.new_bias_elements(layer) if result.bias_delta is not None else 0
        L.emit(graph, layer, plan, result.weights, result.bias_delta)
        cost = L.costs(layer, plan)
        counts[plan.method] = counts.get(plan.method, 0) + 1
        lm = layer.macs()
        if lm is not None and cost.macs is not None:
            saved_macs += lm - cost.macs
        saved_params += layer.params() - cost.params - grown
        per_layer.append({"node": layer.name, "op": layer.node.op_type, "method": plan.method,
                          "ranks": list(plan.ranks), "full_ranks": list(L.full_ranks(layer, plan.method)),
                          "macs_before": lm, "macs_after": cost.macs,
                          "params_before": layer.params(), "params_after": cost.params + grown,
                          "data_aware": result.data_aware,
                          result.error_kind: round(result.error, 6)})
    if per_layer:
        st["layers_factorized"] = len(per_layer)
        for m, n in sorted(counts.items()):
            st[m] = n
        st["data_aware_layers"] = sum(1 for p in per_layer if p["data_aware"])
        st["macs_before"] = macs_total
        st["macs_after"] = macs_total - saved_macs if macs_total else 0
        st["params_before"] = params_total
        st["params_after"] = _model_totals(graph, None)[1]
        ctx.report("layers", per_layer[:REPORT_LIMIT])
    if not_cheaper:
        st["skipped_not_cheaper"] = not_cheaper
    if skipped:
        st["skipped_layers"] = len(skipped)
        ctx.report("skipped", skipped[:REPORT_LIMIT])
    return st


# ---------------------------------------------------------------------------------------


class Factorized:
    """A layer's factors per group, its bias correction and the estimated error."""

    def __init__(self, weights, bias_delta, error, error_kind, data_aware):
        self.weights = weights
        self.bias_delta = bias_delta
        self.error = error
        self.error_kind = error_kind  # "output_error" (relative, from calibration) or "weight_error"
        self.data_aware = data_aware


class Factorizer:
    """Factorizes layers with or without their input statistics (cached per plan: the budget
    search and the final rewrite share results)."""

    def __init__(self, grams, ridge: float):
        self.grams = grams
        self.ridge = ridge
        self._cache: dict[tuple, Factorized] = {}

    def gram(self, layer, group: int):
        from homec.lowrank.stats import group_gram

        acc = self.grams.get(layer.index)
        if acc is None or acc.rows < ROWS_PER_FEATURE * (layer.in_features + 1):
            return None  # too few rows for a covariance: it would fit the calibration set only
        return group_gram(layer, acc.gram, group)

    def factorize(self, layer, plan) -> Factorized:
        key = (layer.index, plan)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._cache[key] = self._factorize(layer, plan)
        return hit

    def _factorize(self, layer, plan) -> Factorized:
        from homec.lowrank import factor as F
        from homec.lowrank.layers import full_ranks

        weights, deltas = [], []
        num = den = 0.0
        data_aware = True
        for j, w in enumerate(layer.matrices()):
            g = self.gram(layer, j)
            data_aware &= g is not None
            kernel = w.reshape((w.shape[0], -1) + layer.kernel) if layer.kind == "conv" else None
            if plan.method == "svd":
                f = F.matrix_svd(w, plan.ranks[0], g, ridge=self.ridge)
            elif plan.method == "channel_svd":
                f = F.channel_svd(kernel, plan.ranks[0], g, ridge=self.ridge)
            elif plan.method == "spatial_svd":
                f = F.spatial_svd(kernel, plan.ranks[0], g, ridge=self.ridge)
            else:
                f = F.tucker2(kernel, plan.ranks[0], plan.ranks[1], g, ridge=self.ridge)
            weights.append(f.weights)
            deltas.append(f.bias_delta)
            approx = F.factored_matrix(f, plan.method, kernel.shape if kernel is not None else w.shape)
            if g is not None:
                e, energy = F.output_error_terms(w, approx, f.bias_delta, g)
                num += e
                den += energy
            else:
                num += float(np.sum((approx - w) ** 2))
                den += float(np.sum(w ** 2))
        err = math.sqrt(max(num, 0.0) / den) if den > 0 else 0.0
        delta = np.concatenate(deltas) if data_aware else None
        if plan.ranks == full_ranks(layer, plan.method):  # exact: the correction is rounding noise
            delta = None
        return Factorized(weights, delta, err, "output_error" if data_aware else "weight_error", data_aware)

    def spectrum(self, layer, method: str) -> list[np.ndarray]:
        """Per group the singular values that rank selection by energy reads (tucker2: the
        two modes' spectra, mode C then mode O)."""
        from homec.lowrank import factor as F

        out = []
        for j, w in enumerate(layer.matrices()):
            if method in ("svd", "channel_svd"):
                out.append([F.spectrum(w, self.gram(layer, j))])
                continue
            k = w.reshape((w.shape[0], -1) + layer.kernel)
            if method == "spatial_svd":
                o, c, kh, kw = k.shape
                m = k.transpose(1, 2, 0, 3).reshape(c * kh, o * kw)
                out.append([np.linalg.svd(m, compute_uv=False)])
            else:
                mode_c = k.transpose(1, 0, *range(2, k.ndim)).reshape(k.shape[1], -1)
                out.append([np.linalg.svd(mode_c, compute_uv=False),
                            np.linalg.svd(k.reshape(k.shape[0], -1), compute_uv=False)])
        return out


def _shape_text(layer) -> str:
    return f"{layer.node.op_type} {'x'.join(map(str, layer.kernel))}" if layer.kernel else layer.node.op_type


def _fixed_method(layer, method: str) -> str | None:
    from homec.lowrank.layers import methods_for

    options = methods_for(layer)
    if layer.kind != "conv":
        return "svd"
    if method == "auto":
        return "spatial_svd" if "spatial_svd" in options else "channel_svd"
    return method if method in options else None


def _fixed_ranks(layer, method, rank, ratio, energy, factorizer) -> tuple[int, ...]:
    from homec.lowrank import factor as F
    from homec.lowrank.layers import full_ranks

    full = full_ranks(layer, method)
    if rank is not None:
        return tuple(min(rank, f) for f in full)
    if ratio is not None:
        return tuple(max(1, math.ceil(ratio * f - 1e-9)) for f in full)
    spectra = factorizer.spectrum(layer, method)  # per group, per mode
    return tuple(min(f, max(F.rank_for_energy(group[m], energy) for group in spectra))
                 for m, f in enumerate(full))


def _aligned(ranks: tuple[int, ...], full: tuple[int, ...], align: int) -> tuple[int, ...]:
    return tuple(min(f, -(-r // align) * align) for r, f in zip(ranks, full))


def _model_totals(graph: Graph, types) -> tuple[int, int]:
    """The model's MACs (0 when some shape is unknown: no static count) and weight elements."""
    from homec.analysis.cost import count_params, layer_costs

    if types is None:
        return 0, int(count_params(graph).count)
    lcs = layer_costs(graph, types.types)
    macs = 0 if any(lc.macs is None or lc.macs < 0 for lc in lcs) else sum(lc.macs for lc in lcs)
    return int(macs), int(count_params(graph).count)


def _candidates(layer, method: str, align: int, force: bool):
    from homec.lowrank.layers import Plan, cheaper, full_ranks, methods_for

    methods = methods_for(layer) if method == "auto" or layer.kind != "conv" else \
        tuple(m for m in methods_for(layer) if m == method)
    out, seen = [], set()
    for m in methods:
        full = full_ranks(layer, m)
        for frac in AUTO_FRACTIONS:
            ranks = _aligned(tuple(max(1, math.ceil(frac * f - 1e-9)) for f in full), full, align)
            plan = Plan(m, ranks)
            if plan in seen or (not force and not cheaper(layer, plan)):
                continue
            seen.add(plan)
            out.append(plan)
    return out


def _auto(graph, layers, factorizer, method, align, force, budget, objective, macs_total,
          params_total, sens_samples, ctx, st):
    """Per-layer plans from measured sensitivity, picked greedily to meet the budget."""
    import dataclasses

    from homec.lowrank.layers import costs, emit, new_bias_elements
    from homec.onnx_io import load
    from homec.quant.sensitivity import OutputErrorMeter, pick_threshold

    if objective == "macs" and not macs_total:
        raise UsageError('low_rank(objective="macs"): the MACs are unknown (no static shapes); '
                         'use objective="params"')
    model = graph.to_onnx().SerializeToString()
    meter = OutputErrorMeter(model, sens_samples)
    by_index = {layer.index: layer for layer in layers}

    def measure(plans: dict) -> float:
        copy = load(model)
        nodes = copy.nodes  # the same node at the same position as in `graph`
        for index, plan in plans.items():
            node = nodes[index]
            if node.op_type != by_index[index].node.op_type or node.name != by_index[index].name:
                raise AssertionError(f"node order changed on reload at {index}")  # pragma: no cover
            layer = dataclasses.replace(by_index[index], node=node)
            f = factorizer.factorize(by_index[index], plan)
            emit(copy, layer, plan, f.weights, f.bias_delta)
        return meter.measure(copy.to_onnx().SerializeToString()).rel_l2

    def saving(layer, plan) -> int:
        c = costs(layer, plan)
        if objective == "params":
            f = factorizer.factorize(layer, plan)
            grown = new_bias_elements(layer) if f.bias_delta is not None else 0
            return layer.params() - c.params - grown
        m = layer.macs()
        return 0 if m is None or c.macs is None else m - c.macs

    curves: dict[int, list] = {}
    for layer in layers:
        pts = []
        for plan in _candidates(layer, method, align, force):
            pts.append((plan, saving(layer, plan), measure({layer.index: plan})))
        if pts:
            curves[layer.index] = pts
    st["candidates_measured"] = sum(len(v) for v in curves.values())
    ctx.report("sensitivity", [{"node": by_index[i].name, "curve": [(p.method, list(p.ranks), s, round(e, 6))
                                                                  for p, s, e in pts]}
                               for i, pts in list(curves.items())[:REPORT_LIMIT]])

    def pick(tau: float) -> dict:
        chosen = {}
        for index, pts in curves.items():
            ok = [(s, -e, p) for p, s, e in pts if e <= tau and s > 0]
            if ok:
                chosen[index] = max(ok, key=lambda t: (t[0], t[1]))[2]
        return chosen

    def saved(plans: dict) -> float:
        total = params_total if objective == "params" else macs_total
        return sum(saving(by_index[i], p) for i, p in plans.items()) / max(1, total)

    thresholds = sorted({e for pts in curves.values() for _, _, e in pts})
    if not thresholds:
        return {}
    chosen = pick_threshold(thresholds, pick, saved, measure, budget, objective,
                            lambda m: ctx.warn(f"low_rank: {m}"), empty={})
    err = measure(chosen) if chosen else 0.0
    ctx.report("auto", {"budget": budget, "objective": objective, "saved": round(saved(chosen), 6),
                        "rel_l2": round(err, 6)})
    return chosen
