"""Peer baseline: the fp32 PP-OCRv4 pipeline vs onnxruntime's own int8 quantizer, end to end.

    python -m bench.ocr.baseline                      # 150 eval images, all recipes (~20-30 min)
    python bench/ocr/baseline.py --n 30 --recipes as-is
    python -m bench.ocr.baseline --per-model --json results.json

Steps: render the eval set (default 150) and the calibration set (default 48); record the real
pipeline's session inputs on the calibration set (bench.ocr.capture -> WORK/calib/{det,cls,rec},
homec `--calib` folders, kept for later work); run the fp32 pipeline; then quantize det, rec and
cls with onnxruntime.quantization.quantize_static (QDQ, per_channel=True, MinMax, S8S8 defaults,
a CalibrationDataReader over those folders) under several preparations ("recipes"):

  as-is         quantize_static on the shipped model. Valid, but the weights of these models are
                Constant nodes, not initializers: the quantizer treats them as activations
                (per-tensor Q/DQ after each Constant, per_channel ignored, biases left float).
  pre           quant_pre_process (symbolic shape inference + ORT optimisation), then quantize.
                Fails in ORT's symbolic shape inference on all three models.
  pre-nosym     quant_pre_process(skip_symbolic_shape=True), then quantize. Weights become
                initializers, so per-channel DequantizeLinear nodes with an `axis` attribute are
                emitted while the model stays opset 12 (cls: 11), where DequantizeLinear has no
                `axis` (added in opset 13): onnx.checker and onnxruntime both reject the models.
  opset13       onnx.version_converter to opset 13, quant_pre_process(skip_symbolic_shape=True),
                then quantize: valid per-channel QDQ models (the workaround).

Each output is checked (onnx.checker full_check, an onnxruntime session, one calibration sample);
a recipe whose three models all pass is run through the pipeline. Prints one table: CER (spaces
counted), CER ignoring spaces, exact-image rate, median per-image latency (wall and CPU, one
intra-op thread), and model sizes; failures are printed with the exact error.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import logging
import os
import re
import shutil
import sys
import time
import traceback
from collections import Counter

if __package__ in (None, ""):       # python bench/ocr/baseline.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

from bench.ocr.capture import capture_calibration  # noqa: E402
from bench.ocr.pipeline import default_models, evaluate  # noqa: E402
from bench.ocr.render import calib_set, eval_set, fingerprint, fonts_status  # noqa: E402

KINDS = ("det", "rec", "cls")
RECIPES = ("as-is", "pre", "pre-nosym", "opset13")


class NpzFolderReader:
    """onnxruntime CalibrationDataReader over a homec --calib folder (one feed per .npz)."""

    def __init__(self, folder: str):
        self.files = sorted(glob.glob(os.path.join(folder, "*.npz")))
        if not self.files:
            raise FileNotFoundError(f"no .npz in {folder}")
        self.i = 0

    def get_next(self):
        if self.i >= len(self.files):
            return None
        with np.load(self.files[self.i], allow_pickle=False) as z:
            feed = {k: z[k] for k in z.files}
        self.i += 1
        return feed

    def rewind(self):
        self.i = 0


def _reader(folder: str):
    """NpzFolderReader as a subclass of onnxruntime's CalibrationDataReader."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(NpzFolderReader, CalibrationDataReader):
        pass

    return Reader(folder)


@contextlib.contextmanager
def _quiet():
    """Silence the quantizer's python warnings and onnxruntime's C++ log spam; count the
    python warnings by message with quoted names elided."""
    counter: Counter = Counter()

    class H(logging.Handler):
        def emit(self, record):
            msg = re.sub(r"'[^']*'", "'…'", record.getMessage())
            counter[" ".join(msg.split()[:12])] += 1

    root = logging.getLogger()
    old_level, old_handlers = root.level, root.handlers[:]
    root.handlers = [H()]
    root.setLevel(logging.WARNING)
    ort.set_default_logger_severity(3)
    try:
        yield counter
    finally:
        root.handlers = old_handlers
        root.setLevel(old_level)


def _err(e: BaseException, limit: int = 400) -> str:
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg[:limit]}{'...' if len(msg) > limit else ''}"


def _check(path: str, calib_folder: str) -> tuple[bool, str]:
    """onnx.checker (full) and onnxruntime (load + one calibration feed), both always tried.
    (ok, message)"""
    problems = []
    try:
        onnx.checker.check_model(onnx.load(path), full_check=True)
    except Exception as e:  # noqa: BLE001
        problems.append(f"onnx.checker: {_err(e, 240)}")
    try:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        feed = NpzFolderReader(calib_folder).get_next()
        sess.run(None, feed)
    except Exception as e:  # noqa: BLE001
        problems.append(f"onnxruntime: {_err(e, 240)}")
    return (not problems), (" | ".join(problems) or "ok")


def _describe(path: str) -> dict:
    m = onnx.load(path)
    ops = Counter(n.op_type for n in m.graph.node)
    consts = {n.output[0] for n in m.graph.node if n.op_type == "Constant"}
    inits = {t.name for t in m.graph.initializer}
    per_channel = sum(1 for n in m.graph.node if n.op_type == "DequantizeLinear"
                      and any(a.name == "axis" for a in n.attribute))
    prod = {o: n for n in m.graph.node for o in n.output}
    w_from = Counter()
    for n in m.graph.node:
        if n.op_type in ("Conv", "MatMul", "Gemm", "ConvTranspose") and len(n.input) > 1:
            w = n.input[1]
            chain = []
            while w in prod and len(chain) < 4:
                chain.append(prod[w].op_type)
                w = prod[w].input[0] if prod[w].input else ""
            src = "initializer" if w in inits else ("Constant" if chain and chain[-1] == "Constant"
                                                     else "activation")
            w_from["<-".join(chain[:2] + [src]) if chain else src] += 1
    return {"opset": {o.domain or "ai.onnx": o.version for o in m.opset_import
                      if o.domain in ("", "ai.onnx")},
            "Q": ops.get("QuantizeLinear", 0), "DQ": ops.get("DequantizeLinear", 0),
            "per_channel_DQ": per_channel, "constant_nodes": len(consts),
            "weights": dict(w_from), "metadata": [p.key for p in m.metadata_props]}


def ort_quantize(kind: str, src: str, dst: str, calib_folder: str, recipe: str, tmp: str) -> dict:
    """Quantize one model with onnxruntime under `recipe`; returns a status record."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    rec = {"kind": kind, "recipe": recipe, "path": dst, "ok": False}
    t0 = time.perf_counter()
    stage = "prepare"
    with _quiet() as warned:
        try:
            model_in = src
            if recipe == "opset13":
                stage = "onnx.version_converter(13)"
                from onnx import version_converter
                conv = version_converter.convert_version(onnx.load(src), 13)
                model_in = os.path.join(tmp, f"{kind}_opset13.onnx")
                onnx.save(conv, model_in)
            if recipe in ("pre", "pre-nosym", "opset13"):
                stage = "quant_pre_process" + ("" if recipe == "pre" else "(skip_symbolic_shape)")
                pre_out = os.path.join(tmp, f"{kind}_{recipe}_pre.onnx")
                quant_pre_process(model_in, pre_out, skip_symbolic_shape=(recipe != "pre"))
                model_in = pre_out
            stage = "quantize_static"
            quantize_static(model_in, dst, _reader(calib_folder), quant_format=QuantFormat.QDQ,
                            per_channel=True, calibrate_method=CalibrationMethod.MinMax)
        except Exception as e:  # noqa: BLE001
            tb = traceback.extract_tb(e.__traceback__)[-1]
            rec["error"] = (f"{stage} raised {_err(e)} "
                            f"(at {os.path.basename(tb.filename)}:{tb.lineno} {tb.name})")
            rec["seconds"] = time.perf_counter() - t0
            rec["warnings"] = dict(warned.most_common(5))
            return rec
    rec["seconds"] = time.perf_counter() - t0
    rec["warnings"] = dict(warned.most_common(5))
    _restore_metadata(src, dst, rec)
    rec["ok"], rec["check"] = _check(dst, calib_folder)
    rec["describe"] = _describe(dst)
    rec["bytes"] = os.path.getsize(dst)
    return rec


def _restore_metadata(src: str, dst: str, rec: dict) -> None:
    """Put back metadata_props the quantizer dropped (rec's 'character' list matters)."""
    m_src, m_dst = onnx.load(src), onnx.load(dst)
    have = {p.key for p in m_dst.metadata_props}
    lost = [p for p in m_src.metadata_props if p.key not in have]
    if lost:
        for p in lost:
            m_dst.metadata_props.add(key=p.key, value=p.value)
        onnx.save(m_dst, dst)
        rec["metadata_restored"] = [p.key for p in lost]


def _fmt_row(name, r, sizes) -> str:
    size = sum(sizes.values()) / 1e6
    per = " ".join(f"{k}={sizes[k] / 1e6:.2f}" for k in KINDS)
    return (f"{name:<22} {r['cer'] * 100:6.2f}% {r['cer_nospace'] * 100:7.2f}% "
            f"{r['exact'] * 100:6.1f}% {r['wall_median_s'] * 1e3:8.0f} {r['cpu_median_s'] * 1e3:8.0f}"
            f"  {size:6.2f} ({per})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=150, help="eval images (default 150)")
    ap.add_argument("--calib-n", type=int, default=48, help="calibration images (default 48)")
    ap.add_argument("--seed", type=int, default=None, help="eval-set seed (default: render's)")
    ap.add_argument("--work", default=os.path.join("/tmp", "homec-bench-ocr"),
                    help="folder for calibration data and quantized models")
    ap.add_argument("--recipes", default=",".join(RECIPES),
                    help=f"comma list of {','.join(RECIPES)} or 'none'")
    ap.add_argument("--per-model", action="store_true",
                    help="also run each int8 model alone with the other two fp32 "
                         "(the valid recipe with the lowest CER)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", metavar="PATH", help="write all figures (and predictions) here")
    args = ap.parse_args(argv)
    recipes = [] if args.recipes == "none" else [r.strip() for r in args.recipes.split(",")]
    for r in recipes:
        if r not in RECIPES:
            ap.error(f"unknown recipe {r!r}")

    t_start = time.perf_counter()
    fp32 = default_models()
    os.makedirs(args.work, exist_ok=True)
    print(f"onnxruntime {ort.__version__}, onnx {onnx.__version__}, numpy {np.__version__}")
    missing = [k for k, v in fonts_status().items() if v.startswith("substituted")]
    print(f"fonts: {len(fonts_status()) - len(missing)} of {len(fonts_status())} installed"
          + (f" (substituted: {', '.join(missing)})" if missing else ""))

    samples = eval_set(args.n) if args.seed is None else eval_set(args.n, seed=args.seed)
    calib = calib_set(args.calib_n)
    print(f"eval set: {len(samples)} images, {sum(len(s.lines) for s in samples)} lines, "
          f"fingerprint {fingerprint(samples)}; calib set: {len(calib)} images, "
          f"fingerprint {fingerprint(calib)}")

    t0 = time.perf_counter()
    folders = capture_calibration(calib, fp32["det"], fp32["rec"], fp32["cls"],
                                  os.path.join(args.work, "calib"), threads=args.threads)
    with open(os.path.join(args.work, "calib", "manifest.json")) as f:
        counts = json.load(f)["counts"]
    print(f"calibration captured in {time.perf_counter() - t0:.0f}s: "
          + ", ".join(f"{k} {counts[k]} samples -> {folders[k]}" for k in KINDS))

    results: dict[str, dict] = {}
    sizes: dict[str, dict] = {}
    t0 = time.perf_counter()
    results["fp32"] = evaluate(samples, fp32["det"], fp32["rec"], fp32["cls"], threads=args.threads)
    sizes["fp32"] = {k: os.path.getsize(fp32[k]) for k in KINDS}
    print(f"fp32 pipeline: {time.perf_counter() - t0:.0f}s")

    quant: dict[str, dict[str, dict]] = {}
    for recipe in recipes:
        out_dir = os.path.join(args.work, f"ort-{recipe}")
        shutil.rmtree(out_dir, ignore_errors=True)
        os.makedirs(out_dir)
        quant[recipe] = {}
        for kind in KINDS:
            dst = os.path.join(out_dir, os.path.basename(fp32[kind]).replace(".onnx", "_int8.onnx"))
            r = ort_quantize(kind, fp32[kind], dst, folders[kind], recipe, out_dir)
            quant[recipe][kind] = r
            status = "ok" if r["ok"] else "FAILED"
            detail = r.get("error") or (r["check"] if not r["ok"] else "")
            print(f"  [{recipe}] {kind}: {status} in {r['seconds']:.0f}s {detail}")
            if "describe" in r:
                d = r["describe"]
                print(f"      opset {d['opset']}, Q/DQ {d['Q']}/{d['DQ']}, per-channel DQ "
                      f"{d['per_channel_DQ']}, weight sources {d['weights']}, "
                      f"{r['bytes'] / 1e6:.2f} MB"
                      + (f", metadata restored {r['metadata_restored']}"
                         if r.get("metadata_restored") else ""))
            if r.get("warnings"):
                print(f"      quantizer warnings: {r['warnings']}")
        if all(quant[recipe][k]["ok"] for k in KINDS):
            paths = {k: quant[recipe][k]["path"] for k in KINDS}
            t0 = time.perf_counter()
            results[f"ort-int8 {recipe}"] = evaluate(samples, paths["det"], paths["rec"],
                                                      paths["cls"], threads=args.threads)
            sizes[f"ort-int8 {recipe}"] = {k: os.path.getsize(paths[k]) for k in KINDS}
            print(f"  [{recipe}] int8 pipeline: {time.perf_counter() - t0:.0f}s")

    if args.per_model:
        valid = [r for r in recipes if all(quant[r][k]["ok"] for k in KINDS)]
        good = min(valid, key=lambda r: results[f"ort-int8 {r}"]["cer"]) if valid else None
        if good:
            for kind in KINDS:
                paths = dict(fp32)
                paths[kind] = quant[good][kind]["path"]
                name = f"{good}: {kind} int8 only"
                results[name] = evaluate(samples, paths["det"], paths["rec"], paths["cls"],
                                         threads=args.threads)
                sizes[name] = {k: os.path.getsize(paths[k]) for k in KINDS}

    print()
    print(f"PP-OCRv4 in RapidOCR on {len(samples)} rendered appliance labels "
          f"({results['fp32']['ref_chars']} reference characters), {args.threads} thread(s)")
    print(f"{'pipeline':<22} {'CER':>7} {'CER-nsp':>8} {'exact':>7} {'wall ms':>8} {'cpu ms':>8}"
          f"  {'MB total (det/rec/cls)'}")
    for name, r in results.items():
        print(_fmt_row(name, r, sizes[name]))
    for recipe in recipes:
        if not all(quant[recipe][k]["ok"] for k in KINDS):
            bad = [f"{k}: {(quant[recipe][k].get('error') or quant[recipe][k]['check'])[:150]}"
                   for k in KINDS if not quant[recipe][k]["ok"]]
            print(f"{'ort-int8 ' + recipe:<22} no valid model set -- " + " | ".join(bad))
    print("CER: edits / reference chars, lines joined by '\\n', NFKC + whitespace collapsed; "
          "CER-nsp: spaces ignored; exact: images read exactly; latency: median per image.")
    print(f"total {time.perf_counter() - t_start:.0f}s")

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "sizes": sizes, "quantization": quant,
                       "eval_fingerprint": fingerprint(samples), "n": len(samples),
                       "onnxruntime": ort.__version__}, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
