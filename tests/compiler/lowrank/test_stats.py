"""lowrank.stats: `collect` gathers, per layer, the Gram E[[x;1][x;1]^T] of exactly the
features the layer's matrix multiplies (homec.lowrank.layers): im2col patch features of a
Conv input with its pads resolved as onnxruntime does (auto_pad SAME_* included), rows of a
MatMul/Gemm input along the contraction axis (the last axis of X·W, axis -2 of W·X, axis 0 of
a Gemm with transA). Checked against Grams built directly with numpy from the same samples,
with a row limit large enough that nothing is sampled away. `group_gram` cuts one group's
block out of a grouped Conv's Gram.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest

import homec
from homec.lowrank.layers import find_layers
from homec.lowrank.stats import MAX_GRAM_FEATURES, collect, group_gram
from homec.prune.channels import InferredTypes
from homec.prune.gram import conv_patches

F32 = onnx.TensorProto.FLOAT
ALL_ROWS = 10**6  # max_rows_per_sample that keeps every row of these small inputs


def _normal(rng, *shape) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def _model(nodes, inputs, outputs, inits) -> onnx.ModelProto:
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info(n, F32, s) for n, s in inputs],
                          [oh.make_tensor_value_info(n, F32, None) for n in outputs],
                          [onh.from_array(a, n) for n, a in inits.items()])
    m = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _layers(m: onnx.ModelProto):
    graph = homec.load(m)
    layers, _ = find_layers(graph, InferredTypes(graph), lambda node: True)
    return graph, {layer.name: layer for layer in layers}


def _gram(rows: list[np.ndarray]) -> np.ndarray:
    """(1/n) sum over all rows of [x;1][x;1]^T, in float64."""
    z = np.concatenate(rows).astype(np.float64)
    z = np.column_stack([z, np.ones(len(z))])
    return z.T @ z / len(z)


def _same_pads(spatial, kernel, strides, upper: bool) -> list[int]:
    """ONNX auto_pad SAME_*: output ceil(size / stride), the total padding split evenly, the
    odd one at the end (UPPER) or at the beginning (LOWER)."""
    begin, end = [], []
    for size, k, s in zip(spatial, kernel, strides):
        total = max(0, (-(-size // s) - 1) * s + k - size)
        small, big = total // 2, total - total // 2
        begin.append(small if upper else big)
        end.append(big if upper else small)
    return begin + end


def _samples(rng, shapes: dict[str, list[int]], n: int) -> list[dict[str, np.ndarray]]:
    # an extra entry that is no model input: collect must leave it out of the feeds
    return [{**{name: _normal(rng, *s) for name, s in shapes.items()}, "not_an_input": _normal(rng, 2)}
            for _ in range(n)]


# ---------------------------------------------------------------------------------------
# Conv: patch features with resolved pads
# ---------------------------------------------------------------------------------------


X_CONV = [2, 4, 7, 6]
CONVS = {
    # name: (kernel shape, attributes, explicit (strides, pads, dilations) for numpy)
    "same_upper": ([5, 4, 3, 3], dict(auto_pad="SAME_UPPER", strides=[2, 2]),
                   ([2, 2], _same_pads(X_CONV[2:], (3, 3), (2, 2), True), [1, 1])),
    "same_lower": ([5, 4, 2, 3], dict(auto_pad="SAME_LOWER"),
                   ([1, 1], _same_pads(X_CONV[2:], (2, 3), (1, 1), False), [1, 1])),
    "explicit": ([5, 4, 3, 2], dict(pads=[2, 0, 1, 1], dilations=[2, 1], strides=[1, 2]),
                 ([1, 2], [2, 0, 1, 1], [2, 1])),
    "valid_defaults": ([3, 4, 3, 3], {}, ([1, 1], [0, 0, 0, 0], [1, 1])),
    "grouped": ([6, 2, 3, 3], dict(pads=[1, 1, 1, 1], group=2), ([1, 1], [1, 1, 1, 1], [1, 1])),
}


def _conv_case():
    """x -> Relu -> r, and every Conv of CONVS reading r (an intermediate tensor)."""
    rng = np.random.default_rng(0)
    nodes = [oh.make_node("Relu", ["x"], ["r"], name="relu")]
    inits = {}
    for name, (k_shape, attrs, _) in CONVS.items():
        inits[f"k_{name}"] = _normal(rng, *k_shape)
        nodes.append(oh.make_node("Conv", ["r", f"k_{name}"], [f"y_{name}"], name=name, **attrs))
    m = _model(nodes, [("x", X_CONV)], [f"y_{name}" for name in CONVS], inits)
    return m, _samples(rng, {"x": X_CONV}, 3)


def test_the_same_pads_of_the_test_are_asymmetric():
    """The SAME cases really pad unevenly (else they would not test the resolution)."""
    assert CONVS["same_upper"][2][1] == [1, 0, 1, 1]
    assert CONVS["same_lower"][2][1] == [1, 1, 0, 1]


def test_conv_gram_is_the_gram_of_the_patches():
    m, samples = _conv_case()
    graph, layers = _layers(m)
    assert set(layers) == set(CONVS)
    accs = collect(graph, list(layers.values()), samples, max_rows_per_sample=ALL_ROWS)
    assert set(accs) == {layer.index for layer in layers.values()}
    for name, (k_shape, _, (strides, pads, dilations)) in CONVS.items():
        layer = layers[name]
        rows = [conv_patches(np.maximum(s["x"], 0), k_shape[2:], strides=strides, pads=pads, dilations=dilations)
                for s in samples]
        acc = accs[layer.index]
        assert acc.features == X_CONV[1] * layer.taps  # all input channels, also when grouped
        assert acc.rows == sum(len(r) for r in rows) == len(samples) * layer.rows
        np.testing.assert_allclose(acc.gram, _gram(rows), rtol=1e-5, atol=1e-6, err_msg=name)


def test_group_gram_is_the_gram_of_the_groups_channels():
    m, samples = _conv_case()
    graph, layers = _layers(m)
    layer = layers["grouped"]
    acc = collect(graph, [layer], samples, max_rows_per_sample=ALL_ROWS)[layer.index]
    strides, pads, dilations = CONVS["grouped"][2]
    cg = layer.in_channels // layer.groups
    for j in range(layer.groups):
        rows = [conv_patches(np.maximum(s["x"][:, j * cg:(j + 1) * cg], 0), layer.kernel, strides=strides,
                             pads=pads, dilations=dilations) for s in samples]
        cut = group_gram(layer, acc.gram, j)
        assert cut.shape == (layer.in_features + 1,) * 2
        np.testing.assert_allclose(cut, _gram(rows), rtol=1e-5, atol=1e-6)


def test_group_gram_cuts_the_block_and_the_constant():
    m, _ = _conv_case()
    _, layers = _layers(m)
    layer = dataclasses.replace(layers["grouped"], groups=3, in_channels=6)  # 3 blocks of in_features
    per = layer.in_features
    size = 3 * per + 1
    gram = np.arange(size * size, dtype=np.float64).reshape(size, size)
    for j in range(3):
        keep = list(range(j * per, (j + 1) * per)) + [size - 1]
        np.testing.assert_array_equal(group_gram(layer, gram, j), gram[np.ix_(keep, keep)])
    ungrouped = layers["explicit"]
    assert group_gram(ungrouped, gram, 0) is gram


# ---------------------------------------------------------------------------------------
# MatMul / Gemm: rows along the contraction axis
# ---------------------------------------------------------------------------------------


def test_matrix_layer_grams_take_rows_along_the_contraction_axis():
    rng = np.random.default_rng(1)
    nodes = [oh.make_node("Tanh", ["x"], ["t"], name="tanh"),
             oh.make_node("MatMul", ["t", "w_right"], ["y_right"], name="right"),  # X·W: last axis
             oh.make_node("MatMul", ["w_left", "t"], ["y_left"], name="left"),  # W·X: axis -2
             oh.make_node("Gemm", ["a", "w_gemm_t"], ["y_gemm_t"], name="gemm_t", transA=1),  # axis 0
             oh.make_node("Gemm", ["a2", "w_gemm"], ["y_gemm"], name="gemm", transB=1)]  # axis 1
    inits = {"w_right": _normal(rng, 6, 4), "w_left": _normal(rng, 3, 5),
             "w_gemm_t": _normal(rng, 7, 4), "w_gemm": _normal(rng, 4, 7)}
    shapes = {"x": [2, 5, 6], "a": [7, 3], "a2": [3, 7]}
    m = _model(nodes, list(shapes.items()), ["y_right", "y_left", "y_gemm_t", "y_gemm"], inits)
    samples = _samples(rng, shapes, 3)
    graph, layers = _layers(m)
    accs = collect(graph, list(layers.values()), samples, max_rows_per_sample=ALL_ROWS)
    want = {
        "right": [np.tanh(s["x"]).reshape(-1, 6) for s in samples],
        "left": [np.tanh(s["x"]).transpose(0, 2, 1).reshape(-1, 5) for s in samples],
        "gemm_t": [s["a"].T for s in samples],
        "gemm": [s["a2"] for s in samples],
    }
    assert set(layers) == set(want)
    for name, rows in want.items():
        acc = accs[layers[name].index]
        assert acc.features == layers[name].in_features
        assert acc.rows == sum(len(r) for r in rows)
        np.testing.assert_allclose(acc.gram, _gram(rows), rtol=1e-5, atol=1e-6, err_msg=name)


def test_two_layers_on_one_input_each_get_their_gram():
    rng = np.random.default_rng(2)
    nodes = [oh.make_node("MatMul", ["x", "w1"], ["y1"], name="a"),
             oh.make_node("MatMul", ["x", "w2"], ["y2"], name="b")]
    m = _model(nodes, [("x", [4, 6])], ["y1", "y2"], {"w1": _normal(rng, 6, 3), "w2": _normal(rng, 6, 5)})
    samples = _samples(rng, {"x": [4, 6]}, 2)
    graph, layers = _layers(m)
    accs = collect(graph, list(layers.values()), samples, max_rows_per_sample=ALL_ROWS)
    want = _gram([s["x"] for s in samples])
    for layer in layers.values():
        np.testing.assert_allclose(accs[layer.index].gram, want, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------
# Limits
# ---------------------------------------------------------------------------------------


def test_layers_with_too_many_features_are_left_out():
    """The limit is on the Gram's features: F for a MatMul, C * prod(k) over ALL input
    channels for a Conv (a grouped conv's Gram covers every group)."""
    rng = np.random.default_rng(3)
    big = MAX_GRAM_FEATURES + 1
    channels = 2 * (-(-MAX_GRAM_FEATURES // 18) + 1)  # 2 groups, > MAX features over both
    assert channels * 9 > MAX_GRAM_FEATURES and channels // 2 * 9 <= MAX_GRAM_FEATURES
    nodes = [oh.make_node("MatMul", ["x_at", "w_at"], ["y_at"], name="at_limit"),
             oh.make_node("MatMul", ["x_big", "w_big"], ["y_big"], name="over_limit"),
             oh.make_node("Conv", ["x_conv", "k"], ["y_conv"], name="grouped_over_limit", group=2),
             oh.make_node("MatMul", ["x_small", "w_small"], ["y_small"], name="small")]
    shapes = {"x_at": [2, MAX_GRAM_FEATURES], "x_big": [2, big], "x_conv": [1, channels, 3, 3], "x_small": [3, 4]}
    inits = {"w_at": _normal(rng, MAX_GRAM_FEATURES, 1), "w_big": _normal(rng, big, 1),
             "k": _normal(rng, 2, channels // 2, 3, 3), "w_small": _normal(rng, 4, 2)}
    m = _model(nodes, list(shapes.items()), ["y_at", "y_big", "y_conv", "y_small"], inits)
    graph, layers = _layers(m)
    assert layers["grouped_over_limit"].in_features <= MAX_GRAM_FEATURES  # per group it would fit
    samples = _samples(rng, shapes, 1)
    accs = collect(graph, list(layers.values()), samples, max_rows_per_sample=ALL_ROWS)
    assert set(accs) == {layers["at_limit"].index, layers["small"].index}
    np.testing.assert_allclose(accs[layers["small"].index].gram, _gram([samples[0]["x_small"]]),
                               rtol=1e-5, atol=1e-6)
    # nothing left to collect: no session, no Grams
    over = [layers["over_limit"], layers["grouped_over_limit"]]
    assert collect(graph, over, samples) == {}


def test_rows_are_sampled_down_to_the_limit_per_sample():
    m, samples = _conv_case()
    graph, layers = _layers(m)
    layer = layers["valid_defaults"]
    limit = 7
    assert layer.rows > limit
    acc = collect(graph, [layer], samples, max_rows_per_sample=limit)[layer.index]
    assert acc.rows == limit * len(samples)
    gram = acc.gram
    assert gram[-1, -1] == pytest.approx(1.0)
    assert np.linalg.eigvalsh(gram).min() > -1e-9  # a Gram of real rows
    # the sample is seeded: the same call gives the same Gram, another seed another one
    again = collect(graph, [layer], samples, max_rows_per_sample=limit)[layer.index]
    np.testing.assert_array_equal(again.gram, gram)
    other = collect(graph, [layer], samples, max_rows_per_sample=limit, seed=5)[layer.index]
    assert not np.array_equal(other.gram, gram)
