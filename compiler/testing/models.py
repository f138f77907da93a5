"""Real models that come with pip packages, found where they are installed.

    ocr_model("det")   # Path to PP-OCRv4 det in the rapidocr_onnxruntime wheel, or None

Nothing is downloaded: a model whose package is not installed is None, and the caller skips.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["OCR_FILES", "ocr_model"]

# PP-OCR model files shipped in rapidocr_onnxruntime/models/, by role.
OCR_FILES = {"det": "ch_PP-OCRv4_det_infer.onnx", "rec": "ch_PP-OCRv4_rec_infer.onnx",
             "cls": "ch_ppocr_mobile_v2.0_cls_infer.onnx"}


def ocr_model(kind: str) -> Path | None:
    """The installed PP-OCR `kind` model ("det", "rec" or "cls"), or None."""
    try:
        import rapidocr_onnxruntime
    except ImportError:
        return None
    path = Path(rapidocr_onnxruntime.__file__).parent / "models" / OCR_FILES[kind]
    return path if path.is_file() else None
