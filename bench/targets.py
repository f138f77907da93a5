"""Targets benchmark (issue 7): PP-OCRv4 det/rec/cls and the onnx wheel's zoo models compiled for
the built-in targets `cpu`, `npu-int8` and `mcu`, with what each backend reports beside its peers.

    OPENBLAS_NUM_THREADS=1 python -m bench.targets --calib-from /tmp/bl/work2/calib \\
        --out bench/results/targets.txt
    python -m bench.targets --models cls,squeezenet --targets cpu,mcu --no-int8   # quick look
    python -m bench.targets --capture        # capture real calibration first (bench.ocr.capture)

Every (model, target) is one `homec.compile(model, SCHEDULE, target=..., input_shapes=...,
calib=..., verify=True, measure=<cpu target>)`; a compile that fails after its passes
(UnsupportedError 4, VerificationError 5, ResourceLimitError 6) still carries its report, so its
row shows the figures too, and its message is listed under the table. Columns:

  status      ok, or the exit code and error class (4 Unsupported, 5 Verification, 6 Resource,
              70 a pass crashed)
  nodes       nodes of the compiled graph
  %nodes %MAC share of the nodes (placement) and of the MACs (estimate layers) on the target's
              device: the accelerator, or the CPU for `cpu`
  parts trans placement partitions and device transitions
  arena       the arena planner's activation memory; its two peers, from the same plan:
  LB, noreuse   LB = largest sum of buffers live at one step (perfect packing), noreuse = every
              tensor in its own slot; a/LB >= 1 and a/NR <= 1 say how close the planner packs
  weights     stored weight bytes; w/flash: against the target's flash budget (- : none)
  est ms      the roofline estimate (targets.estimate) of the compiled graph
  ORT in/out  cpu only: onnxruntime median ms of the input model (the peer) and of the compiled one,
              measured in the compile (targets.estimate.measure_latency: one thread, 3 warm-up and
              20 timed runs over the verification inputs); x: in/out; est/m: estimate / measured
  cos, |d|    verification against the input model on the first 8 calibration inputs: the worst
              output cosine and the largest absolute difference
  s           compile wall time (passes, analysis, verification, and for cpu the measurement)

Then, for the int8 CPU path (--int8-models): the cpu target with SCHEDULE_INT8 (quantize with
the same calibration, folded to onnxruntime's integer operators), against the float input and
onnxruntime's own quantize_static (QDQ, per-channel, MinMax, U8S8: bench.ocr.int8.ort_peer on the
same calibration samples), the three timed in one session each, taking turns (bench.fold_qdq.latency).

Inputs are static: det 1x3x320x320 (1x3x96x96 on mcu), rec 1x3x48x320, cls 1x3x48x192, zoo models
their declared shape. Calibration: --calib-from DIR (DIR/{det,rec,cls}/*.npz captured from RapidOCR
by bench.ocr.capture) fitted to the static shape (`fit_sample`): det images resized bilinearly,
rec/cls batches split into single crops, rec crops right-padded with zeros to 320 (as PP-OCR pads
after normalization) or squeezed to 320 when wider (as PP-OCR resizes a crop too wide). Without
it, seeded random calibration, said in the header. Zoo models: cleanup, then seeded random weights
of the real shapes (tests/passes/test_prune_channels_models.randomize_weights; the files build
constant weights with ConstantOfShape), saved in IR 4 form (`weights_not_inputs`), calibrated and
verified on N(0, 1) inputs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):       # python bench/targets.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import onnx  # noqa: E402

from bench.ocr.int8 import Tee, _fx, _ratio, log_header  # noqa: E402
from homec.testing.models import OCR_FILES, ocr_model  # noqa: E402

MODULE = "bench.targets"
ROOT = Path(__file__).resolve().parents[1]
ZOO = ("squeezenet", "shufflenet", "resnet50", "inception_v1")
MODELS = (*OCR_FILES, *ZOO)
TARGETS = ("cpu", "npu-int8", "mcu")
# static input shapes of the PP-OCR models; det is smaller on the MCU (its SRAM is 512 KiB)
OCR_SHAPES = {"det": (1, 3, 320, 320), "rec": (1, 3, 48, 320), "cls": (1, 3, 48, 192)}
OCR_SHAPES_MCU = {**OCR_SHAPES, "det": (1, 3, 96, 96)}
SCHEDULE = "schedule { cleanup; fuse_activations }"
SCHEDULE_INT8 = "schedule { cleanup; fuse_activations; quantize }"
VERIFY_SAMPLES = 8          # homec.compile verifies on the first 8 calibration samples
PEER = "ort-u8s8"           # the onnxruntime quantizer setting the cpu target's uint8 form matches


# --------------------------------------------------------------------------- models

def zoo_path(name: str) -> Path:
    return Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / f"light_{name}.onnx"


def _randomize_weights() -> Callable[[onnx.ModelProto], onnx.ModelProto]:
    """The tests' helper giving the zoo models seeded random weights of their real shapes
    (the tests folder is not a package: loaded from its file)."""
    key = "_homec_bench_targets_prune_models"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            key, ROOT / "tests" / "passes" / "test_prune_channels_models.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key].randomize_weights


def prepare_model(name: str, work: str) -> str:
    """The input model file of `name`: the wheel's file, or for a zoo model cleanup + seeded
    random weights, saved once to WORK/models/."""
    import homec

    out_dir = os.path.join(work, "models")
    os.makedirs(out_dir, exist_ok=True)
    if name in OCR_FILES:
        path = ocr_model(name)
        if path is None:
            raise FileNotFoundError("rapidocr_onnxruntime (PP-OCRv4 models) is not installed")
        return str(path)
    dst = os.path.join(out_dir, f"{name}.onnx")
    if not os.path.isfile(dst):
        cleaned = homec.compile(str(zoo_path(name)), "schedule { cleanup }").model
        onnx.save(weights_not_inputs(_randomize_weights()(cleaned)), dst)
    return dst


def weights_not_inputs(m: onnx.ModelProto) -> onnx.ModelProto:
    """An IR 3 model (every initializer also listed as a graph input; onnxruntime holds them
    constant) in IR 4 form, as current exporters write it: initializers only. homec reads an
    initializer listed as an input as an overridable input, not a weight."""
    inits = {t.name for t in m.graph.initializer}
    if m.ir_version >= 4:
        return m
    keep = [vi for vi in m.graph.input if vi.name not in inits]
    del m.graph.input[:]
    m.graph.input.extend(keep)
    m.ir_version = 4
    return m


def input_shape(model_path: str) -> tuple[str, tuple[int, ...] | None]:
    """(name, static shape or None) of the model's one non-initializer input."""
    m = onnx.load(model_path, load_external_data=False)
    inits = {t.name for t in m.graph.initializer}
    vi = next(i for i in m.graph.input if i.name not in inits)
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in vi.type.tensor_type.shape.dim]
    return vi.name, (tuple(dims) if all(dims) else None)


def static_shape(name: str, target: str, declared: tuple[int, ...] | None) -> tuple[int, ...]:
    if name in OCR_SHAPES:
        return (OCR_SHAPES_MCU if target == "mcu" else OCR_SHAPES)[name]
    if declared is None:
        raise ValueError(f"{name}: no static input shape declared")
    return declared


# --------------------------------------------------------------------------- calibration

def resize_bilinear(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """NCHW bilinear resize with half-pixel centers (onnx Resize linear, half_pixel; cv2's
    INTER_LINEAR without antialiasing), in float32."""
    def axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, (pos - lo).astype(np.float32)

    x = np.asarray(x, dtype=np.float32)
    y0, y1, wy = axis_weights(x.shape[2], height)
    x0, x1, wx = axis_weights(x.shape[3], width)
    rows = x[:, :, y0, :] * (1 - wy)[:, None] + x[:, :, y1, :] * wy[:, None]
    return rows[..., x0] * (1 - wx) + rows[..., x1] * wx


def fit_sample(kind: str, x: np.ndarray, shape: Sequence[int]) -> list[np.ndarray]:
    """One captured input of PP-OCR model `kind` as inputs of the static `shape` (batch 1):
    det resized to (H, W); rec/cls split into single crops, rec right-padded with zeros to
    W (PP-OCR pads after normalizing) or resized to W when wider (PP-OCR squeezes a crop too
    wide); cls crops are already 48x192 (resized if not)."""
    _, c, h, w = shape
    out = []
    for i in range(x.shape[0]):
        crop = x[i:i + 1].astype(np.float32)
        if crop.shape[1] != c:
            raise ValueError(f"{kind}: sample has {crop.shape[1]} channels, the model {c}")
        if kind == "rec" and crop.shape[2] == h and crop.shape[3] <= w:
            pad = np.zeros((1, c, h, w - crop.shape[3]), np.float32)
            crop = np.concatenate([crop, pad], axis=3)
        elif crop.shape[2:] != (h, w):
            crop = resize_bilinear(crop, h, w)
        out.append(np.ascontiguousarray(crop))
    return out


def calibration(name: str, input_name: str, shape: Sequence[int], folders: Mapping[str, str] | None,
                n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Up to n feeds of the static `shape`: captured PP-OCR inputs fitted by fit_sample (file
    order), or seeded random ones (OCR: uniform [-1, 1], the normalized pixel range; zoo:
    N(0, 1))."""
    if name in OCR_FILES and folders and name in folders:
        feeds = []
        for f in sorted(Path(folders[name]).glob("*.npz")):
            with np.load(f, allow_pickle=False) as z:
                arr = z[input_name]
            feeds += [{input_name: x} for x in fit_sample(name, arr, shape)]
            if len(feeds) >= n:
                break
        return feeds[:n]
    rng = np.random.default_rng(seed)
    if name in OCR_FILES:
        return [{input_name: rng.uniform(-1, 1, shape).astype(np.float32)} for _ in range(n)]
    return [{input_name: rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]


def calibration_source(calib_from: str | None, capture: bool, work: str, log: Callable[[str], None]
                       ) -> dict[str, str] | None:
    """kind -> captured folder, or None (random calibration, said in the log)."""
    if calib_from:
        folders = {k: os.path.join(calib_from, k) for k in OCR_FILES}
        missing = [k for k, d in folders.items() if not list(Path(d).glob("*.npz"))]
        if not missing:
            log(f"calibration: PP-OCR inputs captured from RapidOCR in {calib_from}")
            return folders
        log(f"calibration: {calib_from} has no .npz for {', '.join(missing)}: RANDOM calibration")
        return None
    if capture:
        from bench.ocr.int8 import calibration_folders
        return calibration_folders(work, None, 48, 1, log)
    log("calibration: RANDOM (no --calib-from DIR nor --capture): quantization ranges and "
        "verification use seeded random inputs, not real images")
    return None


# --------------------------------------------------------------------------- one compile

def compile_row(name: str, target: str, model_path: str, schedule: str,
                feeds: list[dict[str, np.ndarray]], shape: Sequence[int], *,
                measure: bool, verify: bool = True, save_to: str | None = None,
                crash_dir: str | None = None) -> dict[str, Any]:
    """homec.compile on one (model, target); the row's figures (see `row_figures`) plus status,
    exit code, message and wall seconds."""
    import homec
    from homec.calib import CalibrationSet
    from homec.errors import HomecError

    input_name = next(iter(feeds[0]))
    row: dict[str, Any] = {"model": name, "target": target, "shape": list(shape)}
    t0 = time.perf_counter()
    report = None
    try:
        result = homec.compile(model_path, schedule, target=target,
                               input_shapes={input_name: tuple(shape)},
                               calib=CalibrationSet([dict(f) for f in feeds]),
                               verify=verify, measure=measure, reproducer_dir=crash_dir)
        report = result.report
        row.update(status="ok", exit_code=0, message=None)
        if save_to:
            homec.save(result.model, save_to)
            row["path"] = save_to
    except HomecError as e:
        report = getattr(e, "report", None)
        row.update(status=type(e).__name__, exit_code=int(e.exit_code),
                   message=" ".join(e.message.split()))   # without the input's path
    row["seconds"] = time.perf_counter() - t0
    row.update(row_figures(report))
    return row


def row_figures(report: Mapping[str, Any] | None) -> dict[str, Any]:
    """The table's figures from a compile report (None where the report has no such part)."""
    fig: dict[str, Any] = dict.fromkeys(
        ("nodes", "node_share", "mac_share", "partitions", "transitions", "arena", "lower_bound",
         "no_reuse", "weights", "flash", "estimate_ms", "ort_in_ms", "ort_out_ms", "cosine",
         "max_abs", "verified", "quantized"))
    if not report:
        return fig
    fig["nodes"] = report.get("after", {}).get("nodes")
    fig["quantized"] = any(p["name"] == "quantize" for p in report.get("passes", []))
    ver = report.get("verification")
    if ver and ver.get("outputs"):
        fig["cosine"] = min(o["cosine"] for o in ver["outputs"])
        fig["max_abs"] = max(o["max_abs"] for o in ver["outputs"])
        fig["verified"] = bool(ver["ok"])
    man = report.get("manifest")
    if not man:
        return fig
    device = man["target"]["device"]
    placement, memory, est = man["placement"], man["memory"], man["estimate"]
    # placement decides where a node runs (None: nowhere, the target cannot run it); the
    # estimate prices such a node on the accelerator, so its devices are not used here
    placed = {n["node"]: n["device"] for n in placement["nodes"]}
    fig["node_share"] = (sum(d == device for d in placed.values()) / len(placed)) if placed else None
    macs = [(layer["macs"] or 0, placed.get(layer["node"])) for layer in est["layers"]]
    all_macs = sum(m for m, _ in macs)
    fig["mac_share"] = sum(m for m, d in macs if d == device) / all_macs if all_macs else None
    fig["partitions"] = len(placement["partitions"])
    fig["transitions"] = placement["transitions"]
    fig["arena"] = memory["arena_bytes"]
    fig["lower_bound"] = memory["lower_bound_bytes"]
    fig["no_reuse"] = memory["no_reuse_bytes"]
    fig["weights"] = memory["weight_bytes"]
    fig["flash"] = man["target"]["memory"]["flash_bytes"]
    fig["estimate_ms"] = est["total_ms"]
    measured = man.get("measured")
    if measured:
        fig["ort_in_ms"] = measured["before"]["median_ms"]
        fig["ort_out_ms"] = measured["after"]["median_ms"]
    return fig


# --------------------------------------------------------------------------- formatting

def kib(n: int | None) -> str:
    return "-" if n is None else f"{n / 1024:.0f}" if n >= 10 * 1024 else f"{n / 1024:.1f}"


def pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.0f}%"


def num(x: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if x is None else fmt.format(x)


STATUS = {0: "ok", 2: "2 usage", 3: "3 invalid", 4: "4 unsupp", 5: "5 verify", 6: "6 budget",
          70: "70 crash"}

COLUMNS = (("model", 12, "<"), ("target", 8, "<"), ("status", 9, "<"), ("nodes", 5, ">"),
           ("%nodes", 6, ">"), ("%MAC", 5, ">"), ("parts", 5, ">"), ("trans", 5, ">"),
           ("arena KiB", 9, ">"), ("LB KiB", 7, ">"), ("noreuse", 8, ">"), ("a/LB", 5, ">"),
           ("a/NR", 5, ">"), ("weights KiB", 11, ">"), ("w/flash", 7, ">"), ("est ms", 8, ">"),
           ("ORT in", 7, ">"), ("ORT out", 7, ">"), ("x", 5, ">"), ("est/m", 6, ">"),
           ("cos", 8, ">"), ("|d|", 8, ">"), ("s", 5, ">"))


def _line(cells: Sequence[str]) -> str:
    return " ".join(f"{c:{align}{width}}" for c, (_, width, align) in zip(cells, COLUMNS)).rstrip()


def header_line() -> str:
    return _line([c for c, _, _ in COLUMNS])


def format_row(r: Mapping[str, Any]) -> str:
    """One table line of a compile_row record."""
    return _line([
        r["model"], r["target"], STATUS.get(r["exit_code"], str(r["exit_code"])),
        num(r["nodes"], "{}"), pct(r["node_share"]), pct(r["mac_share"]),
        num(r["partitions"], "{}"), num(r["transitions"], "{}"),
        kib(r["arena"]), kib(r["lower_bound"]), kib(r["no_reuse"]),
        num(_ratio(r["arena"], r["lower_bound"])), num(_ratio(r["arena"], r["no_reuse"])),
        kib(r["weights"]), pct(_ratio(r["weights"], r["flash"])),
        num(r["estimate_ms"], "{:.3g}"), num(r["ort_in_ms"], "{:.2f}"), num(r["ort_out_ms"], "{:.2f}"),
        _fx(_ratio(r["ort_in_ms"], r["ort_out_ms"])), num(_ratio(r["estimate_ms"], r["ort_out_ms"])),
        num(r["cosine"], "{:.5f}"), num(r["max_abs"], "{:.2g}"), f"{r['seconds']:.1f}"])


# --------------------------------------------------------------------------- int8 cpu path

def int8_row(name: str, model_path: str, feeds: list[dict[str, np.ndarray]], shape: Sequence[int],
             work: str, runs: int, schedule: str, log: Callable[[str], None]) -> dict[str, Any]:
    """homec's int8 cpu compile vs the float input and onnxruntime's quantize_static on the same
    calibration samples; the three timed together (bench.fold_qdq.latency)."""
    from bench.fold_qdq import latency
    from bench.ocr.int8 import ort_peer

    out_dir = os.path.join(work, "int8", name)
    calib_dir = os.path.join(out_dir, "calib")
    os.makedirs(calib_dir, exist_ok=True)
    for f in Path(calib_dir).glob("*.npz"):
        f.unlink()
    for i, feed in enumerate(feeds):
        np.savez(os.path.join(calib_dir, f"{i:04d}.npz"), **feed)
    homec_path = os.path.join(out_dir, "homec.onnx")
    # not verified in the compile: a model below the tolerance is still timed; both int8
    # models are held to the float one by `agreement` below instead
    row = compile_row(name, "cpu", model_path, schedule, feeds, shape, measure=False,
                      verify=False, save_to=homec_path, crash_dir=os.path.join(out_dir, "crash"))
    t0 = time.perf_counter()
    peer = ort_peer(name, model_path, os.path.join(out_dir, f"{PEER}.onnx"), calib_dir, PEER, out_dir)
    row["peer_seconds"] = time.perf_counter() - t0
    row["peer_ok"] = peer["ok"]
    row["peer_error"] = None if peer["ok"] else (peer.get("error") or peer.get("check"))
    paths = {"float": model_path}
    if row["exit_code"] == 0:
        paths["homec"] = homec_path
        row["cosine"], row["max_abs"] = agreement(model_path, homec_path, feeds[:VERIFY_SAMPLES])
    if peer["ok"]:
        paths["peer"] = peer["path"]
        row["peer_cosine"], row["peer_max_abs"] = agreement(model_path, peer["path"],
                                                            feeds[:VERIFY_SAMPLES])
    timed = latency(paths, feeds[:2], runs)
    row["int8_ms"] = {k: v * 1e3 for k, v in timed.items()}
    row["bytes"] = {k: os.path.getsize(p) for k, p in paths.items()}
    log(f"  int8 {name}: homec {row['status']} in {row['seconds']:.1f}s, {PEER} "
        f"{'ok' if peer['ok'] else 'failed'} in {row['peer_seconds']:.1f}s")
    return row


def agreement(reference: str, model: str, feeds: Sequence[Mapping[str, np.ndarray]]
              ) -> tuple[float, float]:
    """(worst output cosine, largest absolute difference) of `model` against `reference` over
    `feeds`, as homec.compile's verification measures them."""
    from homec.registry import Tolerance
    from homec.verify import compare_models

    cmp = compare_models(onnx.load(reference), onnx.load(model), feeds, Tolerance(atol=float("inf")))
    return min(o.cosine for o in cmp.outputs), max(o.max_abs for o in cmp.outputs)


def quantize_min_cosine() -> float:
    """The cosine the quantize pass promises (its registered tolerance)."""
    from homec.registry import REGISTRY

    return REGISTRY.get("quantize").tolerance.min_cosine


def cos_mark(x: float | None) -> str:
    """A cosine to 4 decimals, with "!" when below the quantize pass's tolerance."""
    return "-" if x is None else f"{x:.4f}" + ("!" if x < quantize_min_cosine() else " ")


def format_int8_row(r: Mapping[str, Any]) -> str:
    ms = r["int8_ms"]
    f, h, p = ms.get("float"), ms.get("homec"), ms.get("peer")
    b = r["bytes"]
    return (f"{r['model']:<12} {STATUS.get(r['exit_code'], r['exit_code']):<9} "
            f"{num(f, '{:.2f}'):>8} {num(h, '{:.2f}'):>8} {num(p, '{:.2f}'):>8} "
            f"{_fx(_ratio(f, h)):>9} {_fx(_ratio(p, h)):>9} {_fx(_ratio(f, p)):>9} "
            f"{num(_ratio(b.get('homec'), b.get('float')), '{:.3f}'):>7} "
            f"{num(_ratio(b.get('peer'), b.get('float')), '{:.3f}'):>7} "
            f"{cos_mark(r['cosine']):>8} {cos_mark(r.get('peer_cosine')):>8} "
            f"{r['seconds']:>6.1f} {r['peer_seconds']:>6.1f}")


INT8_HEADER = (f"{'model':<12} {'status':<9} {'float ms':>8} {'homec ms':>8} {'ORT q ms':>8} "
               f"{'x float':>9} {'x ORT q':>9} {'ORTq x fl':>9} {'h size':>7} {'q size':>7} "
               f"{'h cos':>8} {'q cos':>8} {'h s':>6} {'q s':>6}")


# --------------------------------------------------------------------------- main

def _list(text: str, allowed: Sequence[str], what: str, ap: argparse.ArgumentParser) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad:
        ap.error(f"{what}: unknown {', '.join(bad)} (choose from {', '.join(allowed)})")
    return items


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma list of {','.join(MODELS)}")
    ap.add_argument("--targets", default=",".join(TARGETS), help="comma list of built-in targets")
    ap.add_argument("--int8-models", default="det,rec,cls,squeezenet,resnet50",
                    help="models of the int8 cpu table (default det,rec,cls,squeezenet,resnet50; '' skips it)")
    ap.add_argument("--no-int8", action="store_true", help="skip the int8 cpu table")
    ap.add_argument("--calib-from", metavar="DIR",
                    help="captured calibration folders DIR/{det,rec,cls} (bench.ocr.capture), e.g. "
                         "bench.ocr.int8's WORK/calib")
    ap.add_argument("--capture", action="store_true",
                    help="without --calib-from: capture calibration with RapidOCR first "
                         "(bench.ocr.int8.calibration_folders, into WORK/calib)")
    ap.add_argument("--calib-n", type=int, default=32, help="calibration samples per model (default 32)")
    ap.add_argument("--runs", type=int, default=20, help="int8 table: timed runs per input (default 20)")
    ap.add_argument("--schedule", default=SCHEDULE, help=f"schedule text or .hc (default: {SCHEDULE})")
    ap.add_argument("--int8-schedule", default=SCHEDULE_INT8, help=f"default: {SCHEDULE_INT8}")
    ap.add_argument("--work", default=os.path.join("/tmp", "homec-bench-targets"))
    ap.add_argument("--out", metavar="PATH", help="also write the printed text here")
    ap.add_argument("--json", metavar="PATH", help="write all rows here")
    args = ap.parse_args(argv)
    models = _list(args.models, MODELS, "--models", ap)
    targets = _list(args.targets, TARGETS, "--targets", ap)
    int8_models = [] if args.no_int8 else _list(args.int8_models, MODELS, "--int8-models", ap)
    if args.calib_n < 1 or args.runs < 1:
        ap.error("--calib-n and --runs: at least 1")

    t_start = time.perf_counter()
    log = Tee()
    os.makedirs(args.work, exist_ok=True)
    log_header(log, argv, 1, MODULE)
    log(f"# OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}; schedule: "
        f"{' '.join(args.schedule.split())}; int8 table: {' '.join(args.int8_schedule.split())}")
    for line in __doc__.split("\n\n", 2)[2].strip().split("\n"):
        log("# " + line if line else "#")
    folders = calibration_source(args.calib_from, args.capture, args.work, log)

    paths: dict[str, str] = {}
    for name in dict.fromkeys([*models, *int8_models]):
        paths[name] = prepare_model(name, args.work)

    rows = []
    for name in models:
        input_name, declared = input_shape(paths[name])
        for target in targets:
            shape = static_shape(name, target, declared)
            feeds = calibration(name, input_name, shape, folders, args.calib_n)
            row = compile_row(name, target, paths[name], args.schedule, feeds, shape,
                              measure=target == "cpu", crash_dir=os.path.join(args.work, "crash"))
            row["calibration"] = "captured" if folders and name in OCR_FILES else "random"
            rows.append(row)
            log(f"  {name} {target} {'x'.join(map(str, shape))}: {row['status']} in "
                f"{row['seconds']:.1f}s ({len(feeds)} {row['calibration']} calibration samples)")

    int8_rows = []
    for name in int8_models:
        input_name, declared = input_shape(paths[name])
        shape = static_shape(name, "cpu", declared)
        feeds = calibration(name, input_name, shape, folders, args.calib_n)
        int8_rows.append(int8_row(name, paths[name], feeds, shape, args.work, args.runs,
                                  args.int8_schedule, log))

    log()
    log(header_line())
    for r in rows:
        log(format_row(r))
    errors = [r for r in rows if r["message"]]
    if errors:
        log("errors:")
        for r in errors:
            log(f"  {r['model']} {r['target']}: exit {r['exit_code']} {r['status']}: {r['message'][:60]}")
    # an int8 target that ran no quantize pass left its layers float (on the fallback, or failing)
    unquantized = [r for r in rows if r["target"] != "cpu" and r["quantized"] is False]
    if unquantized:
        log("not quantized (no quantize pass ran for an int8 target): "
            + ", ".join(f"{r['model']} {r['target']}" for r in unquantized))
    if int8_rows:
        log()
        log(f"int8 on the cpu target ({' '.join(args.int8_schedule.split())}) vs the float input "
            f"and onnxruntime quantize_static ({PEER}, QDQ, per-channel, MinMax), same calibration:")
        log(INT8_HEADER)
        for r in int8_rows:
            log(format_int8_row(r))
        for r in int8_rows:
            if r["message"] or r["peer_error"]:
                log(f"  {r['model']}: " + "; ".join(
                    x for x in (r["message"] and f"homec exit {r['exit_code']}: {r['message'][:60]}",
                                r["peer_error"] and f"{PEER}: {r['peer_error'][:60]}") if x))
        log(f"ms: onnxruntime (all optimizations, one thread), median of {args.runs} runs on each "
            f"of the first 2 calibration inputs, the models taking turns, median over inputs; "
            f"x float = float/homec, x ORT q = ORT int8/homec (> 1: homec faster), ORTq x fl = "
            f"float/ORT int8; size: file bytes / the float file's; cos: worst output cosine vs "
            f"the float model on the first {VERIFY_SAMPLES} calibration inputs, ! below "
            f"{quantize_min_cosine():g} (quantize's tolerance: homec's compile is not verified "
            f"here, so a model under it is timed too); s: seconds to compile / to quantize. "
            f"Zoo models (random weights): the softmax output is nearly uniform (~1e-3 a class), "
            f"so its cosine says little, and onnxruntime quantizes Softmax outputs on a fixed "
            f"[0, 1] uint8 range where such values round to 0 (cosine 0).")
    log(f"total {time.perf_counter() - t_start:.0f}s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "int8": int8_rows}, f, indent=1, default=str)
    if args.out:
        log.write(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
