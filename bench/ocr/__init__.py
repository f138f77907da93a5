"""Shared OCR evaluation harness: the real PP-OCRv4 det/rec/cls models inside the real
RapidOCR pipeline, on appliance-label images rendered here (seeded, deterministic).

    from bench.ocr import eval_set, calib_set, run_ocr, cer, time_pipeline, capture_calibration

    samples = eval_set(n=150)                       # [(BGR uint8 image, [text lines]), ...]
    preds = run_ocr([s.image for s in samples])     # default: the fp32 models of the wheel
    print(cer(preds, [s.lines for s in samples]))

    python -m bench.ocr.baseline                    # fp32 vs onnxruntime int8 (QDQ) table

Modules: render (images + ground truth), pipeline (RapidOCR with overridden model paths, CER,
latency), capture (calibration .npz folders recorded from the real pipeline's session inputs),
baseline (the peer baseline table).
"""

from __future__ import annotations

from .capture import capture_calibration
from .pipeline import (cer, default_models, evaluate, levenshtein, make_engine, run_ocr,
                       time_pipeline)
from .render import Sample, calib_set, eval_set, fonts_status, render_sample

__all__ = [
    "Sample", "calib_set", "eval_set", "fonts_status", "render_sample",
    "cer", "default_models", "evaluate", "levenshtein", "make_engine", "run_ocr", "time_pipeline",
    "capture_calibration",
]
