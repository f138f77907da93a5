"""The real RapidOCR pipeline with model paths overridden, end-to-end CER and latency.

    engine = make_engine(det, rec, cls, threads=1)      # rapidocr_onnxruntime.RapidOCR
    preds = run_ocr(images, det, rec, cls)              # [[line, ...] per image]
    cer(preds, truths)                                  # sum of edit distances / reference chars
    time_pipeline(images, det, rec, cls)                # median seconds per image, one thread

RapidOCR runs exactly as shipped (its config.yaml: det limit_type min / 736, box_thresh 0.5,
unclip 1.6, cls on, rec batches of 6, text_score 0.5); only the three model paths and the thread
counts are overridden. A rec model without the 'character' metadata (e.g. one a tool re-emitted
without metadata_props) is decoded with the character list of the wheel's own rec model.
"""

from __future__ import annotations

import hashlib
import os
import statistics
import tempfile
import time
import unicodedata
from collections.abc import Iterable, Sequence

import numpy as np

MODEL_FILES = {
    "det": "ch_PP-OCRv4_det_infer.onnx",
    "rec": "ch_PP-OCRv4_rec_infer.onnx",
    "cls": "ch_ppocr_mobile_v2.0_cls_infer.onnx",
}


def models_dir() -> str:
    import rapidocr_onnxruntime
    return os.path.join(os.path.dirname(rapidocr_onnxruntime.__file__), "models")


def default_models() -> dict[str, str]:
    """kind ('det', 'rec', 'cls') -> path of the fp32 model shipped in rapidocr-onnxruntime."""
    d = models_dir()
    return {k: os.path.join(d, f) for k, f in MODEL_FILES.items()}


# --------------------------------------------------------------------------- engine

def _metadata(path: str) -> dict[str, str]:
    import onnx
    m = onnx.load(os.fspath(path), load_external_data=False)
    return {p.key: p.value for p in m.metadata_props}


def _shipped_keys_file() -> str:
    """The wheel's rec character list as a keys file (one character a line), cached in /tmp."""
    chars = _metadata(default_models()["rec"])["character"]
    digest = hashlib.sha256(chars.encode()).hexdigest()[:12]
    path = os.path.join(tempfile.gettempdir(), f"homec-bench-ocr-keys-{digest}.txt")
    if not os.path.exists(path):
        tmp = f"{path}.{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write("\n".join(chars.splitlines()).encode("utf-8"))
        os.replace(tmp, path)
    return path


def make_engine(det: str | None = None, rec: str | None = None, cls: str | None = None, *,
                threads: int = 1, use_cls: bool = True, rec_keys: str | None = None, **overrides):
    """A `rapidocr_onnxruntime.RapidOCR` using these model files (None: the wheel's fp32 one).

    `threads` sets intra_op_num_threads of all three sessions (inter_op to 1); `overrides` are
    further RapidOCR keyword parameters (e.g. det_limit_side_len=960, text_score=0.3).
    """
    from rapidocr_onnxruntime import RapidOCR

    dm = default_models()
    det, rec, cls = (os.fspath(p) if p is not None else dm[k]
                     for k, p in (("det", det), ("rec", rec), ("cls", cls)))
    for p in (det, rec, cls):
        if not os.path.isfile(p):
            raise FileNotFoundError(p)
    ncpu = os.cpu_count() or 1
    if not 1 <= threads <= ncpu:   # RapidOCR silently ignores out-of-range counts
        raise ValueError(f"threads must be in 1..{ncpu} (got {threads})")
    kw = dict(det_model_path=det, rec_model_path=rec, cls_model_path=cls,
              intra_op_num_threads=threads, inter_op_num_threads=1, use_cls=use_cls)
    if rec_keys is None and "character" not in _metadata(rec):
        rec_keys = _shipped_keys_file()
    if rec_keys is not None:
        kw["rec_keys_path"] = os.fspath(rec_keys)
    kw.update(overrides)
    return RapidOCR(**kw)


def result_lines(result) -> list[str]:
    """RapidOCR's result ([[box, text, score], ...] or None) -> text lines, top to bottom.

    Boxes whose vertical extents overlap by at least half the smaller height form one row (the
    detector sometimes splits a line into words); a row's texts are joined left to right by one
    space.
    """
    if not result:
        return []
    items = []
    for entry in result:
        box, text = np.asarray(entry[0], dtype=np.float64), str(entry[1]).strip()
        if not text:
            continue
        top, bot = float(box[:, 1].min()), float(box[:, 1].max())
        items.append((top, bot, float(box[:, 0].min()), text))
    items.sort(key=lambda it: ((it[0] + it[1]) / 2, it[2]))
    rows: list[list[tuple[float, float, float, str]]] = []
    for it in items:
        if rows:
            row = rows[-1]
            rtop = sum(r[0] for r in row) / len(row)
            rbot = sum(r[1] for r in row) / len(row)
            overlap = min(rbot, it[1]) - max(rtop, it[0])
            if overlap >= 0.5 * min(rbot - rtop, it[1] - it[0]):
                row.append(it)
                continue
        rows.append([it])
    return [" ".join(r[3] for r in sorted(row, key=lambda r: r[2])) for row in rows]


def _image(item) -> np.ndarray:
    return item.image if hasattr(item, "image") else item


def run_ocr(images: Iterable[np.ndarray], det: str | None = None, rec: str | None = None,
            cls: str | None = None, *, threads: int = 1, engine=None, **engine_kw) -> list[list[str]]:
    """Run the pipeline on BGR uint8 images (or render.Sample items); returns the predicted
    lines of each image. Pass `engine` (from make_engine) to reuse the sessions."""
    if engine is None:
        engine = make_engine(det, rec, cls, threads=threads, **engine_kw)
    out = []
    for img in images:
        result, _elapse = engine(_image(img))
        out.append(result_lines(result))
    return out


# --------------------------------------------------------------------------- CER

def levenshtein(a: Sequence, b: Sequence) -> int:
    """Edit distance (unit insert/delete/substitute) between two sequences, O(len(a)·len(b))."""
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return len(a)
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb))
        prev = cur
    return prev[-1]


def normalize_text(lines: str | Sequence[str], normalize: bool = True,
                   ignore_spaces: bool = False) -> str:
    """One image's text as compared: lines joined by '\\n'.

    With `normalize`: NFKC (full-width ':' -> ':', '℃' -> '°C'), whitespace runs -> one space,
    lines stripped, empty lines dropped. Case and punctuation are kept. With `ignore_spaces`,
    spaces inside lines are dropped too (the Chinese PP-OCRv4 rec model often omits the space
    between Latin words; this variant scores only the glyphs and the line structure).
    """
    if isinstance(lines, str):
        lines = lines.split("\n")
    if not normalize and not ignore_spaces:
        return "\n".join(lines)
    out = []
    for line in lines:
        if normalize:
            line = " ".join(unicodedata.normalize("NFKC", line).split())
        if ignore_spaces:
            line = "".join(line.split(" "))
        if line or not normalize:
            out.append(line)
    return "\n".join(out)


def cer_counts(predictions, truths, *, normalize: bool = True,
               ignore_spaces: bool = False) -> tuple[int, int]:
    """(total edit distance, total reference characters) over images."""
    predictions, truths = list(predictions), list(truths)
    if len(predictions) != len(truths):
        raise ValueError(f"{len(predictions)} predictions for {len(truths)} references")
    dist = chars = 0
    for p, t in zip(predictions, truths):
        p = normalize_text(p, normalize, ignore_spaces)
        t = normalize_text(t, normalize, ignore_spaces)
        dist += levenshtein(p, t)
        chars += len(t)
    return dist, chars


def cer(predictions, truths, *, normalize: bool = True, ignore_spaces: bool = False) -> float:
    """Character error rate: sum over images of Levenshtein(pred, ref) / sum of len(ref).

    Each item is one image's text: a list of lines (joined by '\\n') or a string. Can exceed 1
    (many insertions). See `normalize_text` for what `normalize` and `ignore_spaces` do.
    """
    dist, chars = cer_counts(predictions, truths, normalize=normalize, ignore_spaces=ignore_spaces)
    if chars == 0:
        return 0.0 if dist == 0 else float("inf")
    return dist / chars


# --------------------------------------------------------------------------- timing

def time_pipeline(images: Sequence[np.ndarray], det: str | None = None, rec: str | None = None,
                  cls: str | None = None, *, threads: int = 1, warmup: int = 2, repeats: int = 1,
                  clock: str = "wall", engine=None, per_image: bool = False, **engine_kw):
    """Median time (s) of one pipeline call per image, `threads` intra-op threads.

    Each image is run `repeats` times after `warmup` untimed calls, and its best time kept; the
    median over images is returned (with `per_image`, also the list of per-image times).
    `clock`: "wall" (time.perf_counter) or "cpu" (time.process_time: CPU seconds of this
    process, all threads; with threads=1 onnxruntime computes on the calling thread, so this is
    the figure that stays put when other processes load the machine).
    """
    timer = {"wall": time.perf_counter, "cpu": time.process_time}[clock]
    if engine is None:
        engine = make_engine(det, rec, cls, threads=threads, **engine_kw)
    images = [_image(i) for i in images]
    for img in images[:warmup]:
        engine(img)
    times = []
    for img in images:
        best = float("inf")
        for _ in range(max(1, repeats)):
            t0 = timer()
            engine(img)
            best = min(best, timer() - t0)
        times.append(best)
    med = statistics.median(times) if times else float("nan")
    return (med, times) if per_image else med


def evaluate(samples, det: str | None = None, rec: str | None = None, cls: str | None = None, *,
             threads: int = 1, warmup: int = 2, engine=None, **engine_kw) -> dict:
    """One timed pass over render.Sample items: predictions, CER (as defined by `cer`, and with
    `ignore_spaces`), exact-image accuracy, and median per-image wall and CPU seconds."""
    if engine is None:
        engine = make_engine(det, rec, cls, threads=threads, **engine_kw)
    samples = list(samples)
    for s in samples[:warmup]:
        engine(s.image)
    preds, wall, cpu = [], [], []
    for s in samples:
        w0, c0 = time.perf_counter(), time.process_time()
        result, _ = engine(s.image)
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
        preds.append(result_lines(result))
    truths = [s.lines for s in samples]
    dist, chars = cer_counts(preds, truths)
    exact = sum(normalize_text(p) == normalize_text(t) for p, t in zip(preds, truths))
    return {
        "n": len(samples), "cer": dist / max(chars, 1), "edits": dist, "ref_chars": chars,
        "cer_nospace": cer(preds, truths, ignore_spaces=True),
        "exact": exact / max(len(samples), 1),
        "wall_median_s": statistics.median(wall) if wall else float("nan"),
        "cpu_median_s": statistics.median(cpu) if cpu else float("nan"),
        "predictions": preds,
    }
