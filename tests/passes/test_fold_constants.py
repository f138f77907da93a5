"""fold_constants: Constant nodes to initializers, constant subgraphs evaluated by onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh

from homec.context import PassContext, Selector

F32, I64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64


def test_constant_node_becomes_initializer(h):
    m = h.model([h.node("Constant", [], ["c"], value=h.init("", np.arange(6, dtype=np.float32).reshape(2, 3))),
                 h.node("Add", ["x", "c"], ["y"])],
                [("x", F32, [2, 3])], [("y", F32, [2, 3])])
    r = h.check(m, "fold_constants", {"lifted_constants": 1, "new_initializers": 1})
    assert r.ops() == ["Add"]
    assert "c" in r.graph.initializers  # the folded value keeps its name


def test_constant_scalar_and_list_forms(h):
    m = h.model([h.node("Constant", [], ["a"], value_float=2.5),
                 h.node("Constant", [], ["b"], value_ints=[1, 3]),
                 h.node("Mul", ["x", "a"], ["t"]),
                 h.node("Reshape", ["t", "b"], ["y"])],
                [("x", F32, [3])], [("y", F32, [1, 3])])
    r = h.check(m, "fold_constants", {"lifted_constants": 2, "new_initializers": 2})
    assert r.ops() == ["Mul", "Reshape"]
    assert r.graph.initializers["b"].const.numpy().dtype == np.int64


def test_chain_is_evaluated_and_only_its_frontier_stored(h):
    m = h.model([h.node("Neg", ["w"], ["a"]), h.node("Exp", ["a"], ["b"]),
                 h.node("Add", ["x", "b"], ["y"])],
                [("x", F32, [4])], [("y", F32, [4])], [h.init("w", np.linspace(-1, 1, 4, dtype=np.float32))])
    r = h.check(m, "fold_constants", {"folded_nodes": 2, "new_initializers": 1})
    assert r.ops() == ["Add"]
    np.testing.assert_allclose(r.graph.initializers["b"].const.numpy(),
                               np.exp(-np.linspace(-1, 1, 4, dtype=np.float32)), rtol=1e-6)


def test_constant_of_shape_chain(h):
    m = h.model([h.node("Constant", [], ["s"], value=h.init("", np.array([2, 3], np.int64))),
                 h.node("ConstantOfShape", ["s"], ["z"], value=h.init("", np.array([0.5], np.float32))),
                 h.node("Add", ["x", "z"], ["y"])],
                [("x", F32, [2, 3])], [("y", F32, [2, 3])])
    r = h.check(m, "fold_constants", {"lifted_constants": 1, "folded_nodes": 1, "new_initializers": 2})
    assert r.ops() == ["Add"]


def test_folded_graph_output_keeps_its_name(h):
    m = h.model([h.node("Neg", ["w"], ["y"]), h.node("Relu", ["x"], ["z"])],
                [("x", F32, [2])], [("y", F32, [2]), ("z", F32, [2])], [h.init("w", np.ones(2, np.float32))])
    r = h.check(m, "fold_constants", {"folded_nodes": 1, "new_initializers": 1})
    assert [o.name for o in r.model.graph.output] == ["y", "z"]
    assert r.graph.outputs[0].is_initializer


def test_random_ops_are_not_folded(h):
    m = h.model([h.node("RandomUniform", [], ["r"], shape=[3], seed=1.0),
                 h.node("Add", ["x", "r"], ["y"])],
                [("x", F32, [3])], [("y", F32, [3])])
    h.check_noop(m, "fold_constants", expected={"skipped_nondeterministic": 1})


def test_ops_with_subgraphs_are_not_folded_but_their_bodies_are(h):
    then = oh.make_graph([h.node("Constant", [], ["k"], value_float=1.0), h.node("Neg", ["k"], ["nk"]),
                          h.node("Add", ["x", "nk"], ["t"])], "then", [], [h.vi("t", F32, [2])])
    other = oh.make_graph([h.node("Identity", ["x"], ["e"])], "else", [], [h.vi("e", F32, [2])])
    m = h.model([h.node("If", ["c"], ["y"], then_branch=then, else_branch=other)],
                [("x", F32, [2])], [("y", F32, [2])], [h.init("c", np.array(True))])
    r = h.check(m, "fold_constants",
                {"skipped_subgraph": 1, "lifted_constants": 1, "folded_nodes": 1, "new_initializers": 2})
    body = r.graph.nodes[0].attr("then_branch")
    assert [n.op_type for n in body.nodes] == ["Add"]


def test_custom_domain_is_not_folded(h):
    m = h.model([h.node("Mystery", ["w"], ["a"], domain="com.example"), h.node("Add", ["x", "a"], ["y"])],
                [("x", F32, [2])], [("y", F32, [2])], [h.init("w", np.ones(2, np.float32))],
                extra_opsets=[("com.example", 1)])
    r = h.apply(m, "fold_constants")
    assert h.changes(r.stats) == {} and r.stats["skipped_custom_domain"] == 1


def test_size_cap_predicted_from_shapes(h):
    m = h.model([h.node("ConstantOfShape", ["s"], ["z"], value=h.init("", np.array([1.0], np.float32))),
                 h.node("Add", ["x", "z"], ["y"])],
                [("x", F32, [50, 50])], [("y", F32, [50, 50])], [h.init("s", np.array([50, 50], np.int64))])
    h.check_noop(m, "fold_constants", max_output_bytes=9999, expected={"skipped_too_large": 1})
    h.check(m, "fold_constants", {"folded_nodes": 1, "new_initializers": 1}, max_output_bytes=10000)


def test_too_large_values_stay_but_small_consumers_fold(h):
    # NonZero's output size is unknown to shape inference: the cap applies after running.
    m = h.model([h.node("NonZero", ["w"], ["nz"]),
                 h.node("ReduceSum", ["nz"], ["s"], keepdims=0), h.node("Cast", ["s"], ["sf"], to=F32),
                 h.node("Add", ["x", "sf"], ["y"]),
                 h.node("Cast", ["nz"], ["big"], to=F32), h.node("Add", ["x", "big"], ["y2"])],
                [("x", F32, [1])], [("y", F32, [1]), ("y2", F32, [1, 1000])],
                [h.init("w", np.ones(1000, np.float32))])
    r = h.check(m, "fold_constants", {"folded_nodes": 2, "new_initializers": 1, "skipped_too_large": 2},
                max_output_bytes=1000)
    assert r.ops() == ["NonZero", "Add", "Cast", "Add"]


def test_overridable_initializer_is_not_a_constant(h):
    m = h.model([h.node("Neg", ["w"], ["a"]), h.node("Add", ["x", "a"], ["y"])],
                [("x", F32, [2]), ("w", F32, [2])], [("y", F32, [2])], [h.init("w", np.ones(2, np.float32))])
    h.check_noop(m, "fold_constants")


def test_ir3_initializers_are_constants_and_new_ones_are_listed_as_inputs(h):
    m = h.model([h.node("Neg", ["w"], ["a"]), h.node("Add", ["x", "a"], ["y"])],
                [("x", F32, [2]), ("w", F32, [2])], [("y", F32, [2])], [h.init("w", np.ones(2, np.float32))],
                opset=9, ir_version=3)
    r = h.check(m, "fold_constants", {"folded_nodes": 1, "new_initializers": 1})
    assert [i.name for i in r.model.graph.input] == ["x", "w", "a"]


def test_dequantize_is_kept_unless_asked(h):
    m = h.model([h.node("DequantizeLinear", ["q", "sc", "zp"], ["w"]), h.node("Add", ["x", "w"], ["y"])],
                [("x", F32, [3])], [("y", F32, [3])],
                [h.init("q", np.array([1, -2, 3], np.int8)), h.init("sc", np.array(0.5, np.float32)),
                 h.init("zp", np.array(0, np.int8))])
    h.check_noop(m, "fold_constants", expected={"skipped_dequantize": 1})
    h.check(m, "fold_constants", {"folded_nodes": 1, "new_initializers": 1}, fold_dequantize=True)


def test_selector_limits_what_folds(h):
    m = h.model([h.node("Neg", ["w"], ["a"]), h.node("Abs", ["w"], ["b"]), h.node("Add", ["a", "b"], ["c"]),
                 h.node("Add", ["x", "c"], ["y"])],
                [("x", F32, [2])], [("y", F32, [2])], [h.init("w", np.ones(2, np.float32))])
    r = h.check(m, "fold_constants", {"folded_nodes": 1, "new_initializers": 1},
                ctx=PassContext(selector=Selector(op_types=("Neg",))))
    assert sorted(r.ops()) == ["Abs", "Add", "Add"]


def test_nothing_to_fold_is_byte_identical(h):
    m = h.model([h.node("Relu", ["x"], ["a"]), h.node("Add", ["a", "w"], ["y"])],
                [("x", F32, [2])], [("y", F32, [2])], [h.init("w", np.ones(2, np.float32))])
    h.check_noop(m, "fold_constants")


def test_statistics_are_the_documented_keys():
    import homec.passes  # noqa: F401
    from homec.registry import REGISTRY

    g = homec.load(oh.make_model(oh.make_graph([], "g", [oh.make_tensor_value_info("x", F32, [1])],
                                               [oh.make_tensor_value_info("x", F32, [1])])))
    stats = REGISTRY.get("fold_constants").fn(g, PassContext())
    assert set(stats) == {"lifted_constants", "folded_nodes", "new_initializers", "skipped_too_large",
                          "skipped_nondeterministic", "skipped_subgraph", "skipped_custom_domain",
                          "skipped_non_tensor", "skipped_dequantize", "skipped_failed"}
    assert not any(stats.values())


def test_oversized_weight_is_folded_but_oversized_activation_constant_is_not():
    """The size cap guards against Tile/Expand blow-ups, not against real layer weights."""
    import onnx.helper as oh
    import homec
    from homec.context import PassContext
    from homec.registry import REGISTRY

    shape = oh.make_tensor("shape", onnx.TensorProto.INT64, [4], [8, 4, 3, 3])
    rep = oh.make_tensor("rep", onnx.TensorProto.INT64, [4], [1, 1, 64, 64])
    nodes = [
        oh.make_node("ConstantOfShape", ["shape"], ["w"], value=oh.make_tensor("v", 1, [1], [0.01])),
        oh.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]),
        oh.make_node("Tile", ["small", "rep"], ["big"]),
        oh.make_node("Add", ["y", "big"], ["z"]),
    ]
    small = oh.make_tensor("small", 1, [1, 8, 1, 1], [0.5] * 8)
    g = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", 1, [1, 4, 64, 64])],
                      [oh.make_tensor_value_info("z", 1, [1, 8, 64, 64])], [shape, rep, small])
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)])
    graph = homec.load(m)
    info = REGISTRY.get("fold_constants")
    # a cap below both the weight (1,152 B) and the tiled activation constant (128 KiB)
    st = info.fn(graph, PassContext(), **info.bind({"max_output_bytes": 1024}))
    ops = sorted(n.op_type for n in graph.nodes)
    assert ops == ["Add", "Conv", "Tile"], ops  # the weight folded, the Tile kept
    assert st["skipped_too_large"] == 1 and st["folded_nodes"] == 1
    graph2 = homec.load(m)
    st2 = info.fn(graph2, PassContext(), **info.bind({"max_output_bytes": 1024, "cap_weights": True}))
    assert sorted(n.op_type for n in graph2.nodes) == ["Add", "ConstantOfShape", "Conv", "Tile"]
