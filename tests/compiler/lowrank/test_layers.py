"""lowrank.layers: which nodes are layers and what they look like (find_layers), which
decompositions apply (methods_for, full_ranks), what they cost (costs, cheaper — checked
against homec.analysis.cost on the model `emit` produces) and the rewrite itself (emit,
new_bias_elements — checked against the constants emit really adds and, with onnxruntime,
against the layer with its weight replaced by the product of the factors).

The end-to-end behaviour of the pass is tested in tests/passes/test_low_rank.py; here the
factors are random arrays of the right shapes, so nothing depends on homec.lowrank.factor
except the full-rank check of `full_ranks`.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest

import homec
from homec.analysis.cost import count_params, layer_costs
from homec.analysis.shapes import infer_shapes
from homec.lowrank import factor as F
from homec.lowrank.layers import (Layer, Plan, cheaper, costs, emit, find_layers, full_ranks, methods_for,
                                  new_bias_elements)
from homec.prune.channels import InferredTypes
from homec.prune.gram import conv_patches, feature_rows
from homec.verify import make_session

F32 = onnx.TensorProto.FLOAT


# ---------------------------------------------------------------------------------------
# Building models and finding their layers
# ---------------------------------------------------------------------------------------


def _normal(rng, *shape) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def _model(nodes, inputs, outputs, inits=(), *, opsets=()) -> onnx.ModelProto:
    """A ModelProto (opset 17, IR 8); inputs/outputs are (name, shape) float tensors (an
    output shape None is filled in by onnx shape inference), inits {name: array}."""
    graph = oh.make_graph(list(nodes), "g", [oh.make_tensor_value_info(n, F32, s) for n, s in inputs],
                          [oh.make_tensor_value_info(n, F32, s) for n, s in outputs],
                          [onh.from_array(np.asarray(a), n) for n, a in dict(inits).items()])
    m = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17), *opsets])
    m.ir_version = 8
    return onnx.shape_inference.infer_shapes(m)


def _find(m: onnx.ModelProto, selected=lambda node: True):
    """(graph, layers, skipped) of a model, with the types the pass uses (no pinned shapes)."""
    graph = homec.load(m)
    layers, skipped = find_layers(graph, InferredTypes(graph), selected)
    return graph, layers, skipped


def _only_layer(m: onnx.ModelProto):
    graph, layers, skipped = _find(m)
    assert len(layers) == 1 and not skipped, (layers, skipped)
    return graph, layers[0]


def _out_len(size, k, stride=1, begin=0, end=0, dilation=1) -> int:
    """ONNX Conv output length along one axis with explicit pads."""
    return (size + begin + end - dilation * (k - 1) - 1) // stride + 1


def _conv_model(x_shape, k_shape, attrs=None, *, bias=False, seed=0):
    rng = np.random.default_rng(seed)
    inits = {"k": _normal(rng, *k_shape)}
    if bias:
        inits["b"] = _normal(rng, k_shape[0])
    node = oh.make_node("Conv", ["x", "k"] + (["b"] if bias else []), ["y"], name="conv", **(attrs or {}))
    return _model([node], [("x", x_shape)], [("y", None)], inits)


def _matmul_right_model(x_shape, out, *, seed=0):
    rng = np.random.default_rng(seed)
    node = oh.make_node("MatMul", ["x", "w"], ["y"], name="mm")
    return _model([node], [("x", x_shape)], [("y", None)], {"w": _normal(rng, x_shape[-1], out)})


def _matmul_left_model(x_shape, out, *, seed=0):
    rng = np.random.default_rng(seed)
    node = oh.make_node("MatMul", ["w", "x"], ["y"], name="mm")
    return _model([node], [("x", x_shape)], [("y", None)], {"w": _normal(rng, out, x_shape[-2])})


def _gemm_model(m_rows, features, out, *, trans_a=0, trans_b=0, alpha=1.0, beta=1.0, c_shape=None,
                seed=0):
    rng = np.random.default_rng(seed)
    a_shape = [features, m_rows] if trans_a else [m_rows, features]
    inits = {"w": _normal(rng, *((out, features) if trans_b else (features, out)))}
    inputs = ["x", "w"]
    if c_shape is not None:
        inits["c"] = _normal(rng, *c_shape)
        inputs.append("c")
    node = oh.make_node("Gemm", inputs, ["y"], name="gemm", transA=trans_a, transB=trans_b, alpha=alpha,
                        beta=beta)
    return _model([node], [("x", a_shape)], [("y", None)], inits)


# ---------------------------------------------------------------------------------------
# find_layers: MatMul, Gemm, Conv
# ---------------------------------------------------------------------------------------


def _layer_equation_holds(m, layer, seed=0):
    """The layer computes y = W_j x_j + b over its features (conv: per group on the im2col
    rows of its channel block; MatMul/Gemm: rows along the contraction axis), as run by
    onnxruntime — the convention `matrices`, `in_features` and `contraction_axis` state."""
    rng = np.random.default_rng(seed)
    graph = homec.load(m)
    x_value = graph.inputs[0]
    x = _normal(rng, *[d.value for d in x_value.type.shape])
    (y,) = make_session(m).run(None, {x_value.name: x})
    node = layer.node
    if layer.kind == "conv":
        strides = node.attr("strides") or (1,) * len(layer.kernel)
        dil = node.attr("dilations") or (1,) * len(layer.kernel)
        pads = node.attr("pads") or (0,) * (2 * len(layer.kernel))
        cg = layer.in_channels // layer.groups
        got = []
        for j, w in enumerate(layer.matrices()):
            rows = conv_patches(x[:, j * cg:(j + 1) * cg].astype(np.float64), layer.kernel, strides=strides,
                                pads=pads, dilations=dil)
            got.append(rows @ w.T)
        bias = node.inputs[2].const.numpy() if len(node.inputs) > 2 else 0.0
        want = np.moveaxis(y, 1, -1).reshape(-1, layer.out_features)
        np.testing.assert_allclose(np.concatenate(got, axis=1) + bias, want, rtol=1e-4, atol=1e-4)
        return
    (w,) = layer.matrices()
    got = feature_rows(x.astype(np.float64), layer.contraction_axis) @ w.T
    # MatMul: the output axis takes the place of the contraction axis; Gemm: always (M, O)
    want = y if layer.kind == "gemm" else feature_rows(y, layer.contraction_axis)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("x_shape", [[5, 6], [2, 5, 6], [3, 2, 4, 6]])
def test_matmul_with_a_constant_right_operand(x_shape):
    m = _matmul_right_model(x_shape, 4)
    graph, layer = _only_layer(m)
    w = onh.to_array(m.graph.initializer[0])
    assert (layer.kind, layer.index, layer.node is graph.nodes[0]) == ("matmul_right", 0, True)
    assert (layer.out_features, layer.in_features, layer.groups, layer.kernel) == (4, 6, 1, ())
    assert layer.rows == math.prod(x_shape[:-1]) and layer.contraction_axis == -1
    np.testing.assert_array_equal(layer.weight, w)
    assert (layer.macs(), layer.params()) == (layer.rows * 4 * 6, 24)
    _layer_equation_holds(m, layer)


@pytest.mark.parametrize("x_shape", [[6, 7], [2, 6, 7], [3, 2, 6, 5]])
def test_matmul_with_a_constant_left_operand(x_shape):
    m = _matmul_left_model(x_shape, 4)
    _, layer = _only_layer(m)
    assert (layer.kind, layer.out_features, layer.in_features) == ("matmul_left", 4, 6)
    # W·X contracts the rows of X: every other position of X is one row of the layer
    assert layer.rows == math.prod(x_shape[:-2]) * x_shape[-1] and layer.contraction_axis == -2
    np.testing.assert_array_equal(layer.matrices()[0], layer.weight)
    _layer_equation_holds(m, layer)


@pytest.mark.parametrize("trans_a", [0, 1])
@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_with_a_constant_weight(trans_a, trans_b):
    m = _gemm_model(5, 6, 4, trans_a=trans_a, trans_b=trans_b, alpha=0.5)
    _, layer = _only_layer(m)
    assert (layer.kind, layer.out_features, layer.in_features, layer.rows) == ("gemm", 4, 6, 5)
    assert layer.contraction_axis == (0 if trans_a else 1)
    w = layer.weight.astype(np.float64)
    np.testing.assert_allclose(layer.matrices()[0], 0.5 * (w if trans_b else w.T))
    _layer_equation_holds(m, layer)


CONV_GEOMETRIES = {
    # name: (x shape, kernel shape, attributes)
    "1d_stride_pads": ([2, 4, 11], [6, 4, 3], dict(strides=[2], pads=[1, 2])),
    "2d_stride_pads": ([2, 4, 9, 7], [6, 4, 3, 2], dict(strides=[2, 2], pads=[1, 0, 1, 1])),
    "2d_dilated": ([1, 3, 8, 9], [5, 3, 3, 3], dict(dilations=[2, 1], pads=[2, 1, 2, 1])),
    "2d_grouped": ([1, 4, 6, 6], [8, 2, 3, 3], dict(pads=[1, 1, 1, 1], group=2)),
    "3d": ([1, 2, 4, 5, 6], [3, 2, 2, 3, 3], dict(strides=[1, 2, 1])),
}


@pytest.mark.parametrize("case", list(CONV_GEOMETRIES))
def test_conv_layer_geometry(case):
    x_shape, k_shape, attrs = CONV_GEOMETRIES[case]
    m = _conv_model(x_shape, k_shape, attrs, bias=True)
    _, layer = _only_layer(m)
    nd = len(k_shape) - 2
    g = attrs.get("group", 1)
    strides = attrs.get("strides", [1] * nd)
    dil = attrs.get("dilations", [1] * nd)
    pads = attrs.get("pads", [0] * 2 * nd)
    out = [_out_len(x_shape[2 + i], k_shape[2 + i], strides[i], pads[i], pads[nd + i], dil[i]) for i in range(nd)]
    assert (layer.kind, layer.groups, layer.kernel) == ("conv", g, tuple(k_shape[2:]))
    assert (layer.out_features, layer.in_channels) == (k_shape[0], x_shape[1])
    assert layer.in_features == k_shape[1] * math.prod(k_shape[2:])  # per group
    assert layer.rows == x_shape[0] * math.prod(out)
    assert layer.in_rows == x_shape[0] * math.prod(x_shape[2:])
    # the vertical factor of spatial_svd: output height, input width (2-D kernels only)
    assert layer.mid_rows == (x_shape[0] * out[0] * x_shape[3] if nd == 2 else None)
    assert layer.macs() == layer.rows * k_shape[0] * layer.in_features
    assert layer.params() == math.prod(k_shape)
    _layer_equation_holds(m, layer)


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
def test_conv_rows_with_auto_pad(auto_pad):
    x_shape, stride = [1, 3, 9, 8], 2
    _, layer = _only_layer(_conv_model(x_shape, [4, 3, 3, 3], dict(auto_pad=auto_pad, strides=[stride] * 2)))
    if auto_pad == "VALID":
        out = [_out_len(s, 3, stride) for s in x_shape[2:]]
    else:
        out = [-(-s // stride) for s in x_shape[2:]]
    assert layer.rows == math.prod(out) and layer.mid_rows == out[0] * x_shape[3]


def test_layers_come_in_graph_order_with_their_node_positions():
    rng = np.random.default_rng(1)
    nodes = [oh.make_node("Relu", ["x"], ["r"]),
             oh.make_node("Conv", ["r", "k"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             oh.make_node("Flatten", ["c"], ["f"]),
             oh.make_node("Relu", ["f"], ["rf"]),
             oh.make_node("Gemm", ["rf", "wg"], ["g"], name="gemm"),
             oh.make_node("MatMul", ["g", "wm"], ["y"], name="mm")]
    m = _model(nodes, [("x", [2, 3, 4, 4])], [("y", [2, 5])],
               {"k": _normal(rng, 4, 3, 3, 3), "wg": _normal(rng, 64, 6), "wm": _normal(rng, 6, 5)})
    graph, layers, skipped = _find(m)
    assert not skipped
    assert [(layer.index, layer.name, layer.kind) for layer in layers] == \
        [(1, "conv", "conv"), (4, "gemm", "gemm"), (5, "mm", "matmul_right")]
    assert all(graph.nodes[layer.index] is layer.node for layer in layers)


SKIPPED = {
    "depthwise": (lambda rng: _model([oh.make_node("Conv", ["x", "k"], ["y"], name="n", group=4)],
                                     [("x", [1, 4, 5, 5])], [("y", None)], {"k": _normal(rng, 4, 1, 3, 3)}),
                  "Conv", "depthwise"),
    "depthwise_multiplier": (lambda rng: _model([oh.make_node("Conv", ["x", "k"], ["y"], name="n", group=4)],
                                                [("x", [1, 4, 5, 5])], [("y", None)],
                                                {"k": _normal(rng, 8, 1, 3, 3)}),
                             "Conv", "depthwise"),
    "batched_right": (lambda rng: _model([oh.make_node("MatMul", ["x", "w"], ["y"], name="n")],
                                         [("x", [2, 5, 6])], [("y", None)], {"w": _normal(rng, 2, 6, 4)}),
                      "MatMul", "batched"),
    "batched_left": (lambda rng: _model([oh.make_node("MatMul", ["w", "x"], ["y"], name="n")],
                                        [("x", [2, 6, 5])], [("y", None)], {"w": _normal(rng, 2, 4, 6)}),
                     "MatMul", "batched"),
    "gemm_constant_left": (lambda rng: _model([oh.make_node("Gemm", ["w", "x"], ["y"], name="n")],
                                              [("x", [6, 3])], [("y", None)], {"w": _normal(rng, 4, 6)}),
                           "Gemm", "constant left operand"),
    "shared_weight": (lambda rng: _model([oh.make_node("Conv", ["x", "k"], ["y"], name="n"),
                                          oh.make_node("Conv", ["x", "k"], ["y2"], name="n2")],
                                         [("x", [1, 2, 5, 5])], [("y", None), ("y2", None)],
                                         {"k": _normal(rng, 3, 2, 3, 3)}),
                      "Conv", "weight shared with another node"),
    "integer_kernel": (lambda rng: _model([oh.make_node("Conv", ["x", "k"], ["y"], name="n")],
                                          [("x", [1, 2, 5, 5])], [("y", None)],
                                          {"k": rng.integers(-3, 3, (3, 2, 3, 3)).astype(np.int32)}),
                       "Conv", "int32"),
}


@pytest.mark.parametrize("case", list(SKIPPED))
def test_candidates_that_are_skipped_with_a_reason(case):
    build, op, reason = SKIPPED[case]
    _, layers, skipped = _find(build(np.random.default_rng(2)))
    assert layers == []
    assert [(s["node"], s["op"]) for s in skipped][:1] == [("n", op)]  # (a shared weight: both readers)
    assert reason in skipped[0]["reason"]


IGNORED = {  # name: rng -> (nodes, initializers)
    "matmul_two_computed": lambda rng: ([oh.make_node("MatMul", ["x", "z"], ["y"])], {}),
    "gemm_two_computed": lambda rng: ([oh.make_node("Gemm", ["x", "z"], ["y"])], {}),
    "conv_computed_kernel": lambda rng: ([oh.make_node("Conv", ["x4", "z4"], ["y"])], {}),
    "matmul_two_constants": lambda rng: ([oh.make_node("MatMul", ["u", "w"], ["y0"]),
                                          oh.make_node("Add", ["y0", "x"], ["y"])],
                                         {"u": _normal(rng, 4, 4), "w": _normal(rng, 4, 4)}),
    "matmul_vector_weight": lambda rng: ([oh.make_node("MatMul", ["x", "v"], ["y0"]),
                                          oh.make_node("Add", ["y0", "x"], ["y"])], {"v": _normal(rng, 4)}),
    "custom_domain": lambda rng: ([oh.make_node("MatMul", ["x", "w"], ["y"], domain="com.example")],
                                  {"w": _normal(rng, 4, 4)}),
}


@pytest.mark.parametrize("case", list(IGNORED))
def test_nodes_that_are_not_candidates_are_ignored_silently(case):
    nodes, inits = IGNORED[case](np.random.default_rng(3))
    inputs = [("x", [4, 4]), ("z", [4, 4]), ("x4", [1, 2, 5, 5]), ("z4", [3, 2, 3, 3])]
    m = _model(nodes, inputs, [("y", None)], inits, opsets=[oh.make_opsetid("com.example", 1)])
    _, layers, skipped = _find(m)
    assert (layers, skipped) == ([], [])


def test_selector_is_honoured_and_sees_only_candidate_ops():
    rng = np.random.default_rng(4)
    nodes = [oh.make_node("MatMul", ["x", "w1"], ["a"], name="first"),
             oh.make_node("Relu", ["a"], ["r"], name="relu"),
             oh.make_node("MatMul", ["r", "w2"], ["y"], name="second"),
             oh.make_node("Conv", ["x4", "dw"], ["y4"], name="depthwise", group=2)]
    m = _model(nodes, [("x", [3, 6]), ("x4", [1, 2, 5, 5])], [("y", None), ("y4", None)],
               {"w1": _normal(rng, 6, 6), "w2": _normal(rng, 6, 4), "dw": _normal(rng, 2, 1, 3, 3)})
    asked = []

    def selected(node):
        asked.append(node.name)
        return node.name == "second"

    _, layers, skipped = _find(m, selected)
    assert asked == ["first", "second", "depthwise"]
    assert [(layer.name, layer.index) for layer in layers] == [("second", 2)]
    assert skipped == []  # an unselected depthwise conv is not reported either
    _, layers, skipped = _find(m, lambda node: node.name == "depthwise")
    assert layers == [] and [s["node"] for s in skipped] == ["depthwise"]


@pytest.mark.parametrize("build", [
    lambda: _matmul_right_model(["n", 5, 6], 4),
    lambda: _matmul_left_model(["n", 6, 5], 4),
    lambda: _gemm_model("m", 6, 4),
    lambda: _conv_model(["n", 3, 8, 8], [4, 3, 3, 3]),
    lambda: _conv_model([1, 3, "h", "w"], [4, 3, 3, 3]),
])
def test_unknown_shapes_leave_rows_unknown(build):
    _, layer = _only_layer(build())
    assert (layer.rows, layer.in_rows, layer.mid_rows, layer.macs()) == (None, None, None, None)
    for method in methods_for(layer):
        plan = Plan(method, (1, 1) if method == "tucker2" else (1,))
        assert costs(layer, plan).macs is None
        # without MACs, the parameters alone decide
        assert cheaper(layer, plan) == (costs(layer, plan).params < layer.params())


# ---------------------------------------------------------------------------------------
# methods_for, full_ranks
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel, methods", [
    ((3, 3), ("channel_svd", "spatial_svd", "tucker2")),
    ((3, 2), ("channel_svd", "spatial_svd", "tucker2")),
    ((3, 1), ("channel_svd", "tucker2")),
    ((1, 3), ("channel_svd", "tucker2")),
    ((1, 1), ("channel_svd",)),
    ((3,), ("channel_svd", "tucker2")),
    ((1,), ("channel_svd",)),
    ((2, 2, 2), ("channel_svd", "tucker2")),
])
def test_methods_for_a_conv_kernel(kernel, methods):
    x_shape = [1, 2] + [6] * len(kernel)
    _, layer = _only_layer(_conv_model(x_shape, [3, 2, *kernel]))
    assert methods_for(layer) == methods


def test_methods_for_matrices_is_the_svd():
    for m in (_matmul_right_model([3, 4], 5), _matmul_left_model([4, 3], 5), _gemm_model(3, 4, 5)):
        assert methods_for(_only_layer(m)[1]) == ("svd",)


def _reproduces(layer, method: str, ranks) -> bool:
    """Whether homec.lowrank.factor at `ranks` reproduces every group's matrix."""
    for w in layer.matrices():
        if method == "svd":
            f = F.matrix_svd(w, ranks[0])
            shape = w.shape
        else:
            kernel = w.reshape((w.shape[0], -1) + layer.kernel)
            shape = kernel.shape
            f = {"channel_svd": lambda: F.channel_svd(kernel, ranks[0]),
                 "spatial_svd": lambda: F.spatial_svd(kernel, ranks[0]),
                 "tucker2": lambda: F.tucker2(kernel, *ranks)}[method]()
        if not np.allclose(F.factored_matrix(f, method, shape), w, atol=1e-6 * np.abs(w).max()):
            return False
    return True


@pytest.mark.parametrize("build", [
    lambda: _matmul_right_model([3, 7], 4),
    lambda: _gemm_model(3, 4, 7, trans_b=1),
    lambda: _conv_model([1, 4, 6, 6], [6, 4, 3, 2]),
    lambda: _conv_model([1, 8, 6, 6], [2, 8, 3, 3]),  # few outputs
    lambda: _conv_model([1, 2, 6, 6], [9, 2, 3, 3]),  # few input channels
    lambda: _conv_model([1, 4, 6, 6], [8, 2, 3, 3], dict(group=2)),
    lambda: _conv_model([1, 6, 9], [4, 6, 3]),
])
def test_full_ranks_reproduce_the_layer_and_one_less_does_not(build):
    """full_ranks is the smallest exact rank for random (generic) weights: it is the rank
    of the unfolding each method truncates."""
    _, layer = _only_layer(build())
    for method in methods_for(layer):
        full = full_ranks(layer, method)
        assert _reproduces(layer, method, full), method
        for mode in range(len(full)):
            less = tuple(r - (i == mode) for i, r in enumerate(full))
            assert not _reproduces(layer, method, less), (method, less)


def test_full_ranks_of_an_unknown_method_raise():
    _, layer = _only_layer(_conv_model([1, 2, 5, 5], [3, 2, 3, 3]))
    with pytest.raises(ValueError, match="unknown method"):
        full_ranks(layer, "cp")
    with pytest.raises(ValueError, match="unknown method"):
        costs(layer, Plan("cp", (1,)))


# ---------------------------------------------------------------------------------------
# Random factors and what they compute
# ---------------------------------------------------------------------------------------


def _ranks(method: str) -> tuple[int, ...]:
    return (2, 3) if method == "tucker2" else (2,)


def _random_factors(layer, plan: Plan, rng) -> list[tuple[np.ndarray, ...]]:
    """Per group, factors of the shapes `emit` reads (homec.lowrank.factor's convention)."""
    og, cg = layer.out_features // layer.groups, layer.in_channels // layer.groups
    shapes = {
        "svd": lambda r: [(r, layer.in_features), (layer.out_features, r)],
        "channel_svd": lambda r: [(r, cg) + layer.kernel, (og, r) + (1,) * len(layer.kernel)],
        "spatial_svd": lambda r: [(r, cg, layer.kernel[0], 1), (og, r, 1, layer.kernel[1])],
        "tucker2": lambda r1, r2: [(r1, cg) + (1,) * len(layer.kernel), (r2, r1) + layer.kernel,
                                   (og, r2) + (1,) * len(layer.kernel)],
    }[plan.method](*plan.ranks)
    return [tuple(rng.standard_normal(s) for s in shapes) for _ in range(layer.groups)]


def _product(layer, plan: Plan, weights) -> np.ndarray:
    """The layer's weight, in its stored layout, that the factors multiply out to."""
    if plan.method == "svd":
        ((b, a),) = weights
        w = a @ b  # (O, F)
        if layer.kind == "matmul_right":
            return w.T
        if layer.kind == "matmul_left":
            return w
        w = w / float(layer.node.attr("alpha", 1.0))
        return w if layer.node.attr("transB", 0) else w.T
    og, cg, taps = layer.out_features // layer.groups, layer.in_channels // layer.groups, layer.taps
    kernels = []
    for factors in weights:
        if plan.method == "channel_svd":
            first, last = factors
            k = last.reshape(og, -1) @ first.reshape(first.shape[0], -1)
        elif plan.method == "spatial_svd":
            vertical, horizontal = factors  # (r, c, kh, 1), (o, r, 1, kw)
            k = np.einsum("rci,orj->ocij", vertical[..., 0], horizontal[:, :, 0, :])
        else:
            first, core, last = factors
            k = np.einsum("ob,bat,ac->oct", last.reshape(og, -1), core.reshape(core.shape[0], -1, taps),
                          first.reshape(first.shape[0], cg))
        kernels.append(k.reshape((og, cg) + layer.kernel))
    return np.concatenate(kernels, axis=0)


def _with_initializer(m: onnx.ModelProto, name: str, array: np.ndarray) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(m)
    for t in out.graph.initializer:
        if t.name == name:
            t.CopyFrom(onh.from_array(array.astype(onh.to_array(t).dtype), name))
            return out
    raise KeyError(name)


def _run(m: onnx.ModelProto, feeds) -> list[np.ndarray]:
    return make_session(m).run(None, feeds)


def _feeds(m: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    inits = {t.name for t in m.graph.initializer}
    return {i.name: _normal(rng, *[d.dim_value for d in i.type.tensor_type.shape.dim])
            for i in m.graph.input if i.name not in inits}


def _static_cost(graph) -> tuple[int, int]:
    """(MACs, parameter elements) of a graph as homec.analysis.cost counts them."""
    lcs = layer_costs(graph, infer_shapes(graph))
    assert all(lc.macs is not None for lc in lcs)
    return sum(lc.macs for lc in lcs), count_params(graph).count


def _close(got, want, tol=2e-4):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    assert np.linalg.norm(got - want) <= tol * max(np.linalg.norm(want), 1e-12), \
        np.linalg.norm(got - want) / np.linalg.norm(want)


# ---------------------------------------------------------------------------------------
# costs and cheaper agree with homec.analysis.cost on the emitted model
# ---------------------------------------------------------------------------------------


COST_CASES = {
    "conv_stride2_pads": lambda: _conv_model([1, 4, 9, 9], [6, 4, 3, 3], dict(strides=[2, 2], pads=[1, 1, 1, 1]),
                                             bias=True),
    "conv_same_upper_stride2": lambda: _conv_model([1, 4, 8, 7], [6, 4, 3, 3],
                                                   dict(auto_pad="SAME_UPPER", strides=[2, 2])),
    "conv_same_lower": lambda: _conv_model([2, 3, 6, 5], [5, 3, 3, 3], dict(auto_pad="SAME_LOWER")),
    "conv_valid": lambda: _conv_model([1, 3, 7, 6], [5, 3, 3, 2], dict(auto_pad="VALID", strides=[1, 2])),
    "conv_3x2_mixed": lambda: _conv_model([1, 4, 8, 9], [6, 4, 3, 2],
                                          dict(strides=[1, 2], dilations=[2, 1], pads=[2, 0, 1, 1]), bias=True),
    "conv_groups": lambda: _conv_model([1, 4, 7, 7], [8, 2, 3, 3], dict(pads=[1, 1, 1, 1], group=2)),
    "conv_groups_stride2": lambda: _conv_model([2, 6, 9, 8], [9, 2, 3, 3], dict(strides=[2, 2], group=3)),
    "conv1d": lambda: _conv_model([2, 4, 11], [6, 4, 3], dict(strides=[2], pads=[1, 2]), bias=True),
    "conv3d": lambda: _conv_model([1, 2, 4, 5, 6], [4, 2, 2, 3, 3], dict(pads=[0, 1, 1, 1, 1, 0])),
    "matmul_right_2d": lambda: _matmul_right_model([5, 6], 7),
    "matmul_right_3d": lambda: _matmul_right_model([2, 5, 6], 7),
    "matmul_left_2d": lambda: _matmul_left_model([6, 5], 7),
    "matmul_left_3d": lambda: _matmul_left_model([3, 6, 5], 7),
    "gemm": lambda: _gemm_model(5, 6, 7, c_shape=[7]),
    "gemm_trans": lambda: _gemm_model(5, 6, 7, trans_a=1, trans_b=1, alpha=2.0),
}


@pytest.mark.parametrize("case", list(COST_CASES))
def test_costs_are_what_the_cost_analysis_counts_on_the_emitted_model(case):
    rng = np.random.default_rng(5)
    m = COST_CASES[case]()
    before_graph, layer = _only_layer(m)
    before = _static_cost(before_graph)
    assert before[0] == layer.macs()
    assert before[1] == layer.params() + sum(t.dims[0] for t in m.graph.initializer if len(t.dims) == 1)
    for method in methods_for(layer):
        graph, layer = _only_layer(m)
        plan = Plan(method, _ranks(method))
        cost = costs(layer, plan)
        emit(graph, layer, plan, _random_factors(layer, plan, rng), None)
        graph.verify()
        macs, params = _static_cost(graph)
        assert cost.macs == macs, method
        assert cost.params - layer.params() == params - before[1], method  # biases: the same on both sides


def test_cheaper_needs_fewer_parameters_and_fewer_macs():
    # A square 4x4 MatMul: rank 1 halves both, rank 2 has as many parameters (not cheaper).
    _, layer = _only_layer(_matmul_right_model([3, 4], 4))
    assert cheaper(layer, Plan("svd", (1,)))
    assert costs(layer, Plan("svd", (2,))).params == layer.params()
    assert not cheaper(layer, Plan("svd", (2,)))

    # tucker2 on a 3x3 conv: fewer parameters, but its first 1x1 factor runs at the input
    # resolution; MACs decide as the input grows relative to the output.
    _, conv = _only_layer(_conv_model([1, 4, 5, 5], [4, 4, 3, 3]))
    plan = Plan("tucker2", (2, 2))
    assert costs(conv, plan).params < conv.params()
    rows = 2
    equal = None
    for in_rows in range(1, 200):
        c = costs(dataclasses.replace(conv, rows=rows, in_rows=in_rows), plan)
        if c.macs == rows * conv.out_features * conv.in_features:
            equal = in_rows
    assert equal is not None, "the test geometry needs an exact tie"
    at = lambda in_rows: cheaper(dataclasses.replace(conv, rows=rows, in_rows=in_rows), plan)  # noqa: E731
    assert at(equal - 1) and not at(equal) and not at(equal + 1)
    # unknown MACs: the parameters alone decide
    assert at(None)
    assert not cheaper(dataclasses.replace(conv, rows=None), Plan("tucker2", (4, 4)))


# ---------------------------------------------------------------------------------------
# emit: the graph around the rewrite
# ---------------------------------------------------------------------------------------


NEW_NODES = {"svd": 2, "channel_svd": 2, "spatial_svd": 2, "tucker2": 3}


@pytest.mark.parametrize("output_is_graph_output", [True, False])
@pytest.mark.parametrize("method", ["channel_svd", "spatial_svd", "tucker2"])
def test_emit_conv_keeps_the_output_name_and_replaces_the_node(method, output_is_graph_output):
    rng = np.random.default_rng(6)
    nodes = [oh.make_node("Conv", ["x", "k", "b"], ["c"], name="conv", pads=[1, 1, 1, 1], strides=[2, 1])]
    outputs = [("c", None)]
    if not output_is_graph_output:
        nodes.append(oh.make_node("Relu", ["c"], ["y"], name="relu"))
        outputs = [("y", None)]
    m = _model(nodes, [("x", [1, 3, 7, 6])], outputs, {"k": _normal(rng, 5, 3, 3, 3), "b": _normal(rng, 5)})
    graph, layer = _only_layer(m)
    plan = Plan(method, _ranks(method))
    weights = _random_factors(layer, plan, rng)
    new = emit(graph, layer, plan, weights, None)
    graph.verify()
    assert len(new) == NEW_NODES[method] and all(n.op_type == "Conv" for n in new)
    assert layer.node not in graph.nodes
    assert [n for n in graph.nodes if n.op_type == "Conv"] == new
    assert new[-1].outputs[0].name == "c"
    assert [o.name for o in graph.outputs] == [o[0] for o in outputs]
    if not output_is_graph_output:
        assert graph.nodes[-1].inputs[0] is new[-1].outputs[0]
    assert "k" not in graph.initializers  # the old kernel is gone, and no constant is left unread
    assert all(v.uses for v in graph.initializers.values())
    out = graph.to_onnx()
    onnx.checker.check_model(out, full_check=True)
    feeds = _feeds(m)
    _close(_run(out, feeds)[0], _run(_with_initializer(m, "k", _product(layer, plan, weights)), feeds)[0])


@pytest.mark.parametrize("kind", ["matmul_right", "matmul_left", "gemm"])
def test_emit_matrix_layers_keep_the_output_name(kind):
    rng = np.random.default_rng(7)
    m = {"matmul_right": lambda: _matmul_right_model([2, 5, 6], 4),
         "matmul_left": lambda: _matmul_left_model([2, 6, 5], 4),
         "gemm": lambda: _gemm_model(5, 6, 4, trans_a=1, alpha=0.5, beta=2.0, c_shape=[4])}[kind]()
    graph, layer = _only_layer(m)
    plan = Plan("svd", (2,))
    weights = _random_factors(layer, plan, rng)
    new = emit(graph, layer, plan, weights, None)
    graph.verify()
    assert [n.op_type for n in graph.nodes] == [layer.node.op_type] * 2 and graph.nodes == new
    assert new[-1].outputs[0].name == "y" and [o.name for o in graph.outputs] == ["y"]
    assert "w" not in graph.initializers
    assert ("c" in graph.initializers) == (kind == "gemm")  # C is kept as it was (no correction)
    out = graph.to_onnx()
    onnx.checker.check_model(out, full_check=True)
    feeds = _feeds(m)
    _close(_run(out, feeds)[0], _run(_with_initializer(m, "w", _product(layer, plan, weights)), feeds)[0])


def test_emit_keeps_a_weight_that_another_node_reads():
    rng = np.random.default_rng(8)
    nodes = [oh.make_node("MatMul", ["x", "w"], ["y1"], name="a"),
             oh.make_node("MatMul", ["z", "w"], ["y2"], name="b")]
    m = _model(nodes, [("x", [3, 6]), ("z", [4, 6])], [("y1", None), ("y2", None)], {"w": _normal(rng, 6, 6)})
    graph, found, _ = _find(m)
    assert found == []  # find_layers refuses a shared weight; emit must still leave it intact
    w = graph.initializers["w"].const.numpy()
    layers = [Layer(i, n, "matmul_right", w, 6, 6, rows=r) for i, (n, r) in enumerate(zip(graph.nodes, (3, 4)))]
    plan = Plan("svd", (2,))
    emit(graph, layers[0], plan, _random_factors(layers[0], plan, rng), None)
    graph.verify()
    assert "w" in graph.initializers and graph.initializers["w"].uses[0][0] is layers[1].node
    emit(graph, layers[1], plan, _random_factors(layers[1], plan, rng), None)
    graph.verify()
    assert "w" not in graph.initializers  # now unused
    assert [o.name for o in graph.outputs] == ["y1", "y2"] and len(graph.nodes) == 4


def test_emit_conv_without_a_correction_reuses_its_bias():
    rng = np.random.default_rng(11)
    nodes = [oh.make_node("Conv", ["x", "k1", "b"], ["y1"], name="c1", pads=[1, 1, 1, 1]),
             oh.make_node("Conv", ["x", "k2", "b"], ["y2"], name="c2")]
    m = _model(nodes, [("x", [1, 3, 6, 6])], [("y1", None), ("y2", None)],
               {"k1": _normal(rng, 4, 3, 3, 3), "k2": _normal(rng, 4, 3, 1, 1), "b": _normal(rng, 4)})
    graph, layers, _ = _find(m)
    before = count_params(graph).count
    plan = Plan("tucker2", (2, 2))
    new = emit(graph, layers[0], plan, _random_factors(layers[0], plan, rng), None)
    assert new[-1].inputs[2] is graph.initializers["b"]
    assert count_params(graph).count - before == costs(layers[0], plan).params - layers[0].params()


# ---------------------------------------------------------------------------------------
# new_bias_elements and the bias correction
# ---------------------------------------------------------------------------------------


def _bias_case_conv(bias: bool):
    def build(rng):
        m = _conv_model([1, 3, 6, 6], [5, 3, 3, 3], dict(pads=[1, 1, 1, 1]), bias=bias, seed=int(rng.integers(99)))
        return m, "k", (1, -1, 1, 1)
    return build


def _bias_case_gemm(c_shape, *, beta=1.0, computed=False):
    def build(rng):
        m = _gemm_model(3, 6, 4, trans_b=1, alpha=1.5, beta=beta, c_shape=None if computed else c_shape,
                        seed=int(rng.integers(99)))
        if computed:  # C is a graph input
            m.graph.node[0].input.append("c")
            m.graph.input.append(oh.make_tensor_value_info("c", F32, c_shape))
        return m, "w", (1, -1)
    return build


def _bias_case_matmul(add: str):
    """A MatMul X·W (or W·X for "left_*") followed by the Add `add` describes."""
    def build(rng):
        left = add.startswith("left")
        x_shape = [2, 6, 3] if left else [2, 3, 6]
        w = _normal(rng, 4, 6) if left else _normal(rng, 6, 4)
        nodes = [oh.make_node("MatMul", ["w", "x"] if left else ["x", "w"], ["mm"], name="mm")]
        inits = {"w": w}
        outputs = [("y", None)]
        bias_shape = {"right_o": [4], "right_1o": [1, 4], "right_full": [3, 4], "right_shared": [4],
                      "right_mm_output": [4], "left_o1": [4, 1], "left_o": [3], "right_first": [4]}.get(add)
        if bias_shape is None:  # no Add after the MatMul
            nodes[0].output[0] = "y"
        else:
            inits["bias"] = _normal(rng, *bias_shape)
            operands = ["bias", "mm"] if add == "right_first" else ["mm", "bias"]
            nodes.append(oh.make_node("Add", operands, ["y"], name="bias_add"))
        if add == "right_shared":  # the bias constant is read by another node too: not foldable
            nodes.append(oh.make_node("Add", ["x", "bias"], ["y2"], name="other"))
            x_shape = [2, 3, 4]
            inits["w"] = _normal(rng, 4, 4)
            outputs.append(("y2", None))
        if add == "right_mm_output":  # the MatMul output is a graph output as well
            outputs.append(("mm", None))
        m = _model(nodes, [("x", x_shape)], outputs, inits)
        return m, "w", (-1, 1) if left else (-1,)
    return build


def _bias_case_shared(build_layer_case, bias_name: str):
    """A case whose bias constant (Conv B, Gemm C) is read by another node too."""
    def build(rng):
        m, weight_name, delta_shape = build_layer_case(rng)
        shape = next(list(t.dims) for t in m.graph.initializer if t.name == bias_name)
        m.graph.node.append(oh.make_node("Add", ["z", bias_name], ["y2"], name="other"))
        m.graph.input.append(oh.make_tensor_value_info("z", F32, shape))
        m.graph.output.append(oh.make_tensor_value_info("y2", F32, shape))
        return m, weight_name, delta_shape
    return build


BIAS_CASES = {
    "conv_with_bias": _bias_case_conv(True),
    "conv_without_bias": _bias_case_conv(False),
    "gemm_no_c": _bias_case_gemm(None),
    "gemm_c_scalar": _bias_case_gemm([1], beta=2.0),
    "gemm_c_vector": _bias_case_gemm([4], beta=0.5),
    "gemm_c_row": _bias_case_gemm([1, 4]),
    "gemm_c_column": _bias_case_gemm([3, 1]),
    "gemm_c_matrix": _bias_case_gemm([3, 4], beta=3.0),
    "gemm_c_computed": _bias_case_gemm([4], beta=2.0, computed=True),
    "conv_bias_shared": _bias_case_shared(_bias_case_conv(True), "b"),
    "gemm_c_shared": _bias_case_shared(_bias_case_gemm([4], beta=2.0), "c"),
    "matmul_no_add": _bias_case_matmul("none"),
    "matmul_add_o": _bias_case_matmul("right_o"),
    "matmul_add_bias_first": _bias_case_matmul("right_first"),
    "matmul_add_1o": _bias_case_matmul("right_1o"),
    "matmul_add_full": _bias_case_matmul("right_full"),
    "matmul_add_shared": _bias_case_matmul("right_shared"),
    "matmul_output_also_graph_output": _bias_case_matmul("right_mm_output"),
    "matmul_left_no_add": _bias_case_matmul("left_none"),
    "matmul_left_add_o1": _bias_case_matmul("left_o1"),
    "matmul_left_add_o": _bias_case_matmul("left_o"),
}


def _bias_cases():
    return list(BIAS_CASES)


@pytest.mark.parametrize("case", _bias_cases())
def test_new_bias_elements_are_what_emit_adds_for_a_bias_correction(case):
    """With a bias correction, emit adds exactly new_bias_elements constant elements besides
    the factors (a correction folded into an existing bias adds none), the graph stays valid,
    and the model computes the layer with the factors' product as weight plus the correction
    on the layer's output; without one it adds nothing besides the factors."""
    rng = np.random.default_rng(9)
    m, weight_name, delta_shape = BIAS_CASES[case](rng)
    before_graph, layer = _only_layer(m)
    params_before = count_params(before_graph).count
    plan = Plan("channel_svd" if layer.kind == "conv" else "svd", (2,))
    weights = _random_factors(layer, plan, rng)
    delta = rng.uniform(0.5, 1.5, layer.out_features)
    feeds = _feeds(m, seed=1)
    reference = _run(_with_initializer(m, weight_name, _product(layer, plan, weights)), feeds)
    for bias_delta in (delta, None, np.zeros(layer.out_features)):
        graph, layer = _only_layer(m)
        expected_growth = costs(layer, plan).params - layer.params()
        if bias_delta is not None and np.any(bias_delta):
            expected_growth += new_bias_elements(layer)
        new = emit(graph, layer, plan, weights, bias_delta)
        graph.verify()
        extra_add = [n for n in new if n.op_type == "Add"]
        assert len(new) == NEW_NODES[plan.method] + len(extra_add) and len(extra_add) <= 1
        assert count_params(graph).count - params_before == expected_growth, bias_delta
        out = graph.to_onnx()
        onnx.checker.check_model(out, full_check=True)
        assert [o.name for o in out.graph.output] == [o.name for o in m.graph.output]
        shift = 0.0 if bias_delta is None else bias_delta.reshape(delta_shape)
        for output, got, want in zip(m.graph.output, _run(out, feeds), reference):
            # the layer's output (and its bias Add's) carry the correction, others do not
            _close(got, want + shift if output.name in ("y", "mm") else want)


BIAS_ELEMENTS = {  # case: constant elements a bias correction adds
    "conv_with_bias": 0, "conv_without_bias": 5,
    "conv_bias_shared": 5,  # the old bias stays for its other reader
    "gemm_no_c": 4, "gemm_c_scalar": 4 - 1, "gemm_c_vector": 0, "gemm_c_row": 0,
    "gemm_c_column": 3 * 4 - 3, "gemm_c_matrix": 0, "gemm_c_computed": 4,
    "gemm_c_shared": 4,  # the old C stays for its other reader
    "matmul_no_add": 4, "matmul_add_o": 0, "matmul_add_bias_first": 0, "matmul_add_1o": 0,
    "matmul_add_full": 4, "matmul_add_shared": 4, "matmul_output_also_graph_output": 4,
    "matmul_left_no_add": 4, "matmul_left_add_o1": 0, "matmul_left_add_o": 4,
}


def test_every_bias_case_has_a_count():
    assert set(BIAS_ELEMENTS) == set(BIAS_CASES)


@pytest.mark.parametrize("case", _bias_cases())
def test_new_bias_elements_counts(case):
    """A bias of the layer's own to fold into adds nothing; otherwise the layer's O outputs,
    or what broadcasting C against [O] adds to C."""
    _, layer = _only_layer(BIAS_CASES[case](np.random.default_rng(10))[0])
    assert new_bias_elements(layer) == BIAS_ELEMENTS[case]
