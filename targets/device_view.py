"""How an accelerator sees a QDQ graph: which dtype a node computes in, which tensors exist.

In QDQ form a quantized layer is written `DQ(q) -> Conv -> Q`: on the device the Conv reads
and writes int8 and neither float tensor exists. Placement, the memory plan and the estimates
all read the graph through these three functions, so they agree:

- `quantized_source(value)`: the integer tensor a float value views: a DequantizeLinear's
  input, followed through scale-preserving operators (Reshape, MaxPool, Relu, Concat, ...).
- `fused_into(node)`: the int8 layer an activation runs inside (`DQ -> Conv -> Relu -> Q`).
- `compute_dtype(node)`: the quantized type when every non-constant float input of the node
  views an integer tensor (or the node is a fused activation), else the type of its first
  activation input (or output).
- `fused_away(value)`: a float tensor that exists only between Q/DQ (a DequantizeLinear's
  output, a tensor read by QuantizeLinear nodes alone, a layer's output consumed by its fused
  activation) when `qdq_fused` is on.
- `device_bytes(value)`: bytes the tensor takes on the device (0 when fused away; a float view
  of an integer tensor at the integer size; None when its shape is unknown).
"""

from __future__ import annotations

from collections.abc import Mapping

from homec.analysis.cost import is_constant
from homec.analysis.memory import tensor_bytes
from homec.dtypes import numpy_dtype_of
from homec.ir import Node, TensorType, Value

__all__ = ["FUSIBLE_ACTIVATIONS", "QDQ_OPS", "SCALE_PRESERVING_OPS", "VIEW_OPS", "compute_dtype",
           "device_bytes", "dtype_str", "fused_away", "fused_into", "node_label", "quantized_source",
           "value_dtype"]

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# Operators that never write: their output is their input read another way (the memory plan
# aliases them, the estimate prices them at 0).
VIEW_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity")
# Operators whose int8 output keeps its input's quantization (scale and zero point): on a QDQ
# device they run on the integer tensor directly.
SCALE_PRESERVING_OPS = frozenset({
    "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity", "Concat", "Slice",
    "Split", "Gather", "Pad", "MaxPool", "GlobalMaxPool", "AveragePool", "GlobalAveragePool",
    "Relu", "Resize", "DepthToSpace", "SpaceToDepth", "Tile", "Expand",
})
# Activations a device runs inside the preceding int8 layer's kernel (`DQ -> Conv -> Relu -> Q`).
FUSIBLE_ACTIVATIONS = frozenset({"Relu", "Clip", "LeakyRelu", "HardSigmoid", "HardSwish",
                                 "Sigmoid", "Tanh"})
_FLOATS = ("float32", "float16", "bfloat16", "float64")


def value_dtype(value: Value | None, types: Mapping[str, TensorType]) -> str | None:
    """numpy-style name ("float32", "int8") of a value's element type, or None."""
    if value is None:
        return None
    t = types.get(value.name) or value.tensor_type()
    if (t is None or not t.elem_type) and value.const is not None:
        return dtype_str(value.const.dtype)  # an initializer declared without a type
    if t is None or not t.elem_type:
        return None
    return dtype_str(t.elem_type)


def dtype_str(elem_type: int) -> str:
    """numpy-style name of an ONNX element type ("float32", "int8", "bfloat16")."""
    try:
        return numpy_dtype_of(elem_type).name
    except Exception:  # an element type numpy and ml_dtypes cannot hold (string)
        return f"dtype{int(elem_type)}"


def node_label(node: Node) -> str:
    """How reports name a node: its name, else its first output's name (as analysis.cost),
    else its operator."""
    return node.name or next((o.name for o in node.outputs if o is not None and o.name), node.op_type)


def _producer(value: Value) -> Node | None:
    return value.producer


def _is(node: Node | None, op: str) -> bool:
    return node is not None and node.op_type == op and node.domain == ""


def _activations(node: Node, memo: dict) -> list[Value]:
    return [v for v in node.inputs if v is not None and v.name and not is_constant(v, memo)]


def quantized_source(value: Value, memo: dict | None = None) -> Value | None:
    """The integer tensor a float `value` is a view of on a QDQ device, or None: the input of
    the DequantizeLinear producing it, followed back through scale-preserving operators
    (views, pooling, Relu, Pad, Resize, Concat, ...) all of whose activations are such views.
    `memo`: a cache shared across calls over one graph (also used for is_constant)."""
    memo = {} if memo is None else memo
    key = ("qsrc", id(value))
    if key in memo:
        return memo[key]
    memo[key] = None  # cycles cannot occur in a DAG; this also guards deep recursion paths
    p = value.producer
    out = None
    if _is(p, "DequantizeLinear"):
        out = p.inputs[0]
    elif p is not None and p.domain == "" and p.op_type in SCALE_PRESERVING_OPS:
        acts = _activations(p, memo)
        sources = [quantized_source(v, memo) for v in acts]
        if acts and all(s is not None for s in sources):
            out = sources[0]
    memo[key] = out
    return out


def fused_into(node: Node, memo: dict | None = None) -> Node | None:
    """The quantized layer an activation `node` fuses into on a QDQ device, or None:
    `DQ -> Conv -> Relu -> Q` runs as one int8 kernel when the layer's output feeds only the
    activation, the activation's outputs feed only QuantizeLinear, and the layer reads a
    dequantized activation."""
    memo = {} if memo is None else memo
    if node.domain != "" or node.op_type not in FUSIBLE_ACTIVATIONS:
        return None
    acts = _activations(node, memo)
    if len(acts) != 1 or len(acts[0].users) != 1 or acts[0].is_graph_output:
        return None
    layer = acts[0].producer
    if layer is None or layer.domain != "" or layer.op_type in QDQ_OPS:
        return None
    outs = [o for o in node.outputs if o is not None]
    if not outs or any(o.is_graph_output or not o.users
                       or not all(_is(u, "QuantizeLinear") for u in o.users) for o in outs):
        return None
    if not any(quantized_source(v, memo) is not None for v in _activations(layer, memo)):
        return None
    return layer


def compute_dtype(node: Node, types: Mapping[str, TensorType],
                  memo: dict | None = None) -> str | None:
    """The element type `node` computes in on a device that fuses QDQ (see module doc).
    `memo`: a cache shared by a caller walking a whole graph (a fresh one per call walks
    every producer above the node: quadratic over a graph)."""
    memo = {} if memo is None else memo
    if node.op_type in QDQ_OPS and node.domain == "":
        # Q computes on its float input's quantized result; DQ on its integer input.
        src = node.inputs[0] if node.op_type == "DequantizeLinear" else node.outputs[0]
        return value_dtype(src, types)
    if fused_into(node, memo) is not None:
        return value_dtype(node.outputs[0].users[0].outputs[0], types)
    acts = _activations(node, memo)
    float_acts = [v for v in acts if value_dtype(v, types) in _FLOATS]
    if float_acts:
        sources = [quantized_source(v, memo) for v in float_acts]
        if all(s is not None for s in sources):
            return value_dtype(sources[0], types)
        return value_dtype(float_acts[0], types)
    if acts:
        return value_dtype(acts[0], types)
    return value_dtype(next((o for o in node.outputs if o is not None), None), types)


def fused_away(value: Value, *, qdq_fused: bool, memo: dict | None = None) -> bool:
    """Whether `value` never exists on the device (module doc): a DequantizeLinear's output,
    a tensor read by QuantizeLinear nodes alone, or a layer's output that a fused
    activation consumes."""
    if not qdq_fused or value.is_graph_output or value.is_graph_input:
        return False
    p = _producer(value)
    if _is(p, "DequantizeLinear"):
        return True
    users = value.users
    if users and all(_is(u, "QuantizeLinear") for u in users):
        return True
    return len(users) == 1 and fused_into(users[0], memo) is p and p is not None


def device_bytes(value: Value, types: Mapping[str, TensorType], *, qdq_fused: bool,
                 memo: dict | None = None) -> int | None:
    """Bytes `value` takes on the device: 0 when fused away; a float view of an integer
    tensor (after a scale-preserving op) at the integer size; else its dense size (None when
    unknown)."""
    memo = {} if memo is None else memo
    if fused_away(value, qdq_fused=qdq_fused, memo=memo):
        return 0
    t = types.get(value.name) or value.tensor_type()
    if qdq_fused and t is not None and t.elem_type and value_dtype(value, types) in _FLOATS:
        src = quantized_source(value, memo)
        st = (types.get(src.name) or src.tensor_type()) if src is not None else None
        if st is not None and st.elem_type:
            return tensor_bytes(TensorType(st.elem_type, t.shape))
    return tensor_bytes(t)
