"""Quantization arithmetic shared by `quantize`, `fold_qdq` and the tests (numpy only).

The affine map of ONNX QuantizeLinear / DequantizeLinear:

    q = saturate(round_half_even(x / scale) + zero_point)      x ≈ (q - zero_point) * scale

with saturation to the integer type's range. Per-axis parameters broadcast along one axis of
`x` (scale and zero point are 1-D of that axis' length). Everything here mirrors onnxruntime's
CPU kernels so that what we compute offline (folded weights, requantized biases) equals what a
runtime computes: float32 division, then round half to even, then add the zero point, then clamp.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from homec import dtypes as D

INT4, UINT4 = 22, 21


@dataclasses.dataclass(frozen=True)
class QType:
    """An integer type a tensor is quantized to."""

    name: str
    elem_type: int  # ONNX element type
    qmin: int
    qmax: int
    np_dtype: np.dtype

    @property
    def signed(self) -> bool:
        return self.qmin < 0

    @property
    def bits(self) -> int:
        return D.itemsize_bits(self.elem_type)


def _np(elem: int) -> np.dtype:
    return D.numpy_dtype_of(elem)


QTYPES: dict[str, QType] = {
    "int8": QType("int8", D.INT8, -128, 127, np.dtype(np.int8)),
    "uint8": QType("uint8", D.UINT8, 0, 255, np.dtype(np.uint8)),
    "int4": QType("int4", INT4, -8, 7, _np(INT4)),
    "uint4": QType("uint4", UINT4, 0, 15, _np(UINT4)),
    "int32": QType("int32", D.INT32, -(2**31), 2**31 - 1, np.dtype(np.int32)),
}

QTYPE_BY_ELEM = {q.elem_type: q for q in QTYPES.values()}


def qtype(name_or_elem: str | int) -> QType:
    if isinstance(name_or_elem, str):
        return QTYPES[name_or_elem]
    return QTYPE_BY_ELEM[int(name_or_elem)]


def _axis_shape(ndim: int, axis: int, n: int) -> tuple[int, ...]:
    shape = [1] * ndim
    shape[axis] = n
    return tuple(shape)


def _broadcast(p: np.ndarray, ndim: int, axis: int | None) -> np.ndarray:
    p = np.asarray(p)
    if p.ndim == 0 or axis is None:
        return p
    return p.reshape(_axis_shape(ndim, axis % ndim, p.size))


def choose_qparams(rmin, rmax, qt: QType, *, symmetric: bool,
                   reduce_range: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Scale (float32) and zero point (qt's dtype) covering [rmin, rmax] (arrays broadcast).

    The range is first widened to include 0 so that 0.0 is exactly representable (padding,
    ReLU outputs). Symmetric: zero point 0 for signed types, the mid-point (128 / 8) for
    unsigned ones, scale = max|r| / qmax (int8: /127, so the grid is symmetric about 0). Asymmetric: scale = (rmax - rmin) /
    (qmax - qmin), zero point = round(qmin - rmin / scale), clamped. A zero (or sub-1e-30-step) range gets scale 1
    so that dequantization is exact (every value is 0). `reduce_range` uses one bit less (7-bit
    weights, for CPUs whose u8*s8 instructions saturate: VPMADDUBSW without VNNI).
    """
    rmin = np.minimum(np.asarray(rmin, np.float64), 0.0)
    rmax = np.maximum(np.asarray(rmax, np.float64), 0.0)
    qmin, qmax = qt.qmin, qt.qmax
    if reduce_range:
        qmin, qmax = (qmin // 2, qmax // 2) if qt.signed else (qmin, qmax // 2)
    if symmetric:
        # restricted range [-qmax, qmax] (uint8: 128 +- 127) so that -absmax is representable too
        absmax = np.maximum(np.abs(rmin), np.abs(rmax))
        half = qmax if qt.signed else (qmax - qmin) // 2
        scale = absmax / float(half)
        zp = np.zeros_like(scale) if qt.signed else np.full_like(scale, (qmin + qmax + 1) // 2)
    else:
        scale = (rmax - rmin) / float(qmax - qmin)
        safe = np.where(scale > 0, scale, 1.0)
        zp = np.clip(np.round(qmin - rmin / safe), qmin, qmax)
    # A range so small that its step would be (nearly) denormal in float32 is treated as an
    # empty one: scale 1, every value quantizes to the zero point. Keeping such a step would
    # make x / scale overflow and the bias scale (input scale x weight scale) underflow.
    scale = np.where(scale > 1e-30, scale, 1.0).astype(np.float32)
    return scale, zp.astype(qt.np_dtype if qt.bits >= 8 else np.int32)


def quantize(x: np.ndarray, scale, zero_point, qt: QType, axis: int | None = None) -> np.ndarray:
    """QuantizeLinear: saturate(round_half_even(x / scale) + zero_point) in qt's dtype."""
    x = np.asarray(x, np.float32)
    s = _broadcast(np.asarray(scale, np.float32), x.ndim, axis)
    z = _broadcast(np.asarray(zero_point).astype(np.int64), x.ndim, axis)
    q = np.rint(x / s).astype(np.float64) + z
    q = np.clip(q, qt.qmin, qt.qmax)
    return q.astype(np.int64).astype(qt.np_dtype)


def dequantize(q: np.ndarray, scale, zero_point, axis: int | None = None) -> np.ndarray:
    """DequantizeLinear: (q - zero_point) * scale in float32."""
    q = np.asarray(q).astype(np.int64)
    s = _broadcast(np.asarray(scale, np.float32), q.ndim, axis)
    z = _broadcast(np.asarray(zero_point).astype(np.int64), q.ndim, axis)
    return ((q - z).astype(np.float32) * s).astype(np.float32)


def fake_quantize(x: np.ndarray, scale, zero_point, qt: QType, axis: int | None = None) -> np.ndarray:
    return dequantize(quantize(x, scale, zero_point, qt, axis), scale, zero_point, axis)


def weight_qparams(w: np.ndarray, qt: QType, *, axis: int | None, symmetric: bool = True,
                   reduce_range: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per-tensor (axis None) or per-axis min/max parameters for a constant weight."""
    w = np.asarray(w, np.float32)
    if axis is None:
        return choose_qparams(w.min(initial=0.0), w.max(initial=0.0), qt, symmetric=symmetric,
                              reduce_range=reduce_range)
    moved = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    return choose_qparams(moved.min(axis=1, initial=0.0), moved.max(axis=1, initial=0.0), qt,
                          symmetric=symmetric, reduce_range=reduce_range)


def quantize_bias(b: np.ndarray, input_scale: float, weight_scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int32 bias with scale = input scale x weight scale (per output channel), zero point 0.

    Returns (int32 values, float32 scale). The scale is computed in float32 exactly as a
    runtime multiplies the two scales, so QLinearConv's implied bias scale equals it.
    """
    s = (np.float32(input_scale) * np.asarray(weight_scale, np.float32)).astype(np.float32)
    s = np.maximum(s, np.float32(np.finfo(np.float32).tiny))
    q = np.rint(np.asarray(b, np.float64) / s.astype(np.float64))
    q = np.clip(q, -(2**31), 2**31 - 1).astype(np.int32)
    return q, s
