"""targets.memory_plan: arena offsets, in-place reuse and budgets, on hand-built graphs with
answers worked out below, random graphs and real models (with the layout invariants checked
on every plan)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest

import homec
from homec.analysis.cost import count_params
from homec.analysis.memory import peak_activation_memory
from homec.analysis.shapes import infer_shapes
from homec.errors import ExitCode, ResourceLimitError, UsageError
from homec.ir import Graph
from homec.targets.descriptor import MemoryBudget, load_target
from homec.targets.device_view import VIEW_OPS
from homec.targets.memory_plan import MemoryPlan, check_budget, format_bytes, plan_memory
from homec.testing.graphgen import random_model
from homec.testing.models import ocr_model

F32 = onnx.TensorProto.FLOAT


def model(nodes, inputs, outputs, inits=()) -> onnx.ModelProto:
    g = oh.make_graph(nodes, "g", [oh.make_tensor_value_info(*i) for i in inputs],
                      [oh.make_tensor_value_info(*o) for o in outputs], list(inits))
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def weight(name: str, *shape: int, seed: int = 0) -> onnx.TensorProto:
    return onh.from_array(np.random.default_rng(seed).normal(size=shape).astype(np.float32), name)


def plan(g: Graph, **kw) -> MemoryPlan:
    p = plan_memory(g, infer_shapes(g), **kw)
    check_layout(p, g)
    return p


def check_layout(p: MemoryPlan, g: Graph) -> None:
    """The invariants every plan keeps:
    - an alias shares its root's offset and size; offsets are aligned;
    - tensors sharing a buffer follow one another (each dies where the next is born);
    - at every step, tensors of different buffers that are both live occupy disjoint bytes;
    - an elementwise (writing) alias never overwrites a buffer holding a graph input or
      output; a graph output is never the root of a later writing alias;
    - lower bound <= arena <= no-reuse total, and the arena holds every buffer."""
    bufs = {b.name: b for b in p.buffers}
    members: dict[str, list] = {}
    for b in p.buffers:
        root = bufs[b.alias_of] if b.alias_of else b
        assert root.alias_of is None, f"{b.name}: alias of an alias"
        assert (b.offset, b.bytes) == (root.offset, root.bytes), b
        if b.bytes:
            assert b.offset % p.alignment == 0, b
            assert b.offset + b.bytes <= p.arena_bytes, b
        members.setdefault(root.name, []).append(b)
    for group in members.values():
        group.sort(key=lambda b: (b.start, b.alias_of is not None))
        for a, b in zip(group, group[1:]):
            assert a.end <= b.start, f"{a.name} is still read after {b.name} takes its buffer"
    steps = len(g.nodes)
    for step in range(steps):
        live: dict[str, tuple[int, int]] = {}
        for b in p.buffers:
            if b.bytes and b.start <= step <= b.end:
                live[b.alias_of or b.name] = (b.offset, b.offset + b.bytes)
        spans = sorted(live.values())
        for (_, end), (start, _) in zip(spans, spans[1:]):
            assert end <= start, f"overlapping buffers at step {step}: {sorted(live.items())}"
    io = {v.name for v in (*g.inputs, *g.outputs)}
    for group in members.values():
        for i, b in enumerate(group[1:], 1):
            producer = g.value(b.name).producer
            if producer is not None and producer.op_type not in VIEW_OPS:
                held = {m.name for m in group[:i]} & io
                assert not held, f"{b.name} overwrites the graph's {held}"
    assert p.lower_bound_bytes <= p.arena_bytes <= p.no_reuse_bytes


# ---------------------------------------------------------------------------------------
# Hand-built graphs
# ---------------------------------------------------------------------------------------


def matmul_chain() -> Graph:
    """x[1,10] -> MatMul w0[10,100] -> a[1,100] -> MatMul w1[100,1000] -> b -> MatMul
    w2[1000,10] -> y. Float32: x, y 40 B; a 400 B; b 4000 B."""
    nodes = [oh.make_node("MatMul", ["x", "w0"], ["a"], name="mm0"),
             oh.make_node("MatMul", ["a", "w1"], ["b"], name="mm1"),
             oh.make_node("MatMul", ["b", "w2"], ["y"], name="mm2")]
    return homec.load(model(nodes, [("x", F32, [1, 10])], [("y", F32, [1, 10])],
                            [weight("w0", 10, 100), weight("w1", 100, 1000), weight("w2", 1000, 10)]))


def test_chain_arena_is_the_largest_adjacent_pair():
    """Live per step: x+a = 440, a+b = 4400, b+y = 4040. Greedy: b (4000) at 0, a at 4000
    (overlaps b at step 1), y at 4000 (a is dead by step 2), x at 0 (b is not born yet)."""
    p = plan(matmul_chain())
    assert (p.arena_bytes, p.lower_bound_bytes, p.peak_step, p.peak_node) == (4400, 4400, 1, "mm1")
    assert {b.name: b.offset for b in p.buffers} == {"x": 0, "a": 4000, "b": 0, "y": 4000}
    assert p.largest_live == (("b", 4000), ("a", 400))
    assert p.no_reuse_bytes == 48 + 400 + 4000 + 48  # each tensor in its own 16-aligned slot
    assert p.in_place == 0 and p.unknown == ()
    assert p.weight_bytes == 4 * (1000 + 100_000 + 10_000)


def residual() -> Graph:
    """in -> stem h -> c1 a -> Relu b -> c2 c -> Add(c, h) s -> Relu y; all [1,4,8,8] f32
    (1 KiB), 1x1 convolutions. The skip tensor h lives from step 0 to step 4."""
    nodes = [oh.make_node("Conv", ["in", "w0"], ["h"], name="stem"),
             oh.make_node("Conv", ["h", "w1"], ["a"], name="c1"),
             oh.make_node("Relu", ["a"], ["b"], name="r1"),
             oh.make_node("Conv", ["b", "w2"], ["c"], name="c2"),
             oh.make_node("Add", ["c", "h"], ["s"], name="add"),
             oh.make_node("Relu", ["s"], ["y"], name="r2")]
    return homec.load(model(nodes, [("in", F32, [1, 4, 8, 8])], [("y", F32, [1, 4, 8, 8])],
                            [weight(f"w{i}", 4, 4, 1, 1, seed=i) for i in range(3)]))


def test_residual_keeps_the_skip_tensor_live():
    """In place: b -> a's buffer (a dies at r1), s -> c's (c dies at add; h is also read
    there but is not first), y -> c's (the graph output may take a dying tensor's buffer).
    Buffers: in [0,0], h [0,4], a+b [1,3], c+s+y [3,5]. Step 3 (c2 reads b, writes c while
    h waits for the add): 3 KiB, the peak; no reuse would need 7 KiB."""
    p = plan(residual())
    alias = {b.name: b.alias_of for b in p.buffers}
    assert alias == {"in": None, "h": None, "a": None, "b": "a", "c": None, "s": "c", "y": "c"}
    assert (p.arena_bytes, p.lower_bound_bytes, p.peak_step, p.peak_node) == (3072, 3072, 3, "c2")
    assert p.no_reuse_bytes == 7 * 1024 and p.in_place == 3
    assert p.largest_live == (("b", 1024), ("c", 1024), ("h", 1024))
    h = next(b for b in p.buffers if b.name == "h")
    assert (h.start, h.end) == (0, 4)
    assert p.as_dict()["buffers"][1] == {"name": "h", "bytes": 1024, "offset": h.offset, "start": 0,
                                         "end": 4, "alias_of": None}


def test_in_place_relu_shrinks_the_arena():
    """x[1,4,8,8] (1 KiB) -> 1x1 conv to 16 channels a (4 KiB) -> Relu b -> conv y (1 KiB).
    Copying: a+b = 8 KiB at the Relu. In place: b takes a's buffer; the peak is x+a or b+y,
    5 KiB."""
    nodes = [oh.make_node("Conv", ["x", "w0"], ["a"], name="up"),
             oh.make_node("Relu", ["a"], ["b"], name="relu"),
             oh.make_node("Conv", ["b", "w1"], ["y"], name="down")]
    g = homec.load(model(nodes, [("x", F32, [1, 4, 8, 8])], [("y", F32, [1, 4, 8, 8])],
                         [weight("w0", 16, 4, 1, 1), weight("w1", 4, 16, 1, 1)]))
    copying, in_place = plan(g, in_place=False), plan(g)
    assert (copying.arena_bytes, copying.lower_bound_bytes, copying.in_place) == (8192, 8192, 0)
    assert (in_place.arena_bytes, in_place.lower_bound_bytes, in_place.in_place) == (5120, 5120, 1)
    assert copying.no_reuse_bytes == in_place.no_reuse_bytes == 10 * 1024


def test_graph_input_is_never_overwritten():
    """Relu(x) must not write into the caller's x; a Reshape of x may view it (no write),
    but the Sigmoid after it must not write through that view either."""
    nodes = [oh.make_node("Relu", ["x"], ["a"], name="relu"),
             oh.make_node("Reshape", ["a", "shape"], ["r"], name="view"),
             oh.make_node("Sigmoid", ["r"], ["y"], name="sig")]
    shape = onh.from_array(np.array([4, 16], np.int64), "shape")
    g = homec.load(model(nodes, [("x", F32, [1, 64])], [("y", F32, [4, 16])], [shape]))
    assert {b.name: b.alias_of for b in plan(g).buffers} == {"x": None, "a": None, "r": "a", "y": "a"}
    nodes = [oh.make_node("Reshape", ["x", "shape"], ["r"], name="view"),
             oh.make_node("Sigmoid", ["r"], ["y"], name="sig")]
    g = homec.load(model(nodes, [("x", F32, [1, 64])], [("y", F32, [4, 16])], [shape]))
    assert {b.name: b.alias_of for b in plan(g).buffers} == {"x": None, "r": "x", "y": None}


def test_graph_output_is_never_overwritten():
    """a = Relu(x') is a graph output read by the last node: Sigmoid must not write into it
    even though a's last use is that node."""
    nodes = [oh.make_node("Neg", ["x"], ["n"], name="neg"),
             oh.make_node("Relu", ["n"], ["a"], name="relu"),
             oh.make_node("Sigmoid", ["a"], ["y"], name="sig")]
    g = homec.load(model(nodes, [("x", F32, [1, 64])], [("y", F32, [1, 64]), ("a", F32, [1, 64])]))
    p = plan(g)
    assert {b.name: b.alias_of for b in p.buffers} == {"x": None, "n": None, "a": "n", "y": None}
    assert p.arena_bytes == 2 * 256  # x+n at step 0, a+y at step 2 (y may not take a's bytes)
    y = next(b for b in p.buffers if b.name == "y")
    assert y.offset != 0 and p.buffers[0].offset != 0  # n's buffer is at 0


def test_broadcast_input_is_not_overwritten():
    """Add(a[1,4,1,1], b[1,4,8,8]): only b has the output's shape and may be written."""
    nodes = [oh.make_node("ReduceMean", ["x"], ["a"], name="mean", axes=[2, 3]),
             oh.make_node("Neg", ["x"], ["b"], name="neg"),
             oh.make_node("Add", ["a", "b"], ["y"], name="add")]
    g = homec.load(model(nodes, [("x", F32, [1, 4, 8, 8])], [("y", F32, [1, 4, 8, 8])]))
    assert {b.name: b.alias_of for b in plan(g).buffers}["y"] == "b"


def test_qdq_fused_plan_keeps_integer_tensors_across_the_fused_kernel():
    """x -> Q -> DQ -> Conv -> Q -> DQ -> y, fused: the floats between Q/DQ take no space,
    the uint8 input x_q and output y_q are both live at the Conv step (one kernel reads one
    and writes the other), so they do not share bytes."""
    nodes = [oh.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             oh.make_node("Relu", ["c"], ["y"], name="relu")]
    m = model(nodes, [("x", F32, [1, 8, 8, 8])], [("y", F32, [1, 8, 8, 8])], [weight("w", 8, 8, 1, 1)])
    g = homec.compile(m, 'schedule { quantize(calibration="random") }').graph
    plain, fused = plan(g), plan(g, qdq_fused=True)
    assert fused.arena_bytes < plain.arena_bytes and fused.lower_bound_bytes < plain.lower_bound_bytes
    conv_step = next(i for i, n in enumerate(g.nodes) if n.op_type == "Conv")
    live = [b for b in fused.buffers if b.bytes and b.start <= conv_step <= b.end]
    names = {b.name for b in live}
    conv = g.nodes[conv_step]
    x_q = conv.inputs[0].producer.inputs[0].name
    y_q = conv.outputs[0].users[0].outputs[0].name
    assert {x_q, y_q} <= names
    assert all(b.bytes == 512 for b in live if b.name in (x_q, y_q))  # uint8 [1,8,8,8]
    assert fused.weight_bytes == plain.weight_bytes == count_params(g).bytes
    assert fused.weight_bytes < 8 * 8 * 4  # int8 weights, less than the float ones


def test_unknown_sizes_are_listed_and_planned_as_zero():
    nodes = [oh.make_node("Relu", ["x"], ["a"], name="r"), oh.make_node("Neg", ["a"], ["y"], name="n")]
    g = homec.load(model(nodes, [("x", F32, ["N", 64])], [("y", F32, ["N", 64])]))
    p = plan(g)
    assert p.unknown == ("x", "a", "y") and p.arena_bytes == 0
    assert [b.bytes for b in p.buffers] == [None, None, None]
    assert plan(g).as_dict()["unknown"] == ["x", "a", "y"]


def test_negative_dims_are_unknown_sizes():
    """PP-OCR's exporter writes dim_value -1 for a dynamic batch: the size is unknown, never
    negative."""
    nodes = [oh.make_node("Relu", ["x"], ["a"], name="r"), oh.make_node("Neg", ["a"], ["y"], name="n")]
    g = homec.load(model(nodes, [("x", F32, [-1, 64])], [("y", F32, [-1, 64])]))
    p = plan(g)
    assert p.unknown == ("x", "a", "y") and p.arena_bytes == 0 and p.no_reuse_bytes == 0


def test_tensor_bytes_of_a_negative_dim_is_unknown():
    from homec.analysis.memory import tensor_bytes
    from homec.ir import Dim, TensorType

    assert tensor_bytes(TensorType(F32, (Dim(value=-1), Dim(value=64)))) is None


def test_graph_without_nodes():
    g = homec.load(model([], [("x", F32, [2, 3])], [("x", F32, [2, 3])]))
    p = plan(g)
    assert (p.arena_bytes, p.peak_step, p.peak_node, p.largest_live) == (24, None, None, (("x", 24),))


def test_plan_is_deterministic_and_json_shaped():
    a, b = plan(residual()), plan(residual())
    assert a.as_dict() == b.as_dict()
    d = a.as_dict()
    assert list(d) == ["arena_bytes", "lower_bound_bytes", "no_reuse_bytes", "weight_bytes", "alignment",
                       "peak_step", "peak_node", "largest_live", "in_place", "buffers", "unknown"]
    assert d["largest_live"] == [{"name": n, "bytes": 1024} for n in ("b", "c", "h")]  # ties by name
    assert set(d["buffers"][0]) == {"name", "bytes", "offset", "start", "end", "alias_of"}


def test_alignment():
    """Sizes 40/400/4000/40 at alignment 64: a lands at 4032 (4000 rounded up), y too."""
    p = plan(matmul_chain(), alignment=64)
    assert {b.name: b.offset for b in p.buffers} == {"x": 0, "a": 4032, "b": 0, "y": 4032}
    assert p.arena_bytes == 4432 and p.lower_bound_bytes == 4400
    with pytest.raises(ValueError):
        plan_memory(matmul_chain(), {}, alignment=0)


# ---------------------------------------------------------------------------------------
# Random graphs and real models: the invariants, and the copying plan's lower bound is
# homec.analysis.memory's peak (the same liveness)
# ---------------------------------------------------------------------------------------


def _check_all_ways(g: Graph, types) -> None:
    for in_place in (True, False):
        for fused in (False, True):
            p = plan_memory(g, types, in_place=in_place, qdq_fused=fused)
            check_layout(p, g)
            if not in_place and not fused:
                assert p.lower_bound_bytes == peak_activation_memory(g, types).peak_bytes
    again = plan_memory(g, types)
    assert again == plan_memory(g, types)


@pytest.mark.parametrize("seed", range(60))
def test_random_graphs(seed):
    g = homec.load(random_model(seed))
    _check_all_ways(g, infer_shapes(g))


ZOO_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
ZOO = ("light_squeezenet", "light_resnet50", "light_inception_v1", "light_densenet121", "light_shufflenet")


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO)
def test_zoo_models(name):
    path = ZOO_DIR / f"{name}.onnx"
    if not path.is_file():
        pytest.skip("onnx zoo models not shipped")
    g = homec.load(path)
    types = infer_shapes(g)
    _check_all_ways(g, types)
    p = plan_memory(g, types)
    assert p.in_place > 0
    for name in p.unknown:  # only the unused masks of old-opset Dropouts have no inferred type
        v = g.value(name)
        assert v.producer.op_type == "Dropout" and not v.users and not v.is_graph_output, name
    assert p.arena_bytes < p.no_reuse_bytes / 2


@pytest.mark.slow
@pytest.mark.skipif(ocr_model("det") is None, reason="rapidocr models not installed")
def test_ppocr_det():
    g = homec.load(ocr_model("det"))
    types = infer_shapes(g, {g.inputs[0].name: (1, 3, 64, 64)})
    _check_all_ways(g, types)
    p, copying = plan_memory(g, types), plan_memory(g, types, in_place=False)
    assert not p.unknown and p.in_place > 100
    assert p.arena_bytes < copying.arena_bytes
    assert p.weight_bytes == count_params(g).bytes
    # dynamic shapes: the sizes are unknown, and the static-shape targets refuse to guess
    dynamic = plan_memory(g, infer_shapes(g))
    assert dynamic.unknown
    with pytest.raises(UsageError, match=r"^cannot check the SRAM budget: tensors of unknown size \("):
        check_budget(dynamic, load_target("npu-int8"))


# ---------------------------------------------------------------------------------------
# Budgets
# ---------------------------------------------------------------------------------------


def with_budget(sram_kib: int | None, flash_kib: int | None, name: str = "mcu"):
    t = load_target(name)
    return dataclasses.replace(t, memory=MemoryBudget(
        sram=None if sram_kib is None else sram_kib * 1024,
        flash=None if flash_kib is None else flash_kib * 1024))


def test_format_bytes():
    assert format_bytes(0) == "0 B" and format_bytes(1023) == "1023 B"
    assert format_bytes(1024) == "1 KiB" and format_bytes(1536) == "1.5 KiB"
    assert format_bytes(412 * 1024 + 1) == "412.1 KiB"  # rounded up: never equal to a limit below it
    assert format_bytes(5 * 1024 * 1024 + 200 * 1024) == "5.2 MiB"
    assert format_bytes(256 * 1024 * 1024) == "256 MiB"


def test_sram_over_budget():
    """The chain's arena is 4400 B (4.3 KiB), its live tensors at the peak b (4000 B) and
    a (400 B)."""
    p = plan(matmul_chain())
    with pytest.raises(ResourceLimitError) as e:
        check_budget(p, with_budget(4, None))
    assert str(e.value) == "SRAM: 4.3 KiB needed, 4 KiB available; largest live tensors: b (4 KiB), a (400 B)"
    assert e.value.exit_code == ExitCode.RESOURCE_LIMIT == 6
    check_budget(p, with_budget(5, None))  # fits


def test_flash_over_budget_and_both():
    """Weights: w1 400000 B (390.7 KiB), w2 40000 B (39.1 KiB), w0 4000 B (4 KiB); 444000 B
    in all (433.6 KiB)."""
    p = plan(matmul_chain())
    flash = ("flash: 433.6 KiB of weights needed, 400 KiB available; largest weights: "
             "w1 (390.7 KiB), w2 (39.1 KiB), w0 (4 KiB)")
    with pytest.raises(ResourceLimitError) as e:
        check_budget(p, with_budget(None, 400))
    assert str(e.value) == flash
    with pytest.raises(ResourceLimitError) as e:
        check_budget(p, with_budget(4, 400))
    assert str(e.value) == ("SRAM: 4.3 KiB needed, 4 KiB available; largest live tensors: b (4 KiB), "
                            "a (400 B); also " + flash)
    check_budget(p, with_budget(None, 434))
    check_budget(p, with_budget(None, None))


def test_unknown_sizes_and_budgets():
    nodes = [oh.make_node("Relu", ["x"], ["a"], name="r"), oh.make_node("Neg", ["a"], ["y"], name="n")]
    g = homec.load(model(nodes, [("x", F32, ["N", 64])], [("y", F32, ["N", 64])]))
    p = plan(g)
    with pytest.raises(UsageError) as e:
        check_budget(p, load_target("mcu"))
    assert str(e.value) == "cannot check the SRAM budget: tensors of unknown size (x, a, y); give --input-shape"
    assert e.value.exit_code == ExitCode.USAGE
    check_budget(p, load_target("cpu"))  # allocates at run time: nothing to check ahead
    check_budget(p, with_budget(None, 1))  # no SRAM budget


def test_known_part_over_budget_fails_even_with_unknown_sizes():
    """x is dynamic, but the 1 MiB tensor made from a constant shape (z = Neg(big) in place)
    alone exceeds 512 KiB."""
    shape = onh.from_array(np.array([512, 512], np.int64), "shape")
    nodes = [oh.make_node("ConstantOfShape", ["shape"], ["big"], name="fill",
                          value=onh.from_array(np.array([1.0], np.float32))),
             oh.make_node("Relu", ["x"], ["y"], name="r"),
             oh.make_node("Neg", ["big"], ["z"], name="n")]
    g = homec.load(model(nodes, [("x", F32, ["N", 4])], [("y", F32, ["N", 4]), ("z", F32, [512, 512])],
                         [shape]))
    p = plan(g)
    assert p.unknown == ("x", "y")
    with pytest.raises(ResourceLimitError, match=r"^SRAM: at least 1 MiB needed, 512 KiB available; "
                                                 r"largest live tensors: (big|z) \(1 MiB\)$"):
        check_budget(p, load_target("mcu"))


@pytest.mark.slow
@pytest.mark.skipif(ocr_model("cls") is None, reason="rapidocr models not installed")
def test_ppocr_cls_with_its_minus_one_batch():
    g = homec.load(ocr_model("cls"))
    types = infer_shapes(g)
    for in_place in (True, False):
        for fused in (False, True):
            p = plan_memory(g, types, in_place=in_place, qdq_fused=fused)
            check_layout(p, g)
            assert all(b.bytes is None or b.bytes >= 0 for b in p.buffers)
            assert "x" in p.unknown
