"""analysis.cost: MACs against hand-computed counts on tiny graphs, and parameter counts.

Shapes go through the real `infer_shapes`, so strides, pads, dilations and broadcasting are
exercised end to end; the expected numbers are worked out by hand in each test.
"""

from __future__ import annotations

import numpy as np
import onnx

from homec.analysis.cost import analyze_cost, count_params, is_constant
from homec.analysis.shapes import infer_shapes
from homec.ir import Dim, Graph, ModelInfo, Node, Tensor, TensorType

F32, U8, I8, I32 = (onnx.TensorProto.FLOAT, onnx.TensorProto.UINT8, onnx.TensorProto.INT8,
                    onnx.TensorProto.INT32)


def tt(*dims, elem=F32) -> TensorType:
    return TensorType(elem, tuple(Dim(value=d) if isinstance(d, int) else Dim(param=d) for d in dims))


def new_graph() -> Graph:
    g = Graph("t")
    g.model = ModelInfo(opset_imports=[("", 17)])
    return g


def single(g: Graph, op: str, inputs, attrs=None, input_shapes=None):
    """Append one `op` node reading `inputs`, make its output the graph output, and return
    the cost report of the graph."""
    n = g.append(Node(op, inputs, ["y"], name=op.lower(), attrs=attrs or {}))
    g.set_outputs([n.outputs[0]])
    return analyze_cost(g, infer_shapes(g, input_shapes))


def zeros(*shape, dtype=np.float32) -> np.ndarray:
    return np.zeros(shape, dtype)


# -- convolutions --------------------------------------------------------------------------


def test_conv_groups_strides_pads_dilations():
    # x [1,4,10,10], w [8, 4/2, 3, 3], group 2, stride 2, pad 1, dilation 2:
    # effective kernel 5 -> Hout = (10 + 2 - 5) // 2 + 1 = 4; MACs = 1*8*4*4 * 2*3*3 = 2304
    g = new_graph()
    x = g.add_input("x", tt(1, 4, 10, 10))
    rep = single(g, "Conv", [x, g.add_initializer("w", zeros(8, 2, 3, 3))],
                 {"group": 2, "strides": [2, 2], "pads": [1, 1, 1, 1], "dilations": [2, 2]})
    assert [(c.op_type, c.macs) for c in rep.layers] == [("Conv", 2304)]


def test_conv_asymmetric_stride_and_bias_not_counted():
    # x [2,3,9,7], w [5,3,3,1], strides (2,1), no pads: Hout = 4, Wout = 7
    # MACs = 2*5*4*7 * 3*3*1 = 2520 (the bias add is not a MAC)
    g = new_graph()
    x = g.add_input("x", tt(2, 3, 9, 7))
    rep = single(g, "Conv", [x, g.add_initializer("w", zeros(5, 3, 3, 1)),
                             g.add_initializer("b", zeros(5))], {"strides": [2, 1]})
    assert rep.total_macs == 2520


def test_depthwise_conv():
    # x [1,6,8,8], w [6,1,3,3], group 6, pad 1: Hout = Wout = 8; MACs = 6*8*8 * 1*3*3 = 3456
    g = new_graph()
    x = g.add_input("x", tt(1, 6, 8, 8))
    rep = single(g, "Conv", [x, g.add_initializer("w", zeros(6, 1, 3, 3))],
                 {"group": 6, "pads": [1, 1, 1, 1]})
    assert rep.total_macs == 3456


def test_conv_transpose_with_groups():
    # x [1,4,5,5], w [Cin=4, Cout/group=3, 2, 2], group 2, stride 2 -> y [1,6,10,10]
    # MACs = N*Cin*prod(in spatial) * (Cout/group)*prod(kernel) = 1*4*25 * 3*4 = 1200
    g = new_graph()
    x = g.add_input("x", tt(1, 4, 5, 5))
    rep = single(g, "ConvTranspose", [x, g.add_initializer("w", zeros(4, 3, 2, 2))],
                 {"group": 2, "strides": [2, 2]})
    assert rep.total_macs == 1200


def test_conv_1d():
    # x [1,2,16], w [4,2,5], stride 1, no pad: Lout = 12; MACs = 4*12 * 2*5 = 480
    g = new_graph()
    x = g.add_input("x", tt(1, 2, 16))
    assert single(g, "Conv", [x, g.add_initializer("w", zeros(4, 2, 5))]).total_macs == 480


# -- matrix products -----------------------------------------------------------------------


def test_gemm_trans_b():
    # A [2,5], B [3,5] with transB: M=2, N=3, K=5 -> 30
    g = new_graph()
    a = g.add_input("a", tt(2, 5))
    rep = single(g, "Gemm", [a, g.add_initializer("b", zeros(3, 5)), g.add_initializer("c", zeros(3))],
                 {"transB": 1})
    assert rep.total_macs == 30


def test_gemm_trans_a():
    # A [5,2] with transA: M=2, K=5; B [5,7]: N=7 -> 70
    g = new_graph()
    a = g.add_input("a", tt(5, 2))
    assert single(g, "Gemm", [a, g.add_initializer("b", zeros(5, 7))], {"transA": 1}).total_macs == 70


def test_batched_matmul_broadcasts_batch_dims():
    # A [2,1,4,5] @ B [3,5,6]: batch broadcast [2,3], M=4, K=5, N=6 -> 6*4*5*6 = 720
    g = new_graph()
    a = g.add_input("a", tt(2, 1, 4, 5))
    rep = single(g, "MatMul", [a, g.add_initializer("b", zeros(3, 5, 6))])
    (layer,) = rep.layers
    assert layer.macs == 720 and not layer.attention_like


def test_matmul_rank1_operand():
    # a [5] @ B [5,3]: a is promoted to [1,5] -> 1*5*3 = 15
    g = new_graph()
    a = g.add_input("a", tt(5))
    assert single(g, "MatMul", [a, g.add_initializer("b", zeros(5, 3))]).total_macs == 15


def test_activation_times_activation_matmul_is_attention_like():
    # Q [1,2,4,8] @ K^T [1,2,8,4] -> 2 heads * 4*4*8 = 256
    g = new_graph()
    q = g.add_input("q", tt(1, 2, 4, 8))
    k = g.add_input("k", tt(1, 2, 4, 8))
    kt = g.append(Node("Transpose", [k], ["kt"], attrs={"perm": [0, 1, 3, 2]})).outputs[0]
    (layer,) = single(g, "MatMul", [q, kt]).layers
    assert layer.macs == 256 and layer.attention_like


def test_weight_behind_dequantize_is_not_attention_like():
    g = new_graph()
    x = g.add_input("x", tt(1, 4))
    wq = g.add_initializer("wq", zeros(4, 3, dtype=np.int8))
    w = g.append(Node("DequantizeLinear", [wq, g.add_initializer("s", np.float32(0.1))], ["w"])).outputs[0]
    (layer,) = single(g, "MatMul", [x, w]).layers
    assert layer.macs == 12 and not layer.attention_like
    assert is_constant(w) and not is_constant(x)


def test_einsum_two_operands():
    # bij,bjk->bik with b=2, i=3, j=4, k=5 -> 120; activations on both sides
    g = new_graph()
    a = g.add_input("a", tt(2, 3, 4))
    b = g.add_input("b", tt(2, 4, 5))
    (layer,) = single(g, "Einsum", [a, b], {"equation": "bij,bjk->bik"}).layers
    assert layer.macs == 120 and layer.attention_like


def test_einsum_with_ellipsis():
    # ...ij,jk->...ik with ... = [2,3], i=4, j=5, k=6 -> 6*4*5*6 = 720
    g = new_graph()
    a = g.add_input("a", tt(2, 3, 4, 5))
    rep = single(g, "Einsum", [a, g.add_initializer("w", zeros(5, 6))], {"equation": "...ij,jk->...ik"})
    assert rep.total_macs == 720


# -- quantized forms count like their float counterparts -----------------------------------


def _q(g: Graph, name: str, value, dtype) -> object:
    return g.add_initializer(name, np.array(value, dtype=dtype))


def test_qlinearconv_and_convinteger_match_conv():
    # x [1,4,6,6], w [4,2,3,3], group 2: Hout = 4 -> 4*4*4 * 2*9 = 1152
    for op in ("QLinearConv", "ConvInteger"):
        g = new_graph()
        x = g.add_input("x", tt(1, 4, 6, 6, elem=U8))
        w = _q(g, "w", np.zeros((4, 2, 3, 3)), np.int8)
        if op == "QLinearConv":
            f = lambda n: _q(g, n, 0.5, np.float32)  # noqa: E731
            inputs = [x, f("xs"), _q(g, "xz", 0, np.uint8), w, f("ws"), _q(g, "wz", 0, np.int8),
                      f("ys"), _q(g, "yz", 0, np.uint8)]
        else:
            inputs = [x, w, _q(g, "xz", 0, np.uint8), _q(g, "wz", 0, np.int8)]
        rep = single(g, op, inputs, {"group": 2})
        assert rep.total_macs == 1152, op


def test_qlinearmatmul_and_matmulinteger_match_matmul():
    # A [3,4,5] @ B [5,2] -> 3*4*5*2 = 120
    for op in ("QLinearMatMul", "MatMulInteger"):
        g = new_graph()
        a = g.add_input("a", tt(3, 4, 5, elem=U8))
        b = _q(g, "b", np.zeros((5, 2)), np.uint8)
        if op == "QLinearMatMul":
            f = lambda n: _q(g, n, 0.5, np.float32)  # noqa: E731
            inputs = [a, f("as"), _q(g, "az", 0, np.uint8), b, f("bs"), _q(g, "bz", 0, np.uint8),
                      f("ys"), _q(g, "yz", 0, np.uint8)]
        else:
            inputs = [a, b]
        (layer,) = single(g, op, inputs).layers
        assert layer.macs == 120 and not layer.attention_like, op


# -- symbolic shapes and totals ------------------------------------------------------------


def test_symbolic_dims_give_none_and_a_note_then_pins_resolve_them():
    def build() -> Graph:
        g = new_graph()
        x = g.add_input("x", tt("N", 3, "H", "W"))
        c = g.append(Node("Conv", [x, g.add_initializer("w", zeros(8, 3, 3, 3))], ["c"], name="conv"))
        y = g.append(Node("Gemm", [g.add_input("a", tt(2, 3)), g.add_initializer("b", zeros(3, 4))], ["y"]))
        g.set_outputs([c.outputs[0], y.outputs[0]])
        return g

    g = build()
    rep = analyze_cost(g, infer_shapes(g))
    conv, gemm = rep.layers
    assert conv.macs is None and conv.note.startswith("symbolic")
    assert gemm.macs == 24 and gemm.node == "y"  # unnamed node: labelled by its output
    assert not rep.complete and rep.total_macs == 24

    rep = analyze_cost(g, infer_shapes(g, {"x": (1, 3, 5, 5)}))
    # Hout = Wout = 3: 8*9 * 3*9 = 1944
    assert rep.complete and rep.total_macs == 1944 + 24
    assert rep.macs_by_op() == {"Conv": 1944, "Gemm": 24}


def test_elementwise_ops_are_not_layers():
    g = new_graph()
    x = g.add_input("x", tt(4))
    assert single(g, "Relu", [x]).layers == ()


# -- parameters ----------------------------------------------------------------------------


def test_params_count_initializers_and_constant_weights_not_int64_shapes():
    g = new_graph()
    x = g.add_input("x", tt(1, 6))
    g.add_initializer("w", zeros(6, 4))  # 24 elements, 96 bytes
    g.add_initializer("h", zeros(10, dtype=np.float16))  # 10 elements, 20 bytes
    c = g.append(Node("Constant", [], ["b"], attrs={"value": Tensor.from_numpy(zeros(4))}))  # 4, 16
    s = g.append(Node("Constant", [], ["shape"], attrs={"value": Tensor.from_numpy(np.array([1, 4]))}))
    f = g.append(Node("Constant", [], ["alpha"], attrs={"value_floats": [1.0, 2.0, 3.0, 4.0]}))  # 4, 16
    mm = g.append(Node("MatMul", [x, g.value("w")], ["m"]))
    add = g.append(Node("Add", [mm.outputs[0], c.outputs[0]], ["a"]))
    r = g.append(Node("Reshape", [add.outputs[0], s.outputs[0]], ["r"]))
    out = g.append(Node("Mul", [r.outputs[0], f.outputs[0]], ["y"]))
    g.set_outputs([out.outputs[0]])
    p = count_params(g)
    assert (p.count, p.bytes, p.tensors) == (24 + 10 + 4 + 4, 96 + 20 + 16 + 16, 4)
