"""Low-rank factorization benchmark (issue 6): PP-OCRv4 det and rec factorized by homec's
low_rank, against the shipped models, in the real RapidOCR pipeline.

    OPENBLAS_NUM_THREADS=1 python -m bench.ocr.low_rank          # 150 eval images, every row
    python -m bench.ocr.low_rank --out bench/results/low_rank.txt --json /tmp/low_rank.json
    python -m bench.ocr.low_rank --n 20 --time-n 8 --calib-from /tmp/bl/work2/calib
    python -m bench.ocr.low_rank --validation --rows rec-lowrank --row rec-lowrank=rec:/tmp/try.hc
    python bench/ocr/low_rank.py --n 4 --row det-lowrank=det:/tmp/cleanup_only.hc

Rows (pipelines): "fp32", the shipped det, rec and cls; every other row replaces det, rec or
both by homec compiles of them, given as NAME=MODEL:FILE[,MODEL:FILE] (MODEL det or rec; the
models a row does not name stay the shipped fp32 ones, cls always does):
  det-lowrank   det:bench/ocr/low_rank_det.hc   low_rank under a MAC budget (the det target)
  rec-lowrank   rec:bench/ocr/low_rank_rec.hc   low_rank under a parameter budget (the rec target)
  both          the two above together
  rec-r30-data / rec-r30-plain, rec-r50-..., det-r30-..., det-r50-...: one uniform `ratio`
                (0.3, 0.5) with data_aware=true and =false, i.e. the same ranks, for the
                equal-rank comparison
--row NAME=SPEC replaces a row or adds one; --rows NAME,... keeps only those (and fp32). Two rows
named STEM-data and STEM-plain changing the same model form an equal-rank pair.

Steps:
  1. Render the eval set (--n; --validation: labels from another seed, as bench.ocr.int8) and
     get calibration folders (bench.ocr.int8.calibration_folders: capture into WORK/calib, or
     reuse WORK/calib or --calib-from DIR).
  2. Every distinct (model, schedule) of the rows: homec.compile(model, SCHEDULE, calib=<that
     model's calibration folder>) into WORK/<model>-<schedule name>/, checked (onnx.checker
     full, one onnxruntime run) with bench.ocr.prune.compile_det; plus, for each changed model,
     the "reference" compile (--reference, default bench/ocr/low_rank_ref.hc: cleanup and
     fuse_activations only), because those passes alone already speed the shipped models up:
     the latency of a factorized model is given against it as well as against fp32. A row
     whose schedule does not validate or whose compile fails is reported and skipped.
  3. Per compiled model, homec's analysis (homec.analysis.shapes / cost): MACs at a fixed input
     (det 1x3x640x640, rec 1x3x48x320) and the mean over that model's calibration inputs'
     shapes (det: shorter side 736; rec: batches of up to 6 crops, width >= 320), parameters
     (count_params), file size; and the relative L2 error of its outputs against the shipped
     model's on the first --error-samples calibration inputs (homec.quant.sensitivity's
     OutputErrorMeter, the measure the pass's budget search uses; in-sample for the data-aware
     fits, which read the same calibration inputs); the count of subnormal float32 weights.
  4. Each pipeline over the eval set: CER (spaces counted), CER ignoring spaces, exact-image
     rate (bench.ocr.pipeline.evaluate).
  5. Latency: the pipelines of the rows outside the equal-rank pairs with
     bench.ocr.int8.time_interleaved, and each model variant alone in onnxruntime with
     bench.ocr.int8.model_latency (ORT_ENABLE_ALL, --threads threads, first --model-samples
     calibration inputs, best of --model-repeats, median).
OPENBLAS_NUM_THREADS=1 only affects the compiles (numpy's SVDs; onnxruntime has its own
threads): on a loaded 2-core machine OpenBLAS's spinning threads make each small SVD take
seconds instead of milliseconds.
Then the tables, low_rank's statistics per compile, the equal-rank comparison (same ranks,
CER and output error with and without data_aware) and the issue's verdict: rec with >= 25%
fewer parameters and det with >= 20% fewer MACs, each at CER within +1.0 point of fp32.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence

if __package__ in (None, ""):       # python bench/ocr/low_rank.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from bench.ocr import int8, prune  # noqa: E402
from bench.ocr.int8 import (VALIDATION_SEED, Tee, _fx, _ratio, calibration_folders,  # noqa: E402
                            load_feeds, log_header, model_latency, schedule_problem,
                            time_interleaved)
from bench.ocr.pipeline import default_models, evaluate, make_engine  # noqa: E402
from bench.ocr.prune import compile_det, npz_shapes, pass_lines  # noqa: E402
from bench.ocr.render import calib_set, eval_set, fingerprint  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
MODULE = "bench.ocr.low_rank"
REFERENCE = "fp32"
# the variant label of the cleanup + fuse_activations compile of a model (not a pipeline row)
CLEANED = "reference"
CHANGEABLE = ("det", "rec")
LOW_RANK_PASS = "low_rank"


def _here(name: str) -> str:
    return os.path.join(HERE, name)


DEFAULT_ROWS = {
    "det-lowrank": f"det:{_here('low_rank_det.hc')}",
    "rec-lowrank": f"rec:{_here('low_rank_rec.hc')}",
    "both": f"det:{_here('low_rank_det.hc')},rec:{_here('low_rank_rec.hc')}",
    "rec-r30-data": f"rec:{_here('low_rank_rec_r30_data.hc')}",
    "rec-r30-plain": f"rec:{_here('low_rank_rec_r30_plain.hc')}",
    "rec-r50-data": f"rec:{_here('low_rank_rec_r50_data.hc')}",
    "rec-r50-plain": f"rec:{_here('low_rank_rec_r50_plain.hc')}",
    "det-r30-data": f"det:{_here('low_rank_det_r30_data.hc')}",
    "det-r30-plain": f"det:{_here('low_rank_det_r30_plain.hc')}",
    "det-r50-data": f"det:{_here('low_rank_det_r50_data.hc')}",
    "det-r50-plain": f"det:{_here('low_rank_det_r50_plain.hc')}",
}
DEFAULT_REFERENCE = _here("low_rank_ref.hc")
# the fixed input the MACs are quoted at: det as bench.ocr.prune, rec one crop at the
# width RapidOCR pads the crops to (48 x 320)
FIXED_SHAPES = {"det": prune.FIXED_SHAPE, "rec": (1, 3, 48, 320)}
# the requirement: per model, the figure that must drop and by how much; both at
# CER within +1.0 point of fp32
TARGETS = {"det": ("macs", 0.20), "rec": ("params", 0.25), "cer_points": 1.0}
PAIR_SUFFIXES = ("-data", "-plain")
FIGURE_NAMES = {"macs_fixed": "at the fixed shape", "macs_calib_mean": "on the calibration shapes",
                "params": "of the weights"}


# --------------------------------------------------------------------------- arguments

def command_line(argv: Sequence[str] | None) -> str:
    return int8.command_line(argv, MODULE)


def parse_row(name: str, spec: str) -> dict[str, str]:
    """"det:FILE" | "rec:FILE" | "det:FILE,rec:FILE" -> {model: schedule file}."""
    models: dict[str, str] = {}
    for part in spec.split(","):
        kind, sep, path = part.strip().partition(":")
        if not sep or kind not in CHANGEABLE or not path or kind in models:
            raise SystemExit(f"row {name}={spec!r}: expected MODEL:FILE[,MODEL:FILE] with MODEL in "
                             f"{CHANGEABLE}, each model once, e.g. rec-r50=rec:/tmp/r50.hc")
        models[kind] = os.path.abspath(path)
    return models


def parse_rows(specs: Sequence[str], keep: str | None) -> dict[str, dict[str, str]]:
    """Row name -> {model: schedule file}: the defaults, each --row NAME=SPEC replacing or
    adding a row (in the order given), then only the rows named in `keep` (comma list) if
    given. Every schedule file must exist."""
    rows = {name: parse_row(name, spec) for name, spec in DEFAULT_ROWS.items()}
    for item in specs:
        name, sep, spec = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise SystemExit(f"--row {item!r}: expected NAME=MODEL:FILE, e.g. rec-r50=rec:/tmp/r50.hc")
        if name == REFERENCE:
            raise SystemExit(f"--row {item!r}: {REFERENCE!r} is the shipped pipeline, not a schedule")
        rows[name] = parse_row(name, spec)
    if keep:
        wanted = [k.strip() for k in keep.split(",") if k.strip()]
        unknown = [k for k in wanted if k not in rows]
        if unknown:
            raise SystemExit(f"--rows: unknown row(s) {unknown}; rows: {', '.join(rows)}")
        rows = {k: rows[k] for k in wanted}
    for name, models in rows.items():
        for kind, path in models.items():
            if not os.path.isfile(path):
                raise SystemExit(f"schedule file of row {name!r} ({kind}) not found: {path}")
    return rows


def equal_rank_pairs(rows: dict[str, dict[str, str]]) -> dict[str, tuple[str, str, str]]:
    """STEM -> (model, data row, plain row) for every STEM-data / STEM-plain pair of rows that
    change the same single model."""
    data_suffix, plain_suffix = PAIR_SUFFIXES
    pairs = {}
    for name, models in rows.items():
        if not name.endswith(data_suffix):
            continue
        stem = name.removesuffix(data_suffix)
        plain = rows.get(stem + plain_suffix)
        if plain is not None and len(models) == 1 and set(plain) == set(models):
            pairs[stem] = (next(iter(models)), name, stem + plain_suffix)
    return pairs


# --------------------------------------------------------------------------- model figures

def output_errors(reference: str, paths: dict[str, str], feeds: Sequence[dict]) -> dict[str, float]:
    """label -> mean over `feeds` (and outputs) of ||y - y_ref|| / ||y_ref||, y_ref the outputs
    of the `reference` model (homec.quant.sensitivity.OutputErrorMeter, without graph
    optimizations so onnxruntime's rewrites do not enter the figure)."""
    from homec.quant.sensitivity import OutputErrorMeter

    with open(reference, "rb") as f:
        meter = OutputErrorMeter(f.read(), feeds)
    out = {}
    for label, path in paths.items():
        with open(path, "rb") as f:
            out[label] = meter.measure(f.read()).rel_l2
    return out


def subnormal_weights(path: str) -> int:
    """Number of subnormal float32 weight elements (0 < |w| < the smallest normal float32) in
    the initializers and Constant values of a model. x86 kernels take a slow path on
    subnormal operands (a microcode assist per multiply): a factorization that emits some in
    a weight can make that layer many times slower (homec's low_rank flushes them)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(path)
    tensors = [*model.graph.initializer, *(a.t for n in model.graph.node if n.op_type == "Constant"
                                           for a in n.attribute if a.name == "value")]
    tiny = np.finfo(np.float32).tiny
    return sum(int(np.count_nonzero((a != 0) & (np.abs(a) < tiny)))
               for a in (numpy_helper.to_array(t) for t in tensors if t.data_type == onnx.TensorProto.FLOAT))


# --------------------------------------------------------------------------- compile

def low_rank_record(rec: dict) -> dict | None:
    """The low_rank pass record of a compile record (the last one), if it ran."""
    found = [p for p in rec.get("passes", []) if p["name"] == LOW_RANK_PASS]
    return found[-1] if found else None


def low_rank_lines(rec: dict) -> list[str]:
    """low_rank's statistics as sentences: layers factorized (by method, data-aware), the model's
    MACs and parameters before -> after as the pass counts them, the budget search."""
    p = low_rank_record(rec)
    if p is None:
        return []
    st, details = p["stats"], p.get("details") or {}
    methods = ", ".join(f"{m} {st[m]}" for m in ("svd", "channel_svd", "spatial_svd", "tucker2") if st.get(m))
    lines = [f"    low_rank: {st.get('layers_factorized', 0)} layers factorized"
             + (f" ({methods})" if methods else "")
             + f", {st.get('data_aware_layers', 0)} data-aware; "
             f"{st.get('skipped_not_cheaper', 0)} not cheaper, "
             f"{st.get('skipped_layers', 0)} unsupported; {p['seconds']:.0f}s of "
             f"{rec['seconds']:.0f}s compile"]
    for what in ("macs", "params"):
        before, after = st.get(f"{what}_before"), st.get(f"{what}_after")
        if before:
            lines.append(f"    low_rank: {what} {before:,} -> {after:,} ({1 - after / before:.1%} fewer)")
    measured = st.get("candidates_measured", 0)
    if measured:
        auto = details.get("auto") or {}
        lines.append(f"    low_rank: {measured} candidates measured (sensitivity evaluations); budget "
                     f"{auto.get('budget')} of the {auto.get('objective')}, saved {auto.get('saved')}, "
                     f"output rel. L2 {auto.get('rel_l2')} on the sensitivity samples")
    skipped = details.get("skipped") or []
    reasons: dict[str, int] = {}
    for s in skipped:
        reasons[s.get("reason", "?")] = reasons.get(s.get("reason", "?"), 0) + 1
    if reasons:
        lines.append("    low_rank skipped: " + "; ".join(f"{r}: {n}" for r, n in reasons.items()))
    return lines


def layer_ranks(rec: dict) -> list[tuple[str, str, tuple[int, ...]]]:
    """(node, method, ranks) of every layer low_rank factorized, from its details."""
    p = low_rank_record(rec) or {}
    return [(x["node"], x["method"], tuple(x["ranks"])) for x in (p.get("details") or {}).get("layers", [])]


def compile_variants(rows: dict[str, dict[str, str]], reference: str, problems: dict[str, str | None],
                     folders: dict[str, str], work: str, log: Callable[[str], None]
                     ) -> tuple[dict[tuple[str, str], str], dict[str, dict]]:
    """Compile every distinct (model, schedule) of the rows and each changed model's reference.
    Returns ((model, schedule) -> variant label, label -> compile record); the label of a
    variant is its model and the first row using it ("rec:rec-lowrank"), the reference's
    "<model>:reference"."""
    fp32 = default_models()
    labels: dict[tuple[str, str], str] = {}
    for name, models in rows.items():
        for kind, path in models.items():
            labels.setdefault((kind, path), f"{kind}:{name}")
    for kind in sorted({k for models in rows.values() for k in models}):
        labels[(kind, reference)] = f"{kind}:{CLEANED}"
    records: dict[str, dict] = {}
    for (kind, path), label in labels.items():
        if problems.get(path):
            continue
        out_name = label.replace(":", "-")
        r = compile_det(out_name, path, fp32[kind], folders[kind], work)
        r["kind"] = kind
        records[label] = r
        if "passes" not in r:
            log(f"  [{label}] compile FAILED after {r['seconds']:.0f}s: {r['error']}")
            continue
        log(f"  [{label}] {'ok' if r['ok'] else 'output REJECTED'} in {r['seconds']:.0f}s "
            f"({os.path.relpath(path)})" + ("" if r["ok"] else f": {r['check']}"))
        for line in pass_lines(r) + low_rank_lines(r):
            log(line)
    return labels, records


# --------------------------------------------------------------------------- verdict

def _mark(ok: bool | None) -> str:
    return "-" if ok is None else ("ok" if ok else "MISSED")


def reduction(after: float | None, before: float | None) -> float | None:
    return 1 - after / before if after is not None and before else None


def row_verdict(name: str, models: dict[str, str], row_labels: dict[str, str], figures: dict,
                results: dict, model_lat: dict, timing: dict) -> dict:
    """Per changed model the issue's figure (det MACs, at the fixed shape and the calibration
    mean; rec parameters) reduced against fp32 and against the reference compile (the
    judged reduction is the smallest of them), the row's CER against fp32, and the latency
    ratios (model alone vs fp32 and vs the reference; the pipeline vs fp32)."""
    d_cer = (results[name]["cer"] - results[REFERENCE]["cer"]) * 100
    out: dict = {"cer_points": d_cer, "cer_ok": d_cer <= TARGETS["cer_points"], "models": {}}
    for kind in models:
        what, target = TARGETS[kind]
        own = figures[kind][row_labels[kind]]
        keys = ("macs_fixed", "macs_calib_mean") if what == "macs" else ("params",)
        # figure -> (reduction vs fp32, vs the reference compile)
        red = {key: tuple(reduction(own[key], figures[kind][label][key]) if label in figures[kind] else None
                          for label in (REFERENCE, f"{kind}:{CLEANED}")) for key in keys}
        judged = [r for pair in red.values() for r in pair if r is not None]
        lat = model_lat.get(kind, {})
        own_t = lat.get(row_labels[kind], {})
        speed = {f"{clock}_vs_{base}": _ratio(lat.get(label, {}).get(f"{clock}_s"), own_t.get(f"{clock}_s"))
                 for clock in ("wall", "cpu")
                 for base, label in ((REFERENCE, REFERENCE), (CLEANED, f"{kind}:{CLEANED}"))}
        out["models"][kind] = {"figure": what, "target": target, "reduction": red,
                               "reduction_ok": min(judged) >= target if judged else None,
                               "speedup_alone": speed}
    ref_p, own_p = timing.get(REFERENCE, {}), timing.get(name, {})
    out["pipeline_speedup"] = {c: _ratio(ref_p.get(f"{c}_s"), own_p.get(f"{c}_s")) for c in ("wall", "cpu")}
    out["ok"] = out["cer_ok"] and all(m["reduction_ok"] for m in out["models"].values())
    return out


def verdict_lines(name: str, v: dict) -> list[str]:
    lines = [f"{name} vs {REFERENCE}: CER {v['cer_points']:+.2f} points (target <= "
             f"+{TARGETS['cer_points']:.1f}): {_mark(v['cer_ok'])}; pipeline "
             f"{_fx(v['pipeline_speedup']['wall'])} wall, {_fx(v['pipeline_speedup']['cpu'])} cpu"]
    for kind, m in v["models"].items():
        red = "; ".join(f"{_fx(a, '{:.1%}')} / {_fx(b, '{:.1%}')} {FIGURE_NAMES[key]}"
                        for key, (a, b) in m["reduction"].items())
        s = m["speedup_alone"]
        lines.append(f"  {kind} {m['figure']} fewer vs fp32 / vs the {CLEANED}: {red} "
                     f"(target >= {m['target']:.0%}): {_mark(m['reduction_ok'])}")
        lines.append(f"  {kind} alone in onnxruntime: {_fx(s['wall_vs_fp32'])} wall, "
                     f"{_fx(s['cpu_vs_fp32'])} cpu vs fp32; {_fx(s[f'wall_vs_{CLEANED}'])} wall, "
                     f"{_fx(s[f'cpu_vs_{CLEANED}'])} cpu vs the {CLEANED} (cleanup + fuse_activations)")
    return lines


# --------------------------------------------------------------------------- tables

def pipeline_table(log, rows, results, timing, time_n, repeats, n_samples) -> None:
    ref = results[REFERENCE]
    t_ref = timing.get(REFERENCE, {})
    log(f"{'pipeline':<15} {'changed':<8} {'CER':>7} {'dCER pt':>8} {'CER-nsp':>8} {'exact':>7} "
        f"{'eval ms':>8} {'wall ms':>8} {'cpu ms':>8} {'x wall':>7} {'x cpu':>6}")
    for name, r in results.items():
        t = timing.get(name)
        clocks = (f"{t['wall_s'] * 1e3:8.0f} {t['cpu_s'] * 1e3:8.0f} "
                  f"{_fx(_ratio(t_ref.get('wall_s'), t['wall_s'])):>7} "
                  f"{_fx(_ratio(t_ref.get('cpu_s'), t['cpu_s'])):>6}") if t else \
            f"{'-':>8} {'-':>8} {'-':>7} {'-':>6}"
        changed = "+".join(rows.get(name, {})) or "-"
        log(f"{name:<15} {changed:<8} {r['cer'] * 100:6.2f}% {(r['cer'] - ref['cer']) * 100:+8.2f} "
            f"{r['cer_nospace'] * 100:7.2f}% {r['exact'] * 100:6.1f}% {r['wall_median_s'] * 1e3:8.0f} "
            + clocks)
    log("CER: edits / reference chars, lines joined by '\\n', NFKC + whitespace collapsed; CER-nsp: "
        "spaces ignored; exact: images read exactly; dCER pt: CER minus fp32's, in points; eval ms: "
        "median per image of the CER pass"
        + (f"; wall/cpu ms: time_pipeline on the first {min(time_n, n_samples)} images, best of "
           f"{repeats} interleaved rounds, median over images; x: fp32 time / row time "
           f"(equal-rank rows not timed)." if timing else "."))


def model_table(log, kind, figures, errors, lat) -> None:
    """One model's variants: MACs, parameters, size, output error, latency alone."""
    fx = "x".join(map(str, FIXED_SHAPES[kind]))
    log(f"{kind:<4} {'variant':<16} {'GMACs':>7} {'x fp32':>7} {'GMACs cal':>10} {'x fp32':>7} "
        f"{'params M':>9} {'x fp32':>7} {'MB':>6} {'nodes':>6} {'subn':>6} {'rel L2':>8} {'ms wall':>8} "
        f"{'ms cpu':>7} {'x fp32':>7} {'x ref':>6}")
    base = figures[REFERENCE]
    base_t, cleaned_t = lat.get(REFERENCE, {}), lat.get(f"{kind}:{CLEANED}", {})
    for label, f in figures.items():
        t = lat.get(label)
        err = errors.get(label)
        timed = (f"{t['wall_s'] * 1e3:8.1f} {t['cpu_s'] * 1e3:7.1f} "
                 f"{_fx(_ratio(base_t.get('cpu_s'), t['cpu_s'])):>7} "
                 f"{_fx(_ratio(cleaned_t.get('cpu_s'), t['cpu_s'])):>6}") if t else \
            f"{'-':>8} {'-':>7} {'-':>7} {'-':>6}"
        log(f"{kind:<4} {label.removeprefix(kind + ':'):<16} {f['macs_fixed'] / 1e9:7.3f} "
            f"{_fx(_ratio(f['macs_fixed'], base['macs_fixed'])):>7} {f['macs_calib_mean'] / 1e9:10.3f} "
            f"{_fx(_ratio(f['macs_calib_mean'], base['macs_calib_mean'])):>7} {f['params'] / 1e6:9.3f} "
            f"{_fx(_ratio(f['params'], base['params'])):>7} {f['bytes'] / 1e6:6.2f} {f['nodes']:6d} "
            f"{f.get('subnormal_weights', 0):6d} {_fx(err, '{:.2e}'):>8} " + timed
            + ("" if f["complete"] else "  (MACs incomplete: some shapes unknown)"))
    log(f"GMACs at {fx} and the mean over the {figures[REFERENCE]['calib_inputs']} calibration "
        f"inputs' shapes (homec.analysis.cost: Conv/Gemm/MatMul multiply-accumulates); params: "
        f"weights in the file (fp32 still holds its BatchNorm parameters, which cleanup folds); "
        f"x fp32 for MACs/params: variant / fp32; subn: subnormal float32 weights (x86 kernels slow "
        f"down on them); rel L2: output error vs fp32 on the calibration "
        f"inputs; ms: alone in onnxruntime, x fp32 / x ref: fp32's / the {CLEANED}'s cpu time over "
        f"the variant's.")


def equal_rank_lines(pairs, row_labels, records, figures, errors, results) -> list[str]:
    """The data-aware vs plain table: per pair, whether the ranks are the same layer by layer,
    the model's parameters and MACs, the output error and the CER of each."""
    if not pairs:
        return []
    lines = [f"{'pair':<10} {'model':<5} {'variant':<6} {'layers':>6} {'same ranks':>10} "
             f"{'params M':>9} {'GMACs':>7} {'rel L2':>9} {'CER':>7} {'dCER pt':>8}"]
    ref_cer = results[REFERENCE]["cer"]
    for stem, (kind, data_row, plain_row) in pairs.items():
        if data_row not in results or plain_row not in results:
            lines.append(f"{stem:<10} {kind:<5} not run (see above)")
            continue
        ranks = {row: layer_ranks(records[row_labels[row][kind]]) for row in (data_row, plain_row)}
        same = "yes" if ranks[data_row] == ranks[plain_row] else "NO"
        for row, variant in ((data_row, "data"), (plain_row, "plain")):
            label = row_labels[row][kind]
            f = figures[kind][label]
            lines.append(f"{stem:<10} {kind:<5} {variant:<6} {len(ranks[row]):6d} {same:>10} "
                         f"{f['params'] / 1e6:9.3f} {f['macs_fixed'] / 1e9:7.3f} "
                         f"{_fx(errors[kind].get(label), '{:.3e}'):>9} {results[row]['cer'] * 100:6.2f}% "
                         f"{(results[row]['cer'] - ref_cer) * 100:+8.2f}")
        gain = (results[plain_row]["cer"] - results[data_row]["cer"]) * 100
        e_d, e_p = errors[kind].get(row_labels[data_row][kind]), errors[kind].get(row_labels[plain_row][kind])
        lines.append(f"{'':<10} data-aware: {gain:+.2f} CER points better, output error "
                     f"{_fx(_ratio(e_p, e_d))} smaller than plain SVD at the same ranks")
    lines.append("data: low_rank(data_aware=true) fits each layer's output on the calibration data "
                 "(whitened SVD + mean correction); plain: the truncated SVD of the weights (AIMET's "
                 "weight SVD); same ranks: the (node, method, ranks) lists of the two compiles agree.")
    return lines


# --------------------------------------------------------------------------- main

def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=150, help="eval images (default 150)")
    ap.add_argument("--calib-n", type=int, default=48, help="calibration images (default 48)")
    ap.add_argument("--validation", action="store_true",
                    help=f"measure on the validation labels (calib_set(N, seed={VALIDATION_SEED})), "
                         "disjoint from the eval set and the calibration images: for tuning options")
    ap.add_argument("--work", default=os.path.join("/tmp", "homec-bench-low-rank"),
                    help="folder for calibration data and the compiled models")
    ap.add_argument("--calib-from", metavar="DIR",
                    help="reuse calibration folders captured earlier (DIR/{det,rec,cls}, "
                         "DIR/manifest.json), e.g. bench.ocr.baseline's WORK/calib")
    ap.add_argument("--row", action="append", default=[], metavar="NAME=MODEL:FILE[,MODEL:FILE]",
                    help="replace a row or add one (repeat); defaults: " + "; ".join(
                        f"{k}={v.replace(HERE + os.sep, '')}" for k, v in DEFAULT_ROWS.items()))
    ap.add_argument("--rows", metavar="NAME,...", help="run only these rows (and fp32)")
    ap.add_argument("--reference", default=DEFAULT_REFERENCE, metavar="FILE",
                    help="schedule of the reference compile of each changed model (default "
                         f"{os.path.relpath(DEFAULT_REFERENCE)}: cleanup and fuse_activations)")
    ap.add_argument("--error-samples", type=int, default=16,
                    help="calibration inputs for the output error vs fp32 (default 16; 0: skip)")
    ap.add_argument("--time-n", type=int, default=40,
                    help="eval images timed with time_pipeline (default 40; 0: no pipeline timing)")
    ap.add_argument("--repeats", type=int, default=3, help="pipeline timing rounds (default 3)")
    ap.add_argument("--model-samples", type=int, default=6,
                    help="calibration inputs for the latency of each model alone (default 6; 0: skip)")
    ap.add_argument("--model-repeats", type=int, default=5, help="runs per input (default 5)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", metavar="PATH", help="also write the printed text here")
    ap.add_argument("--json", metavar="PATH", help="write all figures (and predictions) here")
    args = ap.parse_args(argv)
    rows = parse_rows(args.row, args.rows)
    reference = os.path.abspath(args.reference)
    if not os.path.isfile(reference):
        raise SystemExit(f"--reference: schedule file not found: {reference}")
    pairs = equal_rank_pairs(rows)

    log = Tee()
    t_start = time.perf_counter()
    fp32 = default_models()
    os.makedirs(args.work, exist_ok=True)
    versions = log_header(log, argv, args.threads, MODULE)
    log(f"# OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')} (numpy's SVDs in the "
        "compiles; onnxruntime's threads are --threads)")
    for name, models in rows.items():
        log(f"row {name}: " + ", ".join(f"{k} <- {os.path.relpath(p)}" for k, p in models.items()))
    log(f"{CLEANED}: {os.path.relpath(reference)}")

    paths = sorted({p for models in rows.values() for p in models.values()} | {reference})
    problems = {p: schedule_problem(p) for p in paths}
    for p, problem in problems.items():
        if problem:
            log(f"homec: {os.path.relpath(p)} does not validate, its rows are skipped:\n  "
                + problem.replace("\n", "\n  "))

    samples = calib_set(args.n, seed=VALIDATION_SEED) if args.validation else eval_set(args.n)
    log(f"{'validation' if args.validation else 'eval'} set: {len(samples)} images, "
        f"{sum(len(s.lines) for s in samples)} lines, fingerprint {fingerprint(samples)}")
    folders = calibration_folders(args.work, args.calib_from, args.calib_n, args.threads, log)

    # ---- compile every (model, schedule) once, and each changed model's reference
    labels, records = compile_variants(rows, reference, problems, folders, args.work, log)
    good = {label: r["path"] for label, r in records.items() if r["ok"]}
    row_labels = {name: {k: labels[(k, p)] for k, p in models.items()} for name, models in rows.items()}
    runnable = {name: models for name, models in rows.items()
                if all(row_labels[name][k] in good for k in models)}

    # ---- figures per model variant: MACs, parameters, size, output error vs fp32
    t0 = time.perf_counter()
    kinds = sorted({k for models in rows.values() for k in models})
    figures, errors = {}, {}
    for kind in kinds:
        shapes = npz_shapes(folders[kind])
        variants = {REFERENCE: fp32[kind]}
        variants.update({lb: p for lb, p in good.items() if lb.startswith(kind + ":")})
        figures[kind] = {lb: prune.model_figures(p, shapes, FIXED_SHAPES[kind]) for lb, p in variants.items()}
        errors[kind] = {} if args.error_samples <= 0 else \
            output_errors(fp32[kind], variants, load_feeds(folders[kind], args.error_samples))
        for label, path in variants.items():
            figures[kind][label]["subnormal_weights"] = subnormal_weights(path)
    log(f"model figures and output errors in {time.perf_counter() - t0:.0f}s")

    # ---- pipelines: CER over the eval set
    engines = {REFERENCE: make_engine(fp32["det"], fp32["rec"], fp32["cls"], threads=args.threads)}
    for name, models in runnable.items():
        chosen = {k: good[row_labels[name][k]] if k in models else fp32[k] for k in ("det", "rec")}
        engines[name] = make_engine(chosen["det"], chosen["rec"], fp32["cls"], threads=args.threads)
    results: dict[str, dict] = {}
    for name, engine in engines.items():
        t0 = time.perf_counter()
        results[name] = evaluate(samples, engine=engine)
        log(f"pipeline {name}: CER {results[name]['cer'] * 100:.2f}% in {time.perf_counter() - t0:.0f}s")

    # ---- latency: pipelines outside the equal-rank pairs, and every model variant alone
    in_pairs = {row for _, data_row, plain_row in pairs.values() for row in (data_row, plain_row)}
    timing: dict[str, dict[str, float]] = {}
    if args.time_n > 0:
        t0 = time.perf_counter()
        timing = time_interleaved({n: e for n, e in engines.items() if n not in in_pairs},
                                  [s.image for s in samples[:args.time_n]], args.repeats)
        log(f"pipeline latency measured in {time.perf_counter() - t0:.0f}s")
    model_lat: dict[str, dict] = {}
    if args.model_samples > 0:
        t0 = time.perf_counter()
        for kind in kinds:
            variants = {REFERENCE: fp32[kind]}
            variants.update({lb: good[lb] for lb in figures[kind] if lb != REFERENCE})
            model_lat[kind] = model_latency(variants, load_feeds(folders[kind], args.model_samples),
                                            args.model_repeats, args.threads)
        log(f"model latency measured in {time.perf_counter() - t0:.0f}s")

    # ---- the tables
    log()
    log(f"PP-OCRv4 in RapidOCR on {len(samples)} rendered appliance labels "
        f"({results[REFERENCE]['ref_chars']} reference characters), {args.threads} thread(s); "
        "cls is the shipped fp32 model in every row")
    pipeline_table(log, rows, results, timing, args.time_n, args.repeats, len(samples))
    for name in rows:
        if name not in results:
            why = [records[lb].get("error") or records[lb].get("check") if lb in records else
                   "the schedule does not validate" for lb in row_labels[name].values() if lb not in good]
            log(f"{name:<15} not run: {'; '.join(str(w)[:300] for w in why)}")
    for kind in kinds:
        log()
        log(f"{kind} model alone ({args.threads} thread(s), ORT_ENABLE_ALL"
            + (f", first {args.model_samples} calibration inputs, best of {args.model_repeats}, "
               f"median)" if model_lat else ", not timed)")
            + (f"; rel L2 on the first {args.error_samples} calibration inputs" if errors[kind] else ""))
        model_table(log, kind, figures[kind], errors[kind], model_lat.get(kind, {}))

    log()
    log("equal ranks, data-aware vs plain SVD (uniform ratio):")
    for line in equal_rank_lines(pairs, row_labels, records, figures, errors, results) or \
            ["  (no STEM-data / STEM-plain pair of rows ran)"]:
        log(line)

    verdicts = {name: row_verdict(name, rows[name], row_labels[name], figures, results, model_lat, timing)
                for name in results if name != REFERENCE and name not in in_pairs}
    log()
    log(f"verdict (issue 6: rec >= {TARGETS['rec'][1]:.0%} fewer parameters, det >= "
        f"{TARGETS['det'][1]:.0%} fewer MACs, each at CER within +{TARGETS['cer_points']:.1f} point "
        "of fp32; reductions judged against fp32 and the reference compile, the smaller counts):")
    for name, vd in verdicts.items():
        for line in verdict_lines(name, vd):
            log(line)
    for name in rows:
        if name not in results:
            log(f"{name}: no verdict, the row did not run")
    log(f"total {time.perf_counter() - t_start:.0f}s")

    if args.out:
        log.write(args.out)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": command_line(argv), "versions": versions, "rows": rows,
                       "reference_schedule": reference, "schedule_problems": problems,
                       "pairs": pairs, "row_variants": row_labels,
                       "eval_fingerprint": fingerprint(samples), "validation": args.validation,
                       "n": len(samples), "results": results, "timing": timing,
                       "model_latency": model_lat, "figures": figures, "output_errors": errors,
                       "compile": records, "verdict": verdicts, "targets": TARGETS,
                       "calibration": folders}, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
