"""Calibration data: an .npz with samples stacked on a new leading axis, or a folder of .npz
files holding one sample each (shapes may differ between samples)."""

from __future__ import annotations

import dataclasses
import os
import zipfile
from collections.abc import Iterator, Sequence

import numpy as np

from homec.errors import UsageError


@dataclasses.dataclass
class CalibrationSet:
    """Samples, each a dict input name -> array (without the stacking axis)."""

    samples: list[dict[str, np.ndarray]]
    source: str = "<memory>"

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return iter(self.samples)

    def check_inputs(self, input_names: Sequence[str], dtypes: dict[str, np.dtype] | None = None) -> None:
        """Every sample must feed exactly the model's inputs (extra keys are an error too)."""
        want = set(input_names)
        for i, s in enumerate(self.samples):
            have = set(s)
            if have != want:
                missing, extra = sorted(want - have), sorted(have - want)
                parts = []
                if missing:
                    parts.append(f"missing input(s) {', '.join(missing)}")
                if extra:
                    parts.append(f"unknown key(s) {', '.join(extra)}")
                raise UsageError(f"calibration sample {i}: {'; '.join(parts)} "
                                 f"(model inputs: {', '.join(sorted(want))})", path=self.source)
            if dtypes:
                for k, arr in s.items():
                    if k in dtypes and arr.dtype != dtypes[k]:
                        s[k] = arr.astype(dtypes[k])


def _read_npz(path: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise UsageError(f"not a readable .npz file ({e})", path=path) from None


def load_calibration(path: str | os.PathLike) -> CalibrationSet:
    """Read calibration samples from an .npz file or a folder of .npz files."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise UsageError("calibration data not found", path=path)
    if os.path.isdir(path):
        files = sorted(f for f in os.listdir(path) if f.endswith(".npz"))
        if not files:
            raise UsageError("folder holds no .npz files", path=path)
        samples = [_read_npz(os.path.join(path, f)) for f in files]
        return CalibrationSet(samples, path)
    stacked = _read_npz(path)
    if not stacked:
        raise UsageError("the .npz holds no arrays", path=path)
    counts = {k: (v.shape[0] if v.ndim else -1) for k, v in stacked.items()}
    if any(c < 1 for c in counts.values()) or len(set(counts.values())) != 1:
        raise UsageError("arrays must stack samples on a leading axis of the same length "
                         f"(got {counts})", path=path)
    n = next(iter(counts.values()))
    return CalibrationSet([{k: v[i] for k, v in stacked.items()} for i in range(n)], path)
