"""Structured channel pruning: remove whole channels of Conv/ConvTranspose/Gemm/MatMul layers."""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np

from homec.context import PassContext
from homec.errors import UsageError
from homec.ir import Graph
from homec.registry import Range, Stats, Tolerance, register_pass

from ._util import calibration_samples, sample_input_shapes, smallest_samples

Criterion = Literal["l1", "l2", "bn_gamma", "mean_activation", "apoz", "data"]
DATA_CRITERIA = ("mean_activation", "apoz", "data")
AUTO_RATIOS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75)
REFUSED_REPORT_LIMIT = 50


@register_pass("prune_channels", tolerance=Tolerance.bounded(min_cosine=0.9))
def prune_channels(
    graph: Graph,
    ctx: PassContext,
    *,
    ratio: Annotated[float, Range(0.0, 0.95)] | Literal["auto"] = 0.3,
    criterion: Criterion = "l2",
    global_: bool = False,
    align: Annotated[int, Range(1, 1024)] | None = None,
    min_channels: Annotated[int, Range(1, None)] = 1,
    reconstruct: bool | None = None,
    budget: Annotated[float, Range(0.0, None)] | None = None,
    objective: Literal["macs", "params", "error"] = "macs",
    samples: Annotated[int, Range(1, None)] = 32,
    sensitivity_samples: Annotated[int, Range(1, None)] = 4,
    ridge: Annotated[float, Range(0.0, None)] = 1e-4,
    rounds: Annotated[int, Range(1, 4)] = 1,
) -> Stats:
    """Remove whole channels: smaller weights, smaller activations, fewer MACs.

    The channel analysis (homec.prune.channels) finds which channels must go together: an
    output channel of a Conv/ConvTranspose/Gemm/MatMul (a *producer*) is removed with the
    matching input channel of every layer that reads it (a *consumer*: Conv weight columns,
    Gemm/MatMul weight rows, feature blocks after Flatten), with the per-channel parameters on
    the way (BatchNormalization, per-channel Mul/Add/PRelu constants, per-axis QDQ scales,
    depthwise Conv filters and their group count), with every channel it is added to
    (residual Add/Sub/Mul, broadcast-aware; SE blocks), at its offset in a Concat, and in the
    pieces of Split/Slice on the channel axis. Grouped Conv groups lose the same local
    channels. What cannot be proven safe (a graph output, a channel shuffle or attention heads
    through Reshape, LRN or Softmax across channels, custom ops, ...) keeps its channels; the
    report lists each such group and why (details["refused"]).

    For a consumer y = W x + b (x over the kept channels K and removed ones R):

        plain:        y' = W_K x_K + b
        reconstruct:  [W'_K | b'] = [W_K | b] + W_R G[R,K1] (G[K1,K1] + λI)^-1
                      (least squares on calibration data, G = E[[x;1][x;1]^T], K1 = K and the
                      constant): y' matches the unpruned y as closely as any W'_K, b' can;
                      a consumer too large for its Gram keeps only b' = b + W_R E[x_R].

    Options:
      ratio       fraction of each group's channels to remove (0 is the identity), or "auto":
                  per-group ratios chosen from a sensitivity analysis to meet `budget`.
      criterion   channel importance: "l1"/"l2" (norm of the producer filters), "bn_gamma"
                  (|γ| of the BatchNormalization after the producer; network slimming),
                  "mean_activation" (mean |x| read by the consumers), "apoz" (1 - fraction
                  of zeros), "data" (the consumers' output error when the channel is removed,
                  relative to their output energy, from calibration data). The last three
                  need --calib.
      global      one threshold on group-normalized scores across the model instead of
                  the same ratio per group.
      align       keep a multiple of `align` channels per group (rounding towards keeping
                  more); default: the target's channel alignment, else 1.
      min_channels  never keep fewer channels in a group.
      reconstruct least-squares re-fit of the consumers (needs --calib); default: on when
                  calibration data is given.
      budget, objective   with ratio="auto": remove at least `budget` (a fraction) of the
                  model's MACs ("macs") or parameters ("params"), or the most MACs whose
                  output error (relative L2 on the sensitivity samples) stays within
                  `budget` ("error"). Ratios per group are picked greedily from each group's
                  measured error curve (the AIMET compression-ratio selection, on the ONNX
                  graph): every group takes the largest ratio whose error is within a common
                  threshold, the smallest threshold meeting the budget wins.
      samples     calibration samples used (the first ones); sensitivity_samples of them
                  run the sensitivity analysis.
      ridge       relative ridge of the re-fit (λ = ridge · mean diag G[K,K]).
      rounds      re-fit rounds: round 1 uses the unpruned model's inputs (the formula
                  above); each further round re-fits every consumer from the inputs the
                  pruned model now gives it, against the unpruned layer's output on the
                  unpruned input (training-free feature distillation; upstream errors are
                  compensated too). One more pass over the calibration data per round. Off
                  by default: all layers are re-fit at once from the previous round's inputs,
                  which over-corrects on deep chains (see docs/pruning.md).

    Statistics: channels_removed (producer output channels), classes_removed, groups_pruned,
    refused_groups, refused_classes, macs_before/macs_after and params_before/params_after of the edited
    layers at the first calibration sample's shape, constants_sliced, consumers_refit,
    consumers_mean_folded. Tolerance: lossy; exact at ratio 0 and when the removed channels
    are all zero.
    """
    from homec.prune import channels as C
    from homec.prune import select as S

    samples_list = calibration_samples(ctx, samples)
    needs_data = criterion in DATA_CRITERIA or ratio == "auto"
    if needs_data and not samples_list:
        raise UsageError(f'prune_channels(criterion="{criterion}"{", ratio=auto" if ratio == "auto" else ""}) '
                         "needs calibration data: pass --calib FILE.npz|FOLDER")
    if ratio == "auto" and budget is None:
        raise UsageError('prune_channels(ratio="auto") needs a budget: e.g. budget=0.3, '
                         'objective="macs" removes 30% of the MACs')
    if reconstruct is None:
        reconstruct = bool(samples_list)
    elif reconstruct and not samples_list:
        raise UsageError("prune_channels(reconstruct=true) needs calibration data: pass --calib "
                         "FILE.npz|FOLDER (or reconstruct=false)")
    if align is None:
        align = int(getattr(ctx.target, "channel_alignment", 1) or 1) if ctx.target is not None else 1

    st: Stats = {}
    if ratio != "auto" and ratio <= 0:
        return st
    input_shapes = sample_input_shapes(graph, samples_list)
    types = C.InferredTypes(graph, input_shapes)
    analysis = C.analyze(graph, types, selected=ctx.selected)
    groups = S.make_groups(analysis)
    _report_refused(analysis, ctx, st)
    if not groups:
        return st

    node_macs, const_sizes = _costs(graph, analysis, types)
    before = S.footprint(analysis, const_sizes, node_macs, np.zeros(0, np.int64))

    consumer_ids = sorted({ci for ci, c in enumerate(analysis.consumers)
                           if not np.isin(analysis.parent[c.atoms], list(analysis.pins)).all()})
    stats = {}
    if samples_list and (criterion in DATA_CRITERIA or reconstruct or ratio == "auto"):
        from homec.prune.recover import collect

        stats = collect(graph, analysis, consumer_ids, samples_list,
                        gram=reconstruct or criterion == "data", seed=ctx.seed)
    scores = _scores(graph, analysis, groups, criterion, stats, ctx, st, reconstruct_on=bool(reconstruct))

    from homec.prune.recover import layer_matrix

    nodes = graph.nodes
    originals = {ci: layer_matrix(nodes[analysis.consumers[ci].node_index], analysis.consumers[ci])
                 for ci in stats}
    method = "lstsq" if reconstruct else None

    if ratio == "auto":
        removed = _auto(graph, analysis, groups, scores, stats, originals, method, const_sizes,
                        node_macs, before, smallest_samples(samples_list, sensitivity_samples), budget, objective,
                        align, min_channels, ridge, ctx, st)
    elif global_:
        removed = S.select_global(groups, scores, ratio, align=align, min_channels=min_channels)
    else:
        removed = S.select_per_group(groups, scores, {g.key: ratio for g in groups},
                                     align=align, min_channels=min_channels)
    removed = _keep_every_tensor_nonempty(analysis, removed, scores)
    if removed.size == 0:
        return st
    after = S.footprint(analysis, const_sizes, node_macs, removed)
    original = graph.to_onnx().SerializeToString() if method and rounds > 1 else b""
    applied, recovered = _prune(graph, analysis, removed, originals, stats, method, ridge)
    if method and rounds > 1:
        from homec.prune.recover import refine

        for _ in range(rounds - 1):
            recovered.refined += refine(graph, original, analysis, removed, originals, stats,
                                        recovered.consumer_nodes, samples_list, ridge=ridge,
                                        seed=ctx.seed)
    _record(analysis, groups, removed, before, after, applied, recovered, ctx, st)
    return st


# ---------------------------------------------------------------------------------------


def _keep_every_tensor_nonempty(analysis, removed: np.ndarray, scores) -> np.ndarray:
    """Take back the best-scoring class of any tensor, Slice range or Split piece that would
    lose all its channels (a zero-channel tensor is not a valid ONNX activation)."""
    removed_set = set(removed.tolist())
    pieces = [cm.atoms for cm in analysis.maps.values()]
    for e in analysis.edits:
        if e.kind == "slice_range":
            pieces.append(e.atoms[e.start:e.end])
        elif e.kind == "split":
            pieces.extend(e.pieces)
    changed = True
    while changed:
        changed = False
        for atoms in pieces:
            roots = np.unique(analysis.parent[atoms]).tolist()
            if roots and all(r in removed_set for r in roots):
                best = max(roots, key=lambda r: (scores.get(r, 0.0), -r))
                removed_set.discard(best)
                changed = True
    return np.array(sorted(removed_set), np.int64)


def _costs(graph: Graph, analysis, types):
    """MACs of the weight-bearing nodes and shapes of the sliced constants."""
    from homec.analysis.cost import layer_costs

    nodes = graph.nodes
    # a negative count comes from a dim declared -1 (unknown): not a cost
    macs_by_label = {lc.node: lc.macs for lc in layer_costs(graph, types.types)
                     if lc.macs and lc.macs > 0}
    edited_nodes = {e.node_index for e in analysis.edits if e.kind == "slice" and e.slot == 1}
    node_macs = {}
    for ni in edited_nodes:
        m = macs_by_label.get(analysis.node_names[ni])
        if m:
            node_macs[ni] = m
    const_sizes = {}
    for e in analysis.edits:
        if e.kind == "slice":
            v = nodes[e.node_index].inputs[e.slot]
            const_sizes[(e.node_index, e.slot)] = tuple(v.const.shape)
    return node_macs, const_sizes


def _relative_removal_errors(lm, gram: np.ndarray, *, centered: bool) -> np.ndarray:
    """Per input channel: the consumer's mean squared output error when only that channel is
    removed, over the consumer's mean squared output E||W x + b||^2 (so consumers compare)."""
    from homec.prune.refit import removal_error

    k = lm.per_channel
    f = lm.weight.shape[1]
    blocks = [np.arange(c * k, (c + 1) * k) for c in range(f // k)]
    err = removal_error(lm.weight, gram, blocks, centered=centered)
    wb = np.concatenate([lm.weight, lm.bias[:, None]], axis=1)
    energy = float(np.einsum("of,fg,og->", wb, gram, wb))
    return err / energy if energy > 0 else err


def _scores(graph, analysis, groups, criterion, stats, ctx, st, reconstruct_on=False) -> dict[int, float]:
    from homec.prune import select as S

    nodes = graph.nodes
    weights = {i: nodes[p.node_index].inputs[1].const.numpy() for i, p in enumerate(analysis.producers)}
    if criterion in ("l1", "l2"):
        return S.weight_norm_scores(analysis, weights, 1 if criterion == "l1" else 2)
    if criterion == "bn_gamma":
        scores: dict[int, float] = {}
        for e in analysis.edits:
            node = nodes[e.node_index]
            if e.kind == "slice" and node.op_type == "BatchNormalization" and e.slot == 1:
                gamma = np.abs(node.inputs[1].const.numpy().astype(np.float64))
                for root, gv in zip(analysis.parent[e.atoms].tolist(), gamma.tolist()):
                    scores[root] = scores.get(root, 0.0) + gv
        fallback = S.weight_norm_scores(analysis, weights, 2)
        missing = [g for g in groups if not any(int(r) in scores for r in g.roots)]
        for g in missing:
            for r in g.roots.tolist():
                scores[r] = fallback.get(r, 0.0)
        if missing:
            st["skipped_bn_groups"] = len(missing)
            ctx.warn(f'{len(missing)} group(s) have no BatchNormalization after their producers '
                     '(folded by cleanup?); they are ranked by the L2 filter norm')
        return scores
    scores = {}
    from homec.prune.recover import layer_matrix

    for ci, cs in stats.items():
        c = cs.consumer
        roots = analysis.parent[c.atoms]
        if criterion == "mean_activation":
            vals = cs.channels.mean_abs
        elif criterion == "apoz":
            vals = 1.0 - cs.channels.zero_fraction
        else:
            lm = layer_matrix(nodes[c.node_index], c)
            if lm is None or cs.gram is None or not cs.gram.rows:
                continue
            vals = _relative_removal_errors(lm, cs.gram.gram, centered=reconstruct_on)
        for root, v in zip(roots.tolist(), np.asarray(vals, np.float64).tolist()):
            scores[root] = scores.get(root, 0.0) + v
    if criterion == "data":  # classes no Gram covers fall back to their filters' norm, scaled
        fallback = S.weight_norm_scores(analysis, weights, 2)
        for g in groups:
            have = [scores[int(r)] for r in g.roots if int(r) in scores]
            if len(have) == g.roots.size:
                continue
            st["checked_by_norm_groups"] = st.get("checked_by_norm_groups", 0) + 1
            for r in g.roots.tolist():
                scores[r] = fallback.get(r, 0.0)
    return scores


def _prune(graph, analysis, removed, originals, stats, method, ridge):
    from homec.prune.recover import Recovered, recover
    from homec.prune.rewrite import apply

    nodes = graph.nodes
    consumer_nodes = {ci: nodes[analysis.consumers[ci].node_index] for ci in stats}
    applied = apply(graph, analysis, removed)
    recovered = Recovered()
    if method is not None:
        recovered = recover(graph, analysis, removed, originals, stats, consumer_nodes,
                            method=method, ridge=ridge)
    recovered.consumer_nodes = consumer_nodes
    return applied, recovered


def _report_refused(analysis, ctx, st) -> None:
    """Groups (by producer) holding pinned classes, with the reasons."""
    classes = analysis.classes()
    refused: dict[tuple[str, ...], dict] = {}
    for root, reasons in analysis.pins.items():
        prods = sorted({int(p) for p in analysis.atom_producer[classes[root]] if p >= 0})
        if not prods:
            continue
        key = tuple(analysis.node_names[analysis.producers[p].node_index] for p in prods)
        entry = refused.setdefault(key, {"producers": list(key), "classes": 0, "reasons": []})
        entry["classes"] += 1
        for r in reasons:
            if r not in entry["reasons"] and len(entry["reasons"]) < 5:
                entry["reasons"].append(r)
    if refused:
        st["refused_groups"] = len(refused)
        st["refused_classes"] = sum(e["classes"] for e in refused.values())
        items = list(refused.values())
        ctx.report("refused", items[:REFUSED_REPORT_LIMIT])


def _record(analysis, groups, removed, before, after, applied, recovered, ctx, st) -> None:
    removed_set = set(removed.tolist())
    per_group = []
    pruned_groups = 0
    channels_removed = 0
    for g in groups:
        n = sum(1 for r in g.roots.tolist() if r in removed_set)
        if n:
            pruned_groups += 1
        channels_removed += n * g.width
        per_group.append({"group": g.name, "producers": [analysis.node_names[analysis.producers[p].node_index]
                                                         for p in g.key],
                          "channels": g.total * g.width, "removed": n * g.width,
                          "ratio": round(n / g.total, 4) if g.total else 0.0})
    st["classes_removed"] = int(removed.size)
    st["channels_removed"] = channels_removed
    st["groups_pruned"] = pruned_groups
    st["macs_before"] = before.macs
    st["macs_after"] = after.macs
    st["params_before"] = before.params
    st["params_after"] = after.params
    st["constants_sliced"] = applied.constants_sliced
    if recovered.refit:
        st["consumers_refit"] = recovered.refit
    if recovered.mean_folded:
        st["consumers_mean_folded"] = recovered.mean_folded
    if recovered.refined:
        st["consumers_refined"] = recovered.refined
    if recovered.skipped:
        st["consumers_uncompensated"] = recovered.skipped
    ctx.report("groups", per_group)


def _auto(graph, analysis, groups, scores, stats, originals, method, const_sizes, node_macs,
          before, sens_samples, budget, objective, align, min_channels, ridge, ctx, st):
    """Per-group ratios from measured sensitivity curves, picked greedily to meet the budget."""
    from homec.onnx_io import load
    from homec.prune import select as S
    from homec.quant.sensitivity import OutputErrorMeter, pick_threshold

    model = graph.to_onnx().SerializeToString()
    meter = OutputErrorMeter(model, sens_samples)

    def measure(removed: np.ndarray) -> float:
        copy = load(model)
        _prune(copy, analysis, removed, originals, stats, method, ridge)
        return meter.measure(copy.to_onnx().SerializeToString()).rel_l2

    curves = {}  # group key -> [(ratio, removed roots, error)]
    for g in groups:
        pts = [(0.0, np.zeros(0, np.int64), 0.0)]
        seen = set()
        for r in AUTO_RATIOS:
            rem = S.select_per_group([g], scores, {g.key: r}, align=align, min_channels=min_channels)
            if rem.size == 0 or rem.size in seen:
                continue
            seen.add(rem.size)
            pts.append((r, rem, measure(rem)))
        curves[g.key] = pts
    ctx.report("sensitivity", [{"group": g.name, "curve": [(round(r, 4), int(rem.size), round(e, 6))
                                                            for r, rem, e in curves[g.key]]}
                               for g in groups])
    st["candidates_measured"] = sum(len(v) - 1 for v in curves.values())

    def pick(tau: float) -> np.ndarray:
        parts = []
        for g in groups:
            ok = [rem for _, rem, e in curves[g.key] if e <= tau]
            best = max(ok, key=lambda a: a.size)
            if best.size:
                parts.append(best)
        return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)

    thresholds = sorted({e for pts in curves.values() for _, _, e in pts})

    def saved(removed: np.ndarray) -> float:
        fp = S.footprint(analysis, const_sizes, node_macs, removed)
        if objective == "params":
            return 1.0 - fp.params / max(1, before.params)
        return 1.0 - fp.macs / max(1, before.macs)

    if objective in ("macs", "params"):
        total = before.macs if objective == "macs" else before.params
        if objective == "macs" and total == 0:
            raise UsageError("prune_channels(objective=\"macs\"): the MACs are unknown (no "
                             "static shapes); use objective=\"params\"")
    chosen = pick_threshold(thresholds, pick, saved, measure, budget, objective, ctx.warn,
                            empty=np.zeros(0, np.int64))
    err = measure(chosen) if chosen.size else 0.0
    ctx.report("auto", {"budget": budget, "objective": objective, "saved": round(saved(chosen), 6),
                        "rel_l2": round(err, 6)})
    return chosen
