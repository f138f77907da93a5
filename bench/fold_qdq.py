"""fold_qdq on onnxruntime's own QDQ models: homec `fold_qdq(form="integer", activations="uint8")`
applied to what
onnxruntime's quantize_static emits for PP-OCRv4 det/rec/cls (bench.ocr.baseline's opset13
recipe: QDQ, per-channel, MinMax; S8S8 and U8S8), or to any QDQ model given with --model.

    python bench/fold_qdq.py                                  # det, rec, cls x both peers
    python bench/fold_qdq.py --kinds cls --peers ort-u8s8 --calib-from /tmp/bl/work2/calib
    python bench/fold_qdq.py --model q.onnx --calib calib_folder

Per model it prints: nodes (non-Constant, top graph) and file size of the QDQ input and of the
folded output; onnxruntime latency of each (ORT_ENABLE_ALL as deployed, one intra-op thread:
the first --feeds calibration inputs, --runs runs each, the two models taking turns; median over
runs, then median over inputs); and the largest output difference on the first --diff-samples
calibration inputs, in quantization steps of the output:

  - an integer output: the difference itself (one step = one integer unit);
  - a float output: the difference divided by the scale of the last QuantizeLinear before the
    output in the QDQ model (the nearest QuantizeLinear on a path from the output back through
    the non-constant inputs of its producers), i.e. steps of the tensor the model quantized last.
    A float head after that point (Sigmoid, Softmax) only shrinks differences, so 1 step at the
    output is the error of one rounding at that QuantizeLinear.

Two references: "ref" is the QDQ model run by onnxruntime with graph optimizations off (the QDQ
semantics: dequantize, float operator, quantize), "ort" the QDQ model as onnxruntime deploys it
(optimizations on: its own QDQ -> integer kernel fusions, which round differently); "ort~ref"
is the distance between those two, the scale the other two figures are read against.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import deque
from collections.abc import Sequence

if __package__ in (None, ""):       # python bench/fold_qdq.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import onnx  # noqa: E402

from bench.cleanup import count_nodes  # noqa: E402
from bench.ocr.baseline import _check  # noqa: E402
from bench.ocr.int8 import (KINDS, PEERS, Tee, calibration_folders, load_feeds,  # noqa: E402
                            quantize_peer, schedule_problem, versions)

# activations="uint8": int8 activation maps become uint8 (exact; onnxruntime's x86 fast path is
# u8 x s8, and its own optimizer converts S8S8 QDQ models the same way); a no-op on U8S8
FOLD_SCHEDULE = 'schedule { fold_qdq(form="integer", activations="uint8") }'


def _constant(value) -> np.ndarray | None:
    """The array behind a homec IR value: an initializer or a Constant node's output."""
    if value is None:
        return None
    if value.const is not None and hasattr(value.const, "numpy"):
        return value.const.numpy()
    node = value.producer
    if node is not None and node.op_type == "Constant" and "value" in node.attrs:
        return node.attr("value").numpy()
    return None


def output_steps(model_path: str) -> dict[str, float | None]:
    """output name -> the size of one quantization step of that output: 1.0 for an integer
    output, for a float one the scale of the nearest QuantizeLinear upstream (None: none found
    or its scale is not a constant scalar)."""
    import homec

    graph = homec.load(model_path)
    steps: dict[str, float | None] = {}
    for out in graph.outputs:
        ttype = out.tensor_type()
        if ttype is not None and np.issubdtype(_np_dtype(ttype.elem_type), np.integer):
            steps[out.name] = 1.0
            continue
        steps[out.name] = None
        seen, queue = {out.name}, deque([out])
        while queue:                       # breadth first: the nearest QuantizeLinear wins
            node = queue.popleft().producer
            if node is None:
                continue
            if node.op_type == "QuantizeLinear":
                scale = _constant(node.inputs[1])
                if scale is not None and scale.size == 1:
                    steps[out.name] = float(scale.reshape(()))
                break
            for v in node.inputs:
                if v is not None and v.name not in seen and _constant(v) is None:
                    seen.add(v.name)
                    queue.append(v)
    return steps


def _np_dtype(elem_type: int) -> np.dtype:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))


def fold(src: str, dst: str, schedule: str) -> dict:
    """homec.compile(src, schedule) saved to dst: ok, seconds, the passes' non-zero statistics,
    error."""
    import homec
    from homec.errors import HomecError

    t0 = time.perf_counter()
    try:
        result = homec.compile(src, schedule,
                               reproducer_dir=os.path.join(os.path.dirname(dst), "crash"))
        homec.save(result.model, dst)
    except HomecError as e:
        return {"ok": False, "seconds": time.perf_counter() - t0,
                "error": f"{type(e).__name__}: {' '.join(str(e).split())[:400]}"}
    return {"ok": True, "seconds": time.perf_counter() - t0,
            "stats": {r.name: {k: v for k, v in r.stats.items() if v} for r in result.records}}


def latency(paths: dict[str, str], feeds: Sequence[dict], runs: int) -> dict[str, float]:
    """name -> seconds: per feed the median of `runs` runs (the models taking turns), then the
    median over feeds; onnxruntime with its optimizations on, one thread."""
    from homec.verify import make_session

    sessions = {n: make_session(p, optimize=True, threads=1, quiet=True) for n, p in paths.items()}
    per_feed: dict[str, list[float]] = {n: [] for n in sessions}
    for feed in feeds:
        times: dict[str, list[float]] = {n: [] for n in sessions}
        for s in sessions.values():
            s.run(None, feed)                     # warm-up for this input shape
        for _ in range(runs):
            for n, s in sessions.items():
                t0 = time.perf_counter()
                s.run(None, feed)
                times[n].append(time.perf_counter() - t0)
        for n in sessions:
            per_feed[n].append(statistics.median(times[n]))
    return {n: statistics.median(v) for n, v in per_feed.items()}


def max_difference(qdq: str, folded: str, feeds: Sequence[dict]) -> dict:
    """Largest |folded - reference| over outputs and feeds, in output quantization steps,
    against the QDQ model without ("ref") and with ("ort") onnxruntime's optimizations; and,
    for scale, how far onnxruntime's own fusions move the QDQ model ("ort~ref")."""
    from homec.verify import make_session

    steps = output_steps(qdq)
    sessions = {"ref": make_session(qdq, optimize=False, quiet=True),
                "ort": make_session(qdq, optimize=True, quiet=True),
                "folded": make_session(folded, optimize=True, quiet=True)}
    names = [o.name for o in sessions["ref"].get_outputs()]
    pairs = {"ref": ("ref", "folded"), "ort": ("ort", "folded"), "ort~ref": ("ref", "ort")}
    worst = dict.fromkeys(pairs, 0.0)
    abs_worst = dict.fromkeys(pairs, 0.0)
    for feed in feeds:
        outs = {n: s.run(names, feed) for n, s in sessions.items()}
        for key, (a_name, b_name) in pairs.items():
            for name, a, b in zip(names, outs[a_name], outs[b_name]):
                diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
                abs_worst[key] = max(abs_worst[key], diff)
                step = steps.get(name)
                worst[key] = max(worst[key], diff / step if step else float("nan"))
    return {"steps": worst, "abs": abs_worst, "step_sizes": steps}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kinds", default=",".join(KINDS), help="which PP-OCRv4 models (det,rec,cls)")
    ap.add_argument("--peers", default=",".join(PEERS),
                    help=f"onnxruntime quantizer settings: comma list of {','.join(PEERS)}")
    ap.add_argument("--model", action="append", default=[], metavar="PATH",
                    help="a QDQ model of your own instead (repeat; needs --calib)")
    ap.add_argument("--calib", metavar="FOLDER", help="calibration inputs for --model")
    ap.add_argument("--work", default=os.path.join("/tmp", "homec-bench-int8"),
                    help="folder for calibration data and models (shared with bench.ocr.int8)")
    ap.add_argument("--calib-from", metavar="DIR", help="reuse captured calibration folders")
    ap.add_argument("--calib-n", type=int, default=48)
    ap.add_argument("--reuse-peers", action="store_true",
                    help="reuse onnxruntime models already in WORK/<peer>/")
    ap.add_argument("--schedule", default=FOLD_SCHEDULE, help="schedule text or .hc file")
    ap.add_argument("--feeds", type=int, default=2, help="calibration inputs timed (default 2)")
    ap.add_argument("--runs", type=int, default=10, help="runs per input, >= 10 (default 10)")
    ap.add_argument("--diff-samples", type=int, default=8, help="inputs compared (default 8)")
    ap.add_argument("--out", metavar="PATH", help="also write the printed text here")
    args = ap.parse_args(argv)
    if args.runs < 10:
        ap.error("--runs: at least 10")
    if args.model and not args.calib:
        ap.error("--model needs --calib")

    log = Tee()
    log("# " + " ".join(["python", "bench/fold_qdq.py", *(sys.argv[1:] if argv is None else argv)]))
    log("# " + ", ".join(f"{k} {v}" for k, v in versions().items()) + f", {os.cpu_count()} cores")
    for line in __doc__.split("\n\n", 2)[2].strip().split("\n"):
        log("# " + line if line else "#")
    problem = schedule_problem(args.schedule)      # a path or the schedule's text
    if problem:
        log("homec: the schedule does not validate, no folding (is fold_qdq written yet? "
            "see `homec passes`):\n  " + problem.replace("\n", "\n  "))

    jobs: list[tuple[str, str, str, str]] = []       # (label, peer, qdq path, calib folder)
    if args.model:
        jobs = [(os.path.basename(p), "-", p, args.calib) for p in args.model]
    else:
        kinds = [k.strip() for k in args.kinds.split(",")]
        peers = [p.strip() for p in args.peers.split(",")]
        if any(k not in KINDS for k in kinds) or any(p not in PEERS for p in peers):
            ap.error(f"--kinds from {KINDS}, --peers from {tuple(PEERS)}")
        folders = calibration_folders(args.work, args.calib_from, args.calib_n, 1, log)
        for peer in peers:
            records = quantize_peer(peer, kinds, folders, args.work, args.reuse_peers, log)
            jobs += [(kind, peer, r["path"], folders[kind]) for kind, r in records.items() if r["ok"]]

    rows = []
    for label, peer, qdq, calib in jobs:
        row = {"model": label, "peer": peer, "nodes": [count_nodes(onnx.load(qdq)), None],
               "bytes": [os.path.getsize(qdq), None]}
        feeds = load_feeds(calib, max(args.feeds, args.diff_samples))
        paths = {"qdq": qdq}
        if not problem:
            folded = qdq.replace(".onnx", "_folded.onnx")
            row["fold"] = fold(qdq, folded, args.schedule)
            if row["fold"]["ok"]:
                row["check"] = _check(folded, calib)
                row["nodes"][1] = count_nodes(onnx.load(folded))
                row["bytes"][1] = os.path.getsize(folded)
                log(f"  {label} {peer}: folded in {row['fold']['seconds']:.1f}s, "
                    f"{row['fold']['stats']}")
                if row["check"][0]:
                    paths["folded"] = folded
                    row["diff"] = max_difference(qdq, folded, feeds[:args.diff_samples])
            else:
                log(f"  {label} {peer}: fold_qdq failed: {row['fold']['error']}")
            if "check" in row and not row["check"][0]:
                log(f"  {label} {peer}: folded model rejected: {row['check'][1]}")
        row["latency_s"] = latency(paths, feeds[:args.feeds], args.runs)
        rows.append(row)

    log()
    log(f"{'model':<34} {'peer':<9} {'nodes QDQ->folded':>17} {'MB QDQ->folded':>15} "
        f"{'ORT ms QDQ':>10} {'folded':>7} {'speed-up':>8} {'vs ref':>7} {'vs ort':>7} {'ort~ref':>7} "
        f"{'fold s':>6}")
    for r in rows:
        n0, n1 = r["nodes"]
        b0, b1 = r["bytes"]
        t0, t1 = r["latency_s"].get("qdq"), r["latency_s"].get("folded")
        d = r.get("diff")
        diff = " ".join(f"{d['steps'][k]:>7.2f}" if d else f"{'-':>7}" for k in ("ref", "ort", "ort~ref"))
        fold_s = f"{r['fold']['seconds']:.1f}" if "fold" in r else "-"
        log(f"{r['model']:<34} {r['peer']:<9} {n0:>8} -> {n1 if n1 is not None else '-':>5} "
            f"{b0 / 1e6:>6.2f} -> {(f'{b1 / 1e6:.2f}' if b1 else '-'):>5} "
            f"{t0 * 1e3:>10.1f} {(f'{t1 * 1e3:.1f}' if t1 else '-'):>7} "
            f"{(f'{t0 / t1:.2f}x' if t1 else '-'):>8} "
            f"{diff} {fold_s:>6}")
    log(f"latency: median of {args.runs} runs on each of the first {args.feeds} calibration "
        f"input(s), median over inputs. vs ref / vs ort: largest difference of the folded "
        f"model's outputs from the QDQ model's (optimizations off / on) over the first "
        f"{args.diff_samples} inputs, in output quantization steps; ort~ref: the QDQ model with "
        f"optimizations on vs off, the same measure.")
    if args.out:
        log.write(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
