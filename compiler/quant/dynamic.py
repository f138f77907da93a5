"""Dynamic quantization: integer weights offline, activations quantized at run time.

The ONNX counterpart of PyTorch's `quantize_dynamic`; no calibration data is needed. For a
node y = MatMul(x, W) with a constant float W [K, N]:

    x_q, x_scale, x_zp = DynamicQuantizeLinear(x)          uint8, per tensor, every run
    acc = MatMulInteger(x_q, W_q, x_zp, w_zp)              int32 = sum_k (x_q - x_zp)(W_q - w_zp)
    y   = Cast(acc, float) * (x_scale * w_scale)           w_scale scalar, or [N] per column

which equals x @ W up to the rounding of x and W to their grids, because
x ≈ x_scale (x_q - x_zp) and W ≈ w_scale (W_q - w_zp) column by column. Gemm(A, B, C) folds
transB into W offline (W = B^T), alpha into the scale and adds beta * C afterwards in float;
Conv uses ConvInteger (same attributes) with per-output-channel scales reshaped to
[M, 1, ..., 1] and adds its bias afterwards. MatMul's activation may have any rank
([B, T, K] x [K, N] works). Every consumer of one activation shares one
DynamicQuantizeLinear.

Weight types (onnxruntime 1.32 CPU accepts uint8 activations with int8 or uint8 weights for
both MatMulInteger and ConvInteger; ConvInteger takes only a per-tensor weight zero point):

* int8: symmetric over [-127, 127] (zero point 0), like onnxruntime's own quantizer, so both
  +max|W| and -max|W| are representable. On x86 CPUs without VNNI, onnxruntime's u8 x s8
  kernels use VPMADDUBSW, whose 16-bit pair sums can saturate; `reduce_range` (7-bit
  weights, [-63, 63]) avoids that at some precision.
* uint8: asymmetric (min/max, zero point per tensor or per column), except Conv per
  channel, which is symmetric around 128 ([1, 255]) so that all channels share the one
  zero point ConvInteger accepts.

Requires default-domain opset >= 11 (DynamicQuantizeLinear; the integer ops need 10): below
that every candidate is refused. Only float32 weights are quantized (DynamicQuantizeLinear
takes float32 only). Original float weights left without readers are removed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection
from typing import Literal

import numpy as np

from homec import dtypes as D
from homec.ir import Graph, Node, Tensor, Value
from homec.quant.numerics import QTYPES, QType, quantize, weight_qparams

SUPPORTED_OPS = ("MatMul", "Gemm", "Conv")
MIN_OPSET = 11  # DynamicQuantizeLinear

# Symmetric grids: the extreme code of the signed type is left out so that +-max|W| map
# to +-127 exactly (and 0 to 0); the unsigned one is centred on 128.
_SYMMETRIC = {
    ("int8", False): QType("int8", D.INT8, -127, 127, np.dtype(np.int8)),
    ("int8", True): QType("int8", D.INT8, -63, 63, np.dtype(np.int8)),
    ("uint8", False): QType("uint8", D.UINT8, 1, 255, np.dtype(np.uint8)),
    ("uint8", True): QType("uint8", D.UINT8, 1, 127, np.dtype(np.uint8)),
}


def _everything(node: Node) -> bool:
    return True


def _nothing(node: Node) -> bool:
    return False


@dataclasses.dataclass
class _QuantWeight:
    """A quantized constant weight: integer data and zero point in the graph, scale offline."""

    data: Value
    zero_point: Value
    scale: np.ndarray  # float32: () per tensor, [N] per column, [M, 1, ...] per out channel


@dataclasses.dataclass
class _DynamicActivation:
    quantized: Value  # uint8
    scale: Value  # float32 scalar
    zero_point: Value  # uint8 scalar


def quantize_dynamic(graph: Graph, *, selected: Callable[[Node], bool] = _everything,
                     ops: Collection[str] = SUPPORTED_OPS, per_channel: bool = False,
                     weight_type: Literal["int8", "uint8"] = "int8", reduce_range: bool = False,
                     exclude: Callable[[Node], bool] = _nothing) -> dict[str, int]:
    """Quantize the constant weights of MatMul / Gemm / Conv and their activations at run time.

    selected: the nodes the caller's selector allows (`ctx.selected`); exclude: nodes to
    keep in float (first/last layers...), counted as skipped_excluded. per_channel: one
    scale per output column (MatMul/Gemm) or output channel (Conv) instead of one per
    tensor. weight_type, reduce_range: see the module docstring.

    Statistics: matmul_quantized, gemm_quantized, conv_quantized, weights_quantized
    (integer initializers made; a weight shared by several nodes counts once),
    activations_quantized (DynamicQuantizeLinear nodes inserted); informational:
    seen_weight_bytes_before / seen_weight_bytes_after (initializer bytes of the whole
    graph tree), skipped_excluded and refused_* for candidates left in float: refused_opset,
    refused_dtype (not float32), refused_weight_not_constant, refused_weight_shape (MatMul
    weight not 2-D, empty weight), refused_weight_nonfinite, refused_transposed_a (Gemm
    transA=1), refused_no_new_constants (subgraph of an IR < 4 model, which cannot hold new
    initializers).
    """
    unknown = sorted(set(ops) - set(SUPPORTED_OPS))
    if unknown:
        raise ValueError(f"quantize_dynamic: cannot quantize {', '.join(unknown)} "
                         f"(supported: {', '.join(SUPPORTED_OPS)})")
    if weight_type not in ("int8", "uint8"):
        raise ValueError(f"quantize_dynamic: weight_type must be int8 or uint8, not {weight_type!r}")
    q = _DynamicQuantizer(graph, frozenset(ops), per_channel, weight_type, reduce_range)
    bytes_before = _initializer_bytes(graph)
    for g in list(graph.subgraphs()):
        for node in g.nodes:
            if node.graph is not g or node.domain != "" or node.op_type not in q.ops:
                continue
            if not selected(node):
                continue
            if exclude(node):
                q.count("skipped_excluded")
                continue
            q.rewrite(g, node)
    q.drop_unused_float_constants()
    q.stats["seen_weight_bytes_before"] = bytes_before
    q.stats["seen_weight_bytes_after"] = _initializer_bytes(graph)
    return q.stats


def _initializer_bytes(graph: Graph) -> int:
    return sum(v.const.nbytes for g in graph.subgraphs() for v in g.initializers.values()
               if isinstance(v.const, Tensor))


class _DynamicQuantizer:
    def __init__(self, graph: Graph, ops: frozenset[str], per_channel: bool,
                 weight_type: str, reduce_range: bool):
        from homec.passes import _util  # homec.passes imports this module (the quantize pass)

        self.u = _util
        self.names = _util.Names(graph)
        self.opset = _util.opset(graph)
        self.ops = ops
        self.per_channel = per_channel
        self.weight_type = weight_type
        self.reduce_range = reduce_range
        self.stats: dict[str, int] = dict.fromkeys((
            "matmul_quantized", "gemm_quantized", "conv_quantized", "weights_quantized",
            "activations_quantized", "skipped_excluded", "refused_opset", "refused_dtype",
            "refused_weight_not_constant", "refused_weight_shape", "refused_weight_nonfinite",
            "refused_transposed_a", "refused_no_new_constants"), 0)
        self._weights: dict[tuple[int, int, str], _QuantWeight] = {}
        self._activations: dict[tuple[int, int], _DynamicActivation] = {}
        self._replaced_constants: list[Value] = []

    def count(self, key: str) -> None:
        self.stats[key] += 1

    # -- one node -------------------------------------------------------------------------
    def rewrite(self, g: Graph, node: Node) -> None:
        refusal = self._refusal(g, node)
        if refusal:
            self.count(refusal)
            return
        if node.op_type == "MatMul":
            self._matmul(g, node)
            self.count("matmul_quantized")
        elif node.op_type == "Gemm":
            self._gemm(g, node)
            self.count("gemm_quantized")
        else:
            self._conv(g, node)
            self.count("conv_quantized")

    def _refusal(self, g: Graph, node: Node) -> str | None:
        """Why `node` stays in float (a refused_* key), or None when it can be rewritten."""
        if self.opset < MIN_OPSET:
            return "refused_opset"
        if not self.u.can_add_constant(g):
            return "refused_no_new_constants"
        ins = node.inputs
        if len(ins) < 2 or ins[0] is None or node.outputs[0] is None:
            return "refused_weight_not_constant"
        w = ins[1]
        if not self.u.is_const(w):
            return "refused_weight_not_constant"
        if w.const.dtype != D.FLOAT:  # type: ignore[union-attr]
            return "refused_dtype"
        arr = w.const.numpy()  # type: ignore[union-attr]
        if arr.size == 0:
            return "refused_weight_shape"
        if node.op_type == "MatMul" and arr.ndim != 2:
            return "refused_weight_shape"  # 1-D or batched weights: no column scales
        if node.op_type == "Gemm":
            if node.attr("transA", 0):
                return "refused_transposed_a"
            if arr.ndim != 2:
                return "refused_weight_shape"
            c = ins[2] if len(ins) > 2 else None
            if c is not None and self.u.is_const(c) and c.const.dtype != D.FLOAT:  # type: ignore[union-attr]
                return "refused_dtype"
        if node.op_type == "Conv":
            if arr.ndim < 3:
                return "refused_weight_shape"
        if not np.isfinite(arr).all():
            return "refused_weight_nonfinite"
        return None

    def _matmul(self, g: Graph, node: Node) -> None:
        x, w = node.inputs[0], node.inputs[1]
        qw = self._weight(g, w, transpose=False, conv=False)
        acc = self._integer_op(g, node, "MatMulInteger", x, qw, {})
        y = self._rescale(g, node, acc, qw.scale)
        self._replace(g, node, y)

    def _gemm(self, g: Graph, node: Node) -> None:
        x, b = node.inputs[0], node.inputs[1]
        c = node.inputs[2] if len(node.inputs) > 2 else None
        alpha = float(node.attr("alpha", 1.0))
        beta = float(node.attr("beta", 1.0))
        qw = self._weight(g, b, transpose=bool(node.attr("transB", 0)), conv=False)
        acc = self._integer_op(g, node, "MatMulInteger", x, qw, {})
        y = self._rescale(g, node, acc, (qw.scale * np.float32(alpha)).astype(np.float32))
        if c is not None and beta != 0.0:
            y = self._add(g, node, y, self._scaled_bias(g, node, c, beta))
        self._replace(g, node, y)

    def _conv(self, g: Graph, node: Node) -> None:
        x, w = node.inputs[0], node.inputs[1]
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        qw = self._weight(g, w, transpose=False, conv=True)
        attrs = {k: a for k, a in node.attrs.items()
                 if k in ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")}
        acc = self._integer_op(g, node, "ConvInteger", x, qw, attrs)
        y = self._rescale(g, node, acc, qw.scale)
        if bias is not None:
            spatial = len(w.const.dims) - 2  # type: ignore[union-attr]
            y = self._add(g, node, y, self._channel_bias(g, node, bias, spatial))
        self._replace(g, node, y)

    def _channel_bias(self, g: Graph, node: Node, bias: Value, spatial: int) -> Value:
        """Conv's bias [M] as [M, 1, ..., 1], to broadcast over [N, M, spatial...]."""
        shape = (-1,) + (1,) * spatial
        if self.u.is_const(bias):
            self._replaced_constants.append(bias)
            arr = bias.const.numpy()  # type: ignore[union-attr]
            return self._constant(g, f"{bias.name}_channels", np.asarray(arr, np.float32).reshape(shape))
        base = self._base(node)
        shaped = Value(self.names.fresh(f"{base}_bias"))
        target = self._constant(g, f"{base}_bias_shape", np.asarray(shape, np.int64))
        g.insert(Node("Reshape", [bias, target], [shaped], name=self.names.fresh(f"{base}_bias_Reshape")),
                 before=node)
        return shaped

    # -- building blocks ------------------------------------------------------------------
    def _activation(self, g: Graph, x: Value, before: Node) -> _DynamicActivation:
        key = (id(g), id(x))
        act = self._activations.get(key)
        if act is None:
            base = x.name or "activation"
            outs = [Value(self.names.fresh(f"{base}_quantized")),
                    Value(self.names.fresh(f"{base}_scale")),
                    Value(self.names.fresh(f"{base}_zero_point"))]
            dql = Node("DynamicQuantizeLinear", [x], outs,
                       name=self.names.fresh(f"{base}_DynamicQuantizeLinear"))
            g.insert(dql, before=before)
            act = _DynamicActivation(*outs)
            self._activations[key] = act
            self.count("activations_quantized")
        return act

    def _weight(self, g: Graph, w: Value, *, transpose: bool, conv: bool) -> _QuantWeight:
        key = (id(g), id(w), "conv" if conv else "transposed" if transpose else "plain")
        qw = self._weights.get(key)
        if qw is not None:
            return qw
        arr = np.asarray(w.const.numpy(), np.float32)  # type: ignore[union-attr]
        if transpose:
            arr = np.ascontiguousarray(arr.T)
        # the output axis: columns of W [K, N], channels of a Conv weight [M, C/g, k...]
        axis = (0 if conv else 1) if self.per_channel else None
        qt, symmetric = self._grid(conv)
        scale, zero_point = weight_qparams(arr, qt, axis=axis, symmetric=symmetric,
                                           reduce_range=self.reduce_range and not symmetric)
        data = quantize(arr, scale, zero_point, qt, axis=axis)
        if conv:
            # ConvInteger takes one zero point; the grids chosen for Conv make them all equal
            assert np.all(zero_point == zero_point.flat[0])
            zero_point = np.asarray(zero_point.flat[0], qt.np_dtype)
            scale = np.asarray(scale, np.float32).reshape((-1,) + (1,) * (arr.ndim - 2))
        qw = _QuantWeight(self._constant(g, f"{w.name}_quantized", data),
                          self._constant(g, f"{w.name}_zero_point", np.asarray(zero_point, qt.np_dtype)),
                          np.asarray(scale, np.float32))
        self._weights[key] = qw
        self._replaced_constants.append(w)
        self.count("weights_quantized")
        return qw

    def _grid(self, conv: bool) -> tuple[QType, bool]:
        """The integer grid of a weight and whether it is symmetric (see the module doc)."""
        if self.weight_type == "int8" or (conv and self.per_channel):
            return _SYMMETRIC[(self.weight_type, self.reduce_range)], True
        return QTYPES["uint8"], False

    def _integer_op(self, g: Graph, node: Node, op: str, x: Value, qw: _QuantWeight,
                    attrs: dict) -> Value:
        act = self._activation(g, x, node)
        acc = Value(self.names.fresh(f"{self._base(node)}_int32"))
        g.insert(Node(op, [act.quantized, qw.data, act.zero_point, qw.zero_point], [acc],
                      name=self.names.fresh(f"{node.name or node.op_type}_{op}"), attrs=dict(attrs)),
                 before=node)
        return acc

    def _rescale(self, g: Graph, node: Node, acc: Value, weight_scale: np.ndarray) -> Value:
        """float(acc) * (x_scale * weight_scale)."""
        x_scale = self._activations[(id(g), id(node.inputs[0]))].scale
        base = self._base(node)
        as_float = Value(self.names.fresh(f"{base}_float"))
        g.insert(Node("Cast", [acc], [as_float], name=self.names.fresh(f"{base}_Cast"),
                      attrs={"to": D.FLOAT}), before=node)
        w_scale = self._constant(g, f"{base}_weight_scale", weight_scale)
        scale = Value(self.names.fresh(f"{base}_scale"))
        g.insert(Node("Mul", [x_scale, w_scale], [scale], name=self.names.fresh(f"{base}_scale_Mul")),
                 before=node)
        y = Value(self.names.fresh(f"{base}_dequantized"))
        g.insert(Node("Mul", [as_float, scale], [y], name=self.names.fresh(f"{base}_Mul")), before=node)
        return y

    def _scaled_bias(self, g: Graph, node: Node, c: Value, beta: float) -> Value:
        """beta * C: folded when C is constant, a Mul otherwise."""
        if beta == 1.0:
            return c
        base = self._base(node)
        if self.u.is_const(c):
            self._replaced_constants.append(c)
            folded = (c.const.numpy() * np.float32(beta)).astype(np.float32)  # type: ignore[union-attr]
            return self._constant(g, f"{c.name}_beta", folded)
        scaled = Value(self.names.fresh(f"{base}_bias"))
        beta_value = self._constant(g, f"{base}_beta", np.asarray(beta, np.float32))
        g.insert(Node("Mul", [c, beta_value], [scaled], name=self.names.fresh(f"{base}_beta_Mul")),
                 before=node)
        return scaled

    def _add(self, g: Graph, node: Node, y: Value, bias: Value) -> Value:
        base = self._base(node)
        out = Value(self.names.fresh(f"{base}_biased"))
        g.insert(Node("Add", [y, bias], [out], name=self.names.fresh(f"{base}_bias_Add")), before=node)
        return out

    def _replace(self, g: Graph, node: Node, y: Value) -> None:
        out = node.outputs[0]
        assert out is not None
        replaced = self.u.replace_value(out, y, self.names, keep_name=True)
        assert replaced, "a fresh node output can always take the replaced output's name"
        g.remove_nodes([node])

    def _constant(self, g: Graph, hint: str, data: np.ndarray) -> Value:
        return self.u.add_constant(g, self.names.fresh(hint), np.asarray(data))

    @staticmethod
    def _base(node: Node) -> str:
        out = node.outputs[0]
        return out.name if out is not None and out.name else node.op_type

    def drop_unused_float_constants(self) -> None:
        """Remove the float weights (and biases) the rewrites left without readers."""
        seen: set[int] = set()
        for v in self._replaced_constants:
            if id(v) in seen or v.graph is None:
                continue
            seen.add(id(v))
            if not self.u.used(v) and v.const is not None:
                self.u.remove_constant(v)
