"""cse: identical nodes and identical initializers merge; the first one stays."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh

from homec.context import PassContext, Selector

TP = onnx.TensorProto
F32 = TP.FLOAT


def test_identical_nodes_merge_and_chains_follow(h):
    m = h.model([h.node("Relu", ["x"], ["a1"], name="r1"), h.node("Relu", ["x"], ["a2"], name="r2"),
                 h.node("Neg", ["a1"], ["b1"]), h.node("Neg", ["a2"], ["b2"]),
                 h.node("Add", ["b1", "b2"], ["y"])],
                [("x", F32, [3])], [("y", F32, [3])])
    r = h.check(m, "cse", {"merged_nodes": 2})
    assert r.ops() == ["Relu", "Neg", "Add"]
    assert r.graph.nodes[0].name == "r1"  # the first in topological order stays


def test_different_attributes_or_inputs_do_not_merge(h):
    m = h.model([h.node("Transpose", ["x"], ["a"], perm=[1, 0]), h.node("Transpose", ["x"], ["b"], perm=[0, 1]),
                 h.node("LeakyRelu", ["x"], ["c"], alpha=0.1), h.node("LeakyRelu", ["x"], ["d"], alpha=0.2),
                 h.node("Sub", ["x", "x2"], ["e"]), h.node("Sub", ["x2", "x"], ["f"])],
                [("x", F32, [2, 2]), ("x2", F32, [2, 2])],
                [("a", F32, [2, 2]), ("b", F32, [2, 2]), ("c", F32, [2, 2]), ("d", F32, [2, 2]),
                 ("e", F32, [2, 2]), ("f", F32, [2, 2])])
    h.check_noop(m, "cse")


def test_tensor_attributes_compare_by_value(h):
    t1 = h.init("", np.array([1.0, 2.0], np.float32))
    t2 = h.init("", np.array([1.0, 2.0], np.float32))
    t3 = h.init("", np.array([1.0, 3.0], np.float32))
    m = h.model([h.node("Constant", [], ["c1"], value=t1), h.node("Constant", [], ["c2"], value=t2),
                 h.node("Constant", [], ["c3"], value=t3),
                 h.node("Add", ["x", "c1"], ["a"]), h.node("Add", ["x", "c2"], ["b"]), h.node("Add", ["x", "c3"], ["c"]),
                 h.node("Sum", ["a", "b", "c"], ["y"])],
                [("x", F32, [2])], [("y", F32, [2])])
    r = h.check(m, "cse", {"merged_nodes": 2})  # Constant c2 into c1, then its Add
    assert r.ops().count("Constant") == 2 and r.ops().count("Add") == 2


def test_random_ops_never_merge(h):
    m = h.model([h.node("RandomUniformLike", ["x"], ["a"]), h.node("RandomUniformLike", ["x"], ["b"]),
                 h.node("Add", ["a", "b"], ["y"])],
                [("x", F32, [3])], [("y", F32, [3])])
    h.check_noop(m, "cse")


def test_equal_initializers_deduplicate_then_their_users_merge(h):
    w = np.arange(4, dtype=np.float32)
    m = h.model([h.node("Add", ["x", "w1"], ["a"]), h.node("Add", ["x", "w2"], ["b"]), h.node("Mul", ["x", "w3"], ["c"]),
                 h.node("Sum", ["a", "b", "c"], ["y"])],
                [("x", F32, [4])], [("y", F32, [4])],
                [h.init("w1", w), h.init("w2", w.copy()), h.init("w3", w + 1)])
    r = h.check(m, "cse", {"merged_initializers": 1, "merged_nodes": 1})
    assert r.ops() == ["Add", "Mul", "Sum"]
    assert "w2" not in {v.name for n in r.graph.nodes for v in n.inputs}


def test_same_bytes_different_dtype_or_shape_stay_apart(h):
    m = h.model([h.node("Add", ["x", "w1"], ["a"]), h.node("Add", ["x", "w2"], ["b"]), h.node("Add", ["xi", "w3"], ["c"])],
                [("x", F32, [2, 2]), ("xi", TP.INT32, [4])], [("a", F32, [2, 2]), ("b", F32, [2, 2]), ("c", TP.INT32, [4])],
                [h.init("w1", np.zeros((2, 2), np.float32)), h.init("w2", np.zeros((1, 2), np.float32)),
                 h.init("w3", np.zeros(4, np.int32))])
    h.check_noop(m, "cse")


def test_overridable_initializers_are_not_merged(h):
    m = h.model([h.node("Add", ["x", "w1"], ["a"]), h.node("Add", ["x", "w2"], ["b"])],
                [("x", F32, [2]), ("w2", F32, [2])], [("a", F32, [2]), ("b", F32, [2])],
                [h.init("w1", np.ones(2, np.float32)), h.init("w2", np.ones(2, np.float32))])
    h.check_noop(m, "cse")


def test_duplicate_that_is_a_graph_output_takes_over_the_name(h):
    m = h.model([h.node("Relu", ["x"], ["a"]), h.node("Relu", ["x"], ["y"]), h.node("Neg", ["a"], ["z"])],
                [("x", F32, [3])], [("y", F32, [3]), ("z", F32, [3])])
    r = h.check(m, "cse", {"merged_nodes": 1})
    assert r.ops() == ["Relu", "Neg"] and r.graph.nodes[0].outputs[0].name == "y"


def test_two_graph_outputs_computed_alike_both_stay(h):
    m = h.model([h.node("Relu", ["x"], ["y1"]), h.node("Relu", ["x"], ["y2"])],
                [("x", F32, [3])], [("y1", F32, [3]), ("y2", F32, [3])])
    h.check_noop(m, "cse")


def test_subgraphs_merge_inside_but_not_with_the_outer_graph(h):
    then = oh.make_graph([oh.make_node("Relu", ["x"], ["t1"]), oh.make_node("Relu", ["x"], ["t2"]),
                          oh.make_node("Add", ["t1", "t2"], ["t"])], "then", [], [h.vi("t", F32, [3])])
    other = oh.make_graph([oh.make_node("Relu", ["x"], ["e"])], "else", [], [h.vi("e", F32, [3])])
    m = h.model([h.node("Relu", ["x"], ["r"]), h.node("If", ["c"], ["i"], then_branch=then, else_branch=other),
                 h.node("Add", ["r", "i"], ["y"])],
                [("x", F32, [3]), ("c", TP.BOOL, [])], [("y", F32, [3])])
    r = h.check(m, "cse", {"merged_nodes": 1}, feeds={"x": np.array([-1, 0, 2], np.float32), "c": np.array(True)})
    assert [n.op_type for n in r.graph.nodes[1].attr("then_branch").nodes] == ["Relu", "Add"]
    assert [n.op_type for n in r.graph.nodes[1].attr("else_branch").nodes] == ["Relu"]


def test_nodes_with_subgraphs_never_merge(h):
    def branch(tag):
        return oh.make_graph([oh.make_node("Neg", ["x"], [tag])], tag, [], [h.vi(tag, F32, [3])])
    m = h.model([h.node("If", ["c"], ["i1"], then_branch=branch("a"), else_branch=branch("b")),
                 h.node("If", ["c"], ["i2"], then_branch=branch("p"), else_branch=branch("q")),
                 h.node("Add", ["i1", "i2"], ["y"])],
                [("x", F32, [3]), ("c", TP.BOOL, [])], [("y", F32, [3])])
    h.check_noop(m, "cse")


def test_selector_limits_node_merging_and_disables_initializer_dedup(h):
    w = np.ones(2, np.float32)
    m = h.model([h.node("Relu", ["x"], ["a"]), h.node("Relu", ["x"], ["b"]), h.node("Neg", ["x"], ["c"]),
                 h.node("Neg", ["x"], ["d"]), h.node("Add", ["x", "w1"], ["e"]), h.node("Add", ["x", "w2"], ["f"]),
                 h.node("Sum", ["a", "b", "c", "d", "e", "f"], ["y"])],
                [("x", F32, [2])], [("y", F32, [2])], [h.init("w1", w), h.init("w2", w.copy())])
    r = h.check(m, "cse", {"merged_nodes": 1}, ctx=PassContext(selector=Selector(op_types=("Neg",))))
    assert r.ops().count("Neg") == 1 and r.ops().count("Relu") == 2 and r.ops().count("Add") == 2


def test_nothing_to_merge_is_byte_identical(h):
    m = h.model([h.node("Relu", ["x"], ["a"]), h.node("Neg", ["a"], ["y"])], [("x", F32, [2])], [("y", F32, [2])])
    h.check_noop(m, "cse")
