"""prune.channels: the channel dependency analysis on zoo models, generated graphs and small
hand-built graphs (what must be coupled, what must be pinned, and that every channel map
describes the tensor it is attached to).

Zoo models (onnx/backend/test/data/light) hold their weights as ConstantOfShape outputs;
`cleanup` lifts them to initializers first, so the analysis sees constant weights. Nothing
here runs the pass: the analysis is checked against the models' structure and, for the
generated graphs, against the shapes onnxruntime actually produces.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest

import homec
from homec.ir import Graph
from homec.prune import channels as C
from homec.prune import select as S
from homec.testing.graphgen import random_model
from homec.testing.oracle import random_feeds, run_ort

ZOO_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
F32 = onnx.TensorProto.FLOAT
I64 = onnx.TensorProto.INT64


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _cleaned_zoo(name: str) -> bytes:
    """The zoo model after `cleanup` (weights lifted to initializers), serialized."""
    return homec.compile(str(ZOO_DIR / f"light_{name}.onnx"), "schedule { cleanup }").model.SerializeToString()


@functools.lru_cache(maxsize=None)
def _zoo_analysis(name: str) -> tuple[Graph, C.Analysis]:
    """Graph and analysis of a cleaned zoo model (static input shapes: the declared ones)."""
    g = homec.load(_cleaned_zoo(name))
    return g, C.analyze(g, C.InferredTypes(g, {}))


def _roots(a: C.Analysis, atoms: np.ndarray) -> set[int]:
    return set(a.parent[atoms].tolist())


def _is_pinned(a: C.Analysis, atoms: np.ndarray) -> bool:
    return all(r in a.pins for r in _roots(a, atoms))


def _reasons(a: C.Analysis, atoms: np.ndarray) -> list[str]:
    return [reason for r in sorted(_roots(a, atoms)) for reason in a.pins.get(r, [])]


def _producer_of_node(a: C.Analysis, g: Graph, node) -> C.Producer | None:
    index = g.nodes.index(node)
    return next((p for p in a.producers if p.node_index == index), None)


def _output_channels(node) -> int:
    """Output channels of a weight-bearing node, read from its weight (independently of the
    analysis): Conv [M, C/g, ...], ConvTranspose [C, M/g, ...], Gemm B [K, N] or [N, K]."""
    w = node.inputs[1].const.shape
    if node.op_type == "Conv":
        return int(w[0])
    if node.op_type == "ConvTranspose":
        return int(w[1]) * int(node.attr("group", 1) or 1)
    if node.op_type == "Gemm":
        return int(w[0] if node.attr("transB", 0) else w[1])
    return int(w[-1])  # MatMul [K, N]


def _source(g: Graph, value):
    """The node behind `value`, looking through channel-preserving unary ops."""
    node = value.producer
    while node is not None and node.op_type in ("Relu", "Identity", "Dropout", "Clip"):
        node = node.inputs[0].producer
    return node


def _model(nodes, inputs, outputs, inits, opset: int = 17) -> onnx.ModelProto:
    g = oh.make_graph(nodes, "g", inputs, outputs, inits)
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def _weights(seed: int, *shapes) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]


def _analyze_model(m: onnx.ModelProto) -> tuple[Graph, C.Analysis]:
    g = homec.load(m)
    return g, C.analyze(g, C.InferredTypes(g, {}))


# ---------------------------------------------------------------------------------------
# Zoo models
# ---------------------------------------------------------------------------------------


def test_resnet50_residual_streams_join_their_writers():
    """ResNet-50 has four stages of 3, 4, 6 and 3 bottleneck blocks. The channels of a stage's
    residual stream are written by the projection shortcut and by every block's last 1x1
    conv, so each stream is one group with blocks + 1 producers, and each class of it holds
    exactly one channel of every writer (channel i of all of them is added together)."""
    g, a = _zoo_analysis("resnet50")
    groups = S.make_groups(a)
    streams = [gr for gr in groups if len(gr.key) > 1]
    assert sorted(len(gr.key) for gr in streams) == sorted(n + 1 for n in (3, 4, 6, 3))
    classes = a.classes()
    for gr in streams:
        assert all(a.producers[p].op_type == "Conv" for p in gr.key)
        widths = {len(a.producers[p].atoms) for p in gr.key}
        assert len(widths) == 1, f"writers of one stream differ in width: {widths}"
        assert gr.total == widths.pop()
        for root in gr.roots.tolist():
            owners = sorted(a.atom_producer[classes[root]].tolist())
            assert owners == sorted(gr.key), "a stream class must hold one channel per writer"
    # plain convs (inside the blocks) are groups of their own
    assert any(len(gr.key) == 1 for gr in groups)


def test_resnet50_classifier_is_pinned():
    """The last layer (Gemm) feeds a Softmax over its channels: its classes stay whole."""
    g, a = _zoo_analysis("resnet50")
    last = a.producers[-1]
    assert last.op_type == "Gemm"
    assert _is_pinned(a, last.atoms)
    assert any("Softmax" in r for r in _reasons(a, last.atoms))
    assert not any(a.producers.index(last) in gr.key for gr in S.make_groups(a))


def test_densenet121_classifier_reaching_the_output_is_pinned():
    """DenseNet-121 ends in a 1x1 Conv whose output is the graph output."""
    g, a = _zoo_analysis("densenet121")
    last = a.producers[-1]
    assert g.nodes[last.node_index].outputs[0].is_graph_output
    assert _is_pinned(a, last.atoms)
    assert any(r.startswith("reaches graph output") for r in _reasons(a, last.atoms))


@pytest.mark.parametrize("name", ["resnet50", "squeezenet", "densenet121", "inception_v1"])
def test_atoms_are_exactly_the_producer_channels(name):
    """Every atom is one output channel of one producer (these models read their input image
    only through a Conv, so no untracked channels appear), producers are every Conv/Gemm with
    a constant weight, and producer i owns exactly its own atoms."""
    g, a = _zoo_analysis(name)
    weighted = [n for n in g.nodes if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")
                and len(n.inputs) > 1 and n.inputs[1] is not None and n.inputs[1].const is not None]
    assert len(a.producers) == len(weighted)
    assert a.atom_count == sum(_output_channels(n) for n in weighted)
    assert (a.atom_producer >= 0).all()
    for i, p in enumerate(a.producers):
        assert len(p.atoms) == _output_channels(g.nodes[p.node_index])
        assert (a.atom_producer[p.atoms] == i).all()


def _shuffles(g: Graph) -> list:
    """The first Reshape of each Reshape -> Transpose -> Reshape channel shuffle."""
    out = []
    for n in g.nodes:
        if n.op_type != "Reshape":
            continue
        users = n.outputs[0].users
        if len(users) == 1 and users[0].op_type == "Transpose":
            after = users[0].outputs[0].users
            if len(after) == 1 and after[0].op_type == "Reshape":
                out.append(n)
    return out


def test_shufflenet_channel_shuffles_pin_their_channels():
    """ShuffleNet v1 regroups channels with Reshape -> Transpose -> Reshape. The channels
    entering a shuffle cannot lose an index without reordering every group, so each class
    reaching a shuffle is pinned with the shuffle named, the depthwise conv after it reads
    channels no producer can shrink (untracked, pinned), and no prunable class reaches any
    shuffle."""
    g, a = _zoo_analysis("shufflenet")
    shuffles = _shuffles(g)
    assert len(shuffles) == 16  # one per ShuffleNet unit
    prunable = {int(r) for gr in S.make_groups(a) for r in gr.roots}
    assert prunable, "the residual stream between the shuffles stays prunable"
    for reshape in shuffles:
        cm = a.maps.get(reshape.inputs[0].name)
        assert cm is not None, f"no channel map reaches shuffle `{C.label(reshape)}`"
        assert _is_pinned(a, cm.atoms)
        assert any(f"Reshape `{C.label(reshape)}`" in r and "shuffle" in r for r in _reasons(a, cm.atoms))
        assert not (_roots(a, cm.atoms) & prunable)
        # the shuffled tensor carries no map; the depthwise conv reading it makes fresh atoms
        second = reshape.outputs[0].users[0].outputs[0].users[0]
        assert second.outputs[0].name not in a.maps
        dw = second.outputs[0].users[0]
        assert dw.op_type == "Conv" and dw.attr("group", 1) > 1
        dw_map = a.maps[dw.outputs[0].name]
        assert (a.atom_producer[dw_map.atoms] == -1).all()
        assert _is_pinned(a, dw_map.atoms)


def test_squeezenet_concat_maps_are_offset_ranges():
    """A fire module concatenates its expand1x1 and expand3x3 convs along the channels: the
    Concat's map is their atoms side by side (channel k of the second conv sits at offset
    len(first) + k), each expand conv stays its own group, and the next squeeze conv
    consumes the concatenated atoms in that order."""
    g, a = _zoo_analysis("squeezenet")
    concats = [n for n in g.nodes if n.op_type == "Concat"]
    assert len(concats) == 8  # fire2 .. fire9
    groups = {gr.key for gr in S.make_groups(a)}
    for cat in concats:
        sources = [_source(g, v) for v in cat.inputs]
        assert all(s is not None and s.op_type == "Conv" for s in sources)
        producers = [_producer_of_node(a, g, s) for s in sources]
        cm = a.maps[cat.outputs[0].name]
        assert cm.axis == 1
        np.testing.assert_array_equal(cm.atoms, np.concatenate([p.atoms for p in producers]))
        offset = 0
        for p in producers:  # offset ranges: the producer's atoms at its slot, in order
            np.testing.assert_array_equal(cm.atoms[offset:offset + len(p.atoms)], p.atoms)
            offset += len(p.atoms)
            assert (a.producers.index(p),) in groups
        readers = [c for c in a.consumers if set(c.atoms.tolist()) == set(cm.atoms.tolist())]
        assert readers, f"nothing consumes the channels of `{C.label(cat)}`"
        for c in readers:
            np.testing.assert_array_equal(c.atoms, cm.atoms)


# ---------------------------------------------------------------------------------------
# Generated graphs: maps agree with the shapes onnxruntime computes
# ---------------------------------------------------------------------------------------

# Seeds of random_model(seed, max_nodes=60): residual streams, depthwise and grouped convs,
# Concat/Split/Slice on the channels, ConvTranspose, Gemm/MatMul heads; and the seeds that
# exposed analysis errors (Flatten with a negative axis: 117, 134, 302; Slice with computed
# steps: 105, 210, 213, 297, 528; a QDQ zero point computed by a node: 278, 420).
MAP_SEEDS = (36, 62, 163, 190, 40, 74, 121, 146, 293, 253, 105, 117, 134, 210, 213, 278, 297,
             302, 420, 528)
OPSETS = (17, 17, 17, 13, 15, 18, 19, 21)


@functools.lru_cache(maxsize=None)
def _generated(seed: int, form: str) -> bytes:
    m = random_model(seed, max_nodes=60, opset=OPSETS[seed % len(OPSETS)])
    if form == "cleanup":
        m = homec.compile(m, "schedule { cleanup }").model
    return m.SerializeToString()


def _runtime_shapes(m: onnx.ModelProto, feeds) -> dict[str, tuple[int, ...]]:
    """Every node output's shape as onnxruntime computes it."""
    probe = onnx.ModelProto()
    probe.CopyFrom(m)
    have = {o.name for o in probe.graph.output}
    names = [o for n in probe.graph.node for o in n.output if o and o not in have]
    for name in names:
        probe.graph.output.append(onnx.ValueInfoProto(name=name))
    outs = run_ort(probe, feeds)
    return {o.name: tuple(v.shape) for o, v in zip(probe.graph.output, outs)}


@pytest.mark.parametrize("form", ["raw", "cleanup"])
@pytest.mark.parametrize("seed", MAP_SEEDS)
def test_maps_match_runtime_shapes(seed, form):
    """Each channel map names an axis the tensor has, with as many atoms as the tensor has
    entries along it (a wrong axis or length would make the rewrite slice the wrong thing
    and stamp wrong shapes on the graph)."""
    m = onnx.load_from_string(_generated(seed, form))
    feeds = random_feeds(m, seed)
    g = homec.load(m)
    shapes = {v.name: feeds[v.name].shape for v in g.inputs if not v.is_initializer}
    a = C.analyze(g, C.InferredTypes(g, shapes))
    actual = _runtime_shapes(m, feeds)
    wrong = []
    for name, cm in a.maps.items():
        if name not in actual:
            continue
        shape = actual[name]
        if cm.axis >= len(shape) or shape[cm.axis] != len(cm.atoms):
            producer = g.value(name).producer
            wrong.append(f"`{name}` ({producer.op_type if producer else 'input'}): map axis "
                         f"{cm.axis} with {len(cm.atoms)} atoms, runtime shape {shape}")
    assert not wrong, "\n".join(wrong[:5])


@pytest.mark.parametrize("form", ["raw", "cleanup"])
@pytest.mark.parametrize("seed", MAP_SEEDS)
def test_slice_edits_target_constants(seed, form):
    """The rewrite slices the inputs named by "slice" edits as constants: each must be one,
    with as many entries along the edited axis as the edit has atoms."""
    m = onnx.load_from_string(_generated(seed, form))
    g = homec.load(m)
    a = C.analyze(g, C.InferredTypes(g, {}))
    nodes = g.nodes
    for e in a.edits:
        if e.kind != "slice":
            continue
        v = nodes[e.node_index].inputs[e.slot]
        where = f"{nodes[e.node_index].op_type} `{a.node_names[e.node_index]}` input {e.slot}"
        assert v is not None and v.const is not None, f"{where} is not a constant"
        assert v.const.shape[e.axis] == len(e.atoms), where


# ---------------------------------------------------------------------------------------
# Small hand-built graphs
# ---------------------------------------------------------------------------------------


def test_flatten_with_a_negative_axis_keeps_the_channels_on_axis_1():
    """Flatten(axis=-3) of [1, 4, 1, 1] is Flatten(axis=1): [1, 4], channels on axis 1, read by
    a Gemm (so the conv stays prunable)."""
    w1, w2 = _weights(0, (4, 3, 1, 1), (2, 4))
    m = _model(
        [oh.make_node("Conv", ["x", "w1"], ["a"]),
         oh.make_node("GlobalAveragePool", ["a"], ["p"]),
         oh.make_node("Flatten", ["p"], ["f"], axis=-3),
         oh.make_node("Gemm", ["f", "w2"], ["y"], transB=1)],
        [oh.make_tensor_value_info("x", F32, [1, 3, 5, 5])],
        [oh.make_tensor_value_info("y", F32, [1, 2])],
        [onh.from_array(w1, "w1"), onh.from_array(w2, "w2")])
    g, a = _analyze_model(m)
    cm = a.maps["f"]
    assert (cm.axis, len(cm.atoms)) == (1, 4)
    conv = a.producers[0]
    assert not _is_pinned(a, conv.atoms)
    assert any(c.op_type == "Gemm" for c in a.consumers)


def test_slice_with_computed_steps_is_not_read_as_unit_steps():
    """A Slice whose steps come from a node (not an initializer) may step backwards: here it
    reverses the 6 channels. The analysis cannot know the order, so the channels must be
    pinned (reading the steps as 1 maps an empty range and breaks the rewrite)."""
    w1, w2 = _weights(1, (6, 3, 1, 1), (2, 6, 1, 1))
    steps = onh.from_array(np.array([-1], np.int64), "steps_value")
    m = _model(
        [oh.make_node("Conv", ["x", "w1"], ["a"]),
         oh.make_node("Constant", [], ["steps"], value=steps),
         oh.make_node("Slice", ["a", "starts", "ends", "axes", "steps"], ["s"]),
         oh.make_node("Conv", ["s", "w2"], ["y"])],
        [oh.make_tensor_value_info("x", F32, [1, 3, 5, 5])],
        [oh.make_tensor_value_info("y", F32, [1, 2, 5, 5])],
        [onh.from_array(w1, "w1"), onh.from_array(w2, "w2"),
         onh.from_array(np.array([-1], np.int64), "starts"),
         onh.from_array(np.array([np.iinfo(np.int64).min], np.int64), "ends"),
         onh.from_array(np.array([1], np.int64), "axes")])
    g, a = _analyze_model(m)
    assert g.value("steps").const is None  # the premise: a computed input
    conv = a.producers[0]
    assert _is_pinned(a, conv.atoms), "a Slice with unknown steps must pin the channels"
    assert not any(e.kind == "slice_range" for e in a.edits)


def test_qdq_zero_point_computed_by_a_node_is_not_sliced():
    """Per-channel QuantizeLinear/DequantizeLinear whose zero point is a Constant node output:
    the rewrite cannot slice a computed tensor, so the analysis must not ask it to (pin
    instead, or keep it out of the edits)."""
    w1, w2 = _weights(2, (4, 3, 1, 1), (2, 4, 1, 1))
    zp = onh.from_array(np.zeros(4, np.int8), "zp_value")
    m = _model(
        [oh.make_node("Conv", ["x", "w1"], ["a"]),
         oh.make_node("Constant", [], ["zp"], value=zp),
         oh.make_node("QuantizeLinear", ["a", "scale", "zp"], ["q"], axis=1),
         oh.make_node("DequantizeLinear", ["q", "scale", "zp"], ["d"], axis=1),
         oh.make_node("Conv", ["d", "w2"], ["y"])],
        [oh.make_tensor_value_info("x", F32, [1, 3, 5, 5])],
        [oh.make_tensor_value_info("y", F32, [1, 2, 5, 5])],
        [onh.from_array(w1, "w1"), onh.from_array(w2, "w2"),
         onh.from_array(np.full(4, 0.05, np.float32), "scale")])
    g, a = _analyze_model(m)
    nodes = g.nodes
    for e in a.edits:
        if e.kind == "slice":
            v = nodes[e.node_index].inputs[e.slot]
            assert v.const is not None, (f"slice edit on computed input `{v.name}` of "
                                         f"{nodes[e.node_index].op_type}")


def _shape_reader(start: int | None, gather: int | None) -> onnx.ModelProto:
    """Conv(4 channels) -> Relu -> Conv, and Shape(start) of the Relu output exposed as a graph
    output (through Gather(gather) when given)."""
    w1, w2 = _weights(3, (4, 3, 1, 1), (2, 4, 1, 1))
    shape_kw = {} if start is None else {"start": start}
    nodes = [oh.make_node("Conv", ["x", "w1"], ["a"]), oh.make_node("Relu", ["a"], ["r"]),
             oh.make_node("Conv", ["r", "w2"], ["y"]), oh.make_node("Shape", ["r"], ["s"], **shape_kw)]
    inits = [onh.from_array(w1, "w1"), onh.from_array(w2, "w2")]
    if gather is None:
        n = 4 - (0 if start is None else (start + 4 if start < 0 else start))
        out = oh.make_tensor_value_info("s", I64, [n])
    else:
        nodes.append(oh.make_node("Gather", ["s", "i"], ["c"]))
        inits.append(onh.from_array(np.array(gather, np.int64), "i"))
        out = oh.make_tensor_value_info("c", I64, [])
    return _model(nodes, [oh.make_tensor_value_info("x", F32, [1, 3, 5, 5])],
                  [oh.make_tensor_value_info("y", F32, [1, 2, 5, 5]), out], inits)


@pytest.mark.parametrize("start, gather", [(1, 0), (-3, 0), (-4, 1), (None, 1)],
                         ids=["start1", "start-3", "start-4", "default"])
def test_shape_reading_the_channel_count_pins_the_channels(start, gather):
    """Shape(start) followed by Gather of the channel dim reads the channel count: a negative
    start counts from the back (start=-3 on rank 4 is 1), so every case reads dim 1."""
    g, a = _analyze_model(_shape_reader(start, gather))
    conv = a.producers[0]
    assert _is_pinned(a, conv.atoms)
    assert any("reads the channel count" in r for r in _reasons(a, conv.atoms))


@pytest.mark.parametrize("start", [None, 1], ids=["default", "start1"])
def test_shape_as_a_graph_output_pins_the_channels(start):
    """A Shape output that is itself a graph output exposes the channel count: removing a
    channel would change that output."""
    g, a = _analyze_model(_shape_reader(start, None))
    conv = a.producers[0]
    assert _is_pinned(a, conv.atoms)


def test_grouped_conv_couples_local_indices_and_keeps_groups_equal():
    """Conv(8 -> 8, group 2) after a plain conv: local input channel j of both groups is one
    class (4 classes of width 2 upstream), and so are its own outputs j and 4 + j."""
    w1, w2, w3 = _weights(4, (8, 3, 1, 1), (8, 4, 1, 1), (2, 8, 1, 1))
    m = _model(
        [oh.make_node("Conv", ["x", "w1"], ["a"]),
         oh.make_node("Conv", ["a", "w2"], ["b"], group=2),
         oh.make_node("Conv", ["b", "w3"], ["y"])],
        [oh.make_tensor_value_info("x", F32, [1, 3, 5, 5])],
        [oh.make_tensor_value_info("y", F32, [1, 2, 5, 5])],
        [onh.from_array(w1, "w1"), onh.from_array(w2, "w2"), onh.from_array(w3, "w3")])
    g, a = _analyze_model(m)
    first, grouped = a.producers[0], a.producers[1]
    for p in (first, grouped):
        roots = a.parent[p.atoms]
        np.testing.assert_array_equal(roots[:4], roots[4:])
        assert len(set(roots.tolist())) == 4
    groups = S.make_groups(a)
    assert sorted((gr.total, gr.width) for gr in groups) == [(4, 2), (4, 2)]
    assert math.prod(gr.width for gr in groups) == 4
