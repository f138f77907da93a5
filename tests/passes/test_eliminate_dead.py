"""eliminate_dead: unreachable nodes, unused initializers, IR < 4 constant inputs."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh

F32 = onnx.TensorProto.FLOAT


def test_dead_chain_is_removed(h):
    m = h.model([h.node("Relu", ["x"], ["a"]), h.node("Neg", ["a"], ["b"]), h.node("Abs", ["x"], ["y"])],
                [("x", F32, [3])], [("y", F32, [3])])
    r = h.check(m, "eliminate_dead", {"removed_nodes": 2})
    assert r.ops() == ["Abs"]


def test_unused_initializers_go_but_inputs_and_overridable_ones_stay(h):
    m = h.model([h.node("Add", ["x", "w"], ["y"])],
                [("x", F32, [2]), ("unused_in", F32, [2]), ("over", F32, [2])], [("y", F32, [2])],
                [h.init("w", np.ones(2, np.float32)), h.init("dead", np.zeros(2, np.float32)),
                 h.init("over", np.zeros(2, np.float32))])
    r = h.check(m, "eliminate_dead", {"removed_initializers": 1})
    assert sorted(r.graph.initializers) == ["over", "w"]
    assert [i.name for i in r.model.graph.input] == ["x", "unused_in", "over"]


def test_graph_output_is_never_removed(h):
    """Regression: an output nobody reads inside the graph is still an output."""
    m = h.model([h.node("Relu", ["x"], ["a"]), h.node("Neg", ["a"], ["y"]), h.node("Abs", ["x"], ["z"])],
                [("x", F32, [2])], [("y", F32, [2]), ("z", F32, [2])])
    h.check_noop(m, "eliminate_dead")


def test_initializer_that_is_a_graph_output_stays(h):
    m = h.model([h.node("Abs", ["x"], ["y"])], [("x", F32, [2])], [("y", F32, [2]), ("w", F32, [2])],
                [h.init("w", np.ones(2, np.float32))])
    h.check_noop(m, "eliminate_dead")


def _if_model(then_nodes, then_out):
    then = oh.make_graph(then_nodes, "then", [], [oh.make_tensor_value_info(then_out, F32, [2])])
    other = oh.make_graph([oh.make_node("Identity", ["x"], ["e"])], "else", [],
                          [oh.make_tensor_value_info("e", F32, [2])])
    return then, other


def test_value_captured_by_a_subgraph_is_a_use(h):
    then, other = _if_model([oh.make_node("Abs", ["a"], ["t"])], "t")
    m = h.model([h.node("Neg", ["x"], ["a"]), h.node("If", ["c"], ["y"], then_branch=then, else_branch=other)],
                [("x", F32, [2]), ("c", onnx.TensorProto.BOOL, [])], [("y", F32, [2])])
    h.check_noop(m, "eliminate_dead")


def test_dead_nodes_inside_subgraphs_are_removed(h):
    then, other = _if_model([oh.make_node("Neg", ["a"], ["dead"]), oh.make_node("Abs", ["x"], ["t"])], "t")
    m = h.model([h.node("Relu", ["x"], ["a"]), h.node("If", ["c"], ["y"], then_branch=then, else_branch=other)],
                [("x", F32, [2]), ("c", onnx.TensorProto.BOOL, [])], [("y", F32, [2])])
    r = h.check(m, "eliminate_dead", {"removed_nodes": 2})  # the inner Neg, then the outer Relu
    assert r.ops() == ["If"]


def test_outer_value_returned_directly_by_a_branch_stays():
    """A branch returning an outer value records no use in the IR (the checker rejects such
    files, the IR builds them): the producer must stay all the same."""
    from homec.context import PassContext
    from homec.ir import Dim, Graph, ModelInfo, Node, TensorType
    from homec.passes.eliminate_dead import eliminate_dead

    g = Graph("g")
    g.model = ModelInfo(ir_version=8, opset_imports=[("", 17)])
    x = g.add_input("x", TensorType(F32, (Dim(2),)))
    c = g.add_input("c", TensorType(onnx.TensorProto.BOOL, ()))
    a = g.append(Node("Relu", [x], ["a"])).outputs[0]
    then = Graph("then", parent=g)
    then.set_outputs([a])
    other = Graph("else", parent=g)
    other.set_outputs([other.append(Node("Neg", [x], ["e"])).outputs[0]])
    g.set_outputs([g.append(Node("If", [c], ["y"], attrs={"then_branch": then, "else_branch": other})).outputs[0]])
    assert eliminate_dead(g, PassContext())["removed_nodes"] == 0
    g.verify()


def test_custom_domain_nodes_are_kept_unless_asked(h):
    m = h.model([h.node("Probe", ["x"], ["p"], domain="com.example"), h.node("Abs", ["x"], ["y"])],
                [("x", F32, [2])], [("y", F32, [2])], extra_opsets=[("com.example", 1)])
    r = h.apply(m, "eliminate_dead")
    assert h.changes(r.stats) == {} and r.stats["kept_custom"] == 1
    r = h.apply(m, "eliminate_dead", remove_custom=True)
    assert r.stats["removed_nodes"] == 1 and r.ops() == ["Abs"]


def test_ir3_unused_constant_inputs_are_pruned(h):
    m = h.model([h.node("Add", ["x", "w"], ["y"])],
                [("x", F32, [2]), ("w", F32, [2]), ("old", F32, [2])], [("y", F32, [2])],
                [h.init("w", np.ones(2, np.float32)), h.init("old", np.ones(2, np.float32))],
                opset=9, ir_version=3)
    r = h.check(m, "eliminate_dead", {"removed_initializers": 1})
    assert [i.name for i in r.model.graph.input] == ["x", "w"]
    h.check_noop(m, "eliminate_dead", prune_ir3_inputs=False)


def test_value_info_of_removed_values_is_not_emitted(h):
    m = h.model([h.node("Relu", ["x"], ["a"]), h.node("Neg", ["a"], ["b"]), h.node("Abs", ["x"], ["y"])],
                [("x", F32, [3])], [("y", F32, [3])],
                value_info=[h.vi("a", F32, [3]), h.vi("b", F32, [3])])
    r = h.check(m, "eliminate_dead", {"removed_nodes": 2})
    assert [vi.name for vi in r.model.graph.value_info] == []


def test_selector_restricts_removal_to_selected_nodes(h):
    from homec.context import PassContext, Selector

    m = h.model([h.node("Relu", ["x"], ["a"]), h.node("Neg", ["a"], ["b"]), h.node("Abs", ["x"], ["y"])],
                [("x", F32, [3])], [("y", F32, [3])], [h.init("dead", np.zeros(2, np.float32))])
    r = h.check(m, "eliminate_dead", {"removed_nodes": 1}, ctx=PassContext(selector=Selector(op_types=("Neg",))))
    assert r.ops() == ["Relu", "Abs"] and "dead" in r.graph.initializers


def test_nothing_dead_is_byte_identical(h):
    m = h.model([h.node("Relu", ["x"], ["a"]), h.node("Add", ["a", "w"], ["y"])],
                [("x", F32, [2])], [("y", F32, [2])], [h.init("w", np.ones(2, np.float32))])
    h.check_noop(m, "eliminate_dead")
