"""eliminate_identity: no-op nodes bypassed, cancelling pairs removed, lossless Cast chains."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import pytest

from homec.context import PassContext, Selector
from homec.passes.eliminate_identity import lossless, slice_is_everything

TP = onnx.TensorProto
F32, I64 = TP.FLOAT, TP.INT64
BIG64 = 2**63 - 1
BIG32 = 2**31 - 1


def _unary(h, nodes, in_shape, out_shape, inits=(), opset=17, in_type=F32, out_type=F32):
    return h.model(nodes, [("x", in_type, in_shape)], [("y", out_type, out_shape)], inits, opset=opset)


def test_identity_chain(h):
    m = _unary(h, [h.node("Identity", ["x"], ["a"]), h.node("Relu", ["a"], ["b"]),
                   h.node("Identity", ["b"], ["c"]), h.node("Neg", ["c"], ["y"])], [2], [2])
    r = h.check(m, "eliminate_identity", {"identity": 2})
    assert r.ops() == ["Relu", "Neg"]


def test_identity_producing_a_graph_output_renames_its_input(h):
    m = _unary(h, [h.node("Relu", ["x"], ["a"]), h.node("Identity", ["a"], ["y"])], [2], [2])
    r = h.check(m, "eliminate_identity", {"identity": 1})
    assert r.ops() == ["Relu"] and r.graph.nodes[0].outputs[0].name == "y"


def test_identity_between_input_and_output_stays(h):
    h.check_noop(_unary(h, [h.node("Identity", ["x"], ["y"])], [2], [2]), "eliminate_identity")


def test_identity_whose_input_is_also_an_output_stays(h):
    m = h.model([h.node("Relu", ["x"], ["a"]), h.node("Identity", ["a"], ["y"])],
                [("x", F32, [2])], [("a", F32, [2]), ("y", F32, [2])])
    h.check_noop(m, "eliminate_identity")


def test_identity_returning_an_outer_value_from_a_branch_stays(h):
    then = oh.make_graph([oh.make_node("Identity", ["x"], ["t"])], "then", [], [h.vi("t", F32, [2])])
    other = oh.make_graph([oh.make_node("Neg", ["x"], ["e0"]), oh.make_node("Identity", ["e0"], ["e"])],
                          "else", [], [h.vi("e", F32, [2])])
    m = h.model([h.node("If", ["c"], ["y"], then_branch=then, else_branch=other)],
                [("x", F32, [2]), ("c", TP.BOOL, [])], [("y", F32, [2])])
    r = h.check(m, "eliminate_identity", {"identity": 1}, feeds={"x": np.ones(2, np.float32), "c": np.array(False)})
    assert [n.op_type for n in r.graph.nodes[0].attr("then_branch").nodes] == ["Identity"]
    assert [n.op_type for n in r.graph.nodes[0].attr("else_branch").nodes] == ["Neg"]


def test_dropout_in_inference(h):
    m = _unary(h, [h.node("Dropout", ["x", "ratio"], ["a"]), h.node("Relu", ["a"], ["y"])], [4], [4],
               [h.init("ratio", np.array(0.5, np.float32))])
    h.check(m, "eliminate_identity", {"dropout": 1})
    m = _unary(h, [h.node("Dropout", ["x", "", "mode"], ["a"]), h.node("Relu", ["a"], ["y"])], [4], [4],
               [h.init("mode", np.array(False))])
    h.check(m, "eliminate_identity", {"dropout": 1})
    m = _unary(h, [h.node("Dropout", ["x"], ["a"], ratio=0.3), h.node("Relu", ["a"], ["y"])], [4], [4], opset=9)
    h.check(m, "eliminate_identity", {"dropout": 1})


def test_dropout_with_used_mask_or_training_mode_stays(h):
    m = h.model([h.node("Dropout", ["x"], ["y", "mask"])], [("x", F32, [4])],
                [("y", F32, [4]), ("mask", TP.BOOL, [4])])
    h.check_noop(m, "eliminate_identity")
    m = h.model([h.node("Dropout", ["x", "", "mode"], ["y"])], [("x", F32, [4]), ("mode", TP.BOOL, [])],
                [("y", F32, [4])])
    h.check_noop(m, "eliminate_identity")


def test_cast_to_the_same_type(h):
    m = _unary(h, [h.node("Cast", ["x"], ["a"], to=F32), h.node("Relu", ["a"], ["y"])], [3], [3])
    h.check(m, "eliminate_identity", {"cast": 1})
    m = _unary(h, [h.node("CastLike", ["x", "t"], ["a"]), h.node("Relu", ["a"], ["y"])], [3], [3],
               [h.init("t", np.zeros(1, np.float32))])
    h.check(m, "eliminate_identity", {"cast": 1})


def test_cast_to_another_type_stays(h):
    h.check_noop(_unary(h, [h.node("Cast", ["x"], ["y"], to=TP.FLOAT16)], [3], [3], out_type=TP.FLOAT16),
                 "eliminate_identity")


def test_lossy_cast_chain_is_not_merged(h):
    """Regression: float -> int32 -> float truncates; merging the chain would drop that."""
    m = _unary(h, [h.node("Cast", ["x"], ["a"], to=TP.INT32), h.node("Cast", ["a"], ["y"], to=F32)], [5], [5])
    h.check_noop(m, "eliminate_identity")
    feeds = {"x": np.array([0.4, 1.7, -2.5, 3.9, 100.2], np.float32)}
    (y,) = h.run_ort(m, feeds)
    np.testing.assert_array_equal(y, np.trunc(feeds["x"]))
    m = _unary(h, [h.node("Cast", ["x"], ["a"], to=TP.FLOAT16), h.node("Cast", ["a"], ["y"], to=F32)], [3], [3])
    h.check_noop(m, "eliminate_identity")


def test_lossless_cast_chain_is_merged(h):
    m = _unary(h, [h.node("Cast", ["x"], ["a"], to=TP.INT32), h.node("Cast", ["a"], ["y"], to=F32)],
               [5], [5], in_type=TP.INT8)
    r = h.check(m, "eliminate_identity", {"cast_chain": 1})
    assert r.ops() == ["Cast"]


def test_lossless_cast_roundtrip_is_removed(h):
    m = _unary(h, [h.node("Cast", ["x"], ["a"], to=F32), h.node("Cast", ["a"], ["b"], to=TP.FLOAT16),
                   h.node("Neg", ["b"], ["y"])], [3], [3], in_type=TP.FLOAT16, out_type=TP.FLOAT16)
    r = h.check(m, "eliminate_identity", {"cast_roundtrip": 1})
    assert r.ops() == ["Neg"]


def test_lossless_table():
    assert lossless(TP.INT8, TP.FLOAT16) and lossless(TP.UINT8, TP.BFLOAT16) and lossless(TP.INT32, TP.DOUBLE)
    assert not lossless(TP.INT32, F32) and not lossless(TP.INT16, TP.FLOAT16)
    assert not lossless(F32, TP.INT32) and not lossless(TP.INT8, TP.UINT8) and not lossless(F32, TP.FLOAT16)
    assert not lossless(TP.INT32, TP.BOOL) and lossless(TP.BOOL, TP.INT8)


def test_reshape_to_the_same_shape(h):
    m = _unary(h, [h.node("Reshape", ["x", "s"], ["a"]), h.node("Relu", ["a"], ["y"])], [2, 3, 4], [2, 3, 4],
               [h.init("s", np.array([2, 3, 4], np.int64))])
    h.check(m, "eliminate_identity", {"reshape": 1})
    m = h.model([h.node("Reshape", ["x", "s"], ["a"]), h.node("Relu", ["a"], ["y"])],
                [("x", F32, ["N", 3, 4])], [("y", F32, ["N", 3, 4])], [h.init("s", np.array([0, 3, -1], np.int64))])
    h.check(m, "eliminate_identity", {"reshape": 1})


def test_reshape_that_changes_the_shape_stays(h):
    m = _unary(h, [h.node("Reshape", ["x", "s"], ["y"])], [2, 3, 4], [6, 4], [h.init("s", np.array([6, 4], np.int64))])
    h.check_noop(m, "eliminate_identity")
    m = h.model([h.node("Reshape", ["x", "s"], ["a"]), h.node("Relu", ["a"], ["y"])],
                [("x", F32, ["N", 3, 4])], [("y", F32, [None, None, None])],
                [h.init("s", np.array([-1, 3, 4], np.int64))])
    h.check(m, "eliminate_identity", {"reshape": 1}, seed=1)  # -1 resolves to N: a no-op too


def test_transpose_identity_and_pairs(h):
    m = _unary(h, [h.node("Transpose", ["x"], ["a"], perm=[0, 1, 2]), h.node("Relu", ["a"], ["y"])],
               [2, 3, 4], [2, 3, 4])
    h.check(m, "eliminate_identity", {"transpose": 1})
    m = _unary(h, [h.node("Transpose", ["x"], ["a"], perm=[1, 2, 0]), h.node("Transpose", ["a"], ["b"], perm=[2, 0, 1]),
                   h.node("Relu", ["b"], ["y"])], [2, 3, 4], [2, 3, 4])
    r = h.check(m, "eliminate_identity", {"transpose_pair": 1})
    assert r.ops() == ["Relu"]
    m = _unary(h, [h.node("Transpose", ["x"], ["a"], perm=[1, 2, 0]), h.node("Transpose", ["a"], ["y"], perm=[1, 2, 0])],
               [2, 3, 4], [4, 2, 3])
    h.check_noop(m, "eliminate_identity")


def _slice_model(h, x_shape, y_shape, starts, ends, axes=None, steps=None, opset=17):
    ins, inits = ["x", "st", "en"], [h.init("st", np.array(starts, np.int64)), h.init("en", np.array(ends, np.int64))]
    if axes is not None or steps is not None:
        ins.append("ax" if axes is not None else "")
        if axes is not None:
            inits.append(h.init("ax", np.array(axes, np.int64)))
    if steps is not None:
        ins.append("sp")
        inits.append(h.init("sp", np.array(steps, np.int64)))
    return h.model([h.node("Slice", ins, ["a"]), h.node("Relu", ["a"], ["y"])],
                   [("x", F32, x_shape)], [("y", F32, y_shape)], inits, opset=opset)


@pytest.mark.parametrize("starts,ends,axes,steps", [
    ([0], [BIG64], None, None),                 # omitted axes and steps, INT64_MAX end
    ([-3], [BIG32], [-2], None),                # negative start = -dim, negative axis
    ([0, -100], [3, 4], [1, 2], [1, 1]),        # start clamped from below, end = dim
    ([-4, 0], [100, BIG64], [-1, 0], None),     # negative axes in any order
])
def test_slice_taking_everything_is_removed(h, starts, ends, axes, steps):
    h.check(_slice_model(h, [2, 3, 4], [2, 3, 4], starts, ends, axes, steps), "eliminate_identity", {"slice": 1})


@pytest.mark.parametrize("starts,ends,axes,steps,y_shape", [
    ([0], [-1], [2], None, [2, 3, 3]),          # negative end drops the last element
    ([1], [BIG64], [-1], None, [2, 3, 3]),      # positive start
    ([-1], [-BIG64], [1], [-1], [2, 3, 4]),     # reversal
    ([0], [2], [1], None, [2, 2, 4]),
])
def test_slice_taking_part_stays(h, starts, ends, axes, steps, y_shape):
    """Regression: negative or omitted starts/ends/axes must be resolved, not guessed."""
    h.check_noop(_slice_model(h, [2, 3, 4], y_shape, starts, ends, axes, steps), "eliminate_identity")


def test_slice_over_an_unknown_dim(h):
    m = _slice_model(h, ["N", 3], ["N", 3], [0], [BIG32], [0])
    h.check(m, "eliminate_identity", {"slice": 1})
    h.check_noop(_slice_model(h, ["N", 3], [None, 3], [0], [100], [0]), "eliminate_identity")
    h.check_noop(_slice_model(h, ["N", 3], [None, 3], [-1], [BIG64], [0]), "eliminate_identity")


def test_slice_with_attributes_before_opset_10(h):
    m = _unary(h, [h.node("Slice", ["x"], ["a"], starts=[0, -2], ends=[BIG64, 2], axes=[0, 1]),
                   h.node("Relu", ["a"], ["y"])], [3, 2], [3, 2], opset=9)
    h.check(m, "eliminate_identity", {"slice": 1})


def test_slice_is_everything_unit():
    assert slice_is_everything((5,), [0], [5], None, None)
    assert slice_is_everything((0,), [3], [1], None, None)  # an empty axis stays empty
    assert not slice_is_everything(None, [0], [BIG64], [-1], None)  # negative axis, rank unknown
    assert slice_is_everything(None, [0], [BIG64], [0], None)
    assert not slice_is_everything((5,), [0], [5], [0], [2])


def test_pad_expand_tile_that_change_nothing(h):
    m = _unary(h, [h.node("Pad", ["x", "p"], ["a"]), h.node("Relu", ["a"], ["y"])], [2, 3], [2, 3],
               [h.init("p", np.zeros(4, np.int64))])
    h.check(m, "eliminate_identity", {"pad": 1})
    m = _unary(h, [h.node("Expand", ["x", "s"], ["a"]), h.node("Relu", ["a"], ["y"])], [2, 3], [2, 3],
               [h.init("s", np.array([1, 3], np.int64))])
    h.check(m, "eliminate_identity", {"expand": 1})
    m = _unary(h, [h.node("Tile", ["x", "r"], ["a"]), h.node("Relu", ["a"], ["y"])], [2, 3], [2, 3],
               [h.init("r", np.ones(2, np.int64))])
    h.check(m, "eliminate_identity", {"tile": 1})


def test_pad_expand_tile_that_change_something_stay(h):
    h.check_noop(_unary(h, [h.node("Pad", ["x", "p"], ["y"])], [2, 3], [2, 4],
                        [h.init("p", np.array([0, 0, 0, 1], np.int64))]), "eliminate_identity")
    h.check_noop(_unary(h, [h.node("Expand", ["x", "s"], ["y"])], [2, 3], [2, 2, 3],
                        [h.init("s", np.array([2, 1, 1], np.int64))]), "eliminate_identity")
    h.check_noop(_unary(h, [h.node("Tile", ["x", "r"], ["y"])], [2, 3], [2, 6],
                        [h.init("r", np.array([1, 2], np.int64))]), "eliminate_identity")


def test_squeeze_unsqueeze_pairs(h):
    m = _unary(h, [h.node("Unsqueeze", ["x", "ax"], ["a"]), h.node("Squeeze", ["a", "ax2"], ["b"]),
                   h.node("Relu", ["b"], ["y"])], [2, 3], [2, 3],
               [h.init("ax", np.array([0, 3], np.int64)), h.init("ax2", np.array([-1, 0], np.int64))])
    r = h.check(m, "eliminate_identity", {"squeeze_unsqueeze": 1})
    assert r.ops() == ["Relu"]
    m = _unary(h, [h.node("Squeeze", ["x"], ["a"], axes=[1]), h.node("Unsqueeze", ["a"], ["b"], axes=[-2]),
                   h.node("Relu", ["b"], ["y"])], [2, 1, 3], [2, 1, 3], opset=11)
    h.check(m, "eliminate_identity", {"squeeze_unsqueeze": 1})
    m = _unary(h, [h.node("Unsqueeze", ["x"], ["a"], axes=[0]), h.node("Squeeze", ["a"], ["y"], axes=[1])],
               [1, 3], [1, 3], opset=11)
    h.check_noop(m, "eliminate_identity")


def test_pair_whose_inner_value_is_read_elsewhere_keeps_the_inner_node(h):
    m = h.model([h.node("Transpose", ["x"], ["a"], perm=[1, 0]), h.node("Transpose", ["a"], ["b"], perm=[1, 0]),
                 h.node("Relu", ["b"], ["y"]), h.node("Neg", ["a"], ["z"])],
                [("x", F32, [2, 3])], [("y", F32, [2, 3]), ("z", F32, [3, 2])])
    r = h.check(m, "eliminate_identity", {"transpose_pair": 1})
    assert r.ops() == ["Transpose", "Relu", "Neg"]


def test_selector_restricts_the_rewrites(h):
    m = _unary(h, [h.node("Identity", ["x"], ["a"]), h.node("Transpose", ["a"], ["b"], perm=[0, 1]),
                   h.node("Relu", ["b"], ["y"])], [2, 3], [2, 3])
    r = h.check(m, "eliminate_identity", {"transpose": 1}, ctx=PassContext(selector=Selector(op_types=("Transpose",))))
    assert r.ops() == ["Identity", "Relu"]


def test_nothing_to_remove_is_byte_identical(h):
    m = _unary(h, [h.node("Relu", ["x"], ["a"]), h.node("Transpose", ["a"], ["y"], perm=[1, 0])], [2, 3], [3, 2])
    h.check_noop(m, "eliminate_identity")
