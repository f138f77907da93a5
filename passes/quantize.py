"""Post-training quantization to the QDQ form (static, calibrated) or dynamic weight-only."""

from __future__ import annotations

from typing import Annotated, Literal

from homec.context import PassContext
from homec.errors import UsageError
from homec.ir import Graph
from homec.registry import Range, Stats, Tolerance, register_pass

from ._util import Types, opset, upgrade_opset

OpName = Literal["Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Mul"]
DEFAULT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
RANDOM_SAMPLES = 8
REPORT_SAMPLES = 8


@register_pass("quantize", tolerance=Tolerance.bounded(min_cosine=0.98))
def quantize(
    graph: Graph,
    ctx: PassContext,
    *,
    mode: Literal["static", "dynamic"] = "static",
    calibration: Literal["data", "random"] = "data",
    method: Literal["minmax", "percentile", "entropy", "mse"] = "minmax",
    percentile: Annotated[float, Range(50.0, 100.0)] = 99.999,
    weights: Literal["int8", "uint8", "int4"] = "int8",
    per_channel: bool = True,
    activations: Literal["uint8", "int8"] = "uint8",
    ops: list[OpName] = DEFAULT_OPS,  # type: ignore[assignment]
    exclude: list[str] = (),  # type: ignore[assignment]
    equalize: bool = False,
    bias_correction: bool = False,
    sensitivity: bool = False,
    keep_float: Annotated[int, Range(0, None)] = 0,
    error_budget: Annotated[float, Range(0.0, None)] | None = None,
    sensitivity_samples: Annotated[int, Range(1, None)] = 4,
    samples: Annotated[int, Range(1, None)] = 256,
    reduce_range: bool = False,
    layer_report: bool = True,
    round_shifts: bool = False,
) -> Stats:
    """Quantize Conv/ConvTranspose/Gemm/MatMul (and Add/Mul on request) to int8 in QDQ form.

    Static mode (default). Each selected layer's constant weights become integer initializers
    read through DequantizeLinear; each float activation a layer reads or writes gets a
    QuantizeLinear -> DequantizeLinear pair right where it is produced, with per-tensor
    parameters from calibration:

        W ≈ (Wq - zw) * sw          Wq = saturate(round_half_even(W / sw) + zw)
        x ≈ (xq - zx) * sx          (sx, zx) from the calibrated range [rmin, rmax] ∋ 0
        b ≈ bq * (sx * sw)          bq int32, zero point 0 (Conv/ConvTranspose/Gemm bias)

    so a runtime may execute DQ -> layer -> Q as one integer kernel (`fold_qdq` makes that
    explicit). Data-movement ops (Reshape, Transpose, MaxPool, Slice, Resize-nearest, Flatten,
    Squeeze, Unsqueeze, ...) between quantized tensors reuse their input's parameters, so no
    requantization is inserted; the inputs of a quantized Concat (traced up through data
    movement) take the Concat's parameters, so Concat runs on integers too. Only the top-level graph is quantized; layers whose weights are
    not constant initializers are skipped (run `fold_constants`/`cleanup` first to lift
    Constant nodes). Per-channel weights need opset >= 13 and int4 needs opset >= 21: an older
    model is converted with onnx's version converter first and the conversion is re-verified
    with onnxruntime on the calibration samples (statistic `opset_upgraded_to`).

    Dynamic mode (`mode="dynamic"`): weight-only int8 for MatMul/Gemm/Conv, activations
    quantized at run time (DynamicQuantizeLinear + MatMulInteger/ConvInteger); no calibration
    data (the ONNX counterpart of PyTorch's quantize_dynamic). `weights="int4"` in static mode
    is weight-only too (activations stay float).

    Options:
      calibration   "data": the samples given with --calib (required); "random": seeded
                    random inputs, with a warning (accuracy will be poor).
      method        activation range: minmax, percentile (`percentile` of |x|), entropy (KL
                    threshold search), mse (minimum expected squared error).
      weights       int8 symmetric (default), uint8 asymmetric, int4 symmetric weight-only.
      per_channel   per-output-channel weight scales (default) or one per tensor.
      activations   uint8 asymmetric (default; onnxruntime's fast x86 path) or int8 symmetric.
      ops           op types to quantize; Add/Mul only where the target has integer kernels.
      exclude       node-name globs kept in float; "@first"/"@last" name the first/last layer.
      equalize      cross-layer equalization of Conv chains before calibration (exact in float).
      bias_correction  shift each layer's bias by -(Wq - W)·E[x], E[x] per input channel
                    measured on the calibration data, before quantizing the bias.
      sensitivity   quantize layers one at a time on `sensitivity_samples` samples and rank them
                    by output error (relative L2), reported under details["sensitivity"].
      keep_float    keep the N most sensitive layers in float (implies the analysis).
      error_budget  keep the fewest most-sensitive layers in float so the model's output error
                    (mean relative L2 on the sensitivity samples) is within the budget.
      samples       at most this many calibration samples are used (the first ones).
      reduce_range  7-bit weights, for CPUs whose u8*s8 dot products saturate (no VNNI).
      layer_report  per-layer error (cosine, relative L2 of float vs quantized activations) in
                    details["layer_error"].
      round_shifts  for y = a*h + b before a quantizer where b cannot be made a whole number of
                    steps exactly: round b to the nearest step (each value moves by under half
                    a step) so the Add goes too; a speed option, off by default.

    Statistics: layers_quantized, weights_quantized, biases_quantized,
    activations_quantized, activations_sharing_params (no requantization), activations_absorbed
    (a Relu/Clip after a layer whose clipping the output quantization already does: Q(relu(y))
    = Q(y) when the zero point is the type's minimum, so the Relu is removed exactly),
    affine_absorbed (nodes removed from y = a*h + b with scalar a > 0 before a quantizer:
    Q(a*h + b; s, z) = Q(h + b/a; s/a, z) removes the Mul; when b is a whole number k of steps
    (the scale may grow by up to 1.5x to make it so), = Q(h; s/a, z + k) removes the Add too),
    opset_upgraded_to,
    weight_bytes_saved, kept_float_* / skipped_* (informational).
    Tolerance: lossy, bounded (cosine >= 0.98 of the outputs).
    """
    from homec.quant import numerics as N
    from homec.quant import static as S

    ops = tuple(ops)
    if mode == "dynamic":
        return _dynamic(graph, ctx, ops=ops, per_channel=per_channel, weights=weights)

    weights_only = weights == "int4"
    need_opset = 21 if weights_only else (13 if per_channel else 10)
    samples_list = _samples(graph, ctx, calibration, samples, needed=not weights_only)
    st: Stats = {}
    if opset(graph) < need_opset:
        _upgrade_opset(graph, ctx, need_opset,
                       "int4 DequantizeLinear" if weights_only else "per-channel DequantizeLinear")
        st["opset_upgraded_to"] = need_opset
        ctx.warn(f"model converted to opset {need_opset} (needed for "
                 f"{'int4' if weights_only else 'per-channel'} DequantizeLinear)")
    if equalize:
        from homec.quant.equalize import equalize as run_cle

        cle = run_cle(graph, selected=ctx.selected)
        for k, v in cle.items():
            st[f"equalize_{k}" if not k.startswith(("skipped", "kept")) else k] = v

    types = Types(graph)
    wq = N.qtype(weights)
    aq = N.qtype(activations)
    layer_nodes = [n for n in graph.nodes if n.domain == "" and n.op_type in ops]
    excluded = S.match_names(list(exclude), layer_nodes)

    def plan_with(extra_excluded: set[str]) -> S.Plan:
        return S.build_plan(graph, types, ops=ops, selected=ctx.selected,
                            excluded=lambda n: excluded(n) or (n.outputs and n.outputs[0] is not None
                                                               and n.outputs[0].name in extra_excluded),
                            weight_qtype=wq, activation_qtype=aq, per_channel=per_channel,
                            weight_symmetric=weights != "uint8",
                            activation_symmetric=activations == "int8",
                            reduce_range=reduce_range, weights_only=weights_only)

    plan = plan_with(set())
    plan.drop_small_shifts = round_shifts
    for k, v in plan.skipped.items():
        st[k] = v
    if plan.skipped.get("skipped_nonconstant_weight"):
        ctx.warn(f"{plan.skipped['skipped_nonconstant_weight']} layer(s) skipped: their weights are "
                 "not constant initializers (run fold_constants or cleanup before quantize)")
    if not plan.layers:
        return st

    params, channel_means = _calibrate(graph, plan, samples_list, method, percentile, bias_correction, ctx)
    float_model = graph.to_onnx().SerializeToString()

    kept: set[str] = set()
    if sensitivity or keep_float or error_budget is not None:
        kept = _sensitivity(float_model, plan, params, samples_list[:sensitivity_samples], ctx,
                            keep_float, error_budget, st)
        if kept:
            plan = plan_with(kept)
            plan.drop_small_shifts = round_shifts
            st["kept_float_sensitive"] = len(kept)

    shifted = [0]
    shift = _bias_shift_fn(channel_means, shifted) if bias_correction else None
    applied = S.apply_plan(graph, plan, params, bias_shift=shift)
    st["layers_quantized"] = applied.layers
    st["weights_quantized"] = applied.weights
    st["biases_quantized"] = applied.biases
    st["activations_quantized"] = applied.activations
    st["activations_sharing_params"] = applied.shared
    st["activations_absorbed"] = applied.absorbed
    st["affine_absorbed"] = applied.affine_absorbed
    st["weight_bytes_saved"] = applied.weight_bytes_before - applied.weight_bytes_after
    if bias_correction:
        st["biases_corrected"] = shifted[0]
    if layer_report and not weights_only and samples_list:
        pairs = sorted(applied.dequantized.items())
        _layer_report(float_model, graph, pairs, samples_list[:REPORT_SAMPLES], ctx)
    return st


# ---------------------------------------------------------------------------------------


def _samples(graph: Graph, ctx: PassContext, calibration: str, limit: int, *, needed: bool) -> list[dict]:
    if calibration == "random":
        from homec.verify import random_inputs

        ctx.warn("calibrating on random inputs: the quantization ranges will not match real data "
                 "and accuracy will be poor; pass real samples with --calib")
        model = graph.to_onnx()
        return [random_inputs(model, seed=ctx.seed + i) for i in range(min(limit, RANDOM_SAMPLES))]
    if ctx.calib is None or not len(ctx.calib):
        if not needed:
            return []
        raise UsageError('quantize needs calibration data: pass --calib FILE.npz|FOLDER '
                         '(or calibration="random" to calibrate on random inputs, which gives poor accuracy)')
    return [dict(s) for s in list(ctx.calib)[:limit]]


def _upgrade_opset(graph: Graph, ctx: PassContext, version: int, purpose: str) -> None:
    """Convert with onnx's version converter, checked with onnxruntime (`_util.upgrade_opset`);
    any failure stops the pass (UnsupportedError, exit 4)."""
    upgrade_opset(graph, ctx, version, purpose=purpose,
                  hint="quantize it per-tensor (per_channel=false) or convert it upstream")


def _calibrate(graph, plan, samples_list, method, percentile, bias_correction, ctx):
    from homec.quant.calibrate import collect_stats, compute_range
    from homec.quant.static import activation_qparams, affine_qparams

    names = plan.calibrated
    conv_inputs: list[str] = []
    if bias_correction:
        for la in plan.layers:
            if la.activation_slots and la.node.op_type in ("Conv", "ConvTranspose", "Gemm"):
                conv_inputs.append(la.node.inputs[la.activation_slots[0]].name)
    if not names and not conv_inputs:
        return {}, {}
    stats = collect_stats(graph, sorted(set(names) | set(conv_inputs)), samples_list,
                          histograms=method != "minmax", channel_means=conv_inputs)
    params = {}
    for name in names:
        s = stats[name]
        if getattr(s, "nonfinite", 0):
            ctx.warn(f"tensor {name}: {s.nonfinite} NaN/inf values ignored during calibration")
        rmin, rmax = compute_range(s, method, qtype=plan.activation_qtype,
                                   symmetric=plan.activation_symmetric, percentile=percentile)
        params[name] = activation_qparams(rmin, rmax, plan)
        if name in plan.affine:  # nudge the scale so the affine's shift is whole steps
            adjusted = affine_qparams(params[name], plan.affine[name][1])
            if adjusted is not None:
                params[name] = adjusted
    for name, src in plan.activation_source.items():
        params[name] = params[src]
    means = {n: stats[n].channel_mean for n in conv_inputs if stats[n].channel_mean is not None}
    return params, means


def _bias_shift_fn(channel_means, counter: list[int]):
    from homec.quant.bias_correction import layer_bias_shift

    def shift(layer, w_float, w_dequant):
        node = layer.node
        x = node.inputs[layer.activation_slots[0]] if layer.activation_slots else None
        mean = channel_means.get(x.name) if x is not None else None
        if mean is None:
            return None
        counter[0] += 1
        return layer_bias_shift(node, w_float, w_dequant, mean)

    return shift


def _sensitivity(float_model, plan, params, samples_list, ctx, keep_float, error_budget, st) -> set[str]:
    from homec.quant.sensitivity import OutputErrorMeter, keep_within_budget, layer_sensitivities

    meter = OutputErrorMeter(float_model, samples_list)
    ranking = layer_sensitivities(float_model, plan, params, meter)
    ctx.report("sensitivity", [r.as_dict() for r in ranking])
    st["checked_sensitivity_layers"] = len(ranking)
    n_keep = min(keep_float, len(ranking))
    if error_budget is not None:
        k, err = keep_within_budget(float_model, plan, params, ranking, meter, error_budget)
        ctx.report("error_budget", {"budget": error_budget, "kept_float": k,
                                    "rel_l2": round(err.rel_l2, 6), "cosine": round(err.cosine, 6)})
        if err.rel_l2 > error_budget:
            ctx.warn(f"error budget {error_budget:g} not reachable: keeping every layer in float "
                     f"still gives {err.rel_l2:.4g}")
        n_keep = max(n_keep, k)
    return {r.key for r in ranking[:n_keep]}


def _layer_report(float_model: bytes, graph: Graph, pairs, samples_list, ctx) -> None:
    """Float activation vs what the next layer reads after quantization (the DQ output)."""
    from homec.onnx_io import load
    from homec.quant.layer_error import layer_errors, to_report

    errs = layer_errors(load(float_model), graph, pairs, samples_list)
    ctx.report("layer_error", to_report(errs))


def _dynamic(graph: Graph, ctx: PassContext, *, ops, per_channel: bool, weights: str) -> Stats:
    from homec.quant.dynamic import quantize_dynamic

    if weights not in ("int8", "uint8"):
        raise UsageError(f'quantize(mode="dynamic") supports weights="int8" or "uint8", not "{weights}"')
    from homec.quant.dynamic import MIN_OPSET

    st: Stats = {}
    if opset(graph) < MIN_OPSET:  # DynamicQuantizeLinear is opset 11
        _upgrade_opset(graph, ctx, MIN_OPSET, "DynamicQuantizeLinear")
        st["opset_upgraded_to"] = MIN_OPSET
        ctx.warn(f"model converted to opset {MIN_OPSET} (needed for DynamicQuantizeLinear)")
    dyn_ops = tuple(o for o in ops if o in ("MatMul", "Gemm", "Conv"))
    st.update(quantize_dynamic(graph, selected=ctx.selected, ops=dyn_ops, per_channel=per_channel,
                               weight_type=weights))
    return st
