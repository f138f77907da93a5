"""Reading QuantizeLinear / DequantizeLinear nodes: their parameters and constant weights.

Private to `fold_qdq`. A `QParams` is the affine map of one Q or DQ node with constant
parameters, normalized so that two nodes compare equal exactly when they compute the same
map: a scale of one element is per-tensor whatever its rank, a per-axis axis is
non-negative.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from homec import dtypes as D
from homec.ir import Node, Value
from homec.quant import numerics as N

from ._util import Types, const_of

QUANTIZE, DEQUANTIZE = "QuantizeLinear", "DequantizeLinear"

# Integer types whose Q/DQ maps this pass reasons about (activations and weights: 8 bit;
# biases: int32, read only).
EIGHT_BIT = {D.INT8: N.qtype("int8"), D.UINT8: N.qtype("uint8")}
SUPPORTED = {**EIGHT_BIT, D.INT32: N.qtype("int32")}

# A scale outside [tiny, 1e30] makes (q - z) * s / s inexact (denormals) or overflow.
_SCALE_MIN = float(np.finfo(np.float32).tiny)
_SCALE_MAX = 1e30


@dataclasses.dataclass(frozen=True, eq=False)
class QParams:
    """Scale (float32), zero point (in `qtype`'s dtype) and axis of one Q/DQ map.

    Per-tensor: scale and zero point are 0-d and `axis` is None. Per-axis: both are 1-D of
    the length of dimension `axis` (non-negative) of the quantized tensor.
    """

    scale: np.ndarray
    zero_point: np.ndarray
    qtype: N.QType
    axis: int | None

    @property
    def per_axis(self) -> bool:
        return self.axis is not None

    def same(self, other: QParams) -> bool:
        """Bit-identical maps: same type, axis, scales and zero points."""
        return (self.qtype == other.qtype and self.axis == other.axis
                and self.scale.shape == other.scale.shape
                and self.scale.tobytes() == other.scale.tobytes()
                and np.array_equal(self.zero_point, other.zero_point))

    def with_axis(self, axis: int | None) -> QParams:
        return dataclasses.replace(self, axis=axis)


def is_op(node: Node | None, op_type: str) -> bool:
    return node is not None and node.op_type == op_type and node.domain == ""


def producer(v: Value | None, op_type: str) -> Node | None:
    """The node of type `op_type` producing `v` in `v`'s own graph, else None."""
    if v is None or v.producer is None or not is_op(v.producer, op_type):
        return None
    return v.producer if v.producer.graph is v.graph else None


def qdq_params(node: Node, types: Types) -> QParams | None:
    """The map of a Q or DQ node, or None when it is not one this pass can reason about:
    non-constant or non-float32 scale, a type outside int8/uint8/int32, blocked
    quantization, an unusable scale (zero, denormal, huge, not finite)."""
    if len(node.inputs) < 2 or node.attr("block_size", 0):
        return None
    scale = const_of(node.inputs[1])
    if scale is None or scale.dtype != np.float32 or scale.size == 0:
        return None
    if not (np.all(np.isfinite(scale)) and np.all(scale >= _SCALE_MIN) and np.all(scale <= _SCALE_MAX)):
        return None
    zp_value = node.inputs[2] if len(node.inputs) > 2 else None
    if zp_value is not None:
        zp = const_of(zp_value)
        if zp is None:
            return None
        elem = D.onnx_dtype_of(zp.dtype)
    elif node.op_type == QUANTIZE:
        elem = node.attr("output_dtype", 0) or D.UINT8
        zp = None
    else:
        elem = types.elem(node.inputs[0])
        zp = None
    qt = SUPPORTED.get(elem) if elem is not None else None
    if qt is None:
        return None
    if zp is None:
        zp = np.zeros(scale.shape, qt.np_dtype)
    if zp.shape != scale.shape:
        return None
    if scale.size == 1:
        return QParams(scale.reshape(()), zp.reshape(()), qt, None)
    if scale.ndim != 1:
        return None
    rank = types.rank(node.inputs[0])
    axis = node.attr("axis", 1)
    if rank is None:
        if axis < 0:
            return None
    else:
        if not -rank <= axis < rank:
            return None
        axis %= rank
    return QParams(scale, zp, qt, axis)


@dataclasses.dataclass
class Weight:
    """An operand of Conv / MatMul / Gemm seen through DequantizeLinear.

    `data` holds the integer tensor as the op reads it (after any Transpose / Unsqueeze
    between the DQ and the op, with `params.axis` moved accordingly) when it is constant;
    for a dynamic operand `data` is None and `value` is the DQ's integer input. `nodes` are
    the DQ and the view nodes, to be removed when the rewrite leaves them unused.
    """

    params: QParams
    data: np.ndarray | None
    value: Value
    nodes: list[Node]
    direct: bool = False  # `data` is the DQ's constant input itself, unchanged

    @property
    def constant(self) -> bool:
        return self.data is not None


def trace_weight(v: Value | None, types: Types) -> Weight | None:
    """Follow `v` back through Transpose / Unsqueeze to a DQ (of a constant, of a constant
    QuantizeLinear, or, without view nodes, of any integer value)."""
    views: list[Node] = []
    while v is not None and v.producer is not None and v.producer.graph is v.graph and \
            (is_op(v.producer, "Transpose") or is_op(v.producer, "Unsqueeze")):
        views.append(v.producer)
        v = v.producer.inputs[0]
    dq = producer(v, DEQUANTIZE)
    if dq is None:
        return None
    p = qdq_params(dq, types)
    if p is None or p.qtype.bits != 8:
        return None
    data = quantized_constant(dq.inputs[0], types)
    if data is None:
        if views or dq.inputs[0] is None:
            return None
        return Weight(p, None, dq.inputs[0], [dq])
    if p.per_axis and p.scale.size != data.shape[p.axis]:
        return None
    direct = not views and const_of(dq.inputs[0]) is not None
    for view in reversed(views):
        moved = _apply_view(view, data, p)
        if moved is None:
            return None
        data, p = moved
    return Weight(p, data, dq.inputs[0], [dq, *views], direct)


def quantized_constant(v: Value | None, types: Types) -> np.ndarray | None:
    """The integer array of `v`: an 8-bit constant, or QuantizeLinear of a float constant
    with constant parameters (quantized here exactly as onnxruntime does)."""
    arr = const_of(v)
    if arr is not None:
        return arr if D.onnx_dtype_of(arr.dtype) in EIGHT_BIT else None
    q = producer(v, QUANTIZE)
    if q is None:
        return None
    x = const_of(q.inputs[0])
    p = qdq_params(q, types)
    if x is None or x.dtype != np.float32 or p is None or p.qtype.bits != 8:
        return None
    if p.per_axis and p.scale.size != x.shape[p.axis]:
        return None
    return N.quantize(x, p.scale, p.zero_point, p.qtype, p.axis)


def _apply_view(node: Node, data: np.ndarray, p: QParams) -> tuple[np.ndarray, QParams] | None:
    if node.op_type == "Transpose":
        perm = node.attr("perm")
        perm = tuple(range(data.ndim))[::-1] if perm is None else tuple(perm)
        if sorted(perm) != list(range(data.ndim)):
            return None
        axis = None if p.axis is None else perm.index(p.axis)
        return np.transpose(data, perm), p.with_axis(axis)
    # Unsqueeze: axes from the attribute (opset < 13) or a constant second input
    axes = node.attr("axes")
    if axes is None:
        arr = const_of(node.inputs[1]) if len(node.inputs) > 1 else None
        if arr is None:
            return None
        axes = arr.reshape(-1).tolist()
    rank = data.ndim + len(axes)
    axes = sorted(int(a) % rank for a in axes)
    if len(set(axes)) != len(axes):
        return None
    kept = [i for i in range(rank) if i not in axes]
    shape = [1] * rank
    for i, d in zip(kept, data.shape):
        shape[i] = d
    axis = None if p.axis is None else kept[p.axis]
    return data.reshape(shape), p.with_axis(axis)
