"""fuse_matmul_add: MatMul(A 2-D, B const) + bias -> Gemm, never deleting a used value."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

TP = onnx.TensorProto
F32 = TP.FLOAT
RNG = np.random.default_rng(3)


def _model(h, c_shape=(5,), *, a_shape=(4, 3), bias_first=False, extra_nodes=(), extra_outputs=(),
           dtype=np.float32, elem=F32, out_shape=None):
    inits = [h.init("B", RNG.normal(size=(3, 5)).astype(dtype)), h.init("c", RNG.normal(size=c_shape).astype(dtype))]
    add_in = ["c", "mm"] if bias_first else ["mm", "c"]
    out_shape = out_shape or [a_shape[0] if isinstance(a_shape[0], int) else None, 5]
    return h.model([h.node("MatMul", ["a", "B"], ["mm"]), h.node("Add", add_in, ["s"]),
                    h.node("Relu", ["s"], ["y"]), *extra_nodes],
                   [("a", elem, list(a_shape))], [("y", elem, out_shape), *extra_outputs], inits)


@pytest.mark.parametrize("c_shape", [(5,), (1, 5), (4, 5), (4, 1), (1,), (), (1, 1)])
def test_fuses_with_broadcastable_bias(h, c_shape):
    r = h.check(_model(h, c_shape), "fuse_matmul_add", {"fused": 1})
    assert r.ops() == ["Gemm", "Relu"]


def test_bias_on_the_left(h):
    r = h.check(_model(h, bias_first=True), "fuse_matmul_add", {"fused": 1})
    assert r.ops() == ["Gemm", "Relu"]


def test_add_output_that_is_a_graph_output_keeps_its_name(h):
    inits = [h.init("B", RNG.normal(size=(3, 5)).astype(np.float32)), h.init("c", np.ones(5, np.float32))]
    m = h.model([h.node("MatMul", ["a", "B"], ["mm"]), h.node("Add", ["mm", "c"], ["y"])],
                [("a", F32, [4, 3])], [("y", F32, [4, 5])], inits)
    r = h.check(m, "fuse_matmul_add", {"fused": 1})
    assert r.ops() == ["Gemm"] and r.graph.nodes[0].outputs[0].name == "y"


def test_matmul_output_that_is_a_graph_output_is_not_deleted(h):
    """Regression: fusing would delete `mm`, which is also a graph output."""
    r = h.check_noop(_model(h, extra_outputs=[("mm", F32, [4, 5])]), "fuse_matmul_add")
    assert r.ops() == ["MatMul", "Add", "Relu"]


def test_matmul_output_read_elsewhere_is_not_fused(h):
    m = _model(h, extra_nodes=[h.node("Neg", ["mm"], ["z"])], extra_outputs=[("z", F32, [4, 5])])
    h.check_noop(m, "fuse_matmul_add")


def test_a_not_known_to_be_2d_is_skipped(h):
    inits = [h.init("B", RNG.normal(size=(3, 5)).astype(np.float32)), h.init("c", np.ones(5, np.float32))]
    tail = [h.node("MatMul", ["a", "B"], ["mm"]), h.node("Add", ["mm", "c"], ["s"]), h.node("Relu", ["s"], ["y"])]
    m = h.model(tail, [("a", F32, [2, 4, 3])], [("y", F32, [2, 4, 5])], inits)
    h.check_noop(m, "fuse_matmul_add")
    # Squeeze without axes of symbolic dims: the rank of `a` is unknown.
    m = h.model([h.node("Squeeze", ["x"], ["a"]), *tail], [("x", F32, ["N", "M", 3])],
                [("y", F32, [None, None, None])], inits)
    h.check_noop(m, "fuse_matmul_add")


def test_bias_that_would_grow_a_dynamic_m_is_skipped(h):
    h.check_noop(_model(h, (4, 5), a_shape=("M", 3)), "fuse_matmul_add")
    h.check(_model(h, (1, 5), a_shape=("M", 3)), "fuse_matmul_add", {"fused": 1})


def test_non_constant_b_or_bias_is_skipped(h):
    m = h.model([h.node("MatMul", ["a", "b"], ["mm"]), h.node("Add", ["mm", "c"], ["s"]), h.node("Relu", ["s"], ["y"])],
                [("a", F32, [4, 3]), ("b", F32, [3, 5]), ("c", F32, [5])], [("y", F32, [4, 5])])
    h.check_noop(m, "fuse_matmul_add")


def test_integer_matmul_is_skipped(h):
    h.check_noop(_model(h, dtype=np.int32, elem=TP.INT32), "fuse_matmul_add")


def test_nothing_to_fuse_is_byte_identical(h):
    m = h.model([h.node("MatMul", ["a", "B"], ["mm"]), h.node("Relu", ["mm"], ["y"])],
                [("a", F32, [4, 3])], [("y", F32, [4, 5])], [h.init("B", np.ones((3, 5), np.float32))])
    h.check_noop(m, "fuse_matmul_add")
