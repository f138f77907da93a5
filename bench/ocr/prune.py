"""Channel-pruning benchmark (issue 5): PP-OCRv4 det pruned by homec's prune_channels, with and
without reconstruction, against the shipped det, in the real RapidOCR pipeline.

    python -m bench.ocr.prune                                    # 150 eval images, everything
    python -m bench.ocr.prune --out bench/results/prune.txt --json /tmp/prune.json
    python -m bench.ocr.prune --n 20 --time-n 8 --calib-from /tmp/bl/work2/calib
    python -m bench.ocr.prune --schedule r40=/tmp/r40.hc          # one more row
    python -m bench.ocr.prune --validation --schedule pruned=/tmp/try.hc   # tuning options
    python bench/ocr/prune.py --n 4 --schedule pruned=/tmp/cleanup_only.hc

Rows (pipelines): "fp32", the shipped det; "pruned", det compiled with bench/ocr/prune.hc
(prune_channels with reconstruct=true); "pruned-plain", with bench/ocr/prune_plain.hc (the same
pruning, reconstruct=false). --schedule NAME=FILE replaces a row's schedule or adds a row; a
row named "unpruned" (e.g. cleanup + fuse_activations only) is the reference for what pruning
itself buys in latency, since those passes alone already speed up the shipped det. Only det
changes: rec and cls stay the shipped fp32 models in every row.

Steps:
  1. Render the eval set (--n; --validation: labels from another seed, as bench.ocr.int8) and
     get calibration folders as bench.ocr.int8 does (capture into WORK/calib, or reuse WORK/calib
     or --calib-from DIR).
  2. Each schedule: homec.compile(det, SCHEDULE, calib=det folder), saved to WORK/<row>/ and
     checked (onnx.checker full, one onnxruntime run). A schedule that does not validate (e.g.
     it names a pass that is not registered) or a compile that fails is reported and its row
     skipped; the other rows still run.
  3. det figures, from homec's own analysis (homec.analysis.shapes.infer_shapes with the input
     pinned, homec.analysis.cost.analyze_cost): MACs at a fixed input 1x3x640x640 and the mean
     MACs over the calibration inputs' actual shapes (what RapidOCR feeds: shorter side 736);
     parameters (count_params) and the file size.
  4. Each pipeline runs over the eval set: CER (spaces counted), CER ignoring spaces, exact-image
     rate (bench.ocr.pipeline.evaluate).
  5. Latency: the pipelines with bench.ocr.int8.time_interleaved (time_pipeline, wall and CPU
     clocks, best of --repeats interleaved rounds, median over the first --time-n images), and
     det alone with bench.ocr.int8.model_latency (one onnxruntime session each, ORT_ENABLE_ALL,
     --threads intra-op threads, first --model-samples calibration inputs, best of
     --model-repeats, median).
Then the tables, the prune_channels statistics of each row, and the issue's verdict: >= 30%
fewer MACs, CER within +1.0 point of fp32, det latency reduced (ratio reported), for every
pruned row (with reconstruction: the requirement; without: what reconstruction buys).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
import time
import zipfile
from collections import Counter
from collections.abc import Sequence

if __package__ in (None, ""):       # python bench/ocr/prune.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402

from bench.ocr.baseline import _check, _quiet  # noqa: E402
from bench.ocr import int8  # noqa: E402
from bench.ocr.int8 import (VALIDATION_SEED, Tee, _fx, _ratio, calibration_folders,  # noqa: E402
                            load_feeds, log_header, model_latency, schedule_problem,
                            time_interleaved)
from bench.ocr.pipeline import default_models, evaluate, make_engine  # noqa: E402
from bench.ocr.render import calib_set, eval_set, fingerprint  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE = "fp32"
WITH_RECONSTRUCTION = "pruned"
DEFAULT_SCHEDULES = {WITH_RECONSTRUCTION: os.path.join(HERE, "prune.hc"),
                     "pruned-plain": os.path.join(HERE, "prune_plain.hc"),
                     "unpruned": os.path.join(HERE, "unpruned.hc")}
# an optional row (--schedule unpruned=FILE, e.g. cleanup and fuse_activations without pruning):
# when present, the verdict also gives each row's speed-up over it, i.e. what pruning itself
# buys beyond the other passes of the schedule (cleanup alone already speeds up the shipped det)
UNPRUNED = "unpruned"
PRUNE_PASS = "prune_channels"
FIXED_SHAPE = (1, 3, 640, 640)
# the requirement for the pruned det (with reconstruction)
TARGETS = {"macs_reduction": 0.30, "cer_points": 1.0, "speedup": 1.0}


# --------------------------------------------------------------------------- arguments

MODULE = "bench.ocr.prune"


def command_line(argv: Sequence[str] | None) -> str:
    return int8.command_line(argv, MODULE)


def parse_schedules(specs: Sequence[str]) -> dict[str, str]:
    """Row name -> schedule file: the defaults, then each --schedule NAME=FILE replacing or
    adding a row (in the order given)."""
    out = dict(DEFAULT_SCHEDULES)
    for spec in specs:
        name, sep, path = spec.partition("=")
        name = name.strip()
        if not sep or not name or not path:
            raise SystemExit(f"--schedule {spec!r}: expected NAME=FILE, e.g. r40=/tmp/r40.hc")
        if name == REFERENCE:
            raise SystemExit(f"--schedule {spec!r}: {REFERENCE!r} is the shipped det, not a schedule")
        out[name] = path
    for name, path in out.items():
        if not os.path.isfile(path):
            raise SystemExit(f"schedule file for {name!r} not found: {path}")
    return out


# --------------------------------------------------------------------------- det figures

def npz_shapes(folder: str) -> list[tuple[int, ...]]:
    """The shape of the (single) array of each .npz in `folder`, file order, read from the
    .npy headers without decompressing the data."""
    shapes = []
    for path in sorted(glob.glob(os.path.join(folder, "*.npz"))):
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.endswith(".npy")]
            if len(names) != 1:
                raise SystemExit(f"{path}: expected one array (det has one input), found {names}")
            with z.open(names[0]) as f:
                major, _ = np.lib.format.read_magic(f)
                read_header = (np.lib.format.read_array_header_1_0 if major == 1 else
                               np.lib.format.read_array_header_2_0)
                shape, _, _ = read_header(f)
        shapes.append(tuple(int(d) for d in shape))
    return shapes


def model_figures(path: str, calib_shapes: Sequence[tuple[int, ...]],
                  fixed_shape: Sequence[int] = FIXED_SHAPE) -> dict:
    """homec's analysis of one single-input model: MACs at `fixed_shape` (det's FIXED_SHAPE by
    default), per distinct calibration shape and their mean over the calibration inputs (sum over inputs of MACs(shape) / inputs),
    parameters, file size, node count. MACs are the counted Conv/ConvTranspose/Gemm/MatMul
    multiply-accumulates (homec.analysis.cost); `complete` is False when a layer's shape
    stayed unknown (then the totals are lower bounds)."""
    from homec.analysis.cost import analyze_cost
    from homec.analysis.shapes import infer_shapes
    from homec.onnx_io import load

    graph = load(path)
    data_inputs = [v for v in graph.inputs if not v.is_initializer]
    if len(data_inputs) != 1:
        raise SystemExit(f"{path}: expected one input, found {[v.name for v in data_inputs]}")
    name = data_inputs[0].name

    def at(shape):
        cost = analyze_cost(graph, infer_shapes(graph, {name: shape}))
        return cost.total_macs, cost.complete, cost.params

    fixed, fixed_complete, params = at(tuple(fixed_shape))
    per_shape: dict[tuple[int, ...], int] = {}
    complete = fixed_complete
    for shape in calib_shapes:
        if shape not in per_shape:
            per_shape[shape], ok, _ = at(shape)
            complete = complete and ok
    mean = statistics.fmean(per_shape[s] for s in calib_shapes) if calib_shapes else None
    return {"macs_fixed": fixed, "fixed_shape": list(fixed_shape), "macs_calib_mean": mean,
            "macs_by_shape": {"x".join(map(str, s)): m for s, m in per_shape.items()},
            "calib_inputs": len(calib_shapes), "complete": complete,
            "params": params.count, "param_bytes": params.bytes,
            "bytes": os.path.getsize(path), "nodes": len(graph)}


# --------------------------------------------------------------------------- compile

def compile_det(name: str, schedule: str, src: str, calib_folder: str, work: str) -> dict:
    """homec.compile(src, schedule, calib=calib_folder) saved to WORK/<name>/ and checked: a
    record with ok, seconds, error | check, path, every pass's record (options, stats,
    details) and the compile warnings. A crashing pass leaves its reproducer in
    WORK/<name>/crash."""
    import homec
    from homec.errors import HomecError

    out_dir = os.path.join(work, name)
    os.makedirs(out_dir, exist_ok=True)
    dst = os.path.join(out_dir, os.path.basename(src).replace(".onnx", f"_{name}.onnx"))
    rec: dict = {"name": name, "schedule": schedule, "path": dst, "ok": False}
    t0 = time.perf_counter()
    try:
        with _quiet():
            result = homec.compile(src, schedule, calib=calib_folder,
                                   reproducer_dir=os.path.join(out_dir, "crash"))
        homec.save(result.model, dst)
    except HomecError as e:
        rec["error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:600]}"
        rec["seconds"] = time.perf_counter() - t0
        return rec
    rec["seconds"] = time.perf_counter() - t0
    rec["passes"] = result.report["passes"]
    rec["warnings"] = result.report.get("warnings") or []
    rec["ok"], rec["check"] = _check(dst, calib_folder)
    return rec


def refusals(stats: dict, details: dict) -> Counter:
    """Reason -> number of channel groups the pass refused to prune. Taken from its details
    when they hold a "refused..." entry (a list of records with a "reason", or a mapping
    reason -> count | list), else from its "refused_<reason>" statistics."""
    found: Counter = Counter()
    for key, val in details.items():
        if not key.startswith("refused"):
            continue
        if isinstance(val, dict):
            for reason, v in val.items():
                found[str(reason)] += v if isinstance(v, int) and not isinstance(v, bool) else \
                    len(v) if isinstance(v, (list, tuple)) else 1
        elif isinstance(val, (list, tuple)):
            for item in val:
                found[str(item.get("reason", "?")) if isinstance(item, dict) else str(item)] += 1
    if found:
        return found
    for key, val in stats.items():
        if key.startswith("refused") and isinstance(val, (int, float)) and not isinstance(val, bool) and val:
            found[key.removeprefix("refused").strip("_") or "unspecified"] += int(val)
    return found


def pass_lines(rec: dict) -> list[str]:
    """One line per pass of a compile record (time, nodes, non-zero statistics), and for
    prune_channels the refused groups by reason."""
    lines = []
    for p in rec.get("passes", []):
        changed = {k: v for k, v in p["stats"].items() if v}
        lines.append(f"    {p['name']:<16} {p['seconds']:7.1f}s nodes {p['nodes_before']}->"
                     f"{p['nodes_after']} {json.dumps(changed, default=str)}")
        if p["name"] == PRUNE_PASS:
            reasons = refusals(p["stats"], p.get("details") or {})
            lines.append(f"    {'':<16} refused groups: {sum(reasons.values())}"
                         + (" (" + ", ".join(f"{r}: {c}" for r, c in reasons.most_common()) + ")"
                            if reasons else "")
                         + (f"; details: {', '.join(sorted(p['details']))}" if p.get("details") else ""))
    if rec.get("warnings"):
        lines.append(f"    {len(rec['warnings'])} warning(s), first: {str(rec['warnings'][0])[:200]}")
    return lines


# --------------------------------------------------------------------------- verdict

def _mark(ok: bool | None) -> str:
    return "-" if ok is None else ("ok" if ok else "MISSED")


def verdict(name: str, results: dict, det: dict, det_lat: dict, timing: dict) -> dict:
    """The issue's three figures for row `name` against fp32, each with its mark."""
    macs = {k: 1 - det[name][k] / det[REFERENCE][k] if det[name][k] and det[REFERENCE][k] else None
            for k in ("macs_fixed", "macs_calib_mean")}
    d_cer = (results[name]["cer"] - results[REFERENCE]["cer"]) * 100
    ref_m, own_m = det_lat.get(REFERENCE, {}), det_lat.get(name, {})
    ref_p, own_p = timing.get(REFERENCE, {}), timing.get(name, {})
    speed = {"det_wall": _ratio(ref_m.get("wall_s"), own_m.get("wall_s")),
             "det_cpu": _ratio(ref_m.get("cpu_s"), own_m.get("cpu_s")),
             "pipeline_wall": _ratio(ref_p.get("wall_s"), own_p.get("wall_s")),
             "pipeline_cpu": _ratio(ref_p.get("cpu_s"), own_p.get("cpu_s"))}
    # judged on det alone (the model pruning changes), both clocks; the pipeline when det
    # alone was not timed
    judged = [speed["det_wall"], speed["det_cpu"]] if own_m else \
        [speed["pipeline_wall"], speed["pipeline_cpu"]]
    judged = [s for s in judged if s is not None]
    base_m, base_p = det_lat.get(UNPRUNED, {}), timing.get(UNPRUNED, {})
    if name != UNPRUNED and (base_m or base_p):
        speed.update({"det_wall_vs_unpruned": _ratio(base_m.get("wall_s"), own_m.get("wall_s")),
                      "det_cpu_vs_unpruned": _ratio(base_m.get("cpu_s"), own_m.get("cpu_s")),
                      "pipeline_wall_vs_unpruned": _ratio(base_p.get("wall_s"), own_p.get("wall_s")),
                      "pipeline_cpu_vs_unpruned": _ratio(base_p.get("cpu_s"), own_p.get("cpu_s"))})
    return {
        "macs_reduction": macs,
        "macs_ok": None if macs["macs_fixed"] is None else
        min(m for m in macs.values() if m is not None) >= TARGETS["macs_reduction"],
        "cer_points": d_cer, "cer_ok": d_cer <= TARGETS["cer_points"],
        "speedup": speed, "speed_ok": (min(judged) > TARGETS["speedup"]) if judged else None,
    }


def verdict_lines(name: str, v: dict) -> list[str]:
    m, s = v["macs_reduction"], v["speedup"]
    role = "with reconstruction" if name == WITH_RECONSTRUCTION else \
        "without reconstruction" if name == "pruned-plain" else "extra row"
    vs_unpruned = [] if "det_wall_vs_unpruned" not in s else [
        f"  speed vs {UNPRUNED}: det alone {_fx(s['det_wall_vs_unpruned'])} wall, "
        f"{_fx(s['det_cpu_vs_unpruned'])} cpu; pipeline {_fx(s['pipeline_wall_vs_unpruned'])} wall, "
        f"{_fx(s['pipeline_cpu_vs_unpruned'])} cpu (what pruning adds to the other passes)"]
    return [
        f"{name} ({role}) vs {REFERENCE}:",
        f"  MACs  {_fx(m['macs_fixed'], '{:.1%}')} fewer at {'x'.join(map(str, FIXED_SHAPE))}, "
        f"{_fx(m['macs_calib_mean'], '{:.1%}')} on the calibration shapes "
        f"(target >= {TARGETS['macs_reduction']:.0%}): {_mark(v['macs_ok'])}",
        f"  CER   {v['cer_points']:+.2f} points (target <= +{TARGETS['cer_points']:.1f}): "
        f"{_mark(v['cer_ok'])}",
        f"  speed det alone {_fx(s['det_wall'])} wall, {_fx(s['det_cpu'])} cpu; pipeline "
        f"{_fx(s['pipeline_wall'])} wall, {_fx(s['pipeline_cpu'])} cpu (target: det faster, "
        f"> {TARGETS['speedup']:.1f}x): {_mark(v['speed_ok'])}",
        *vs_unpruned,
    ]


# --------------------------------------------------------------------------- main

def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=150, help="eval images (default 150)")
    ap.add_argument("--calib-n", type=int, default=48, help="calibration images (default 48)")
    ap.add_argument("--validation", action="store_true",
                    help=f"measure on the validation labels (calib_set(N, seed={VALIDATION_SEED})), "
                         "disjoint from the eval set and the calibration images: for tuning options")
    ap.add_argument("--work", default=os.path.join("/tmp", "homec-bench-prune"),
                    help="folder for calibration data and the pruned models")
    ap.add_argument("--calib-from", metavar="DIR",
                    help="reuse calibration folders captured earlier (DIR/{det,rec,cls}, "
                         "DIR/manifest.json), e.g. bench.ocr.baseline's WORK/calib")
    ap.add_argument("--schedule", action="append", default=[], metavar="NAME=FILE",
                    help="replace a row's schedule or add a row (repeat); defaults: "
                         + ", ".join(f"{k}={os.path.relpath(v)}" for k, v in DEFAULT_SCHEDULES.items()))
    ap.add_argument("--time-n", type=int, default=40,
                    help="eval images timed with time_pipeline (default 40; 0: no pipeline timing)")
    ap.add_argument("--repeats", type=int, default=3, help="pipeline timing rounds (default 3)")
    ap.add_argument("--model-samples", type=int, default=6,
                    help="calibration inputs for the det-alone latency (default 6; 0: skip)")
    ap.add_argument("--model-repeats", type=int, default=5, help="det-alone runs per input (default 5)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", metavar="PATH", help="also write the printed text here")
    ap.add_argument("--json", metavar="PATH", help="write all figures (and predictions) here")
    args = ap.parse_args(argv)
    schedules = parse_schedules(args.schedule)

    log = Tee()
    t_start = time.perf_counter()
    fp32 = default_models()
    os.makedirs(args.work, exist_ok=True)
    v = log_header(log, argv, args.threads, MODULE)
    log("schedules: " + ", ".join(f"{k}={v_}" for k, v_ in schedules.items()))

    problems = {name: schedule_problem(path) for name, path in schedules.items()}
    for name, p in problems.items():
        if p:
            log(f"homec: the schedule of {name} does not validate, its row is skipped "
                f"(missing passes appear in `homec passes` once written):\n  " + p.replace("\n", "\n  "))

    # labels from the calibration stream under another seed for --validation: disjoint from the
    # eval set and the calibration images, so the eval figures are not tuned on
    samples = calib_set(args.n, seed=VALIDATION_SEED) if args.validation else eval_set(args.n)
    log(f"{'validation' if args.validation else 'eval'} set: {len(samples)} images, "
        f"{sum(len(s.lines) for s in samples)} lines, fingerprint {fingerprint(samples)}")
    folders = calibration_folders(args.work, args.calib_from, args.calib_n, args.threads, log)
    calib_shapes = npz_shapes(folders["det"])

    # ---- the pruned det models
    compiled: dict[str, dict] = {}
    for name, path in schedules.items():
        if problems[name]:
            continue
        r = compile_det(name, path, fp32["det"], folders["det"], args.work)
        compiled[name] = r
        if "passes" not in r:
            log(f"  [{name}] compile FAILED after {r['seconds']:.0f}s: {r['error']}")
            continue
        log(f"  [{name}] {'ok' if r['ok'] else 'output REJECTED'} in {r['seconds']:.0f}s "
            f"({os.path.basename(path)})" + ("" if r["ok"] else f": {r['check']}"))
        for line in pass_lines(r):
            log(line)
    det_paths = {REFERENCE: fp32["det"]}
    det_paths.update({name: r["path"] for name, r in compiled.items() if r["ok"]})

    t0 = time.perf_counter()
    det = {name: model_figures(path, calib_shapes) for name, path in det_paths.items()}
    log(f"det MACs analysed in {time.perf_counter() - t0:.0f}s ({len(calib_shapes)} calibration "
        f"inputs, {len(det[REFERENCE]['macs_by_shape'])} distinct shapes)")

    # ---- pipelines: CER over the eval set (only det differs)
    engines = {name: make_engine(path, fp32["rec"], fp32["cls"], threads=args.threads)
               for name, path in det_paths.items()}
    results: dict[str, dict] = {}
    for name, engine in engines.items():
        t0 = time.perf_counter()
        results[name] = evaluate(samples, engine=engine)
        log(f"pipeline {name}: CER {results[name]['cer'] * 100:.2f}% in {time.perf_counter() - t0:.0f}s")

    # ---- latency
    timing: dict[str, dict[str, float]] = {}
    if args.time_n > 0:
        t0 = time.perf_counter()
        timing = time_interleaved(engines, [s.image for s in samples[:args.time_n]], args.repeats)
        log(f"pipeline latency measured in {time.perf_counter() - t0:.0f}s")
    det_lat: dict[str, dict[str, float]] = {}
    if args.model_samples > 0:
        det_lat = model_latency(det_paths, load_feeds(folders["det"], args.model_samples),
                                args.model_repeats, args.threads)

    # ---- the tables
    ref = results[REFERENCE]
    log()
    log(f"PP-OCRv4 in RapidOCR on {len(samples)} rendered appliance labels ({ref['ref_chars']} "
        f"reference characters), {args.threads} thread(s); only det differs between the rows")
    log(f"{'pipeline':<14} {'CER':>7} {'dCER pt':>8} {'CER-nsp':>8} {'exact':>7} {'eval ms':>8} "
        f"{'wall ms':>8} {'cpu ms':>8} {'x wall':>7} {'x cpu':>6}")
    for name, r in results.items():
        t, t_ref = timing.get(name, {}), timing.get(REFERENCE, {})
        log(f"{name:<14} {r['cer'] * 100:6.2f}% {(r['cer'] - ref['cer']) * 100:+8.2f} "
            f"{r['cer_nospace'] * 100:7.2f}% {r['exact'] * 100:6.1f}% {r['wall_median_s'] * 1e3:8.0f} "
            + (f"{t['wall_s'] * 1e3:8.0f} {t['cpu_s'] * 1e3:8.0f} "
               f"{_fx(_ratio(t_ref.get('wall_s'), t['wall_s'])):>7} "
               f"{_fx(_ratio(t_ref.get('cpu_s'), t['cpu_s'])):>6}"
               if t else f"{'-':>8} {'-':>8} {'-':>7} {'-':>6}"))
    for name in schedules:
        if name in results:
            continue
        if problems[name]:
            log(f"{name:<14} not run: the schedule does not validate (see above)")
        else:
            r = compiled[name]
            log(f"{name:<14} not run: " + (r.get("error") or r.get("check") or "?")[:300])
    log("CER: edits / reference chars, lines joined by '\\n', NFKC + whitespace collapsed; CER-nsp: "
        "spaces ignored; exact: images read exactly; dCER pt: CER minus fp32's, in points; eval ms: "
        "median per image of the CER pass"
        + (f"; wall/cpu ms: time_pipeline on the first {min(args.time_n, len(samples))} images, best "
           f"of {args.repeats} interleaved rounds, median over images; x: fp32 time / row time."
           if timing else "."))

    log()
    fixed = "x".join(map(str, FIXED_SHAPE))
    log(f"det model: MACs by homec's analysis at {fixed} and the mean over the {len(calib_shapes)} "
        f"calibration inputs' shapes; alone in onnxruntime ({args.threads} thread(s), ORT_ENABLE_ALL"
        + (f", first {args.model_samples} calibration inputs, best of {args.model_repeats}, median)"
           if det_lat else ", not timed)"))
    log(f"{'det':<14} {'GMACs':>7} {'x fp32':>7} {'GMACs cal':>10} {'x fp32':>7} {'params M':>9} "
        f"{'x fp32':>7} {'MB':>6} {'nodes':>6} {'wall ms':>8} {'cpu ms':>8} {'x wall':>7} {'x cpu':>6}")
    d_ref, l_ref = det[REFERENCE], det_lat.get(REFERENCE, {})
    for name, d in det.items():
        t = det_lat.get(name, {})
        log(f"{name:<14} {d['macs_fixed'] / 1e9:7.3f} {_fx(_ratio(d['macs_fixed'], d_ref['macs_fixed'])):>7} "
            f"{d['macs_calib_mean'] / 1e9:10.3f} "
            f"{_fx(_ratio(d['macs_calib_mean'], d_ref['macs_calib_mean'])):>7} "
            f"{d['params'] / 1e6:9.3f} {_fx(_ratio(d['params'], d_ref['params'])):>7} "
            f"{d['bytes'] / 1e6:6.2f} {d['nodes']:6d} "
            + (f"{t['wall_s'] * 1e3:8.1f} {t['cpu_s'] * 1e3:8.1f} "
               f"{_fx(_ratio(l_ref.get('wall_s'), t['wall_s'])):>7} "
               f"{_fx(_ratio(l_ref.get('cpu_s'), t['cpu_s'])):>6}"
               if t else f"{'-':>8} {'-':>8} {'-':>7} {'-':>6}")
            + ("" if d["complete"] else "  (MACs incomplete: some shapes unknown)"))
    log("GMACs: Conv/ConvTranspose/Gemm/MatMul multiply-accumulates (homec.analysis.cost); params: "
        "weights stored in the file (the shipped det still holds its BatchNorm parameters, which "
        "cleanup folds); x fp32 for MACs/params: row / fp32; x wall/cpu: fp32 time / row time.")

    verdicts = {name: verdict(name, results, det, det_lat, timing)
                for name in results if name != REFERENCE}
    log()
    log("verdict (issue 5: >= 30% fewer MACs, CER within +1.0 point of fp32, det latency reduced):")
    for name, vd in verdicts.items():
        for line in verdict_lines(name, vd):
            log(line)
    if WITH_RECONSTRUCTION in verdicts and "pruned-plain" in verdicts:
        log(f"reconstruction buys {verdicts['pruned-plain']['cer_points'] - verdicts[WITH_RECONSTRUCTION]['cer_points']:+.2f} "
            "CER points (pruned-plain's dCER minus pruned's)")
    for name in schedules:
        if name not in verdicts:
            log(f"{name}: no verdict, the row did not run")
    log(f"total {time.perf_counter() - t_start:.0f}s")

    if args.out:
        log.write(args.out)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": command_line(argv), "versions": v, "schedules": schedules,
                       "schedule_problems": problems, "eval_fingerprint": fingerprint(samples),
                       "validation": args.validation, "n": len(samples), "results": results,
                       "timing": timing, "det_latency": det_lat, "det": det, "compile": compiled,
                       "verdict": verdicts, "targets": TARGETS, "calibration": folders},
                      f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
