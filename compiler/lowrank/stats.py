"""Calibration statistics for data-aware factorization: the second moments of every
layer's input features, gathered in one onnxruntime pass.

For a layer y = W x + b (homec.lowrank.layers) the features x are the im2col patch
features of a Conv (f = c * prod(k) + tap, all input channels; a grouped conv's group j
reads the block of its channels) or the contraction-axis features of a MatMul/Gemm input.
`GramAccumulator` keeps G = E[[x;1][x;1]^T] in float64 over a seeded sample of rows, from
which the factorization takes the mean and the covariance of x (homec.lowrank.factor).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from homec.ir import Graph
from homec.prune.gram import GramAccumulator, feature_rows
from homec.prune.recover import MAX_GRAM_FEATURES, conv_geometry, resolve_pads

from .layers import Layer

__all__ = ["collect", "group_gram", "MAX_GRAM_FEATURES"]


def _features(layer: Layer) -> int:
    if layer.kind == "conv":
        return layer.in_channels * layer.taps
    return layer.in_features


def collect(graph: Graph, layers: Sequence[Layer], samples: Sequence[Mapping[str, np.ndarray]], *,
            seed: int = 0, max_rows_per_sample: int = 4096) -> dict[int, GramAccumulator]:
    """Per layer index, the Gram of its input features over `samples` (layers whose input has
    more than MAX_GRAM_FEATURES features are left out: their Gram would not fit)."""
    from homec.onnx_io import export_with_outputs
    from homec.verify import make_session

    accs: dict[int, GramAccumulator] = {}
    wanted: list[str] = []
    for i, layer in enumerate(layers):
        if _features(layer) > MAX_GRAM_FEATURES:
            continue
        accs[layer.index] = GramAccumulator(_features(layer), max_rows_per_sample=max_rows_per_sample,
                                           seed=seed + i)
        x = _input_of(layer)
        if x.name not in wanted:
            wanted.append(x.name)
    if not accs:
        return accs
    sess = make_session(export_with_outputs(graph, wanted), threads=1, quiet=True)
    inputs = {i.name for i in sess.get_inputs()}
    by_index = {layer.index: layer for layer in layers}
    for sample in samples:
        arrays = dict(zip(wanted, sess.run(wanted, {k: v for k, v in sample.items() if k in inputs})))
        for index, acc in accs.items():
            layer = by_index[index]
            x = np.asarray(arrays[_input_of(layer).name], np.float32)
            if layer.kind == "conv":
                k, strides, dil, pads = resolve_pads(conv_geometry(layer.node, layer.weight.shape), x.shape[2:])
                acc.add_conv(x, k, strides=strides, pads=pads, dilations=dil)
            else:
                acc.add_rows(feature_rows(x, layer.contraction_axis))
    return accs


def _input_of(layer: Layer):
    return layer.node.inputs[1] if layer.kind == "matmul_left" else layer.node.inputs[0]


def group_gram(layer: Layer, gram: np.ndarray, group: int) -> np.ndarray:
    """The augmented Gram of group `group`'s own features (its input channels' patch
    features and the constant), cut from the Gram over all input channels."""
    if layer.groups == 1:
        return gram
    per = layer.in_features
    idx = np.concatenate([np.arange(group * per, (group + 1) * per), [gram.shape[0] - 1]])
    return gram[np.ix_(idx, idx)]
