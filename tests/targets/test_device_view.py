"""device_view: what a QDQ device computes in and stores (int8 kernels, fused activations,
scale-preserving views), on hand-built QDQ graphs."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from homec.analysis.shapes import infer_shapes
from homec.onnx_io import load
from homec.targets.device_view import (
    compute_dtype, device_bytes, fused_away, fused_into, quantized_source,
)

F, I8 = TensorProto.FLOAT, TensorProto.INT8


def _model(tail: list[onnx.NodeProto], out: str = "y") -> onnx.ModelProto:
    """x -Q-> DQ -> Conv(w via DQ) -> conv_out, then `tail` nodes to `out`."""
    w = numpy_helper.from_array(np.ones((4, 4, 1, 1), np.int8), "w_q")
    inits = [w, numpy_helper.from_array(np.array(0.1, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.int8), "z"),
             numpy_helper.from_array(np.array(6.0, np.float32), "six"),
             numpy_helper.from_array(np.array(0.0, np.float32), "zero")]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q_in"),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq_in"),
        helper.make_node("DequantizeLinear", ["w_q", "s", "z"], ["wd"], name="dq_w"),
        helper.make_node("Conv", ["xd", "wd"], ["conv_out"], name="conv"),
        *tail,
    ]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, [1, 4, 8, 8])],
                          [helper.make_tensor_value_info(out, F, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _requant(src: str, name: str) -> list[onnx.NodeProto]:
    return [helper.make_node("QuantizeLinear", [src, "s", "z"], [f"{name}_q"], name=f"{name}_Q"),
            helper.make_node("DequantizeLinear", [f"{name}_q", "s", "z"], [name], name=f"{name}_DQ")]


def _view(model):
    g = load(model)
    return g, infer_shapes(g), {n.name: n for n in g.nodes}


def test_conv_relu_q_is_one_int8_kernel():
    g, types, nodes = _view(_model([helper.make_node("Relu", ["conv_out"], ["r"], name="relu"),
                                    *_requant("r", "y")]))
    assert fused_into(nodes["relu"]) is nodes["conv"]
    assert compute_dtype(nodes["conv"], types) == "int8"
    assert compute_dtype(nodes["relu"], types) == "int8"
    conv_out = g.value("conv_out")
    assert fused_away(conv_out, qdq_fused=True) and device_bytes(conv_out, types, qdq_fused=True) == 0
    assert not fused_away(conv_out, qdq_fused=False)
    assert device_bytes(conv_out, types, qdq_fused=False) == 4 * 64 * 4  # float32 without fusion


def test_activation_with_a_float_consumer_does_not_fuse():
    g, types, nodes = _view(_model([helper.make_node("Relu", ["conv_out"], ["y"], name="relu")]))
    assert fused_into(nodes["relu"]) is None
    assert compute_dtype(nodes["relu"], types) == "float32"
    assert device_bytes(g.value("conv_out"), types, qdq_fused=True) == 4 * 64 * 4


def test_scale_preserving_views_stay_int8_at_int8_size():
    tail = [*_requant("conv_out", "c"),
            helper.make_node("MaxPool", ["c"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
            helper.make_node("Flatten", ["p"], ["f"], name="flat"),
            helper.make_node("Softmax", ["f"], ["y"], name="softmax")]
    g, types, nodes = _view(_model(tail))
    assert quantized_source(g.value("f")) is g.value("c_q")
    assert compute_dtype(nodes["pool"], types) == "int8"
    assert compute_dtype(nodes["flat"], types) == "int8"
    assert compute_dtype(nodes["softmax"], types) == "int8"  # reads an int8 view
    assert device_bytes(g.value("p"), types, qdq_fused=True) == 4 * 16  # int8, not 4 * 16 * 4
    assert device_bytes(g.value("p"), types, qdq_fused=False) == 4 * 16 * 4


def test_a_float_op_breaks_the_view_chain():
    tail = [*_requant("conv_out", "c"),
            helper.make_node("Sigmoid", ["c"], ["sg"], name="sig"),
            helper.make_node("MaxPool", ["sg"], ["y"], name="pool", kernel_shape=[2, 2])]
    g, types, nodes = _view(_model(tail))
    assert compute_dtype(nodes["sig"], types) == "int8"
    assert quantized_source(g.value("y")) is None
    assert compute_dtype(nodes["pool"], types) == "float32"


def test_memo_is_shared_and_results_agree():
    g, types, nodes = _view(_model([helper.make_node("Relu", ["conv_out"], ["r"], name="relu"),
                                    *_requant("r", "y")]))
    memo: dict = {}
    first = [compute_dtype(n, types, memo) for n in g.nodes]
    assert memo and first == [compute_dtype(n, types) for n in g.nodes]
