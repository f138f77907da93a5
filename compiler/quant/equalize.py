"""Cross-layer equalization (Nagel et al., "Data-Free Quantization", ICCV 2019) on the float IR.

Per-tensor weight quantization gives every channel of a weight the same step, so a layer
whose output channels have very different ranges loses the small channels to rounding.
Two consecutive linear layers can trade range between them without changing what the
network computes, and equalization picks the trade that makes both layers' per-channel
ranges equal.

Algebra. Let layer 1 produce channel i (weights W1[i], bias b1[i]), let f be a positively
homogeneous per-element function (f(s x) = s f(x) for every s > 0), and let layer 2 read
channel i through the weight slice W2[:, i]. For any s_i > 0

    W1'[i] = W1[i] / s_i,   b1'[i] = b1[i] / s_i,   W2'[:, i] = W2[:, i] * s_i

gives layer2(f(layer1'(x))) = sum_i W2[:, i] s_i f(y_i / s_i) = sum_i W2[:, i] f(y_i):
the result is unchanged (up to float rounding, since the new weights are rounded once to
their dtype). With the symmetric ranges r1_i = max |W1[i]| and r2_i = max |W2[:, i]|, the
new ranges are r1_i / s_i and r2_i * s_i; they are equal when

    s_i = sqrt(r1_i / r2_i)  (= sqrt(r1_i * r2_i) / r2_i),

and both become sqrt(r1_i * r2_i). A channel with r1_i = 0 or r2_i = 0 keeps s_i = 1.

Homogeneous (allowed between the layers, any number of them in a row): Relu, LeakyRelu
(alpha x for x < 0), PRelu (whatever the slope's shape: each element is max(x, 0) +
slope * min(x, 0)), Identity. Not homogeneous, so the layers are not paired: Clip (ReLU6
= Clip(0, 6): scaling the input moves the clip point), HardSwish, HardSigmoid, Sigmoid,
Tanh, Elu, Gelu and the other saturating or curved activations.

Pairs (`find_pairs`): layer 1 is Conv (channel axis 1), Gemm (features on the last axis:
columns of op(B); any bias C broadcast to [N] or [M, N]) or MatMul with a constant 2-D
B [K, N] (no bias); layer 2 is Conv after a Conv (input channel i of a grouped Conv
W2[Cout, Cin/g, k..] is column i mod Cin/g of the rows of group i div Cin/g; depthwise is
Cin/g = 1), Gemm (transA = 0) or MatMul (A = the channel value, constant 2-D B) after a
Gemm/MatMul. Layer 1's output and every activation's output are read by exactly the next
node and are not graph outputs; the weights and biases are constant initializers read by
that node only (a shared weight would change its other reader: the pair is skipped). A
layer may be the second of one pair and the first of the next (MobileNet's
pointwise -> depthwise -> pointwise): `equalize` then iterates over the whole chain.
ConvTranspose layers are not paired.

Iteration: each sweep equalizes every pair in topological order (later pairs disturb the
balance of earlier ones in a chain) and accumulates s per pair; sweeps stop when the
largest |log s| of a sweep is below `tolerance`, or after `iterations` sweeps. The new
weights are then computed once, from the original ones and the accumulated scales, in
float64, and written as new initializers (under the old names; the old tensors are not
modified). A pair whose accumulated scales all satisfy |log s| < `tolerance` is left
alone, so equalizing an equalized graph changes nothing.

Not done here: absorbing the bias into the next layer (the paper's second step); running
`fold_batchnorm` first is the caller's job (a BatchNormalization between the layers is not
homogeneous-and-parameter-free, so such layers are not paired).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from homec import dtypes as D
from homec.ir import Graph, Node, Value
from homec.passes._util import (Names, add_constant, all_graphs, can_add_constant, const_of,
                                constant_in_place, is_const, opset, remove_constant)

HOMOGENEOUS_ACTIVATIONS = frozenset({"Relu", "LeakyRelu", "PRelu", "Identity"})
# Activations that look like candidates but are not positively homogeneous (a pair through
# them is counted as skipped_not_homogeneous).
NOT_HOMOGENEOUS_ACTIVATIONS = frozenset({
    "Clip", "HardSwish", "HardSigmoid", "Sigmoid", "Tanh", "Elu", "Selu", "Celu", "Gelu",
    "Softplus", "Softsign", "Mish", "ThresholdedRelu", "Swish",
})
FIRST_OPS = frozenset({"Conv", "Gemm", "MatMul"})
_FLOATS = frozenset({D.FLOAT, D.FLOAT16, D.DOUBLE})

STAT_KEYS = ("pairs_equalized", "channels_rescaled", "iterations_run", "candidates_pairs",
             "skipped_shared_weights", "skipped_non_constant", "skipped_not_homogeneous",
             "skipped_fanout", "skipped_incompatible")


@dataclasses.dataclass(frozen=True)
class EqualizationPair:
    """Two layers whose shared channels can be rescaled: `first` -> `between` -> `second`."""

    first: Node  # Conv / Gemm / MatMul: its output channel i is divided by s_i
    between: tuple[Node, ...]  # positively homogeneous activations, in order (may be empty)
    second: Node  # Conv / Gemm / MatMul: its input channel i is multiplied by s_i
    channels: int


# ---------------------------------------------------------------------------------------
# Channel layouts of the weights
# ---------------------------------------------------------------------------------------


def _output_channels(node: Node, w: np.ndarray) -> int | None:
    """Number of output channels of a first layer, None when its weight is malformed."""
    if node.op_type == "Conv":
        return w.shape[0] if w.ndim >= 3 else None
    if w.ndim != 2:
        return None
    if node.op_type == "Gemm" and node.attr("transB", 0):
        return w.shape[0]
    return w.shape[1]


def _input_channels(node: Node, w: np.ndarray) -> int | None:
    """Number of input channels of a second layer, None when its weight is malformed."""
    if node.op_type == "Conv":
        group = int(node.attr("group", 1))
        if w.ndim < 3 or group < 1 or w.shape[0] % group:
            return None
        return w.shape[1] * group
    if w.ndim != 2:
        return None
    if node.op_type == "Gemm" and node.attr("transB", 0):
        return w.shape[1]
    return w.shape[0]


def _output_view(node: Node, w: np.ndarray) -> np.ndarray:
    """`w` as [C_out, rest] (a view/transposed copy; rows are output channels)."""
    if node.op_type == "Conv":
        return w.reshape(w.shape[0], -1)
    return w if node.op_type == "Gemm" and node.attr("transB", 0) else w.T


def _output_ranges(node: Node, w: np.ndarray) -> np.ndarray:
    return np.abs(_output_view(node, w)).max(axis=1)


def _scale_outputs(node: Node, w: np.ndarray, inv: np.ndarray) -> np.ndarray:
    """`w` with output channel i multiplied by inv[i]."""
    if node.op_type == "Conv":
        return w * inv.reshape((-1,) + (1,) * (w.ndim - 1))
    if node.op_type == "Gemm" and node.attr("transB", 0):
        return w * inv[:, None]
    return w * inv[None, :]


def _grouped(node: Node, w: np.ndarray) -> np.ndarray:
    """A Conv weight [Cout, Cin/g, k..] as [g, Cout/g, Cin/g, taps]."""
    group = int(node.attr("group", 1))
    return w.reshape(group, w.shape[0] // group, w.shape[1], -1)


def _input_ranges(node: Node, w: np.ndarray) -> np.ndarray:
    if node.op_type == "Conv":
        return np.abs(_grouped(node, w)).max(axis=(1, 3)).reshape(-1)  # [g, Cin/g] -> [Cin]
    rows = w.T if node.op_type == "Gemm" and node.attr("transB", 0) else w  # [K, N]
    return np.abs(rows).max(axis=1)


def _scale_inputs(node: Node, w: np.ndarray, s: np.ndarray) -> np.ndarray:
    """`w` with input channel i multiplied by s[i]."""
    if node.op_type == "Conv":
        g = _grouped(node, w)
        return (g * s.reshape(g.shape[0], 1, g.shape[2], 1)).reshape(w.shape)
    if node.op_type == "Gemm" and node.attr("transB", 0):
        return w * s[None, :]
    return w * s[:, None]


def _scale_bias(b: np.ndarray, inv: np.ndarray) -> np.ndarray:
    """A bias broadcasting along the channel (last) axis, with channel i times inv[i].

    Conv biases are [C]; a Gemm C may be a scalar, [N], [1, N], [M, 1] or [M, N]: it is
    first broadcast to [N] or [M, N] so that every channel has its own entry."""
    n = inv.shape[0]
    full = np.broadcast_to(b, (n,) if b.ndim <= 1 else (b.shape[0], n))
    return full * inv


# ---------------------------------------------------------------------------------------
# Finding pairs
# ---------------------------------------------------------------------------------------


def _single_reader(v: Value | None) -> Node | None:
    """The only node reading `v` (at one slot), when `v` is not a graph output."""
    if v is None or v.is_graph_output:
        return None
    uses = v.uses
    return uses[0][0] if len(uses) == 1 else None


def _reads_at(node: Node, v: Value, slot: int) -> bool:
    return any(n is node and s == slot for n, s in v.uses)


def _is_data_input_of_linear(node: Node, v: Value) -> bool:
    return node.op_type in FIRST_OPS and node.domain == "" and _reads_at(node, v, 0)


def _family(op_type: str) -> str:
    """Layers whose channel axes line up: Conv's axis 1, Gemm/MatMul's last axis."""
    return "conv" if op_type == "Conv" else "dense"


def _param_problem(node: Node, slots: tuple[int, ...]) -> str | None:
    """Why the weight/bias inputs at `slots` cannot be rewritten, or None."""
    for slot in slots:
        v = node.inputs[slot] if slot < len(node.inputs) else None
        if v is None:
            if slot == 1:
                return "skipped_incompatible"
            continue  # an absent bias
        if not is_const(v):
            return "skipped_non_constant"
        if v.const.dtype not in _FLOATS:  # type: ignore[union-attr]
            return "skipped_incompatible"
        if len(v.uses) != 1 or v.is_graph_output:
            return "skipped_shared_weights"
    return None


def _first_slots(node: Node) -> tuple[int, ...]:
    return (1,) if node.op_type == "MatMul" else (1, 2)


def _examine(first: Node, selected: Callable[[Node], bool]) -> EqualizationPair | str | None:
    """The pair starting at `first`, a skip reason, or None when `first` starts no candidate."""
    v = first.outputs[0] if first.outputs else None
    between: list[Node] = []
    while True:
        if v is None:
            return None
        reader = _single_reader(v)
        if reader is None:  # several readers, or one reader of a graph output
            return "skipped_fanout" if v.uses else None
        if reader.domain != "":
            return None
        if reader.op_type in HOMOGENEOUS_ACTIVATIONS and _reads_at(reader, v, 0) and \
                not any(x is v for x in reader.inputs[1:]):
            between.append(reader)
            v = reader.outputs[0]
            continue
        if reader.op_type in NOT_HOMOGENEOUS_ACTIVATIONS:
            nxt = _single_reader(reader.outputs[0])
            if nxt is not None and _is_data_input_of_linear(nxt, reader.outputs[0]):
                return "skipped_not_homogeneous"
            return None
        if not _is_data_input_of_linear(reader, v):
            return None
        second = reader
        break
    if not selected(second):
        return None
    if _family(first.op_type) != _family(second.op_type):
        return "skipped_incompatible"
    if second.op_type == "Gemm" and second.attr("transA", 0):
        return "skipped_incompatible"
    if second.graph is not first.graph or any(n.graph is not first.graph for n in between):
        return "skipped_incompatible"
    if first.op_type == "Gemm" and opset(first.graph) < 7:  # C needed `broadcast` before 7
        return "skipped_incompatible"
    for node, slots in ((first, _first_slots(first)), (second, (1,))):
        problem = _param_problem(node, slots)
        if problem is not None:
            return problem
    w1, w2 = const_of(first.inputs[1]), const_of(second.inputs[1])
    assert w1 is not None and w2 is not None
    c1, c2 = _output_channels(first, w1), _input_channels(second, w2)
    if c1 is None or c1 != c2 or c1 == 0:
        return "skipped_incompatible"
    if first.op_type != "MatMul" and len(first.inputs) > 2 and first.inputs[2] is not None:
        b = const_of(first.inputs[2])
        assert b is not None
        if b.ndim > 2 or (b.ndim >= 1 and b.shape[-1] not in (1, c1)) or \
                (first.op_type == "Conv" and b.size != c1):
            return "skipped_incompatible"
    return EqualizationPair(first, tuple(between), second, c1)


def _scan(graph: Graph, selected: Callable[[Node], bool]) -> tuple[list[EqualizationPair], dict[str, int]]:
    pairs: list[EqualizationPair] = []
    skipped = {k: 0 for k in STAT_KEYS if k.startswith("skipped")}
    for g in all_graphs(graph):
        if not can_add_constant(g):
            continue
        for node in g.nodes:
            if node.op_type not in FIRST_OPS or node.domain != "" or not selected(node):
                continue
            found = _examine(node, selected)
            if isinstance(found, EqualizationPair):
                pairs.append(found)
            elif found is not None:
                skipped[found] += 1
    return pairs, skipped


def find_pairs(graph: Graph, selected: Callable[[Node], bool] = lambda n: True) -> list[EqualizationPair]:
    """Every equalizable pair of `graph` and its subgraphs, in topological order.

    Both layers must be `selected` (the activations between them need not be). See the
    module docstring for what makes a pair.
    """
    return _scan(graph, selected)[0]


# ---------------------------------------------------------------------------------------
# Equalizing
# ---------------------------------------------------------------------------------------


def equalization_scales(r1: np.ndarray, r2: np.ndarray) -> np.ndarray:
    """s_i = sqrt(r1_i / r2_i), which makes r1_i / s_i = r2_i * s_i; 1 where a range is 0."""
    ok = (r1 > 0) & (r2 > 0)
    return np.where(ok, np.sqrt(np.where(ok, r1, 1.0) / np.where(ok, r2, 1.0)), 1.0)


def equalize(graph: Graph, *, selected: Callable[[Node], bool] = lambda n: True,
             iterations: int = 10, tolerance: float = 1e-3) -> dict[str, int]:
    """Equalize the per-channel weight ranges of every pair `find_pairs` reports.

    Exact in real arithmetic (see the module docstring); in float the outputs move by
    rounding only (the new weights are rounded once from float64), so a caller declares
    `Tolerance.float_refold()`.

    Options:
      selected: which layers may be rewritten (both layers of a pair must be selected).
      iterations: at most this many sweeps over the pairs (chains need several).
      tolerance: stop when a sweep's largest |log s| is below it; pairs whose accumulated
        scales all stay below it are not rewritten.

    Statistics: pairs_equalized (pairs rewritten), channels_rescaled (channels with s != 1
    in them), iterations_run (sweeps), candidates_pairs (pairs found, rewritten or already
    balanced), and the observations skipped_shared_weights (a weight or bias read by another
    node too), skipped_non_constant (a weight or bias that is not a constant initializer),
    skipped_not_homogeneous (a linear layer -> non-homogeneous activation such as Clip ->
    linear layer), skipped_fanout (a linear layer's output, or an activation's after it, has
    several readers, or is a graph output that is also read), and
    skipped_incompatible (channel axes or counts that do not line up, transA, non-float
    weights, a bias shape that is not per channel).
    """
    pairs, skipped = _scan(graph, selected)
    stats = dict.fromkeys(STAT_KEYS, 0)
    stats.update(skipped)
    stats["candidates_pairs"] = len(pairs)
    if not pairs:
        return stats

    original: dict[int, np.ndarray] = {}  # id(node) -> its weight in float64
    for pair in pairs:
        for node in (pair.first, pair.second):
            arr = const_of(node.inputs[1])
            assert arr is not None
            original.setdefault(id(node), arr.astype(np.float64))
    current = dict(original)
    scales = [np.ones(p.channels) for p in pairs]
    for _ in range(iterations):
        stats["iterations_run"] += 1
        largest = 0.0
        for k, pair in enumerate(pairs):
            w1, w2 = current[id(pair.first)], current[id(pair.second)]
            s = equalization_scales(_output_ranges(pair.first, w1), _input_ranges(pair.second, w2))
            current[id(pair.first)] = _scale_outputs(pair.first, w1, 1.0 / s)
            current[id(pair.second)] = _scale_inputs(pair.second, w2, s)
            scales[k] = scales[k] * s
            largest = max(largest, _log_spread(s))
        if largest < tolerance:
            break

    # Rebuild from the originals with the accepted pairs' accumulated scales only.
    weights: dict[int, np.ndarray] = {}
    biases: dict[int, np.ndarray] = {}
    touched: list[Node] = []
    for pair, s in zip(pairs, scales):
        if _log_spread(s) < tolerance:
            continue
        stats["pairs_equalized"] += 1
        stats["channels_rescaled"] += int(np.count_nonzero(s != 1.0))
        first, second = pair.first, pair.second
        for node in (first, second):
            if id(node) not in weights:
                weights[id(node)] = original[id(node)]
                touched.append(node)
        weights[id(first)] = _scale_outputs(first, weights[id(first)], 1.0 / s)
        weights[id(second)] = _scale_inputs(second, weights[id(second)], s)
        b = const_of(first.inputs[2]) if len(first.inputs) > 2 else None
        if b is not None:
            biases[id(first)] = _scale_bias(b.astype(np.float64), 1.0 / s)
    for node in touched:
        replace_constant_input(node, 1, weights[id(node)])
        if id(node) in biases:
            replace_constant_input(node, 2, biases[id(node)])
    return stats


def replace_constant_input(node: Node, slot: int, array: np.ndarray) -> Value:
    """Give `node` a new constant at input `slot`, cast to the old constant's dtype.

    A constant read by `node` only is replaced under its own name (the old tensor is
    renamed away and removed, never modified); a shared one is left to its other readers
    and `node` reads a fresh constant named after it. Returns the new value.
    """
    g = node.graph
    old = node.inputs[slot]
    assert g is not None and old is not None and is_const(old)
    data = np.asarray(array).astype(old.const.numpy().dtype)  # type: ignore[union-attr]
    names = Names(g)
    if all(n is node for n in old.users) and not old.is_graph_output and old.graph is g:
        new = constant_in_place(old, data, names)
        remove_constant(old)
        return new
    new = add_constant(g, names.fresh(old.name), data)
    node.set_input(slot, new)
    return new


def _log_spread(s: np.ndarray) -> float:
    """max |log s|: how far a set of scales is from all ones (the convergence measure)."""
    return float(np.abs(np.log(s)).max()) if s.size else 0.0


__all__ = ["EqualizationPair", "HOMOGENEOUS_ACTIVATIONS", "NOT_HOMOGENEOUS_ACTIVATIONS",
           "equalization_scales", "equalize", "find_pairs", "replace_constant_input"]
