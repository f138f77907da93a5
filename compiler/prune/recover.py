"""Calibration statistics of the consumers, data-aware scores, and the training-free recovery
of a pruned model: each consumer layer y = W x + b is re-fit so that, on calibration data, its
output from the surviving channels matches the unpruned model's (`refit`), or, where the
input statistics are too large to keep, the removed channels' mean is folded into its bias.

Consumers are seen as matrix products over *features*: a Conv (group 1) over its im2col patch
features f = c*K + tap (K = prod(kernel)), matching W.reshape(O, C*K); a Gemm/MatMul over its
input features. `LayerMatrix` converts between a node's weight/bias and that (O, F) form.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from homec.ir import Graph, Node

from .channels import Analysis, Consumer
from .gram import ChannelStats, GramAccumulator, feature_rows

__all__ = ["ConsumerStats", "collect", "LayerMatrix", "layer_matrix", "MAX_GRAM_FEATURES", "conv_geometry",
           "resolve_pads"]

# A consumer whose input has more features than this keeps only per-channel statistics (the
# Gram would be (F+1)^2 float64: 4097^2 is 134 MB); it is then compensated by mean folding.
MAX_GRAM_FEATURES = 4096
_BIAS_SUFFIX = "_prune_bias"  # names the Add a re-fit puts after a MatMul that had no bias


@dataclasses.dataclass
class LayerMatrix:
    """A consumer as y = W x + b over features: W (O, F), b (O,), float64, and how the
    features group into input channels (`per_channel` features each, channel-major)."""

    weight: np.ndarray
    bias: np.ndarray
    per_channel: int


def layer_matrix(node: Node, consumer: Consumer) -> LayerMatrix | None:
    w_v = node.inputs[1]
    if w_v is None or w_v.const is None:
        return None
    w = w_v.const.numpy().astype(np.float64)
    op = consumer.op_type
    if op == "Conv":
        o = w.shape[0]
        k = int(np.prod(w.shape[2:], dtype=np.int64))
        b = _const(node, 2)
        return LayerMatrix(w.reshape(o, -1), b if b is not None else np.zeros(o), k)
    if op == "Gemm":
        alpha = float(node.attr("alpha", 1.0))
        mat = (w if node.attr("transB", 0) else w.T) * alpha
        c = _const(node, 2)
        n = mat.shape[0]
        beta = float(node.attr("beta", 1.0))
        if c is None:
            bias = np.zeros(n)
        elif c.size == 1 or c.shape[-1:] == (n,) and c.size == n:
            bias = np.broadcast_to(c.reshape(-1) * beta, (n,)).copy()
        else:
            return None  # a full [M, N] C: no per-output bias to adjust
        return LayerMatrix(mat, bias, 1)
    if op == "MatMul":
        return LayerMatrix(w.T, np.zeros(w.shape[1]), 1)
    return None


def _const(node: Node, slot: int) -> np.ndarray | None:
    if len(node.inputs) <= slot or node.inputs[slot] is None or node.inputs[slot].const is None:
        return None
    return node.inputs[slot].const.numpy().astype(np.float64)


@dataclasses.dataclass
class ConsumerStats:
    """What calibration taught about one consumer's input."""

    consumer: Consumer
    gram: GramAccumulator | None  # None when the features exceed MAX_GRAM_FEATURES
    channels: ChannelStats


def conv_geometry(node: Node, w_shape: Sequence[int]):
    k = tuple(int(s) for s in w_shape[2:])
    nd = len(k)
    strides = tuple(node.attr("strides") or (1,) * nd)
    dil = tuple(node.attr("dilations") or (1,) * nd)
    pads = node.attr("pads")
    auto = node.attr("auto_pad", "NOTSET")
    if isinstance(auto, bytes):
        auto = auto.decode()
    return k, strides, dil, (tuple(pads) if pads else None), auto


def resolve_pads(geometry, spatial):
    """(kernel, strides, dilations, explicit pads) for an input of `spatial` size: auto_pad
    SAME_* / VALID turned into the pads onnxruntime uses."""
    k, strides, dil, pads, auto = geometry
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = _same_pads(spatial, k, strides, dil, auto == "SAME_UPPER")
    elif pads is None or auto == "VALID":
        pads = (0,) * (2 * len(k))
    return k, strides, dil, pads


def _same_pads(spatial, k, strides, dil, upper: bool):
    pads_b, pads_e = [], []
    for size, kk, s, d in zip(spatial, k, strides, dil):
        out = -(-size // s)
        total = max(0, (out - 1) * s + (kk - 1) * d + 1 - size)
        small, big = total // 2, total - total // 2
        pads_b.append(small if upper else big)
        pads_e.append(big if upper else small)
    return tuple(pads_b + pads_e)


def collect(graph: Graph, analysis: Analysis, consumers: Sequence[int],
            samples: Sequence[Mapping[str, np.ndarray]], *, gram: bool, seed: int = 0,
            max_rows_per_sample: int = 4096) -> dict[int, ConsumerStats]:
    """One onnxruntime pass over `samples` reading every listed consumer's input; returns, per
    consumer index (into analysis.consumers), its per-channel statistics and (when `gram`) the
    second moments of its features."""
    from homec.onnx_io import export_with_outputs
    from homec.verify import make_session

    nodes = graph.nodes
    stats: dict[int, ConsumerStats] = {}
    names: list[str] = []
    for ci in consumers:
        c = analysis.consumers[ci]
        node = nodes[c.node_index]
        w = node.inputs[1].const
        if c.op_type == "Conv":
            features = int(np.prod(w.shape[1:], dtype=np.int64))
        else:
            features = int(c.atoms.size)
        acc = None
        if gram and features <= MAX_GRAM_FEATURES and c.op_type != "ConvTranspose":
            acc = GramAccumulator(features, max_rows_per_sample=max_rows_per_sample,
                                  seed=seed + ci)
        stats[ci] = ConsumerStats(c, acc, ChannelStats(int(c.atoms.size), axis=c.axis))
        if c.value not in names:
            names.append(c.value)
    if not stats:
        return stats
    model = export_with_outputs(graph, names)
    sess = make_session(model, threads=1, quiet=True)
    inputs = [i.name for i in sess.get_inputs()]
    for sample in samples:
        feeds = {k: v for k, v in sample.items() if k in inputs}
        arrays = dict(zip(names, sess.run(names, feeds)))
        for ci, st in stats.items():
            c = st.consumer
            x = np.asarray(arrays[c.value], np.float32)
            st.channels.add(x)
            if st.gram is None:
                continue
            if c.op_type == "Conv":
                node = nodes[c.node_index]
                k, strides, dil, pads = resolve_pads(conv_geometry(node, node.inputs[1].const.shape),
                                                  x.shape[2:])
                st.gram.add_conv(x, k, strides=strides, pads=pads, dilations=dil)
            else:
                st.gram.add_rows(feature_rows(x, c.axis))
    return stats


# Least squares needs comfortably more calibration rows than unknowns per output; below
# that (an SE block's squeeze convs see one row per image) the fit would chase noise.
ROWS_PER_FEATURE = 4


def well_determined(rows: int, features: int) -> bool:
    return rows >= ROWS_PER_FEATURE * (features + 1)


@dataclasses.dataclass
class Recovered:
    refit: int = 0  # consumers re-fit by least squares
    mean_folded: int = 0  # consumers compensated by the removed channels' means only
    skipped: int = 0  # consumers with removed inputs left uncompensated (ConvTranspose, odd C)
    refined: int = 0  # consumer re-fits in later rounds (from the pruned model's inputs)
    consumer_nodes: dict = dataclasses.field(default_factory=dict)


def recover(graph: Graph, analysis: Analysis, removed_roots: np.ndarray,
            originals: Mapping[int, LayerMatrix], stats: Mapping[int, ConsumerStats],
            consumer_nodes: Mapping[int, Node], *, method: str, ridge: float = 1e-6) -> Recovered:
    """Compensate every consumer that lost input channels (after `rewrite.apply`).

    `originals[ci]` is consumer ci's LayerMatrix before pruning; `method` is "lstsq" (re-fit
    where the Gram is known, else mean folding) or "mean" (mean folding only)."""
    from .refit import mean_fold, refit

    out = Recovered()
    producer_of = {p.node_index: p for p in analysis.producers}
    for ci, st in stats.items():
        c = st.consumer
        chan_keep = analysis.keep_mask(c.atoms, removed_roots)
        if chan_keep.all():
            continue
        lm = originals.get(ci)
        if lm is None:
            out.skipped += 1
            continue
        feat_keep = np.repeat(chan_keep, lm.per_channel)
        if method == "lstsq" and st.gram is not None and well_determined(st.gram.rows, lm.weight.shape[1]):
            w_new, b_new = refit(lm.weight, lm.bias, st.gram.gram, feat_keep, ridge=ridge)
            out.refit += 1
        else:
            if st.gram is not None and st.gram.rows:
                g = st.gram.gram
            else:  # per-channel means only: every tap of a channel has the channel's mean
                mean = np.repeat(st.channels.mean, lm.per_channel)
                f = mean.size
                g = np.zeros((f + 1, f + 1))
                g[:f, f] = g[f, :f] = mean
                g[f, f] = 1.0
            w_new, b_new = mean_fold(lm.weight, lm.bias, g, feat_keep)
            out.mean_folded += 1
        prod = producer_of.get(c.node_index)
        if prod is not None:  # the consumer lost output channels too
            rows = analysis.keep_mask(prod.atoms, removed_roots)
            w_new, b_new = w_new[rows], b_new[rows]
        _write_back(graph, consumer_nodes[ci], c, w_new, b_new)
    return out


def _write_back(graph: Graph, node: Node, c: Consumer, w: np.ndarray, b: np.ndarray) -> None:
    from homec.passes._util import add_constant, is_const, remove_constant  # noqa: PLC0415

    old_w = node.inputs[1]
    dtype = old_w.const.numpy().dtype
    shape = old_w.const.shape

    def put(slot: int, data: np.ndarray, hint: str) -> None:
        ins = list(node.inputs) + [None] * max(0, slot + 1 - len(node.inputs))
        old = ins[slot]
        ins[slot] = add_constant(graph, graph.unique_name(hint), np.ascontiguousarray(data))
        node.graph.set_inputs_of(node, ins)
        if old is not None and is_const(old) and not old.uses and not old.is_graph_output:
            remove_constant(old)

    base = old_w.name
    if c.op_type == "Conv":
        put(1, w.reshape((w.shape[0], -1) + tuple(shape[2:])).astype(dtype), f"{base}_refit")
        put(2, b.astype(dtype), f"{base}_bias_refit")
    elif c.op_type == "Gemm":
        alpha = float(node.attr("alpha", 1.0))
        mat = w / alpha
        put(1, (mat if node.attr("transB", 0) else mat.T).astype(dtype), f"{base}_refit")
        put(2, b.astype(dtype), f"{base}_bias_refit")
        node.set_attr("beta", 1.0)
    elif c.op_type == "MatMul":
        put(1, w.T.astype(dtype), f"{base}_refit")
        users = node.outputs[0].users
        ours = users[0] if len(users) == 1 and users[0].op_type == "Add" and \
            users[0].name.endswith(_BIAS_SUFFIX) else None
        if ours is not None:  # a bias Add from an earlier round: replace its constant
            old = ours.inputs[1]
            new = add_constant(graph, graph.unique_name(old.name), b.astype(dtype))
            graph.set_inputs_of(ours, [ours.inputs[0], new])
            if not old.uses and is_const(old):
                remove_constant(old)
        elif np.any(b != 0):
            _add_bias_after(graph, node, b.astype(dtype))


def _add_bias_after(graph: Graph, node: Node, b: np.ndarray) -> None:
    """y = MatMul(...) becomes y = Add(MatMul(...), b); the Add's output keeps y's name."""
    from homec.ir import Node as IRNode
    from homec.passes._util import add_constant  # noqa: PLC0415

    y = node.outputs[0]
    name = y.name
    graph.rename_value(y, graph.unique_name(f"{name}_nobias"))
    bias = add_constant(graph, graph.unique_name(f"{name}_bias"), b)
    add = IRNode("Add", inputs=[y, bias], outputs=[name],
                 name=graph.unique_name(f"{node.name or 'MatMul'}{_BIAS_SUFFIX}"))
    graph.insert(add, after=node)
    graph.replace_all_uses(y, add.outputs[0])
    graph.set_inputs_of(add, [y, bias])


def refine(pruned: Graph, original_model: bytes, analysis: Analysis, removed_roots: np.ndarray,
           originals: Mapping[int, LayerMatrix], stats: Mapping[int, ConsumerStats],
           consumer_nodes: Mapping[int, Node], samples: Sequence[Mapping[str, np.ndarray]], *,
           ridge: float, seed: int = 0, max_rows_per_sample: int = 4096) -> int:
    """One more least-squares round with the *pruned* model's inputs: every consumer (pruned
    or downstream of a pruned layer) is re-fit so that, fed what the pruned model now gives
    it, it reproduces what the unpruned layer gives on the unpruned model's input:

        minimize E || W' a_K + b' - (W x + b) ||^2,  a = input in the pruned model,
                                                     x = input in the original model

    (training-free feature distillation, `refit.refit_cross`). Upstream errors are then
    compensated, not only the layer's own missing channels. Returns the consumers re-fit."""
    from homec.onnx_io import export_with_outputs
    from homec.verify import make_session

    from .gram import CrossGramAccumulator
    from .refit import refit_cross

    producer_of = {p.node_index: p for p in analysis.producers}
    todo: dict[int, CrossGramAccumulator] = {}
    geometry = {}
    for ci, st in stats.items():
        lm = originals.get(ci)
        c = st.consumer
        if lm is None or st.gram is None or c.op_type == "ConvTranspose":
            continue
        kept = int(analysis.keep_mask(c.atoms, removed_roots).sum())
        todo[ci] = CrossGramAccumulator(kept * lm.per_channel, lm.weight.shape[1],
                                        max_rows_per_sample=max_rows_per_sample, seed=seed + ci)
        if c.op_type == "Conv":
            node = consumer_nodes[ci]
            geometry[ci] = conv_geometry(node, node.inputs[1].const.shape)
    if not todo:
        return 0
    names = sorted({stats[ci].consumer.value for ci in todo})
    s_orig = make_session(export_with_outputs(_as_graph(original_model), names), quiet=True)
    s_pruned = make_session(export_with_outputs(pruned, names), quiet=True)
    in_o = {i.name for i in s_orig.get_inputs()}
    in_p = {i.name for i in s_pruned.get_inputs()}
    for sample in samples:
        xo = dict(zip(names, s_orig.run(names, {k: v for k, v in sample.items() if k in in_o})))
        xp = dict(zip(names, s_pruned.run(names, {k: v for k, v in sample.items() if k in in_p})))
        for ci, acc in todo.items():
            c = stats[ci].consumer
            a, b = np.asarray(xp[c.value], np.float32), np.asarray(xo[c.value], np.float32)
            if c.op_type == "Conv":
                k, strides, dil, pads = resolve_pads(geometry[ci], b.shape[2:])
                acc.add_conv_pair(a, b, k, strides=strides, pads=pads, dilations=dil)
            else:
                acc.add_rows_pair(feature_rows(a, c.axis), feature_rows(b, c.axis))
    done = 0
    for ci, acc in todo.items():
        if not well_determined(acc.rows, originals[ci].weight.shape[1]):
            continue
        c, lm = stats[ci].consumer, originals[ci]
        feat_keep = np.repeat(analysis.keep_mask(c.atoms, removed_roots), lm.per_channel)
        anchor = (lm.weight[:, feat_keep], lm.bias)
        w_new, b_new = refit_cross(lm.weight, lm.bias, acc.gram_a, acc.cross,
                                   np.ones(int(feat_keep.sum()), bool), ridge=ridge, anchor=anchor)
        prod = producer_of.get(c.node_index)
        if prod is not None:
            rows = analysis.keep_mask(prod.atoms, removed_roots)
            w_new, b_new = w_new[rows], b_new[rows]
        _write_back(pruned, consumer_nodes[ci], c, w_new, b_new)
        done += 1
    return done


def _as_graph(model: bytes) -> Graph:
    from homec.onnx_io import load

    return load(model)
