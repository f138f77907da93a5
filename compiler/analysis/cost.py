"""Compute cost: multiply-accumulates per layer, and parameter counts.

MACs are counted for the ops that dominate inference time on appliance targets (convolutions
and matrix products, float and quantized); elementwise ops, pooling and bias additions are not
counted. Shapes come from `analysis.shapes.infer_shapes`, so strides, pads, dilations and
broadcasting are honoured through the inferred output shapes rather than re-derived here:

- Conv:          N*Cout*Hout*Wout * (Cin/group)*prod(kernel)  = |Y| * prod(W.shape[1:])
- ConvTranspose: N*Cin*prod(in spatial) * (Cout/group)*prod(kernel) = |X| * prod(W.shape[1:])
- Gemm:          M*N*K, with transA/transB deciding which dim of A/B is K
- MatMul:        prod(broadcast batch dims) * M*N*K (rank-1 operands promoted as numpy does)
- QLinearConv/ConvInteger and QLinearMatMul/MatMulInteger: as their float counterparts
- Einsum (two operands): the product of the sizes of all distinct index letters

A layer whose needed dims are not static gets `macs=None` and a ``symbolic`` note; totals then
cover the counted layers only (`CostReport.complete` is False). Only top-level nodes are
counted (subgraph bodies of If/Loop run a data-dependent number of times).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

from homec.analysis.shapes import format_shape
from homec.dtypes import INT64
from homec.ir import Graph, Node, SparseTensor, Tensor, TensorType, Value

__all__ = ["LayerCost", "ParamStats", "CostReport", "layer_costs", "count_params", "analyze_cost",
           "is_constant", "weight_tensors"]

# op_type -> slot of the weight input (the data input is slot 0)
_CONV_WEIGHT_SLOT = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3}
# op_type -> (slot of A, slot of B)
_MATMUL_SLOTS = {"MatMul": (0, 1), "MatMulInteger": (0, 1), "QLinearMatMul": (0, 3)}
_RANDOM_OPS = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
               "Multinomial", "Bernoulli"}

SYMBOLIC = "symbolic"


@dataclasses.dataclass(frozen=True)
class LayerCost:
    """MACs of one node. `macs` is None when a needed dim is not static (see `note`)."""

    node: str  # node name, or its first output's name when the node is unnamed
    op_type: str
    macs: int | None
    attention_like: bool = False  # a product of two activations (neither side a weight)
    note: str = ""  # "symbolic: ..." when macs is None, else free text


@dataclasses.dataclass(frozen=True)
class ParamStats:
    """Weights stored in the model: initializers and Constant-node tensors, in all scopes."""

    count: int  # elements
    bytes: int
    tensors: int


@dataclasses.dataclass(frozen=True)
class CostReport:
    layers: tuple[LayerCost, ...]
    params: ParamStats

    @property
    def total_macs(self) -> int:
        """Sum over the layers with a known count (a lower bound unless `complete`)."""
        return sum(layer.macs for layer in self.layers if layer.macs is not None)

    @property
    def complete(self) -> bool:
        return all(layer.macs is not None for layer in self.layers)

    def macs_by_op(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for layer in self.layers:
            if layer.macs is not None:
                out[layer.op_type] = out.get(layer.op_type, 0) + layer.macs
        return dict(sorted(out.items()))


def analyze_cost(graph: Graph, types: Mapping[str, TensorType]) -> CostReport:
    """Per-layer MACs and parameter statistics of `graph`, given inferred `types`."""
    return CostReport(tuple(layer_costs(graph, types)), count_params(graph))


def layer_costs(graph: Graph, types: Mapping[str, TensorType]) -> list[LayerCost]:
    """One LayerCost per MAC-bearing top-level node, in schedule order."""
    out = []
    const_memo: dict[int, bool] = {}
    for node in graph.nodes:
        if node.domain != "":
            continue  # custom-domain ops: their semantics are not known here
        cost = _node_cost(node, types, const_memo)
        if cost is not None:
            out.append(cost)
    return out


# ---------------------------------------------------------------------------------------
# Per-op formulas
# ---------------------------------------------------------------------------------------


class _Symbolic(Exception):
    """A dim needed for the count is not static; the message names it."""


class _Unsupported(Exception):
    """The node's form is not one the formulas cover (e.g. a malformed equation)."""


def _node_cost(node: Node, types: Mapping[str, TensorType], memo: dict[int, bool]) -> LayerCost | None:
    """The cost of one node, or None for an op that is not a MAC layer."""
    op = node.op_type
    label = node.name or next((o.name for o in node.outputs if o is not None), op)
    attn = False
    try:
        if op in _CONV_WEIGHT_SLOT:
            return LayerCost(label, op, _conv_macs(node, _CONV_WEIGHT_SLOT[op], types))
        if op == "ConvTranspose":
            return LayerCost(label, op, _conv_transpose_macs(node, types))
        if op == "Gemm":
            return LayerCost(label, op, _gemm_macs(node, types))
        if op in _MATMUL_SLOTS:
            attn = _attention_like(node, _MATMUL_SLOTS[op], memo)
            return LayerCost(label, op, _matmul_macs(node, *_MATMUL_SLOTS[op], types), attn)
        if op == "Einsum" and len(node.inputs) == 2:
            attn = _attention_like(node, (0, 1), memo)
            return LayerCost(label, op, _einsum_macs(node, types), attn)
    except _Symbolic as e:
        return LayerCost(label, op, None, attn, f"{SYMBOLIC}: {e}")
    except _Unsupported as e:
        return LayerCost(label, op, None, attn, f"not counted: {e}")
    return None


def _shape(node: Node, slot: int, types: Mapping[str, TensorType], *,
           output: bool = False) -> tuple[int, ...]:
    """The static shape at an input (or output) slot; _Symbolic when it is not static."""
    vals = node.outputs if output else node.inputs
    v = vals[slot] if slot < len(vals) else None
    if v is None:
        raise _Unsupported(f"{'output' if output else 'input'} {slot} is missing")
    if isinstance(v.const, Tensor):
        return v.const.dims
    t = types.get(v.name) or v.tensor_type()
    shape = t.static_shape() if t is not None else None
    if shape is None:
        raise _Symbolic(f"{v.name!r} has shape {format_shape(t)}")
    return shape


def _conv_macs(node: Node, w_slot: int, types: Mapping[str, TensorType]) -> int:
    y = _shape(node, 0, types, output=True)
    w = _shape(node, w_slot, types)
    return math.prod(y) * math.prod(w[1:])


def _conv_transpose_macs(node: Node, types: Mapping[str, TensorType]) -> int:
    x = _shape(node, 0, types)
    w = _shape(node, 1, types)
    return math.prod(x) * math.prod(w[1:])


def _gemm_macs(node: Node, types: Mapping[str, TensorType]) -> int:
    a = _shape(node, 0, types)
    b = _shape(node, 1, types)
    if len(a) != 2 or len(b) != 2:
        raise _Unsupported(f"Gemm operands must be 2-D, got {a} and {b}")
    m, k = (a[1], a[0]) if node.attr("transA", 0) else (a[0], a[1])
    n = b[0] if node.attr("transB", 0) else b[1]
    return m * n * k


def _matmul_macs(node: Node, a_slot: int, b_slot: int, types: Mapping[str, TensorType]) -> int:
    a = _shape(node, a_slot, types)
    b = _shape(node, b_slot, types)
    if not a or not b:
        raise _Unsupported("MatMul of a scalar")
    if len(a) == 1:
        a = (1, *a)
    if len(b) == 1:
        b = (*b, 1)
    batch = _broadcast(a[:-2], b[:-2])
    m, k, n = a[-2], a[-1], b[-1]
    return math.prod(batch) * m * n * k


def _broadcast(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...]:
    """Numpy broadcasting of two static shapes (a size-1 dim stretches)."""
    r = max(len(a), len(b))
    a = (1,) * (r - len(a)) + tuple(a)
    b = (1,) * (r - len(b)) + tuple(b)
    return tuple(y if x == 1 else x for x, y in zip(a, b))


def _einsum_macs(node: Node, types: Mapping[str, TensorType]) -> int:
    """Two-operand einsum: every combination of index values is one multiply-accumulate."""
    equation = str(node.attr("equation", "")).replace(" ", "")
    lhs = equation.split("->")[0]
    terms = lhs.split(",")
    if len(terms) != 2:
        raise _Unsupported(f"equation {equation!r} does not have two operands")
    sizes: dict[str, int] = {}
    for slot, term in enumerate(terms):
        shape = _shape(node, slot, types)
        letters = list(term.replace("...", ""))
        if "..." in term:
            n_ell = len(shape) - len(letters)
            before = term.index("...")
            ell = [f"...{n_ell - i}" for i in range(n_ell)]  # right-aligned broadcast labels
            letters = letters[:before] + ell + letters[before:]
        if len(letters) != len(shape):
            raise _Unsupported(f"operand {slot} term {term!r} does not match rank {len(shape)}")
        for letter, size in zip(letters, shape):
            sizes[letter] = max(sizes.get(letter, 1), size)
    return math.prod(sizes.values())


# ---------------------------------------------------------------------------------------
# Constants and parameters
# ---------------------------------------------------------------------------------------


def is_constant(value: Value, memo: dict[int, bool] | None = None) -> bool:
    """True when `value` is a weight: an initializer, a Constant output, or computed from
    constants only (e.g. DequantizeLinear or Transpose of a weight)."""
    memo = {} if memo is None else memo
    stack = [value]
    while stack:
        v = stack[-1]
        key = id(v)
        if key in memo:
            stack.pop()
            continue
        if v.is_initializer:
            memo[key] = not v.is_overridable  # an overridable default is not a constant
        elif v.producer is None:
            memo[key] = False
        else:
            p = v.producer
            inputs = [i for i in p.inputs if i is not None]
            if p.op_type == "Constant" and p.domain == "":
                memo[key] = True
            elif p.op_type in _RANDOM_OPS or not inputs or p.subgraphs():
                memo[key] = False
            else:
                pending = [i for i in inputs if id(i) not in memo]
                if pending:
                    stack.extend(pending)
                    continue
                memo[key] = all(memo[id(i)] for i in inputs)
        stack.pop()
    return memo[id(value)]


def _attention_like(node: Node, slots: tuple[int, int], memo: dict[int, bool]) -> bool:
    vals = [node.inputs[s] if s < len(node.inputs) else None for s in slots]
    return not any(v is not None and is_constant(v, memo) for v in vals)


def count_params(graph: Graph) -> ParamStats:
    """Elements and bytes of the model's weights, in every scope (subgraphs included).

    Weights are all initializers, plus Constant-node tensors that are not int64: exporters
    such as paddle2onnx store weights in Constant nodes, while int64 Constants are the
    shapes, axes and indices that torch exports write there (metadata, not weights).
    """
    weights = weight_tensors(graph)
    return ParamStats(sum(w[1] for w in weights), sum(w[2] for w in weights), len(weights))


def weight_tensors(graph: Graph) -> list[tuple[str, int, int]]:
    """(name, elements, bytes) of each weight count_params counts (a Constant node's weight
    is named by its output)."""
    out: list[tuple[str, int, int]] = []
    graphs = [graph]
    while graphs:
        g = graphs.pop()
        for name, v in g.initializers.items():
            out.append((name, *_tensor_size(v.const)))
        for node in g.nodes:
            graphs.extend(node.subgraphs())
            if node.op_type == "Constant" and node.domain == "":
                c, b = _constant_weight_size(node)
                if c or b:
                    out.append((node.outputs[0].name, c, b))
    return out


def _tensor_size(t: Tensor | SparseTensor | None) -> tuple[int, int]:
    if isinstance(t, Tensor):
        return t.size, t.nbytes
    if isinstance(t, SparseTensor):
        return t.values.size, t.values.nbytes + t.indices.nbytes
    return 0, 0


def _constant_weight_size(node: Node) -> tuple[int, int]:
    """(elements, bytes) of a Constant node's value if it is a weight (see count_params)."""
    for name in ("value", "sparse_value"):
        t = node.attr(name)
        if isinstance(t, (Tensor, SparseTensor)):
            dtype = t.dtype if isinstance(t, Tensor) else t.values.dtype
            return (0, 0) if dtype == INT64 else _tensor_size(t)
    if node.attr("value_float") is not None:
        return 1, 4
    floats = node.attr("value_floats")
    if floats is not None:
        return len(floats), 4 * len(floats)
    if node.attr("value_string") is not None:
        return 1, len(node.attrs["value_string"].value)
    if node.attr("value_strings") is not None:
        strings = node.attrs["value_strings"].value
        return len(strings), sum(len(x) for x in strings)
    return 0, 0  # value_int / value_ints: int64 metadata
