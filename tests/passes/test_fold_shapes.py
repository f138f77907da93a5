"""fold_shapes: Shape/Size and the integer arithmetic on them become constants entry by entry."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh

TP = onnx.TensorProto
F32, I64 = TP.FLOAT, TP.INT64


def test_static_shape_feeding_a_reshape(h):
    m = h.model([h.node("Shape", ["x"], ["s"]), h.node("Relu", ["x2"], ["r"]), h.node("Reshape", ["r", "s"], ["y"])],
                [("x", F32, [2, 3]), ("x2", F32, [6])], [("y", F32, [2, 3])])
    r = h.check(m, "fold_shapes", {"folded_shapes": 1, "folded_values": 1, "removed_nodes": 1})
    assert r.ops() == ["Relu", "Reshape"]
    np.testing.assert_array_equal(r.graph.initializers["s"].const.numpy(), [2, 3])


def test_partially_static_shape_folds_the_static_entries(h):
    # x: [N, 3, H, W]: Gather(Shape(x), 1) is 3 although N, H, W are unknown.
    m = h.model([h.node("Shape", ["x"], ["s"]),
                 h.node("Gather", ["s", "one"], ["c"], axis=0),
                 h.node("Gather", ["s", "zero"], ["n"], axis=0),
                 h.node("Unsqueeze", ["c", "ax"], ["c1"]), h.node("Unsqueeze", ["n", "ax"], ["n1"]),
                 h.node("Concat", ["n1", "c1", "minus1"], ["target"], axis=0),
                 h.node("Reshape", ["x", "target"], ["y"])],
                [("x", F32, ["N", 3, "H", "W"])], [("y", F32, [None, 3, None])],
                [h.init("one", np.array(1, np.int64)), h.init("zero", np.array(0, np.int64)),
                 h.init("ax", np.array([0], np.int64)), h.init("minus1", np.array([-1], np.int64))])
    r = h.check(m, "fold_shapes", {"folded_values": 1, "removed_nodes": 2})
    assert r.ops() == ["Shape", "Gather", "Unsqueeze", "Concat", "Reshape"]
    np.testing.assert_array_equal(r.graph.initializers["c1"].const.numpy(), [3])


def test_shape_start_end_slice_cast_and_arithmetic(h):
    m = h.model([h.node("Shape", ["x"], ["s"], start=1, end=-1),                       # [3, 4]
                 h.node("Slice", ["s", "st", "en"], ["sl"]),                            # [4]
                 h.node("Mul", ["sl", "two"], ["m"]),                                   # [8]
                 h.node("Cast", ["m"], ["mf"], to=F32),
                 h.node("Add", ["x2", "mf"], ["y"])],
                [("x", F32, ["N", 3, 4, "W"]), ("x2", F32, [1])], [("y", F32, [1])],
                [h.init("st", np.array([-1], np.int64)), h.init("en", np.array([2**63 - 1], np.int64)),
                 h.init("two", np.array(2, np.int64))])
    r = h.check(m, "fold_shapes", {"folded_shapes": 1, "folded_values": 1, "removed_nodes": 4})
    assert r.ops() == ["Add"]
    np.testing.assert_array_equal(r.graph.initializers["mf"].const.numpy(), np.array([8.0], np.float32))


def test_size(h):
    m = h.model([h.node("Size", ["x"], ["n"]), h.node("Cast", ["n"], ["nf"], to=F32), h.node("Mul", ["x", "nf"], ["y"])],
                [("x", F32, [2, 5])], [("y", F32, [2, 5])])
    h.check(m, "fold_shapes", {"folded_shapes": 1, "folded_values": 1, "removed_nodes": 2})


def test_shape_that_is_a_graph_output_keeps_its_name(h):
    m = h.model([h.node("Shape", ["x"], ["y"])], [("x", F32, [2, 3])], [("y", I64, [2])])
    r = h.check(m, "fold_shapes", {"folded_shapes": 1, "folded_values": 1, "removed_nodes": 1})
    assert r.ops() == [] and r.graph.outputs[0].name == "y"


def test_unknown_dims_leave_everything(h):
    m = h.model([h.node("Shape", ["x"], ["s"]), h.node("Gather", ["s", "zero"], ["n"], axis=0),
                 h.node("Cast", ["n"], ["nf"], to=F32), h.node("Add", ["x", "nf"], ["y"])],
                [("x", F32, ["N", 3])], [("y", F32, ["N", 3])], [h.init("zero", np.array(0, np.int64))])
    h.check_noop(m, "fold_shapes")


def test_constants_alone_are_left_to_fold_constants(h):
    m = h.model([h.node("Gather", ["s", "zero"], ["n"], axis=0), h.node("Cast", ["n"], ["nf"], to=F32),
                 h.node("Add", ["x", "nf"], ["y"])],
                [("x", F32, [2])], [("y", F32, [2])],
                [h.init("s", np.array([4, 5], np.int64)), h.init("zero", np.array(0, np.int64))])
    h.check_noop(m, "fold_shapes")


def test_inside_a_subgraph(h):
    then = oh.make_graph([oh.make_node("Shape", ["x"], ["s"]), oh.make_node("Cast", ["s"], ["sf"], to=F32),
                          oh.make_node("Mul", ["x", "sf"], ["t"])], "then", [], [h.vi("t", F32, [3])])
    other = oh.make_graph([oh.make_node("Neg", ["x"], ["e"])], "else", [], [h.vi("e", F32, [3])])
    m = h.model([h.node("If", ["c"], ["y"], then_branch=then, else_branch=other)],
                [("x", F32, [3]), ("c", TP.BOOL, [])], [("y", F32, [3])])
    r = h.check(m, "fold_shapes", {"folded_shapes": 1, "folded_values": 1, "removed_nodes": 2},
                feeds={"x": np.ones(3, np.float32), "c": np.array(True)})
    assert [n.op_type for n in r.graph.nodes[0].attr("then_branch").nodes] == ["Mul"]


def test_nothing_to_fold_is_byte_identical(h):
    m = h.model([h.node("Relu", ["x"], ["y"])], [("x", F32, [2])], [("y", F32, [2])])
    h.check_noop(m, "fold_shapes")
