"""ONNX element types: numpy mapping and bit widths (no protobuf here)."""

from __future__ import annotations

import numpy as np
from onnx import helper

_BITS = {
    1: 32, 2: 8, 3: 8, 4: 16, 5: 16, 6: 32, 7: 64, 8: 0, 9: 8, 10: 16, 11: 64, 12: 32, 13: 64,
    14: 64, 15: 128, 16: 16, 17: 8, 18: 8, 19: 8, 20: 8, 21: 4, 22: 4, 23: 4, 24: 8, 25: 2,
    26: 2, 27: 6, 28: 6,
}

FLOAT, UINT8, INT8, INT32, INT64, BOOL, FLOAT16, DOUBLE, BFLOAT16 = 1, 2, 3, 6, 7, 9, 10, 11, 16
STRING = 8


def itemsize_bits(elem_type: int) -> int:
    """Bits per element (0 for strings, whose size is data dependent)."""
    return _BITS.get(int(elem_type), 0)


def onnx_dtype_of(np_dtype) -> int:
    """The ONNX element type of a numpy dtype (ml_dtypes types included)."""
    dt = np.dtype(np_dtype)
    if dt.kind in ("U", "S", "O"):
        return STRING
    return int(helper.np_dtype_to_tensor_dtype(dt))


def numpy_dtype_of(elem_type: int) -> np.dtype:
    return np.dtype(helper.tensor_dtype_to_np_dtype(int(elem_type)))


def dtype_name(elem_type: int) -> str:
    try:
        return helper.tensor_dtype_to_string(int(elem_type)).removeprefix("TensorProto.").lower()
    except Exception:  # an element type this onnx does not know
        return f"dtype{elem_type}"
