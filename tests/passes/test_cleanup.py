"""cleanup: the cleanup passes to a fixpoint; small graphs here, real models in test_real_models.py."""

from __future__ import annotations

import numpy as np
import onnx

import homec
from homec.context import PassContext
from homec.passes.cleanup import cleanup

TP = onnx.TensorProto
F32 = TP.FLOAT
RNG = np.random.default_rng(11)


def _messy_model(h):
    """Constant-fed chains, an Identity, a Dropout, duplicates, MatMul+Add, Conv+BN, dead code."""
    c = 4
    bn = [h.init("s", RNG.uniform(0.5, 1.5, c).astype(np.float32)), h.init("b", RNG.normal(size=c).astype(np.float32)),
          h.init("m", RNG.normal(size=c).astype(np.float32)), h.init("v", RNG.uniform(0.5, 2, c).astype(np.float32))]
    inits = [h.init("w", RNG.normal(size=(c, 3, 3, 3)).astype(np.float32)),
             h.init("B", RNG.normal(size=(c, 5)).astype(np.float32)),
             h.init("bias", RNG.normal(size=5).astype(np.float32)), *bn]
    nodes = [
        h.node("Constant", [], ["shape"], value=h.init("", np.array([1, c], np.int64))),
        h.node("Identity", ["x"], ["xi"]),
        h.node("Conv", ["xi", "w"], ["conv"], pads=[1, 1, 1, 1]),
        h.node("BatchNormalization", ["conv", "s", "b", "m", "v"], ["bnout"]),
        h.node("Relu", ["bnout"], ["r1"]),
        h.node("Relu", ["bnout"], ["r2"]),          # duplicate of r1
        h.node("Add", ["r1", "r2"], ["sum"]),
        h.node("GlobalAveragePool", ["sum"], ["gap"]),
        h.node("Dropout", ["gap"], ["drop"]),
        h.node("Shape", ["drop"], ["dshape"]),      # static: folds
        h.node("Slice", ["dshape", "zero", "two"], ["dshape2"]),
        h.node("Reshape", ["drop", "dshape2"], ["flat"]),
        h.node("MatMul", ["flat", "B"], ["mm"]),
        h.node("Add", ["mm", "bias"], ["y"]),
        h.node("Reshape", ["gap", "shape"], ["dead"]),  # unused
        h.node("Neg", ["dead"], ["dead2"]),
    ]
    inits += [h.init("zero", np.array([0], np.int64)), h.init("two", np.array([2], np.int64))]
    return h.model(nodes, [("x", F32, [1, 3, 6, 6])], [("y", F32, [1, 5])], inits)


def test_cleanup_reaches_a_fixpoint(h):
    m = _messy_model(h)
    r = h.check(m, "cleanup", {
        "iterations": 2,
        "fold_constants.lifted_constants": 1, "fold_constants.new_initializers": 1,
        "fold_shapes.folded_shapes": 1, "fold_shapes.folded_values": 1, "fold_shapes.removed_nodes": 2,
        "eliminate_identity.identity": 1, "eliminate_identity.dropout": 1,
        "fuse_matmul_add.fused": 1, "fold_batchnorm.folded": 1,
        # the duplicate Relu; and the folded [1, 4] equals `shape`, so the dead Reshape
        # becomes a duplicate of the live one and merges instead of dying
        "cse.merged_nodes": 2, "cse.merged_initializers": 1,
        "eliminate_dead.removed_nodes": 1, "eliminate_dead.removed_initializers": 7,
    })
    assert r.ops() == ["Conv", "Relu", "Add", "GlobalAveragePool", "Reshape", "Gemm"]


def test_cleanup_statistics_sum_changes_and_keep_last_observations(h):
    m = _messy_model(h)
    g = homec.load(m)
    stats = cleanup(g, PassContext(), max_iterations=1)
    assert stats["iterations"] == 1 and stats["iterations_unconverged"] == 1
    again = cleanup(g, PassContext())
    assert again["iterations"] == 1 and again["iterations_unconverged"] == 0
    assert not h.changes(again)


def test_cleanup_on_a_clean_graph_is_byte_identical(h):
    m = h.model([h.node("Relu", ["x"], ["a"]), h.node("Add", ["a", "w"], ["y"])],
                [("x", F32, [2])], [("y", F32, [2])], [h.init("w", np.ones(2, np.float32))])
    r = h.check_noop(m, "cleanup")
    assert r.stats["iterations"] == 1
