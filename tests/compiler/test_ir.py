"""The IR's contract: use lists, safe removal, ordering, verify(), typed attributes, scopes."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnxruntime as ort
import pytest

import homec
from homec.errors import InvalidModelError, IRError
from homec.ir import Attr, AttrType, Dim, Graph, Node, Tensor, TensorType

F32 = onnx.TensorProto.FLOAT


def _tt(*dims):
    return TensorType(F32, tuple(Dim(value=d) if isinstance(d, int) else Dim(param=d) for d in dims))


def small_graph() -> tuple[Graph, dict]:
    """x -> Relu -> a ; a*a -> b (Mul with the same value twice) ; b + w -> y"""
    g = Graph("g")
    g.model = homec.ir.ModelInfo(ir_version=8, opset_imports=[("", 17)])
    x = g.add_input("x", _tt(2, 3))
    w = g.add_initializer("w", np.arange(6, dtype=np.float32).reshape(2, 3))
    relu = g.append(Node("Relu", [x], ["a"], name="relu"))
    mul = g.append(Node("Mul", [relu.outputs[0], relu.outputs[0]], ["b"], name="mul"))
    add = g.append(Node("Add", [mul.outputs[0], w], ["y"], name="add"))
    y = add.outputs[0]
    y.type = _tt(2, 3)
    g.set_outputs([y])
    g.verify()
    return g, {"x": x, "w": w, "relu": relu, "mul": mul, "add": add, "y": y}


def run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def test_mul_of_same_value_has_two_uses_with_slots():
    g, v = small_graph()
    a = v["relu"].outputs[0]
    assert [(n.name, s) for n, s in a.uses] == [("mul", 0), ("mul", 1)]
    assert a.users == [v["mul"]]


def test_emitted_model_runs_and_computes():
    g, _ = small_graph()
    x = np.array([[-1, 2, 3], [4, -5, 6]], dtype=np.float32)
    (y,) = run(g.to_onnx(), {"x": x})
    np.testing.assert_array_equal(y, np.maximum(x, 0) ** 2 + np.arange(6, dtype=np.float32).reshape(2, 3))


def test_replace_all_uses_rewrites_every_slot_and_outputs():
    g, v = small_graph()
    x, a = v["x"], v["relu"].outputs[0]
    assert g.replace_all_uses(a, x) == 2
    assert v["mul"].inputs == (x, x)
    assert a.uses == []
    g.remove_nodes([v["relu"]])
    g.verify()
    xv = np.array([[-1, 2, 3], [4, -5, 6]], dtype=np.float32)
    (y,) = run(g.to_onnx(), {"x": xv})
    np.testing.assert_array_equal(y, xv * xv + np.arange(6, dtype=np.float32).reshape(2, 3))


def test_remove_nodes_refuses_while_output_is_used():
    g, v = small_graph()
    with pytest.raises(IRError, match="still used by"):
        g.remove_nodes([v["relu"]])
    g.verify()  # nothing changed


def test_remove_nodes_refuses_graph_output():
    g, v = small_graph()
    with pytest.raises(IRError, match="graph output"):
        g.remove_nodes([v["add"]])


def test_remove_nodes_together_is_allowed_when_uses_are_internal():
    g, v = small_graph()
    g.replace_all_uses(v["y"], v["x"])
    g.remove_nodes([v["relu"], v["mul"], v["add"]])
    g.verify()
    assert len(g) == 0
    assert g.outputs == (v["x"],)


def test_remove_initializer_refuses_when_used():
    g, v = small_graph()
    with pytest.raises(IRError, match="still used"):
        g.remove_initializer(v["w"])


def test_insert_before_and_after_keeps_ties_in_position():
    g, v = small_graph()
    x = v["x"]
    n1 = g.insert(Node("Neg", [x], ["n1"], name="n1"), after=v["relu"])
    n0 = g.insert(Node("Abs", [x], ["n0"], name="n0"), before=v["relu"])
    names = [n.name for n in g.nodes]
    assert names == ["n0", "relu", "n1", "mul", "add"]
    assert n0 in g.nodes and n1 in g.nodes


def test_dependencies_win_over_position():
    g, v = small_graph()
    # a node appended last but consumed by the first node must be ordered before it
    late = g.append(Node("Neg", [v["x"]], ["late"], name="late"))
    g.replace_all_uses(v["x"], late.outputs[0])
    late.set_input(0, v["x"])  # undo the self-loop the replacement created
    order = [n.name for n in g.nodes]
    assert order.index("late") < order.index("relu")
    g.verify()


def test_topological_order_of_unsorted_file_is_deterministic():
    nodes = [oh.make_node("Neg", ["b"], ["c"], name="second"),
             oh.make_node("Relu", ["x"], ["b"], name="first")]
    m = oh.make_model(oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", F32, [1])],
                                    [oh.make_tensor_value_info("c", F32, [1])]),
                      opset_imports=[oh.make_opsetid("", 17)])
    g = homec.load(m)
    assert [n.name for n in g.nodes] == ["first", "second"]
    assert homec.load(m).to_onnx().SerializeToString() == g.to_onnx().SerializeToString()


def test_verify_reports_undefined_input_and_names_node():
    g, v = small_graph()
    stray = homec.Value("stray")
    v["mul"].set_input(1, stray)
    with pytest.raises(IRError, match=r"Node\(Mul, name='mul'\).*stray"):
        g.verify()


def test_verify_detects_cycle():
    g, v = small_graph()
    v["relu"].set_input(0, v["mul"].outputs[0])
    with pytest.raises(IRError, match="cycle"):
        g.verify()


def test_two_producers_rejected_at_build_time():
    g, v = small_graph()
    with pytest.raises(IRError, match="already has producer"):
        g.append(Node("Neg", [v["x"]], [v["relu"].outputs[0]]))


def test_typed_attribute_access():
    n = Node("Conv", attrs={"group": 4, "strides": [2, 2], "auto_pad": "SAME_UPPER", "alpha": 0.5})
    assert n.attr("group", 1) == 4 and isinstance(n.attr("group"), int)
    assert n.attr("strides") == (2, 2)
    assert n.attr("auto_pad") == "SAME_UPPER"
    assert n.attr("alpha") == 0.5
    assert n.attr("dilations", (1, 1)) == (1, 1)
    assert n.attrs["group"].type == AttrType.INT
    assert Attr.infer("flag", True).value == 1


def test_domain_is_normalized():
    assert Node("Relu", domain="ai.onnx").domain == ""
    assert Node("Foo", domain="com.acme").domain == "com.acme"


def test_initializer_is_constant_backed_by_numpy():
    g, v = small_graph()
    w = v["w"]
    assert w.is_initializer
    np.testing.assert_array_equal(v["add"].input_const(1), np.arange(6, dtype=np.float32).reshape(2, 3))
    assert isinstance(w.const, Tensor) and w.const.nbytes == 24


def _if_model() -> onnx.ModelProto:
    """cond ? (outer + 1) : (outer * 2), where `outer` is produced in the main graph."""
    one = oh.make_tensor("one", F32, [], [1.0])
    two = oh.make_tensor("two", F32, [], [2.0])
    then_g = oh.make_graph([oh.make_node("Constant", [], ["c1"], value=one),
                            oh.make_node("Add", ["outer", "c1"], ["t"])], "then", [],
                           [oh.make_tensor_value_info("t", F32, [2])])
    else_g = oh.make_graph([oh.make_node("Constant", [], ["c2"], value=two),
                            oh.make_node("Mul", ["outer", "c2"], ["e"])], "else", [],
                           [oh.make_tensor_value_info("e", F32, [2])])
    nodes = [oh.make_node("Relu", ["x"], ["outer"], name="producer"),
             oh.make_node("If", ["cond"], ["y"], name="if", then_branch=then_g, else_branch=else_g)]
    g = oh.make_graph(nodes, "main", [oh.make_tensor_value_info("x", F32, [2]),
                                      oh.make_tensor_value_info("cond", onnx.TensorProto.BOOL, [])],
                      [oh.make_tensor_value_info("y", F32, [2])])
    return oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)])


def test_subgraph_captures_are_uses_and_order_the_owner():
    g = homec.load(_if_model())
    outer = g.value("outer")
    users = outer.users
    assert {u.op_type for u in users} == {"Add", "Mul"}
    assert all(u.graph is not g for u in users)
    producer = outer.producer
    with pytest.raises(IRError, match="still used"):
        g.remove_nodes([producer])
    # removing the If together with the producer is fine
    ifn = [n for n in g.nodes if n.op_type == "If"][0]
    assert [n.name for n in g.nodes] == ["producer", "if"]
    g.verify()
    then_g = ifn.attr("then_branch")
    assert then_g.parent is g and then_g.value("outer") is outer


def test_replace_all_uses_reaches_into_subgraphs():
    g = homec.load(_if_model())
    outer, x = g.value("outer"), g.value("x")
    assert g.replace_all_uses(outer, x) == 2
    g.remove_nodes([outer.producer])
    g.verify()
    m = g.to_onnx()
    onnx.checker.check_model(m, full_check=True)
    xv = np.array([-1.0, 3.0], dtype=np.float32)
    (y,) = run(m, {"x": xv, "cond": np.array(True)})
    np.testing.assert_array_equal(y, xv + 1)


def test_load_rejects_graph_errors_as_invalid_model():
    nodes = [oh.make_node("Relu", ["x"], ["a"]), oh.make_node("Neg", ["x"], ["a"])]
    m = oh.make_model(oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", F32, [1])],
                                    [oh.make_tensor_value_info("a", F32, [1])]))
    with pytest.raises(InvalidModelError, match="two producers"):
        homec.load(m)


def test_fresh_name_avoids_all_scopes():
    g = homec.load(_if_model())
    names = {g.fresh_name("t") for _ in range(5)}
    assert len(names) == 5 and "t" not in names


def test_symbolic_dims_survive():
    g = Graph("g")
    g.model = homec.ir.ModelInfo(opset_imports=[("", 17)])
    x = g.add_input("x", _tt("batch", 3))
    n = g.append(Node("Relu", [x], ["y"]))
    n.outputs[0].type = _tt("batch", 3)
    g.set_outputs([n.outputs[0]])
    g2 = homec.load(g.to_onnx())
    assert g2.inputs[0].type.shape[0].param == "batch"
    assert g2.to_onnx() == g.to_onnx()


def test_iteration_and_emission_are_deterministic_across_loads():
    m = _if_model()
    a = homec.load(m).to_onnx().SerializeToString(deterministic=True)
    b = homec.load(m).to_onnx().SerializeToString(deterministic=True)
    assert a == b == m.SerializeToString(deterministic=True)


def _if_returning_outer() -> onnx.ModelProto:
    """An If whose then-branch returns the outer value `a` directly (no nodes)."""
    then_g = oh.make_graph([], "then", [], [oh.make_tensor_value_info("a", F32, [2])])
    else_g = oh.make_graph([oh.make_node("Neg", ["x"], ["e"])], "else", [],
                           [oh.make_tensor_value_info("e", F32, [2])])
    nodes = [oh.make_node("Relu", ["x"], ["a"], name="producer"),
             oh.make_node("If", ["cond"], ["y"], name="if", then_branch=then_g, else_branch=else_g)]
    g = oh.make_graph(nodes, "main", [oh.make_tensor_value_info("x", F32, [2]),
                                      oh.make_tensor_value_info("cond", onnx.TensorProto.BOOL, [])],
                      [oh.make_tensor_value_info("y", F32, [2])])
    return oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)])


def test_outer_value_returned_by_a_branch_counts_as_an_output():
    g = homec.load(_if_returning_outer())
    a = g.value("a")
    assert a.is_graph_output
    with pytest.raises(IRError, match="graph output"):
        g.remove_nodes([a.producer])
    x = g.value("x")
    g.replace_all_uses(a, x)  # also rewrites the branch's output list
    g.remove_nodes([a.producer])
    g.verify()
    ifn = g.nodes[0]
    assert ifn.attr("then_branch").outputs == (x,)
    assert not a.is_graph_output


def test_removing_owner_and_producer_together_is_allowed():
    g = homec.load(_if_returning_outer())
    a, ifn = g.value("a"), [n for n in g.nodes if n.op_type == "If"][0]
    g.set_outputs([g.value("x")])
    g.remove_nodes([a.producer, ifn])
    g.verify()
    assert len(g) == 0


def test_fresh_names_stay_unique_while_the_graph_grows():
    g, v = small_graph()
    seen = set()
    prev = v["y"]
    for _ in range(200):
        name = g.fresh_name("t")
        assert name not in seen and g.value(name) is None
        seen.add(name)
        prev = g.append(Node("Neg", [prev], [name])).outputs[0]
    g.verify()


def test_unique_name_keeps_a_free_hint_and_numbers_a_taken_one():
    g = Graph("g")
    g.add_input("x")
    assert g.unique_name("y") == "y"
    assert g.unique_name("y") != "y"  # reserved by the first call
    assert g.unique_name("x").startswith("x__")
