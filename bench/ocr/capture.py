"""Calibration data recorded from the real pipeline: the tensors RapidOCR actually feeds to each of
its three onnxruntime sessions, written as homec `--calib` folders (one .npz per sample, key = the
model's input name, shapes may differ between samples):

    folders = capture_calibration([s.image for s in calib_set(48)], det, rec, cls, "calib/")
    # {'det': 'calib/det', 'cls': 'calib/cls', 'rec': 'calib/rec'}
    homec ch_PP-OCRv4_rec_infer.onnx ... --calib calib/rec

A sample is one session.run feed as RapidOCR builds it: det gets one (1, 3, H, W) image per call
(H, W multiples of 32, shorter side 736); cls and rec get batches of up to 6 crops of one image,
(B, 3, 48, 192) and (B, 3, 48, W) with W set by the widest crop of the batch. With
`split_batches=True` each crop of a batch becomes its own (1, ...) sample instead.
"""

from __future__ import annotations

import glob
import json
import os

import numpy as np

from .pipeline import default_models, make_engine

KINDS = ("det", "cls", "rec")
DEFAULT_CAPS = {"det": 32, "cls": 64, "rec": 64}


def engine_sessions(engine) -> dict[str, object]:
    """kind -> the OrtInferSession wrapper RapidOCR holds for that model (it has `.session`,
    the onnxruntime.InferenceSession, whose `run` it calls with {input name: array})."""
    from rapidocr_onnxruntime.utils import OrtInferSession
    found = {"det": engine.text_det.infer, "cls": engine.text_cls.infer,
             "rec": engine.text_rec.session}
    for kind, s in found.items():
        if not isinstance(s, OrtInferSession):
            raise TypeError(f"unexpected RapidOCR layout: {kind} session is {type(s).__name__}")
    return found


class _Recorder:
    """Stands in for an InferenceSession: hands each feed to `sink`, then runs it."""

    def __init__(self, session, sink):
        self._session = session
        self._sink = sink

    def run(self, output_names, input_feed, *args, **kwargs):
        self._sink(input_feed)
        return self._session.run(output_names, input_feed, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._session, name)


def capture_calibration(images, det: str | None, rec: str | None, cls: str | None,
                        out_dir: str | os.PathLike, *, max_samples: dict[str, int] | None = None,
                        split_batches: bool = False, threads: int = 1,
                        compress: bool = True) -> dict[str, str]:
    """Run the pipeline on `images` (BGR arrays or render.Sample) and write each session's
    inputs to out_dir/det, out_dir/cls, out_dir/rec (first `max_samples[kind]` samples;
    default DEFAULT_CAPS). Stale <kind>_*.npz files in those folders are removed first. Also
    writes out_dir/manifest.json (models, counts, shapes). Returns kind -> folder.
    """
    caps = dict(DEFAULT_CAPS)
    caps.update(max_samples or {})
    out_dir = os.fspath(out_dir)
    folders = {k: os.path.join(out_dir, k) for k in KINDS}
    for kind, folder in folders.items():
        os.makedirs(folder, exist_ok=True)
        for stale in glob.glob(os.path.join(folder, f"{kind}_*.npz")):
            os.remove(stale)

    engine = make_engine(det, rec, cls, threads=threads)
    counts = dict.fromkeys(KINDS, 0)
    shapes: dict[str, list[list[int]]] = {k: [] for k in KINDS}
    save = np.savez_compressed if compress else np.savez

    def sink_for(kind):
        def sink(feed):
            parts = [feed]
            if split_batches:
                n = next(iter(feed.values())).shape[0]
                parts = [{k: v[i:i + 1] for k, v in feed.items()} for i in range(n)]
            for part in parts:
                if counts[kind] >= caps[kind]:
                    return
                path = os.path.join(folders[kind], f"{kind}_{counts[kind]:04d}.npz")
                save(path, **{k: np.ascontiguousarray(v) for k, v in part.items()})
                shapes[kind].append(list(next(iter(part.values())).shape))
                counts[kind] += 1
        return sink

    for kind, wrapper in engine_sessions(engine).items():
        wrapper.session = _Recorder(wrapper.session, sink_for(kind))

    for img in images:
        img = img.image if hasattr(img, "image") else img
        engine(img)
        if all(counts[k] >= caps[k] for k in KINDS):
            break

    manifest = {
        "models": {k: os.path.abspath(p) if p is not None else default_models()[k]
                   for k, p in (("det", det), ("cls", cls), ("rec", rec))},
        "counts": counts, "caps": caps, "split_batches": split_batches, "shapes": shapes,
    }
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    return folders
