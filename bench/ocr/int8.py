"""int8 benchmark (issue 4): PP-OCRv4 in RapidOCR with homec's int8 models vs onnxruntime's
quantize_static vs fp32, all measured in one run.

    python -m bench.ocr.int8                                    # 150 eval images, everything
    python -m bench.ocr.int8 --out bench/results/int8.txt --json /tmp/int8.json
    python -m bench.ocr.int8 --n 20 --time-n 8 --skip-peers     # fast homec iteration
    python -m bench.ocr.int8 --models cls --schedule cls=my.hc --homec-only
    python bench/ocr/int8.py --calib-from /tmp/bl/work2/calib   # reuse a captured calibration

Steps:
  1. Render the eval set (--n, default 150) and the calibration set (--calib-n, default 48; a
     separate image stream). Record the real pipeline's session inputs on the calibration set
     (bench.ocr.capture) into WORK/calib/{det,rec,cls}, or reuse a folder captured earlier:
     WORK/calib or --calib-from DIR is reused when its manifest names the same fp32 models and
     records the same calibration-set fingerprint (this script records it; a folder captured
     by bench.ocr.baseline has none and is reused only when named with --calib-from).
  2. Peers, on the same calibration folders: onnxruntime quantize_static with the issue's
     recipe (bench.ocr.baseline.ort_quantize, recipe opset13: QDQ, per_channel=True, MinMax,
     the default S8S8 = int8 activations and weights) -> "ort-s8s8"; and the same recipe with
     activation_type=QUInt8 (U8S8, onnxruntime's fast path on x86) -> "ort-u8s8".
  3. homec: for each model, homec.compile(model, SCHEDULE, calib=folder) (default schedule
     bench/ocr/int8.hc: cleanup, quantize, fold_qdq), saved and checked (onnx.checker full,
     one onnxruntime run). A schedule naming a pass that is not registered is reported and
     the homec row skipped; everything else still runs.
  4. Each pipeline (fp32, peers, homec; --models picks which of det/rec/cls are int8, the
     others stay fp32) runs over the eval set in RapidOCR as shipped: CER (spaces counted),
     CER ignoring spaces, exact-image rate, and the median per-image latency of that pass.
  5. Latency: bench.ocr.pipeline.time_pipeline on the first --time-n eval images, wall and
     CPU clocks, one intra-op thread; --repeats rounds, the pipelines interleaved in rotating
     order inside each round (so load from other processes hits all of them alike); per image
     the best of the rounds, then the median over images.
  6. Per model: each model alone in an onnxruntime session (ORT_ENABLE_ALL, one thread, as
     RapidOCR builds them) on its first --model-samples calibration inputs, --model-repeats
     runs each, best per sample, median over samples (wall and CPU in the same run); and the
     file sizes.
Then one table with the ratios the issue asks for (homec vs fp32: CER within +0.5 points,
>= 1.5x faster, <= 0.27x the size; homec vs each onnxruntime peer: at least as fast).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import glob
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence

if __package__ in (None, ""):       # python bench/ocr/int8.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

from bench.ocr.baseline import NpzFolderReader, _check, _quiet, ort_quantize  # noqa: E402
from bench.ocr.capture import capture_calibration  # noqa: E402
from bench.ocr.pipeline import default_models, evaluate, make_engine, time_pipeline  # noqa: E402
from bench.ocr.render import calib_set, eval_set, fingerprint, fonts_status  # noqa: E402

VALIDATION_SEED = 777

KINDS = ("det", "rec", "cls")
DEFAULT_SCHEDULE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "int8.hc")
# onnxruntime peers: name -> activation QuantType given to quantize_static (weights: QInt8)
PEERS = {"ort-s8s8": "QInt8", "ort-u8s8": "QUInt8"}
HOMEC = "homec"
TARGETS = {"cer_points": 0.5, "speedup_vs_fp32": 1.5, "speedup_vs_peer": 1.0, "size_ratio": 0.27}


# --------------------------------------------------------------------------- output

class Tee:
    """Print lines and keep them, to write the same text to --out at the end."""

    def __init__(self):
        self.lines: list[str] = []

    def __call__(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.extend(text.split("\n"))

    def write(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            f.write("\n".join(self.lines) + "\n")


def versions() -> dict[str, str]:
    """Versions of everything that moves the figures, and the checkout's commit."""
    from importlib.metadata import PackageNotFoundError, version

    import homec
    out = {"python": platform.python_version(), "homec": homec.__version__,
           "onnxruntime": ort.__version__, "onnx": onnx.__version__, "numpy": np.__version__}
    try:
        out["rapidocr_onnxruntime"] = version("rapidocr_onnxruntime")
    except PackageNotFoundError:
        out["rapidocr_onnxruntime"] = "?"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        rev = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        out["commit"] = (rev or "?") + ("+uncommitted changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        out["commit"] = "?"
    return out


def command_line(argv: Sequence[str] | None, module: str = "bench.ocr.int8") -> str:
    args = sys.argv[1:] if argv is None else list(argv)
    return shlex.join(["python", "-m", module, *args])


def log_header(log: Callable[[str], None], argv: Sequence[str] | None, threads: int,
               module: str = "bench.ocr.int8") -> dict[str, str]:
    """The lines every OCR benchmark table starts with (command, machine, versions, fonts);
    returns the versions."""
    v = versions()
    log(f"# {command_line(argv, module)}")
    log(f"# {datetime.date.today().isoformat()}, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.2f} at start, {threads} intra-op thread(s)")
    log("# " + ", ".join(f"{k} {val}" for k, val in v.items()))
    missing = [k for k, s in fonts_status().items() if s.startswith("substituted")]
    log(f"fonts: {len(fonts_status()) - len(missing)} of {len(fonts_status())} installed"
        + (f" (substituted: {', '.join(missing)})" if missing else ""))
    return v


# --------------------------------------------------------------------------- calibration

def calibration_folders(work: str, calib_from: str | None, calib_n: int, threads: int,
                        log: Callable[[str], None]) -> dict[str, str]:
    """kind -> calibration folder: a reusable earlier capture (see the module docstring) or a
    fresh capture into WORK/calib, whose manifest then records the calibration fingerprint."""
    fp32 = default_models()
    images = calib_set(calib_n)
    want = fingerprint(images)
    src = calib_from or os.path.join(work, "calib")
    manifest_path = os.path.join(src, "manifest.json")
    if os.path.isfile(manifest_path):
        with open(manifest_path) as f:
            manifest = json.load(f)
        folders = {k: os.path.join(src, k) for k in KINDS}
        same_models = all(os.path.abspath(manifest["models"].get(k, "")) == os.path.abspath(fp32[k])
                          for k in KINDS)
        complete = all(glob.glob(os.path.join(folders[k], "*.npz")) for k in KINDS)
        recorded = manifest.get("calib_fingerprint")
        if same_models and complete and recorded == want:
            log(f"calibration: reusing {src} (fingerprint {want} recorded), counts {manifest['counts']}")
            return folders
        if same_models and complete and recorded is None and calib_from:
            log(f"calibration: reusing {src} as named (its manifest records no calibration "
                f"fingerprint; taken to be calib_set({calib_n}), fingerprint {want}), "
                f"counts {manifest['counts']}")
            return folders
        if calib_from:
            raise SystemExit(f"--calib-from {calib_from}: not reusable (models match: {same_models}, "
                             f"all folders hold .npz: {complete}, fingerprint {recorded} vs {want})")
    elif calib_from:
        raise SystemExit(f"--calib-from {calib_from}: no manifest.json there")
    t0 = time.perf_counter()
    out_dir = os.path.join(work, "calib")
    folders = capture_calibration(images, fp32["det"], fp32["rec"], fp32["cls"], out_dir,
                                  threads=threads)
    manifest_path = os.path.join(out_dir, "manifest.json")
    with open(manifest_path) as f:
        manifest = json.load(f)
    manifest.update(calib_fingerprint=want, calib_n=calib_n)
    with open(manifest_path, "w") as f:
        json.dump(manifest, f, indent=1)
    log(f"calibration: captured in {time.perf_counter() - t0:.0f}s from {len(images)} images "
        f"(fingerprint {want}): " + ", ".join(f"{k} {manifest['counts'][k]} samples" for k in KINDS)
        + f" -> {out_dir}")
    return {k: folders[k] for k in KINDS}


def load_feeds(folder: str, limit: int) -> list[dict[str, np.ndarray]]:
    """The first `limit` calibration feeds of a folder (file order)."""
    reader = NpzFolderReader(folder)
    feeds = []
    while len(feeds) < limit and (feed := reader.get_next()) is not None:
        feeds.append(feed)
    return feeds


# --------------------------------------------------------------------------- onnxruntime peers

@contextlib.contextmanager
def _activation_type(quant_type: str):
    """Make onnxruntime's quantize_static default to `activation_type=quant_type` for the
    duration, so bench.ocr.baseline.ort_quantize (which leaves it at the default, QInt8) runs
    its opset13 recipe unchanged (conversion, pre-processing, checks, metadata) with other
    activations. ort_quantize imports quantize_static at call time, from the package."""
    import functools

    import onnxruntime.quantization as q
    original = q.quantize_static
    q.quantize_static = functools.partial(original, activation_type=getattr(q.QuantType, quant_type))
    try:
        yield
    finally:
        q.quantize_static = original


def activation_types(path: str) -> dict[str, int]:
    """Element types of the QuantizeLinear zero points (what the activations are), counted."""
    m = onnx.load(path)
    inits = {t.name: t.data_type for t in m.graph.initializer}
    consts = {n.output[0]: a.t.data_type for n in m.graph.node if n.op_type == "Constant"
              for a in n.attribute if a.name == "value"}
    found: Counter = Counter()
    for n in m.graph.node:
        if n.op_type == "QuantizeLinear" and len(n.input) > 2:
            dt = inits.get(n.input[2], consts.get(n.input[2]))
            found[onnx.TensorProto.DataType.Name(dt) if dt is not None else "?"] += 1
    return dict(found)


def ort_peer(kind: str, src: str, dst: str, calib_folder: str, peer: str, tmp: str) -> dict:
    """One model quantized by onnxruntime as `peer` (a key of PEERS); baseline's status record
    plus the activation types found in the output."""
    with _activation_type(PEERS[peer]):
        rec = ort_quantize(kind, src, dst, calib_folder, "opset13", tmp)
    if rec["ok"]:
        rec["activation_types"] = activation_types(dst)
    return rec


# --------------------------------------------------------------------------- homec

def schedule_problem(path: str) -> str | None:
    """None when the schedule validates against the registered passes, else the error text
    (e.g. a pass that is not written yet: see `homec passes`)."""
    from homec.driver import load_schedule
    from homec.errors import HomecError

    try:
        load_schedule(path)
    except HomecError as e:
        return str(e)
    return None


def homec_quantize(kind: str, src: str, dst: str, schedule: str, calib_folder: str) -> dict:
    """homec.compile(src, schedule, calib=calib_folder), saved to dst and checked; a record
    like ort_quantize's (ok, seconds, error | check, bytes) plus the passes' statistics. A pass
    that crashes leaves its reproducer beside dst (in <dst dir>/crash)."""
    import homec
    from homec.errors import HomecError

    rec: dict = {"kind": kind, "schedule": schedule, "path": dst, "ok": False}
    t0 = time.perf_counter()
    try:
        with _quiet():
            result = homec.compile(src, schedule, calib=calib_folder,
                                   reproducer_dir=os.path.join(os.path.dirname(dst), "crash"))
        homec.save(result.model, dst)
    except HomecError as e:
        rec["error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:600]}"
        rec["seconds"] = time.perf_counter() - t0
        return rec
    rec["seconds"] = time.perf_counter() - t0
    rec["passes"] = [{"name": r.name, "seconds": round(r.seconds, 2), "stats": r.stats,
                      "nodes": [r.nodes_before, r.nodes_after]} for r in result.records]
    rec["warnings"] = result.report.get("warnings") or []
    rec["ops"] = dict(Counter(n.op_type for n in result.model.graph.node).most_common())
    rec["ok"], rec["check"] = _check(dst, calib_folder)
    rec["bytes"] = os.path.getsize(dst)
    return rec


def quantize_peer(peer: str, kinds: Sequence[str], folders: dict[str, str], work: str,
                  reuse: bool, log: Callable[[str], None]) -> dict[str, dict]:
    """kind -> ort_peer record for WORK/<peer>/<model>_int8.onnx (with `reuse`, an existing
    file is only checked), each logged."""
    fp32 = default_models()
    out_dir = os.path.join(work, peer)
    os.makedirs(out_dir, exist_ok=True)
    records = {}
    for kind in kinds:
        dst = os.path.join(out_dir, os.path.basename(fp32[kind]).replace(".onnx", "_int8.onnx"))
        if reuse and os.path.isfile(dst):
            ok, check = _check(dst, folders[kind])
            r = {"kind": kind, "path": dst, "ok": ok, "check": check, "reused": True,
                 "seconds": 0.0, "bytes": os.path.getsize(dst),
                 "activation_types": activation_types(dst)}
        else:
            r = ort_peer(kind, fp32[kind], dst, folders[kind], peer, out_dir)
        records[kind] = r
        log(f"  [{peer}] {kind}: {'ok' if r['ok'] else 'FAILED'}"
            + (" (reused)" if r.get("reused") else f" in {r['seconds']:.0f}s")
            + (f", activations {r['activation_types']}, {r['bytes'] / 1e6:.2f} MB" if r["ok"] else
               f" {r.get('error') or r.get('check')}"))
    return records


def quantize_homec(kinds: Sequence[str], schedules: dict[str, str], folders: dict[str, str],
                   work: str, log: Callable[[str], None]) -> dict[str, dict]:
    """kind -> homec_quantize record for WORK/homec/<model>_homec_int8.onnx, each logged with
    its passes' non-zero statistics (all of them go to --json)."""
    fp32 = default_models()
    out_dir = os.path.join(work, HOMEC)
    os.makedirs(out_dir, exist_ok=True)
    records = {}
    for kind in kinds:
        dst = os.path.join(out_dir, os.path.basename(fp32[kind]).replace(".onnx", "_homec_int8.onnx"))
        r = homec_quantize(kind, fp32[kind], dst, schedules[kind], folders[kind])
        records[kind] = r
        if "passes" not in r:
            log(f"  [homec] {kind}: FAILED after {r['seconds']:.0f}s: {r['error']}")
            continue
        top = ", ".join(f"{op} {c}" for op, c in list(r["ops"].items())[:8])
        log(f"  [homec] {kind}: {'ok' if r['ok'] else 'output REJECTED'} in {r['seconds']:.0f}s "
            f"({os.path.basename(schedules[kind])}), {r['bytes'] / 1e6:.2f} MB; ops: {top}"
            + ("" if r["ok"] else f"\n      {r['check']}"))
        for p in r["passes"]:
            changed = {k: val for k, val in p["stats"].items() if val}
            log(f"      {p['name']:<14} {p['seconds']:7.1f}s nodes {p['nodes'][0]}->{p['nodes'][1]} "
                f"{json.dumps(changed, default=str)}")
        if r["warnings"]:
            log(f"      {len(r['warnings'])} warning(s), first: {str(r['warnings'][0])[:200]}")
    return records


def parse_schedules(specs: Sequence[str]) -> dict[str, str]:
    """--schedule values ("PATH" for all models, "KIND=PATH" for one) -> kind -> path."""
    out = dict.fromkeys(KINDS, DEFAULT_SCHEDULE)
    for spec in specs:
        kind, sep, path = spec.partition("=")
        if sep and kind in KINDS:
            out[kind] = path
        elif not sep:
            out = dict.fromkeys(KINDS, spec)
        else:
            raise SystemExit(f"--schedule {spec!r}: expected PATH or KIND=PATH with KIND in {KINDS}")
    for path in out.values():
        if not os.path.isfile(path):
            raise SystemExit(f"schedule file not found: {path}")
    return out


# --------------------------------------------------------------------------- latency

def time_interleaved(engines: dict[str, object], images: Sequence[np.ndarray],
                     repeats: int) -> dict[str, dict[str, float]]:
    """name -> {"wall_s", "cpu_s"}: time_pipeline per image, best of `repeats` rounds, median
    over images; within a round the pipelines take turns in rotating order."""
    names = list(engines)
    best = {n: {c: [float("inf")] * len(images) for c in ("wall", "cpu")} for n in names}
    for r in range(max(1, repeats)):
        for name in names[r % len(names):] + names[:r % len(names)]:
            for clock in ("wall", "cpu"):
                _, times = time_pipeline(images, engine=engines[name], warmup=1, clock=clock,
                                         per_image=True)
                best[name][clock] = [min(a, b) for a, b in zip(best[name][clock], times)]
    return {n: {f"{c}_s": statistics.median(best[n][c]) for c in ("wall", "cpu")} for n in names}


def model_latency(paths: dict[str, str], feeds: Sequence[dict], repeats: int,
                  threads: int) -> dict[str, dict[str, float]]:
    """variant -> {"wall_s", "cpu_s"} of one model alone: each feed run `repeats` times (the
    variants take turns), best per feed, median over feeds; one warm-up run each."""
    from homec.verify import make_session

    sessions = {}
    for name, path in paths.items():
        s = make_session(path, optimize=True, threads=threads, quiet=True)  # as RapidOCR does
        s.run(None, feeds[0])
        sessions[name] = s
    best = {n: {"wall": [float("inf")] * len(feeds), "cpu": [float("inf")] * len(feeds)}
            for n in sessions}
    for _ in range(max(1, repeats)):
        for name, s in sessions.items():
            for i, feed in enumerate(feeds):
                w0, c0 = time.perf_counter(), time.process_time()
                s.run(None, feed)
                best[name]["wall"][i] = min(best[name]["wall"][i], time.perf_counter() - w0)
                best[name]["cpu"][i] = min(best[name]["cpu"][i], time.process_time() - c0)
    return {n: {f"{c}_s": statistics.median(best[n][c]) for c in ("wall", "cpu")} for n in sessions}


# --------------------------------------------------------------------------- table

def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _fx(x: float | None, fmt: str = "{:.2f}x") -> str:
    return fmt.format(x) if x is not None else "-"


def _verdict(ok: bool | None) -> str:
    return "" if ok is None else (" met" if ok else " NOT met")


def comparison_lines(name: str, results: dict, timing: dict, sizes: dict,
                     int8_kinds: Sequence[str]) -> list[str]:
    """The issue's figures for pipeline `name` against fp32 and each onnxruntime peer."""
    lines = []
    own_cer = results[name]["cer"]
    own_t = timing.get(name, {})
    own_size = sum(sizes[name][k] for k in int8_kinds)
    for ref in ["fp32", *PEERS]:
        if ref not in results or ref == name:
            continue
        d_cer = (own_cer - results[ref]["cer"]) * 100
        ref_t = timing.get(ref, {})
        wall = _ratio(ref_t.get("wall_s"), own_t.get("wall_s"))
        cpu = _ratio(ref_t.get("cpu_s"), own_t.get("cpu_s"))
        size = own_size / sum(sizes[ref][k] for k in int8_kinds)
        want = TARGETS["speedup_vs_fp32"] if ref == "fp32" else TARGETS["speedup_vs_peer"]
        speed_ok = None if wall is None else (wall >= want and (cpu is None or cpu >= want))
        parts = [f"CER {d_cer:+.2f} points"
                 + (f" (target <= +{TARGETS['cer_points']:.2f}:{_verdict(d_cer <= TARGETS['cer_points'])})"
                    if ref == "fp32" else ""),
                 f"speed-up {_fx(wall)} wall, {_fx(cpu)} cpu (target >= {want:.1f}x:{_verdict(speed_ok)})",
                 f"size {size:.2f}x" + (f" (target <= {TARGETS['size_ratio']:.2f}x:"
                                        f"{_verdict(size <= TARGETS['size_ratio'])})"
                                        if ref == "fp32" else "")]
        lines.append(f"{name} vs {ref}: " + "; ".join(parts))
    return lines


# --------------------------------------------------------------------------- main

def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=None)
    ap.add_argument("--n", type=int, default=150, help="eval images (default 150)")
    ap.add_argument("--calib-n", type=int, default=48, help="calibration images (default 48)")
    ap.add_argument("--validation", action="store_true",
                    help=f"measure on the validation labels (calib_set(N, seed={VALIDATION_SEED})), "
                         "disjoint from the eval set and the calibration images: for tuning options")
    ap.add_argument("--work", default=os.path.join("/tmp", "homec-bench-int8"),
                    help="folder for calibration data and the quantized models")
    ap.add_argument("--calib-from", metavar="DIR",
                    help="reuse calibration folders captured earlier (DIR/{det,rec,cls}, "
                         "DIR/manifest.json), e.g. bench.ocr.baseline's WORK/calib")
    ap.add_argument("--models", default=",".join(KINDS),
                    help="which models are int8 in the int8 pipelines (the others stay fp32)")
    ap.add_argument("--schedule", action="append", default=[], metavar="[KIND=]PATH",
                    help=f"homec schedule for all models or one (repeat); default {DEFAULT_SCHEDULE}")
    ap.add_argument("--peers", default=",".join(PEERS),
                    help=f"onnxruntime peers to measure: comma list of {','.join(PEERS)} or 'none'")
    ap.add_argument("--skip-peers", action="store_true", help="same as --peers none")
    ap.add_argument("--homec-only", action="store_true",
                    help="only the homec pipeline (no fp32 or peer pipelines; sizes still vs fp32)")
    ap.add_argument("--reuse-peers", action="store_true",
                    help="reuse onnxruntime models already in WORK/<peer>/ instead of re-quantizing")
    ap.add_argument("--time-n", type=int, default=40,
                    help="eval images timed with time_pipeline (default 40; 0: no latency run)")
    ap.add_argument("--repeats", type=int, default=3, help="timing rounds (default 3)")
    ap.add_argument("--model-samples", type=int, default=6,
                    help="calibration inputs per model for the per-model latency (0: skip)")
    ap.add_argument("--model-repeats", type=int, default=5, help="runs per input, per model")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", metavar="PATH", help="also write the printed text here")
    ap.add_argument("--json", metavar="PATH", help="write all figures (and predictions) here")
    args = ap.parse_args(argv)

    int8_kinds = [k.strip() for k in args.models.split(",") if k.strip()]
    if not int8_kinds or any(k not in KINDS for k in int8_kinds):
        ap.error(f"--models: comma list of {','.join(KINDS)}")
    peers = [] if (args.skip_peers or args.homec_only or args.peers == "none") else \
        [p.strip() for p in args.peers.split(",")]
    for p in peers:
        if p not in PEERS:
            ap.error(f"unknown peer {p!r} (known: {', '.join(PEERS)})")
    schedules = parse_schedules(args.schedule)

    log = Tee()
    t_start = time.perf_counter()
    fp32 = default_models()
    os.makedirs(args.work, exist_ok=True)
    v = log_header(log, argv, args.threads)

    problems = {k: schedule_problem(schedules[k]) for k in int8_kinds}
    for k, p in problems.items():
        if p:
            log(f"homec: schedule for {k} does not validate, the homec rows are skipped "
                f"(missing passes appear in `homec passes` once written):\n  "
                + p.replace("\n", "\n  "))

    if args.validation:
        # for choosing options (the calibration method was chosen this way): labels from the
        # calibration stream under another seed, disjoint from the eval set and from the
        # calibration images, so the eval figures are not tuned on
        samples = calib_set(args.n, seed=VALIDATION_SEED)
    else:
        samples = eval_set(args.n)
    log(f"{'validation' if args.validation else 'eval'} set: {len(samples)} images, {sum(len(s.lines) for s in samples)} lines, "
        f"fingerprint {fingerprint(samples)}")
    folders = calibration_folders(args.work, args.calib_from, args.calib_n, args.threads, log)

    # ---- the int8 models
    records: dict[str, dict[str, dict]] = {}
    for peer in peers:
        records[peer] = quantize_peer(peer, int8_kinds, folders, args.work, args.reuse_peers, log)
    if not any(problems.values()):
        records[HOMEC] = quantize_homec(int8_kinds, schedules, folders, args.work, log)
    int8_paths = {name: {k: recs[k]["path"] for k in int8_kinds}
                  for name, recs in records.items() if all(recs[k]["ok"] for k in int8_kinds)}

    # ---- pipelines: CER over the eval set
    pipelines: dict[str, dict[str, str]] = {} if args.homec_only else {"fp32": dict(fp32)}
    for name in [*peers, HOMEC]:
        if name in int8_paths:
            pipelines[name] = {**fp32, **int8_paths[name]}
    engines = {name: make_engine(p["det"], p["rec"], p["cls"], threads=args.threads)
               for name, p in pipelines.items()}
    results: dict[str, dict] = {}
    sizes = {name: {k: os.path.getsize(p[k]) for k in KINDS} for name, p in pipelines.items()}
    sizes.setdefault("fp32", {k: os.path.getsize(fp32[k]) for k in KINDS})
    for name, engine in engines.items():
        t0 = time.perf_counter()
        results[name] = evaluate(samples, engine=engine)
        log(f"pipeline {name}: CER {results[name]['cer'] * 100:.2f}% in {time.perf_counter() - t0:.0f}s")

    # ---- latency
    timing: dict[str, dict[str, float]] = {}
    if args.time_n > 0 and engines:
        t0 = time.perf_counter()
        timing = time_interleaved(engines, [s.image for s in samples[:args.time_n]], args.repeats)
        log(f"pipeline latency measured in {time.perf_counter() - t0:.0f}s")
    per_model: dict[str, dict[str, dict[str, float]]] = {}
    if args.model_samples > 0:
        for kind in KINDS:
            variants = {name: p[kind] for name, p in pipelines.items()
                        if name == "fp32" or kind in int8_kinds}
            if kind in int8_kinds:
                variants.setdefault("fp32", fp32[kind])
            per_model[kind] = model_latency(variants, load_feeds(folders[kind], args.model_samples),
                                            args.model_repeats, args.threads)

    # ---- the table
    log()
    log(f"PP-OCRv4 in RapidOCR on {len(samples)} rendered appliance labels "
        f"({next(iter(results.values()))['ref_chars'] if results else '?'} reference characters), "
        f"{args.threads} thread(s); int8 models: {','.join(int8_kinds)} (others fp32)")
    log(f"{'pipeline':<10} {'CER':>7} {'CER-nsp':>8} {'exact':>7} {'eval ms':>8} "
        f"{'wall ms':>8} {'cpu ms':>8}  MB total (det/rec/cls)")
    for name, r in results.items():
        t = timing.get(name, {})
        size = sizes[name]
        log(f"{name:<10} {r['cer'] * 100:6.2f}% {r['cer_nospace'] * 100:7.2f}% {r['exact'] * 100:6.1f}% "
            f"{r['wall_median_s'] * 1e3:8.0f} "
            + (f"{t['wall_s'] * 1e3:8.0f} {t['cpu_s'] * 1e3:8.0f}" if t else f"{'-':>8} {'-':>8}")
            + f"  {sum(size.values()) / 1e6:6.2f} ("
            + " ".join(f"{k}={size[k] / 1e6:.2f}" for k in KINDS) + ")")
    for name, recs in records.items():
        if name not in results:
            bad = [f"{k}: {(r.get('error') or r.get('check') or '')[:200]}"
                   for k, r in recs.items() if not r["ok"]]
            log(f"{name:<10} no valid model set -- " + " | ".join(bad))
    if any(problems.values()):
        log(f"{HOMEC:<10} not run: the schedule does not validate (see above)")
    log("CER: edits / reference chars, lines joined by '\\n', NFKC + whitespace collapsed; CER-nsp: "
        "spaces ignored; exact: images read exactly; eval ms: median per image of the CER pass"
        + (f"; wall/cpu ms: time_pipeline on the first {min(args.time_n, len(samples))} images, "
           f"best of {args.repeats} interleaved rounds, median over images." if timing else "."))

    if per_model:
        log()
        log(f"per model, alone in onnxruntime ({args.threads} thread(s), ORT_ENABLE_ALL), first "
            f"{args.model_samples} calibration inputs, best of {args.model_repeats} runs, median:")
        log(f"{'model':<5} {'variant':<10} {'MB':>6} {'x fp32':>7} {'wall ms':>9} {'cpu ms':>9} "
            f"{'speed-up wall':>14} {'cpu':>6}")
        for kind, lat in per_model.items():
            base = lat.get("fp32", {})
            for name, t in lat.items():
                path = pipelines.get(name, {}).get(kind) or (fp32[kind] if name == "fp32" else None)
                mb = os.path.getsize(path) / 1e6 if path else float("nan")
                log(f"{kind:<5} {name:<10} {mb:6.2f} {mb * 1e6 / os.path.getsize(fp32[kind]):6.2f}x "
                    f"{t['wall_s'] * 1e3:9.1f} {t['cpu_s'] * 1e3:9.1f} "
                    f"{_fx(_ratio(base.get('wall_s'), t['wall_s'])):>14} "
                    f"{_fx(_ratio(base.get('cpu_s'), t['cpu_s'])):>6}")
    int8_total = {name: sum(os.path.getsize(pipelines[name][k]) for k in int8_kinds)
                  for name in pipelines if name != "fp32"}
    fp32_total = sum(os.path.getsize(fp32[k]) for k in int8_kinds)
    if int8_total:
        log("int8 model size total (" + ",".join(int8_kinds) + "): " + ", ".join(
            f"{name} {b / 1e6:.2f} MB = {b / fp32_total:.3f}x fp32" for name, b in int8_total.items()))

    if HOMEC in results:
        log()
        for line in comparison_lines(HOMEC, results, timing, sizes, int8_kinds):
            log(line)
    log(f"total {time.perf_counter() - t_start:.0f}s")

    if args.out:
        log.write(args.out)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": command_line(argv), "versions": v, "int8_models": int8_kinds,
                       "schedules": schedules, "eval_fingerprint": fingerprint(samples),
                       "n": len(samples), "results": results, "timing": timing,
                       "per_model_latency": per_model, "sizes": sizes, "quantization": records,
                       "calibration": folders, "schedule_problems": problems},
                      f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
