"""Fold inference BatchNormalization into the preceding Conv / ConvTranspose / Gemm."""

from __future__ import annotations

import numpy as np

from homec import dtypes as D
from homec.context import PassContext
from homec.dtypes import numpy_dtype_of
from homec.ir import Graph, Node, Value
from homec.registry import Stats, Tolerance, register_pass

from ._util import (Names, Types, add_constant, all_graphs, can_add_constant, can_replace,
                    input_const, opset, replace_value, used)

_FLOATS = {D.FLOAT, D.FLOAT16, D.DOUBLE}
_LINEAR = ("Conv", "ConvTranspose", "Gemm")
REASONS = ("refused_not_after_linear", "refused_shared_weight", "refused_other_users",
           "refused_non_constant", "refused_training", "refused_unsupported")


@register_pass("fold_batchnorm", tolerance=Tolerance.float_refold())
def fold_batchnorm(graph: Graph, ctx: PassContext, *, decompose_standalone: bool = False,
                   fold_affine: bool = True) -> Stats:
    """Fold BatchNormalization (inference) into the weights and bias of the layer before it.

    Algebra: BN(y) = scale * (y - mean) / sqrt(var + eps) + B = s * y + t per channel c
    (axis 1), with s = scale / sqrt(var + eps) and t = B - mean * s. When y is the output of
      Conv(x, W[Cout, Cin/g, k..], b):           W'[c] = W[c] * s[c],           b' = b * s + t
      ConvTranspose(x, W[Cin, Cout/g, k..], b):  output channel c = grp * Cout/g + j, so
                                                 W'[i, j] = W[i, j] * s[grp(i) * Cout/g + j],
                                                 b' = b * s + t
      Gemm(A, B, C; alpha, beta, transB):        the output [M, N] has its features on axis
                                                 1, the BN channel axis: B' scales column n
                                                 of op(B) by s[n], C' = beta * C * s + t
                                                 (broadcast to [N] or [M, N]), beta' = 1
    an absent bias counts as zero. The arithmetic is done in float64 and rounded once to the
    weight dtype, hence the float_refold tolerance. The BN output keeps its name (the
    layer's output is renamed to it).

    Refused (counted by reason): the BN input is not produced by Conv/ConvTranspose/Gemm
    (`refused_not_after_linear`, e.g. BN after an activation: folding across a nonlinearity
    would be wrong), the weight or bias is read by another node too
    (`refused_shared_weight`), the layer's output has readers besides the BN or is a graph
    output (`refused_other_users`), scale/B/mean/var or the weights are not constants
    (`refused_non_constant`), BN in training mode or with its running-statistics outputs
    used (`refused_training`), and anything else the algebra does not cover: non-float
    dtypes, spatial=0, Gemm with a non-2-D or shape-mismatched output, unknown channel
    count (`refused_unsupported`). The BN and the layer must both be selected.

    The same algebra folds a Mul or Add by a constant that varies along the channel axis
    only (shape [C, 1, ..., 1] up to leading ones, or a scalar) right after such a layer:
    Mul by k is s = k, t = 0; Add of k is s = 1, t = k (`folded_affine`; e.g. a Caffe
    Scale layer, or a bias added after a bias-less Conv). The same conditions apply; such
    Mul/Add nodes that cannot be folded are not counted as refusals.

    Options:
      fold_affine: also fold per-channel constant Mul/Add after Conv/ConvTranspose/Gemm.
      decompose_standalone: rewrite a BN with constant parameters that follows nothing
        foldable as y = x * s + t (Mul and Add with constants shaped [C, 1, ..., 1] for
        x's known rank), for targets without a BatchNormalization kernel.

    Statistics: folded (BNs), folded_affine (Mul/Add nodes), decomposed, and the
    observations refused_* above (BNs only).
    """
    st = {"folded": 0, "folded_affine": 0, "decomposed": 0, **dict.fromkeys(REASONS, 0)}
    types = Types(graph, infer=decompose_standalone)
    names = Names(graph)
    for g in list(all_graphs(graph)):
        if not can_add_constant(g):
            continue
        op = opset(g)
        for node in g.nodes:
            if node.graph is not g or node.domain != "" or not ctx.selected(node):
                continue
            if node.op_type == "BatchNormalization":
                reason = _try_fold(g, node, op, ctx, decompose_standalone, types, names)
                if reason is not None:
                    st[reason] += 1
            elif fold_affine and node.op_type in ("Mul", "Add"):
                if _try_fold_affine(g, node, ctx, names) == "folded":
                    st["folded_affine"] += 1
    return st


def _bn_affine(bn: Node, op: int) -> tuple[np.ndarray, np.ndarray] | str:
    """(s, t) in float64, or a refusal reason."""
    if bn.attr("training_mode", 0) or (op < 7 and not bn.attr("is_test", 0)):
        return "refused_training"
    if any(used(o) for o in bn.outputs[1:]):
        return "refused_training"
    if op < 9 and bn.attr("spatial", 1) != 1:
        return "refused_unsupported"
    params = [input_const(bn, i) for i in range(1, 5)]
    if any(p is None for p in params):
        return "refused_non_constant"
    scale, b, mean, var = (np.asarray(p, dtype=np.float64).reshape(-1) for p in params)  # type: ignore[arg-type]
    if not (scale.shape == b.shape == mean.shape == var.shape):
        return "refused_unsupported"
    s = scale / np.sqrt(var + float(bn.attr("epsilon", 1e-5)))
    return s, b - mean * s


def _try_fold(g: Graph, bn: Node, op: int, ctx: PassContext, decompose: bool,
              types: Types, names: Names) -> str | None:
    y = bn.inputs[0]
    layer = y.producer if y is not None else None
    if layer is None or layer.op_type not in _LINEAR or layer.domain != "" or layer.graph is not g:
        if decompose:
            return _decompose(g, bn, op, types, names)
        return "refused_not_after_linear"
    if not ctx.selected(layer):
        return None
    affine = _bn_affine(bn, op)
    if isinstance(affine, str):
        return affine
    s, t = affine
    return _apply(g, layer, bn, s, t, names)


def _channel_vector(k: np.ndarray, rank: int, c: int) -> np.ndarray | None:
    """`k` as a [C] vector if it broadcasts over [N, C, ...] along the channel axis only."""
    if k.ndim > rank:
        return None
    shape = (1,) * (rank - k.ndim) + k.shape
    if any(d != 1 for i, d in enumerate(shape) if i != 1) or shape[1] not in (1, c):
        return None
    return np.broadcast_to(k.astype(np.float64).reshape(-1), (c,)).copy()


def _try_fold_affine(g: Graph, node: Node, ctx: PassContext, names: Names) -> str | None:
    """Mul/Add by a per-channel (or scalar) constant right after a linear layer."""
    for slot in (0, 1):
        y, kv = node.inputs[slot], node.inputs[1 - slot] if len(node.inputs) == 2 else None
        layer = y.producer if y is not None else None
        if layer is None or layer.op_type not in _LINEAR or layer.domain != "" or layer.graph is not g:
            continue
        k = input_const(node, 1 - slot)
        w = input_const(layer, 1)
        if k is None or w is None or kv is None or not ctx.selected(layer):
            continue
        rank = 2 if layer.op_type == "Gemm" else w.ndim
        c = (w.shape[0] if layer.attr("transB", 0) else w.shape[1]) if layer.op_type == "Gemm" \
            else w.shape[0] if layer.op_type == "Conv" else w.shape[1] * int(layer.attr("group", 1))
        if kv.const.dtype != layer.inputs[1].const.dtype:  # type: ignore[union-attr]
            continue
        vec = _channel_vector(k, rank, c)
        if vec is None:
            continue
        if node.op_type == "Mul":
            s, t = vec, np.zeros(c)
        else:
            s, t = np.ones(c), vec
        return _apply(g, layer, node, s, t, names)
    return None


def _apply(g: Graph, layer: Node, node: Node, s: np.ndarray, t: np.ndarray, names: Names) -> str:
    """Fold y -> s * y + t (per channel), computed by `node` from `layer`'s output y."""
    y = layer.outputs[0]
    if y is None or len(y.uses) != 1 or y.is_graph_output:
        return "refused_other_users"
    w = layer.inputs[1] if len(layer.inputs) > 1 else None
    bias_slot = 2
    bias = layer.inputs[bias_slot] if len(layer.inputs) > bias_slot else None
    warr = input_const(layer, 1)
    barr = input_const(layer, bias_slot) if bias is not None else None
    if w is None or warr is None or (bias is not None and barr is None):
        return "refused_non_constant"
    if any(len(v.uses) != 1 for v in (w, bias) if v is not None):
        return "refused_shared_weight"
    if w.const.dtype not in _FLOATS or (bias is not None and bias.const.dtype not in _FLOATS):  # type: ignore[union-attr]
        return "refused_unsupported"
    out = node.outputs[0]
    if not can_replace(out, y):
        return "refused_other_users"
    folded = _fold_weights(layer, warr, barr, s, t)
    if isinstance(folded, str):
        return folded
    new_w, new_b, attrs = folded
    wv = add_constant(g, names.fresh(w.name), new_w.astype(warr.dtype))
    bdtype = barr.dtype if barr is not None else warr.dtype
    bv = add_constant(g, names.fresh(bias.name if bias is not None else w.name + "_bias"),
                      new_b.astype(bdtype))
    layer.set_input(1, wv)
    layer.set_input(bias_slot, bv)
    for k, v in attrs.items():
        layer.set_attr(k, v)
    replace_value(out, y, names)
    g.remove_nodes([node])
    for old in (w, bias):
        if old is not None and not old.uses and not old.is_graph_input and not old.is_graph_output:
            g.remove_initializer(old)
    return "folded"


def _fold_weights(layer: Node, w: np.ndarray, b: np.ndarray | None, s: np.ndarray,
                  t: np.ndarray):
    w64 = w.astype(np.float64)
    c = s.shape[0]
    if layer.op_type == "Conv":
        if w.ndim < 1 or w.shape[0] != c:
            return "refused_unsupported"
        new_w = w64 * s.reshape((c,) + (1,) * (w.ndim - 1))
        b64 = np.zeros(c) if b is None else b.astype(np.float64).reshape(-1)
        if b64.shape != (c,):
            return "refused_unsupported"
        return new_w, b64 * s + t, {}
    if layer.op_type == "ConvTranspose":
        grp = int(layer.attr("group", 1))
        if w.ndim < 2 or w.shape[1] * grp != c or w.shape[0] % grp:
            return "refused_unsupported"
        cin_g, cout_g = w.shape[0] // grp, w.shape[1]
        ws = w64.reshape((grp, cin_g, cout_g) + w.shape[2:])
        new_w = (ws * s.reshape((grp, 1, cout_g) + (1,) * (w.ndim - 2))).reshape(w.shape)
        b64 = np.zeros(c) if b is None else b.astype(np.float64).reshape(-1)
        if b64.shape != (c,):
            return "refused_unsupported"
        return new_w, b64 * s + t, {}
    # Gemm: output [M, N]; op(B) is [K, N]. Before opset 7 C needed a `broadcast` attribute.
    if w.ndim != 2 or (layer.graph is not None and opset(layer.graph) < 7):
        return "refused_unsupported"
    trans_b = int(layer.attr("transB", 0))
    n = w.shape[0] if trans_b else w.shape[1]
    if n != c:
        return "refused_unsupported"
    new_w = w64 * (s[:, None] if trans_b else s[None, :])
    beta = float(layer.attr("beta", 1.0))
    if b is None:
        new_c = t
    else:
        b64 = b.astype(np.float64)
        if b64.ndim > 2 or (b64.ndim >= 1 and b64.shape[-1] not in (1, c)):
            return "refused_unsupported"
        new_c = beta * b64 * s + t
    attrs = {"beta": 1.0} if "beta" in layer.attrs or b is not None else {}
    return new_w, new_c, attrs


def _decompose(g: Graph, bn: Node, op: int, types: Types, names: Names) -> str:
    affine = _bn_affine(bn, op)
    if isinstance(affine, str):
        return affine if affine != "refused_non_constant" else "refused_not_after_linear"
    s, t = affine
    x = bn.inputs[0]
    rank, elem = types.rank(x), types.elem(x)
    if rank is None or rank < 2 or elem not in _FLOATS:
        return "refused_unsupported"
    out = bn.outputs[0]
    dt = numpy_dtype_of(elem)
    shape = (s.shape[0],) + (1,) * (rank - 2)
    base = bn.name or out.name
    sv = add_constant(g, names.fresh(base + "_scale"), s.reshape(shape).astype(dt))
    tv = add_constant(g, names.fresh(base + "_shift"), t.reshape(shape).astype(dt))
    mid = Value(names.fresh(out.name + "_scaled"))
    res = Value(names.fresh(out.name))
    mul = g.insert(Node("Mul", [x, sv], [mid], name=(bn.name + "_mul") if bn.name else ""), before=bn)
    g.insert(Node("Add", [mul.outputs[0], tv], [res], name=(bn.name + "_add") if bn.name else ""), before=bn)
    replace_value(out, res, names, keep_name=True)  # keeps the name, so its inferred type too
    g.remove_nodes([bn])
    return "decomposed"
