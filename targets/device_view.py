"""How an accelerator sees a QDQ graph: which dtype a node computes in, which tensors exist.

In QDQ form a quantized layer is written `DQ(q) -> Conv -> Q`: on the device the Conv reads
and writes int8 and neither float tensor exists. Placement, the memory plan and the estimates
all read the graph through these three functions, so they agree:

- `compute_dtype(node)`: the quantized type when every non-constant float input of the node is
  produced by a DequantizeLinear (the type DQ reads), else the type of its first activation
  input (or output).
- `fused_away(value)`: a float tensor that exists only between Q/DQ (a DequantizeLinear's
  output, or a tensor read by QuantizeLinear nodes alone) when `qdq_fused` is on.
- `device_bytes(value)`: bytes the tensor takes on the device (0 when fused away; None when
  its shape is unknown).
"""

from __future__ import annotations

from collections.abc import Mapping

from homec.analysis.cost import is_constant
from homec.analysis.memory import tensor_bytes
from homec.dtypes import numpy_dtype_of
from homec.ir import Node, TensorType, Value

__all__ = ["QDQ_OPS", "compute_dtype", "device_bytes", "dtype_str", "fused_away", "value_dtype"]

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
_FLOATS = ("float32", "float16", "bfloat16", "float64")


def value_dtype(value: Value | None, types: Mapping[str, TensorType]) -> str | None:
    """numpy-style name ("float32", "int8") of a value's element type, or None."""
    if value is None:
        return None
    t = types.get(value.name) or value.tensor_type()
    if t is None or not t.elem_type:
        return None
    return dtype_str(t.elem_type)


def dtype_str(elem_type: int) -> str:
    """numpy-style name of an ONNX element type ("float32", "int8", "bfloat16")."""
    try:
        return numpy_dtype_of(elem_type).name
    except Exception:  # an element type numpy and ml_dtypes cannot hold (string)
        return f"dtype{int(elem_type)}"


def _producer(value: Value) -> Node | None:
    return value.producer


def compute_dtype(node: Node, types: Mapping[str, TensorType]) -> str | None:
    """The element type `node` computes in on a device that fuses QDQ (see module doc)."""
    memo: dict[int, bool] = {}
    acts = [v for v in node.inputs if v is not None and v.name and not is_constant(v, memo)]
    float_acts = [v for v in acts if value_dtype(v, types) in _FLOATS]
    if node.op_type in QDQ_OPS and node.domain == "":
        # Q computes on its float input's quantized result; DQ on its integer input.
        src = node.inputs[0] if node.op_type == "DequantizeLinear" else node.outputs[0]
        return value_dtype(src, types)
    if float_acts:
        quantized = []
        for v in float_acts:
            p = _producer(v)
            if p is None or p.op_type != "DequantizeLinear" or p.domain != "":
                break
            quantized.append(value_dtype(p.inputs[0], types))
        else:
            return quantized[0]
        return value_dtype(float_acts[0], types)
    if acts:
        return value_dtype(acts[0], types)
    return value_dtype(next((o for o in node.outputs if o is not None), None), types)


def fused_away(value: Value, *, qdq_fused: bool) -> bool:
    """Whether `value` exists only as a float view of an integer tensor (module doc)."""
    if not qdq_fused or value.is_graph_output or value.is_graph_input:
        return False
    p = _producer(value)
    if p is not None and p.op_type == "DequantizeLinear" and p.domain == "":
        return True
    users = value.users
    return bool(users) and all(u.op_type == "QuantizeLinear" and u.domain == "" for u in users)


def device_bytes(value: Value, types: Mapping[str, TensorType], *, qdq_fused: bool) -> int | None:
    """Bytes `value` takes on the device: 0 when fused away, else its dense size (None when
    unknown)."""
    if fused_away(value, qdq_fused=qdq_fused):
        return 0
    return tensor_bytes(types.get(value.name) or value.tensor_type())
