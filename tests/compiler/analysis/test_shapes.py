"""analysis.shapes: parsing --input-shape specs and inferring IR types without touching the graph."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from homec.analysis.shapes import format_shape, infer_shapes, parse_input_shapes
from homec.errors import UsageError
from homec.ir import Dim, Graph, ModelInfo, Node, TensorType

F32 = onnx.TensorProto.FLOAT


def tt(*dims, elem=F32) -> TensorType:
    return TensorType(elem, tuple(Dim(value=d) if isinstance(d, int) else Dim(param=d) for d in dims))


def conv_graph() -> Graph:
    """x[N,3,H,W] -> Conv(8x3x3x3, stride 2, pad 1) -> Relu -> y."""
    g = Graph("conv")
    g.model = ModelInfo(opset_imports=[("", 17)])
    x = g.add_input("x", tt("N", 3, "H", "W"))
    w = g.add_initializer("w", np.zeros((8, 3, 3, 3), np.float32))
    c = g.append(Node("Conv", [x, w], ["c"], name="conv", attrs={"strides": [2, 2], "pads": [1, 1, 1, 1]}))
    r = g.append(Node("Relu", [c.outputs[0]], ["y"], name="relu"))
    g.set_outputs([r.outputs[0]])
    return g


# -- parse_input_shapes --------------------------------------------------------------------


def test_parse_x_and_comma_forms():
    assert parse_input_shapes(["x=1x3x224x224", "mask=1,77", "s=5"]) == {
        "x": (1, 3, 224, 224), "mask": (1, 77), "s": (5,)}
    assert parse_input_shapes(["a:0 = 2X4"]) == {"a:0": (2, 4)}
    assert parse_input_shapes(["w=x=1x2"]) == {"w=x": (1, 2)}  # the last '=' splits
    assert parse_input_shapes([]) == {}


@pytest.mark.parametrize("spec", ["x", "x=", "=1x2", "x=1xax3", "x=1x,3", "x=1x3,4", "x=0x3",
                                  "x=-1x3", "x=1.5", "x=1xx3", "x=1 2"])
def test_parse_malformed(spec):
    with pytest.raises(UsageError):
        parse_input_shapes([spec])


def test_parse_duplicate_name():
    with pytest.raises(UsageError, match="twice"):
        parse_input_shapes(["x=1", "x=2"])


# -- infer_shapes --------------------------------------------------------------------------


def test_symbolic_input_stays_symbolic_without_pins():
    types = infer_shapes(conv_graph())
    y = types["y"]
    assert y.shape is not None and len(y.shape) == 4
    assert y.shape[0] == Dim(param="N") and y.shape[1] == Dim(value=8)
    assert y.static_shape() is None
    assert types["w"] == tt(8, 3, 3, 3)  # initializers from the tensor data


def test_input_shapes_resolve_symbolic_dims():
    types = infer_shapes(conv_graph(), {"x": (2, 3, 32, 20)})
    assert types["x"].static_shape() == (2, 3, 32, 20)
    assert types["c"].static_shape() == (2, 8, 16, 10)
    assert types["y"] == tt(2, 8, 16, 10)
    assert format_shape(types["y"]) == "[2,8,16,10]"


def test_graph_is_not_mutated():
    g = conv_graph()
    before = g.to_onnx().SerializeToString()
    infer_shapes(g, {"x": (1, 3, 8, 8)})
    assert g.to_onnx().SerializeToString() == before
    assert g.inputs[0].type == tt("N", 3, "H", "W")
    assert g.value("c").type is None


def test_unknown_input_name_lists_valid_inputs():
    with pytest.raises(UsageError, match=r"'nope'.*'x'"):
        infer_shapes(conv_graph(), {"nope": (1, 3, 8, 8)})


def test_wrong_rank_and_conflicting_static_dim():
    with pytest.raises(UsageError, match="rank 4"):
        infer_shapes(conv_graph(), {"x": (1, 3, 8)})
    with pytest.raises(UsageError, match="dim 1 is fixed to 3"):
        infer_shapes(conv_graph(), {"x": (1, 4, 8, 8)})


def test_onnxruntime_fallback_when_onnx_gives_up():
    """ONNX has no schema for com.microsoft::Gelu, so it infers nothing after it;
    onnxruntime's symbolic inference knows the op."""
    g = Graph("ms")
    g.model = ModelInfo(opset_imports=[("", 17), ("com.microsoft", 1)])
    x = g.add_input("x", tt(1, 4))
    w = g.add_initializer("w", np.ones((4, 8), np.float32))
    a = g.append(Node("Gelu", [x], ["a"], domain="com.microsoft")).outputs[0]
    y = g.append(Node("MatMul", [a, w], ["y"])).outputs[0]
    g.set_outputs([y])
    assert "y" not in infer_shapes(g, symbolic_fallback=False)
    types = infer_shapes(g)
    assert types["a"] == tt(1, 4) and types["y"] == tt(1, 8)
