"""Cleanup benchmark: homec's `cleanup` pipeline vs onnxslim and onnxsim, measured in one run.

    python bench/cleanup.py                 # everything (zoo, PP-OCRv4, synthetic 1k..50k)
    python bench/cleanup.py --quick         # zoo + PP-OCRv4 + 1k/5k synthetic
    python bench/cleanup.py --only resnet50 --timeout 60

Each tool runs in its own subprocess (so a hang or a crash is contained and timed out) on
the same ModelProto; the time is the tool's own work from an in-memory ModelProto to an
in-memory ModelProto (homec: load into the IR + cleanup + emit). Per model it prints wall time,
homec's time ratio to each peer (< 1: homec is faster), nodes left (non-Constant, top graph),
output size and onnxruntime latency (median of repeated single-thread runs) of each output,
and whether the output passes onnx.checker.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import onnx

TOOLS = ("homec", "onnxslim", "onnxsim")

_WORKER = r"""
import sys, time, json, warnings
warnings.filterwarnings("ignore")
import onnx
tool, src, dst = sys.argv[1], sys.argv[2], sys.argv[3]
model = onnx.load(src)
if tool == "homec":
    import homec
    from homec.context import PassContext
    from homec.registry import REGISTRY
    cleanup = REGISTRY.get("cleanup")
    from homec.ir import gc_paused
    t0 = time.perf_counter()
    g = homec.load(model)
    with gc_paused():  # as the pass manager runs every pass
        stats = cleanup.fn(g, PassContext(), **cleanup.bind({}))
        out = g.to_onnx()
    t = time.perf_counter() - t0
elif tool == "onnxslim":
    import onnxslim
    t0 = time.perf_counter()
    out = onnxslim.slim(model)
    t = time.perf_counter() - t0
elif tool == "onnxsim":
    import onnxsim
    t0 = time.perf_counter()
    out, ok = onnxsim.simplify(model)
    t = time.perf_counter() - t0
onnx.save(out, dst)
print(json.dumps({"seconds": t}))
"""


def real_models() -> list[tuple[str, str]]:
    import rapidocr_onnxruntime

    zoo = sorted(glob.glob(os.path.join(os.path.dirname(onnx.__file__),
                                        "backend/test/data/light/*.onnx")))
    ocr = sorted(glob.glob(os.path.join(os.path.dirname(rapidocr_onnxruntime.__file__),
                                        "models/*.onnx")))
    out = [(os.path.basename(p).removeprefix("light_").removesuffix(".onnx"), p) for p in zoo]
    names = {"ch_PP-OCRv4_det_infer": "ppocrv4_det", "ch_PP-OCRv4_rec_infer": "ppocrv4_rec",
             "ch_ppocr_mobile_v2.0_cls_infer": "ppocr_cls"}
    out += [(names.get(os.path.basename(p)[:-5], os.path.basename(p)[:-5]), p) for p in ocr]
    return out


def synthetic_models(sizes: list[int], folder: str) -> list[tuple[str, str]]:
    from homec.testing.graphgen import synthetic_chain

    out = []
    for n in sizes:
        path = os.path.join(folder, f"synthetic_{n}.onnx")
        onnx.save(synthetic_chain(n, seed=0), path)
        out.append((f"synthetic_{n // 1000}k", path))
    return out


def count_nodes(model: onnx.ModelProto) -> int:
    return sum(1 for n in model.graph.node if n.op_type != "Constant")


def checker_ok(model: onnx.ModelProto) -> bool:
    try:
        onnx.checker.check_model(model, full_check=True)
        return True
    except Exception:
        return False


INPUT_SHAPES = {"ppocrv4_det": {"x": (1, 3, 640, 640)}, "ppocrv4_rec": {"x": (1, 3, 48, 320)},
                "ppocr_cls": {"x": (1, 3, 48, 192)}}


def latency_ms(path: str, name: str, repeats: int) -> float | None:
    from homec.verify import make_session, random_inputs

    try:
        sess = make_session(path, optimize=True, threads=1)  # as deployed: ORT's own rewrites on
        feeds = random_inputs(onnx.load(path, load_external_data=False), seed=0,
                              input_shapes=INPUT_SHAPES.get(name))
        feeds = {k: v for k, v in feeds.items() if k in {i.name for i in sess.get_inputs()}}
        sess.run(None, feeds)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            sess.run(None, feeds)
            times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1000
    except Exception:
        return None


def run_tool(tool: str, src: str, dst: str, timeout: float) -> dict:
    t0 = time.perf_counter()
    try:
        r = subprocess.run([sys.executable, "-c", _WORKER, tool, src, dst], capture_output=True,
                           text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout>{timeout:g}s", "seconds": None}
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["?"])[-1][:80]
        return {"status": f"failed: {last}", "seconds": None, "wall": time.perf_counter() - t0}
    res = json.loads(r.stdout.strip().splitlines()[-1])
    out = onnx.load(dst)
    return {"status": "ok", "seconds": res["seconds"], "nodes": count_nodes(out),
            "bytes": os.path.getsize(dst), "checker": checker_ok(out)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="synthetic sizes 1k and 5k only")
    ap.add_argument("--sizes", default=None,
                    help="synthetic sizes, e.g. 1000,5000,10000,50000 ('none': real models only)")
    ap.add_argument("--only", default=None, help="substring filter on model names")
    ap.add_argument("--timeout", type=float, default=180.0, help="per tool and model, seconds")
    ap.add_argument("--repeats", type=int, default=20, help="latency runs per model")
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = ap.parse_args()

    sizes = ([] if args.sizes == "none" else [int(s) for s in args.sizes.split(",")] if args.sizes
             else [1000, 5000] if args.quick else [1000, 5000, 10000, 50000])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        models = real_models() + synthetic_models(sizes, tmp)
        if args.only:
            models = [m for m in models if args.only in m[0]]
        for name, path in models:
            orig = onnx.load(path)
            row = {"model": name, "nodes_in": count_nodes(orig), "bytes_in": os.path.getsize(path),
                   "checker_in": checker_ok(orig)}
            for tool in TOOLS:
                dst = os.path.join(tmp, f"{name}.{tool}.onnx")
                res = run_tool(tool, path, dst, args.timeout)
                if res["status"] == "ok" and not args.no_latency and not name.startswith("synthetic_5"):
                    res["latency_ms"] = latency_ms(dst, name, args.repeats)
                row[tool] = res
            rows.append(row)
            print_row(row, header=len(rows) == 1)
            sys.stdout.flush()
    print()
    print_summary(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


def _fmt_t(x: float | None) -> str:
    return f"{x:7.3f}" if x is not None else "      -"


def print_row(row: dict, header: bool) -> None:
    if header:
        print(f"{'model':<16} {'nodes':>6} | " + " | ".join(
            f"{t:>8} s {'nodes':>6} {'KiB':>7} {'lat ms':>7} chk" for t in TOOLS)
            + " | homec/slim homec/sim")
    parts = []
    for t in TOOLS:
        r = row[t]
        if r["status"] != "ok":
            parts.append(f"{r['status'][:36]:>36}")
            continue
        lat = r.get("latency_ms")
        parts.append(f"{_fmt_t(r['seconds']):>10} {r['nodes']:>6} {r['bytes'] / 1024:>7.0f} "
                     f"{(f'{lat:7.2f}' if lat is not None else '      -')} {'ok ' if r['checker'] else 'BAD'}")
    h = row["homec"].get("seconds")

    def ratio(peer: str) -> str:
        p = row[peer].get("seconds")
        return f"{h / p:9.2f}x" if h and p else "        -"

    print(f"{row['model']:<16} {row['nodes_in']:>6} | " + " | ".join(parts)
          + f" | {ratio('onnxslim')} {ratio('onnxsim')}")


def print_summary(rows: list[dict]) -> None:
    real = [r for r in rows if not r["model"].startswith("synthetic_")]
    ok_nodes = [r for r in real if r["homec"]["status"] == "ok"]
    not_more = sum(1 for r in ok_nodes
                   if r["homec"]["nodes"] <= min(r[t]["nodes"] for t in ("onnxslim", "onnxsim")
                                                 if r[t]["status"] == "ok"))
    faster = sum(1 for r in ok_nodes if r["onnxslim"].get("seconds") is None
                 or r["homec"]["seconds"] < r["onnxslim"]["seconds"])
    print(f"real models: homec leaves <= the better peer's node count on {not_more}/{len(real)}; "
          f"faster than onnxslim on {faster}/{len(real)}")
    bad = [r["model"] for r in real if r["checker_in"] and r["homec"].get("checker") is False]
    print(f"homec outputs failing onnx.checker where the input passes: {bad or 'none'}")
    slim_bad = [r["model"] for r in real if r["checker_in"] and r["onnxslim"].get("checker") is False]
    print(f"onnxslim outputs failing onnx.checker where the input passes: {slim_bad or 'none'}")
    syn = {int(r["model"].split("_")[1][:-1]) * 1000: r for r in rows if r["model"].startswith("synthetic_")}
    if 5000 in syn and 50000 in syn and syn[5000]["homec"].get("seconds") and syn[50000]["homec"].get("seconds"):
        print(f"homec t(50k)/t(5k) = {syn[50000]['homec']['seconds'] / syn[5000]['homec']['seconds']:.1f}")
    if 50000 in syn:
        h, s = syn[50000]["homec"].get("seconds"), syn[50000]["onnxsim"].get("seconds")
        print(f"50k nodes: homec {h if h else '-'} s, onnxsim {s if s else syn[50000]['onnxsim']['status']}")


if __name__ == "__main__":
    sys.exit(main())
