"""analysis.memory: liveness over graph.nodes and the peak, checked against hand computations."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh

import homec
from homec.analysis.memory import peak_activation_memory, tensor_bytes
from homec.analysis.shapes import infer_shapes
from homec.ir import Dim, Graph, ModelInfo, Node, Tensor, TensorType

F32 = onnx.TensorProto.FLOAT


def tt(*dims, elem=F32) -> TensorType:
    return TensorType(elem, tuple(Dim(value=d) if isinstance(d, int) else Dim(param=d) for d in dims))


def new_graph() -> Graph:
    g = Graph("m")
    g.model = ModelInfo(opset_imports=[("", 17)])
    return g


def test_tensor_bytes():
    assert tensor_bytes(tt(2, 3)) == 24
    assert tensor_bytes(tt(3, elem=onnx.TensorProto.INT4)) == 2  # packed: ceil(3 * 4 / 8)
    assert tensor_bytes(tt(2, "N")) is None
    assert tensor_bytes(TensorType(F32, None)) is None
    assert tensor_bytes(tt(4, elem=onnx.TensorProto.STRING)) is None
    assert tensor_bytes(None) is None


def test_chain_peak_excludes_weights():
    """x[1,10] -> MatMul W1[10,100] -> a -> MatMul W2[100,1000] -> b -> MatMul W3[1000,10] -> y.

    Step 0: x + a = 40 + 400; step 1: a + b = 400 + 4000 (the peak); step 2: b + y = 4040.
    W2 alone is 400 KB: counting weights would change the answer.
    """
    g = new_graph()
    v = g.add_input("x", tt(1, 10))
    for i, (k, n) in enumerate([(10, 100), (100, 1000), (1000, 10)]):
        w = g.add_initializer(f"w{i}", np.zeros((k, n), np.float32))
        v = g.append(Node("MatMul", [v, w], ["ab"[i] if i < 2 else "y"], name=f"mm{i}")).outputs[0]
    g.set_outputs([v])
    rep = peak_activation_memory(g, infer_shapes(g))
    assert (rep.peak_bytes, rep.peak_step, rep.peak_node, rep.steps) == (4400, 1, "mm1", 3)
    assert [(t.name, t.bytes) for t in rep.live_at_peak] == [("b", 4000), ("a", 400)]
    assert not rep.is_lower_bound


def branchy(extra_output: bool) -> Graph:
    """x -> A=Relu(x), B=Sigmoid(x), C=Tanh(A), D=Add(B,C), y=Mul(D,x); all [1,256] f32 (1 KiB).

    Live intervals (steps): x [0,4], A [0,2], B [1,3], C [2,3], D [3,4], y [4,4].
    Per step (KiB): 2, 3, 4, 4, 3 -> peak 4096 B first reached at step 2 (x, A, B, C).
    With A also a graph output, A lives to step 4: 2, 3, 4, 5, 4 -> peak 5120 B at step 3.
    """
    g = new_graph()
    x = g.add_input("x", tt(1, 256))
    a = g.append(Node("Relu", [x], ["A"], name="n0")).outputs[0]
    b = g.append(Node("Sigmoid", [x], ["B"], name="n1")).outputs[0]
    c = g.append(Node("Tanh", [a], ["C"], name="n2")).outputs[0]
    d = g.append(Node("Add", [b, c], ["D"], name="n3")).outputs[0]
    y = g.append(Node("Mul", [d, x], ["y"], name="n4")).outputs[0]
    g.set_outputs([y, a] if extra_output else [y])
    return g


def test_branchy_graph_peak():
    g = branchy(extra_output=False)
    assert [n.name for n in g.nodes] == ["n0", "n1", "n2", "n3", "n4"]
    rep = peak_activation_memory(g, infer_shapes(g))
    assert (rep.peak_bytes, rep.peak_step, rep.peak_node) == (4096, 2, "n2")
    assert sorted(t.name for t in rep.live_at_peak) == ["A", "B", "C", "x"]


def test_graph_outputs_live_to_the_end():
    g = branchy(extra_output=True)
    rep = peak_activation_memory(g, infer_shapes(g))
    assert (rep.peak_bytes, rep.peak_step) == (5120, 3)
    assert len(rep.live_at_peak) == 5
    assert len(peak_activation_memory(g, infer_shapes(g), top=2).live_at_peak) == 2


def test_unknown_shapes_make_a_lower_bound():
    g = new_graph()
    x = g.add_input("x", tt("N", 8))
    w = g.add_initializer("w", np.zeros((8, 4), np.float32))
    m = g.append(Node("MatMul", [x, w], ["m"])).outputs[0]
    s = g.append(Node("Shape", [m], ["s"])).outputs[0]  # [2] int64: 16 bytes, known
    g.set_outputs([s])
    rep = peak_activation_memory(g, infer_shapes(g))
    assert rep.is_lower_bound and set(rep.unknown) == {"x", "m"}
    assert rep.peak_bytes == 16


def test_constant_node_outputs_are_weights():
    g = new_graph()
    x = g.add_input("x", tt(1, 4))
    big = Tensor.from_numpy(np.zeros((1000, 4), np.float32))
    c = g.append(Node("Constant", [], ["c"], attrs={"value": big}))
    y = g.append(Node("Add", [c.outputs[0], x], ["y"])).outputs[0]
    g.set_outputs([y])
    rep = peak_activation_memory(g, infer_shapes(g))
    assert rep.peak_bytes == 16 + 16000  # x and y; the 16 KB constant is not an activation
    assert "c" not in {t.name for t in rep.live_at_peak}


def test_value_read_inside_a_subgraph_lives_until_its_owner():
    """outer = Relu(x) is read only inside the If branches, so it lives until the If (step 2).

    Intervals: x [0,0], big_in [0,1], cond [0,2], outer [0,2], big [1,2] (output), y [2,2].
    Step 1 holds outer 16 + big_in 4000 + big 4000 + cond 1 = 8017 bytes, the peak.
    """
    one = oh.make_tensor("one", F32, [], [1.0])
    then_g = oh.make_graph([oh.make_node("Constant", [], ["c1"], value=one),
                            oh.make_node("Add", ["outer", "c1"], ["t"])], "then", [],
                           [oh.make_tensor_value_info("t", F32, [4])])
    else_g = oh.make_graph([oh.make_node("Identity", ["outer"], ["e"])], "else", [],
                           [oh.make_tensor_value_info("e", F32, [4])])
    nodes = [oh.make_node("Relu", ["x"], ["outer"], name="relu"),
             oh.make_node("Sigmoid", ["big_in"], ["big"], name="sig"),
             oh.make_node("If", ["cond"], ["y"], name="if", then_branch=then_g, else_branch=else_g)]
    model = oh.make_model(oh.make_graph(
        nodes, "main",
        [oh.make_tensor_value_info("x", F32, [4]), oh.make_tensor_value_info("big_in", F32, [1000]),
         oh.make_tensor_value_info("cond", onnx.TensorProto.BOOL, [])],
        [oh.make_tensor_value_info("y", F32, [4]), oh.make_tensor_value_info("big", F32, [1000])]),
        opset_imports=[oh.make_opsetid("", 17)])
    g = homec.load(model)
    assert [n.name for n in g.nodes] == ["relu", "sig", "if"]
    rep = peak_activation_memory(g, infer_shapes(g))
    live = {t.name: (t.start, t.end) for t in rep.live_at_peak}
    assert live["outer"] == (0, 2)
    assert (rep.peak_step, rep.peak_bytes) == (1, 16 + 4000 + 4000 + 1)


def test_empty_graph():
    g = new_graph()
    x = g.add_input("x", tt(3))
    g.set_outputs([x])
    rep = peak_activation_memory(g, infer_shapes(g))
    assert (rep.peak_bytes, rep.peak_step, rep.peak_node, rep.steps) == (12, None, None, 0)
