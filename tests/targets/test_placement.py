"""targets.placement: devices, reasons, glue, partitions and transitions on hand-built graphs
(float and quantized through the quantize pass) and on the PP-OCRv4 detector."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest

import homec
from homec.analysis.shapes import infer_shapes
from homec.errors import ExitCode, UnsupportedError
from homec.targets.descriptor import load_target, target_from_dict
from homec.targets.placement import describe_unsupported, place, require_placeable
from homec.testing.models import ocr_model

F32 = onnx.TensorProto.FLOAT


def conv(name: str, x: str, y: str, cin: int, cout: int, k: int, group: int = 1, seed: int = 0,
         explicit_kernel: bool = False):
    w = np.random.default_rng(seed).normal(size=(cout, cin // group, k, k)).astype(np.float32)
    attrs = {"kernel_shape": [k, k]} if explicit_kernel else {}
    return (oh.make_node("Conv", [x, f"{name}_w"], [y], name=name, pads=[k // 2] * 4, group=group, **attrs),
            onh.from_array(0.1 * w, f"{name}_w"))


def build(layers, x_shape, y_name, y_shape, extra_inits=()) -> onnx.ModelProto:
    nodes, inits = [], list(extra_inits)
    for item in layers:
        if isinstance(item, tuple):
            nodes.append(item[0])
            inits.append(item[1])
        else:
            nodes.append(item)
    g = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", F32, x_shape)],
                      [oh.make_tensor_value_info(y_name, F32, y_shape)], inits)
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def three_convs(middle: str = "Erf") -> onnx.ModelProto:
    """x -> c1 -> Sigmoid s1 -> c2 -> `middle` m1 -> c3 -> Relu r3 -> y, [1, 8, 16, 16]."""
    return build([conv("c1", "x", "a", 3, 8, 3, seed=1), oh.make_node("Sigmoid", ["a"], ["b"], name="s1"),
                  conv("c2", "b", "c", 8, 8, 3, seed=2), oh.make_node(middle, ["c"], ["d"], name="m1"),
                  conv("c3", "d", "e", 8, 8, 3, seed=3), oh.make_node("Relu", ["e"], ["y"], name="r3")],
                 [1, 3, 16, 16], "y", [1, 8, 16, 16])


def quantized(model: onnx.ModelProto, activations: str = "uint8") -> homec.Graph:
    sched = f'schedule {{ quantize(calibration="random", activations="{activations}") }}'
    return homec.compile(model, sched).graph


def placed(graph: homec.Graph, target: str):
    return place(graph, load_target(target), infer_shapes(graph))


def by_node(p) -> dict:
    return {n.node: n for n in p.nodes}


def test_cpu_target_runs_everything_in_one_partition():
    g = homec.load(three_convs())
    p = placed(g, "cpu")
    assert [n.node for n in p.nodes] == ["c1", "s1", "c2", "m1", "c3", "r3"]
    assert {n.device for n in p.nodes} == {"cpu"} and all(n.reason is None for n in p.nodes)
    assert p.counts == {"cpu": 6}
    assert [(q.device, q.nodes, q.first, q.last) for q in p.partitions] == [("cpu", 6, "c1", "r3")]
    assert p.transitions == 0 and p.unsupported == ()
    require_placeable(p, load_target("cpu"))  # nothing to fail


def test_npu_on_a_float_model_falls_back_for_the_dtype():
    p = placed(homec.load(three_convs()), "npu-int8")
    nodes = by_node(p)
    assert nodes["c1"].device == "cpu" and nodes["c1"].dtype == "float32"
    assert nodes["c1"].reason == "float32 compute (the npu runs int8/uint8)"
    assert nodes["m1"].reason == "op not supported"  # the op check comes before the dtype
    assert p.counts == {"npu": 0, "cpu": 6}
    assert len(p.partitions) == 1 and p.transitions == 0
    assert len(p.unsupported) == 6


def test_npu_on_a_qdq_model_runs_layers_and_their_glue():
    """Quantized: every layer reads DQ outputs, so it computes in uint8 and runs on the npu;
    Erf is not an npu op: it and its glue (the DQ before, the Q after) run on the cpu,
    splitting the graph into npu | cpu | npu with one crossing each way."""
    g = quantized(three_convs("Erf"))
    p = placed(g, "npu-int8")
    nodes = by_node(p)
    for name in ("c1", "s1", "c2", "c3", "r3"):
        assert (nodes[name].device, nodes[name].dtype, nodes[name].reason) == ("npu", "uint8", None), name
    assert (nodes["m1"].device, nodes["m1"].reason) == ("cpu", "op not supported")
    glue = [n for n in p.nodes if n.op in ("QuantizeLinear", "DequantizeLinear")]
    assert glue
    # glue next to the Erf is on the cpu, all the other glue (weights' DQ included) on the npu
    ops = {n.name: n for n in g.nodes}
    erf = ops["m1"]
    near_erf = {erf.inputs[0].producer.name, *(u.name for u in erf.outputs[0].users)}
    for n in glue:
        want = "cpu" if n.node in near_erf else "npu"
        assert n.device == want, n
        if want == "cpu":
            assert n.reason == "quantization glue of `m1`, on cpu"
    assert [q.device for q in p.partitions] == ["npu", "cpu", "npu"]
    assert p.partitions[1].first in near_erf and p.partitions[1].last in near_erf
    assert p.transitions == 2
    assert sum(p.counts.values()) == len(p.nodes)


@pytest.mark.parametrize("explicit", [True, False], ids=["kernel_shape", "from_weight"])
def test_kernel_too_large_falls_back_with_the_attribute(explicit):
    model = build([conv("c1", "x", "a", 3, 8, 3), oh.make_node("Relu", ["a"], ["b"], name="r1"),
                   conv("c9", "b", "c", 8, 8, 9, explicit_kernel=explicit),
                   oh.make_node("Relu", ["c"], ["y"], name="r2")],
                  [1, 3, 16, 16], "y", [1, 8, 16, 16])
    p = placed(quantized(model), "npu-int8")
    nodes = by_node(p)
    assert nodes["c9"].reason == "kernel_shape=[9, 9] (max 7)"
    assert nodes["c1"].device == "npu"
    assert [q.device for q in p.partitions] == ["npu", "cpu", "npu"]
    assert p.transitions == 2


def test_grouped_and_depthwise_conv():
    """npu-int8 runs every grouping; a target without "grouped" names the grouped conv."""
    model = build([conv("dw", "x", "a", 8, 8, 3, group=8), conv("gc", "a", "b", 8, 8, 3, group=4),
                   conv("pw", "b", "y", 8, 8, 1)], [1, 8, 8, 8], "y", [1, 8, 8, 8])
    nodes = by_node(placed(quantized(model), "npu-int8"))
    assert all((nodes[n].device, nodes[n].reason) == ("npu", None) for n in ("dw", "gc", "pw"))
    npu = load_target("npu-int8")
    no_grouped = dataclasses.replace(npu, ops={**npu.ops, "Conv": dataclasses.replace(
        npu.ops["Conv"], groups=("regular", "depthwise"))})
    g = quantized(model)
    nodes = by_node(place(g, no_grouped, infer_shapes(g)))
    assert (nodes["dw"].device, nodes["dw"].reason) == ("npu", None)
    assert (nodes["gc"].device, nodes["gc"].reason) == ("cpu", "grouped conv (group=4)")
    # a target allowing only regular convolutions names the depthwise one
    rule = dataclasses.replace(npu.ops["Conv"], groups=("regular",))
    strict = dataclasses.replace(npu, ops={**npu.ops, "Conv": rule})
    g = quantized(model)
    assert by_node(place(g, strict, infer_shapes(g)))["dw"].reason == "depthwise conv (group=8)"


def test_rank_limit():
    """A rank-5 Relu on the mcu (Add's rule has rank_max 4)."""
    x = oh.make_tensor_value_info("x", F32, [1, 2, 2, 2, 2])
    g = oh.make_graph([oh.make_node("Add", ["x", "x"], ["y"], name="add5")], "g", [x],
                      [oh.make_tensor_value_info("y", F32, [1, 2, 2, 2, 2])])
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)])
    p = placed(homec.load(m), "mcu")
    assert (p.nodes[0].device, p.nodes[0].reason) == (None, "rank 5 tensor (max 4)")


def test_attribute_value_reason():
    x = oh.make_tensor_value_info("x", F32, [1, 2, 4, 4])
    pads = onh.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads")
    g = oh.make_graph([oh.make_node("Pad", ["x", "pads"], ["y"], name="pad", mode="reflect")], "g", [x],
                      [oh.make_tensor_value_info("y", F32, [1, 2, 6, 6])], [pads])
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)])
    p = placed(homec.load(m), "mcu")  # mcu's Pad moves float32 data too, in constant mode only
    assert p.nodes[0].reason == "mode='reflect' (allowed: constant)"
    float_pad = target_from_dict({"name": "t", "device": "dsp", "ops": {"Pad": {
        "attributes": {"mode": ["constant"]}, "defaults": {"mode": "constant"}}},
        "compute": {"macs_per_cycle": 1, "clock_mhz": 1, "bandwidth_gbps": 1}})
    p = place(homec.load(m), float_pad, infer_shapes(homec.load(m)))
    assert p.nodes[0].reason == "mode='reflect' (allowed: constant)"


def test_control_flow_never_runs_on_the_accelerator():
    then = oh.make_graph([oh.make_node("Relu", ["x"], ["t"])], "then", [],
                         [oh.make_tensor_value_info("t", F32, [4])])
    other = oh.make_graph([oh.make_node("Neg", ["x"], ["e"])], "else", [],
                          [oh.make_tensor_value_info("e", F32, [4])])
    g = oh.make_graph(
        [oh.make_node("ReduceSum", ["x"], ["s"], name="sum", keepdims=0),
         oh.make_node("Greater", ["s", "zero"], ["c"], name="gt"),
         oh.make_node("If", ["c"], ["y"], name="branch", then_branch=then, else_branch=other)],
        "g", [oh.make_tensor_value_info("x", F32, [4])], [oh.make_tensor_value_info("y", F32, [4])],
        [onh.from_array(np.array(0, np.float32), "zero")])
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)])
    graph = homec.load(m)
    # a target that runs every listed op in float: only the If stays off it
    t = target_from_dict({"name": "t", "device": "dsp", "fallback": "cpu",
                          "ops": {"ReduceSum": {}, "Greater": {}, "If": {}},
                          "compute": {"macs_per_cycle": 1, "clock_mhz": 1, "bandwidth_gbps": 1},
                          "fallback_compute": {"macs_per_cycle": 1, "clock_mhz": 1, "bandwidth_gbps": 1}})
    p = place(graph, t, infer_shapes(graph))
    assert [(n.node, n.device, n.reason) for n in p.nodes] == [
        ("sum", "dsp", None), ("gt", "dsp", None), ("branch", "cpu", "control flow")]
    assert p.transitions == 1  # c crosses to the cpu; x read inside the body is a graph input
    assert placed(graph, "cpu").nodes[2].device == "cpu"


def test_mcu_fails_with_one_line_naming_the_nodes():
    """Quantized to int8 the layers run on the mcu; Erf has only a float kernel (it runs
    unfused between its glue); LayerNormalization and a 9x9 kernel cannot run at all."""
    scale = onh.from_array(np.ones(8, np.float32), "ln_scale")
    model = build([conv("c1", "x", "a", 3, 8, 3), oh.make_node("Erf", ["a"], ["b"], name="erf"),
                   conv("c7", "b", "c", 8, 8, 9),
                   oh.make_node("LayerNormalization", ["c", "ln_scale"], ["y"], name="ln1", axis=-1)],
                  [1, 3, 8, 8], "y", [1, 8, 8, 8], extra_inits=[scale])
    g = quantized(model, activations="int8")
    mcu = load_target("mcu")
    p = place(g, mcu, infer_shapes(g))
    nodes = by_node(p)
    assert nodes["c1"].device == "mcu" and nodes["c1"].dtype == "int8"
    assert (nodes["erf"].device, nodes["erf"].dtype) == ("mcu", "int8")
    assert [(n.node, n.device) for n in p.unsupported] == [("c7", None), ("ln1", None)]
    message = ("mcu cannot run 2 nodes and has no fallback: Conv `c7` (kernel_shape=[9, 9] (max 7)), "
               "LayerNormalization `ln1` (op not supported)")
    assert describe_unsupported(p, mcu) == message
    assert describe_unsupported(p, mcu, limit=1) == (
        "mcu cannot run 2 nodes and has no fallback: Conv `c7` (kernel_shape=[9, 9] (max 7)), "
        "… (+1 more)")
    with pytest.raises(UnsupportedError) as e:
        require_placeable(p, mcu)
    assert str(e.value) == message and e.value.exit_code == ExitCode.UNSUPPORTED
    d = p.as_dict()
    assert d["unsupported"] == [{"node": "c7", "op": "Conv", "reason": "kernel_shape=[9, 9] (max 7)"},
                                {"node": "ln1", "op": "LayerNormalization", "reason": "op not supported"}]
    assert d["fallback"] is None and d["counts"] == {"mcu": len(p.nodes) - 2}
    assert None in [q["device"] for q in d["partitions"]]


def test_as_dict_shape_and_partition_bookkeeping():
    p = placed(quantized(three_convs("Erf")), "npu-int8")
    d = p.as_dict()
    assert list(d) == ["device", "fallback", "counts", "nodes", "partitions", "transitions", "unsupported"]
    assert (d["device"], d["fallback"]) == ("npu", "cpu")
    assert set(d["nodes"][0]) == {"node", "op", "device", "dtype", "reason"}
    parts = d["partitions"]
    assert [q["index"] for q in parts] == list(range(len(parts)))
    assert sum(q["nodes"] for q in parts) == len(d["nodes"])
    names = [n["node"] for n in d["nodes"]]
    start = 0
    for q in parts:  # each partition is the run it claims
        run = d["nodes"][start:start + q["nodes"]]
        assert {n["device"] for n in run} == {q["device"]}
        assert (run[0]["node"], run[-1]["node"]) == (q["first"], q["last"])
        start += q["nodes"]
    for a, b in zip(parts, parts[1:]):
        assert a["device"] != b["device"]
    assert names == [n.node for n in p.nodes]


def test_placement_is_deterministic():
    model = three_convs("Erf")
    g1, g2 = quantized(model), quantized(model)
    assert placed(g1, "npu-int8").as_dict() == placed(g2, "npu-int8").as_dict()


@pytest.mark.slow
@pytest.mark.skipif(ocr_model("det") is None, reason="rapidocr_onnxruntime models not installed")
def test_ppocr_det_placements():
    g = homec.load(ocr_model("det"))
    types = infer_shapes(g, {g.inputs[0].name: (1, 3, 64, 64)})
    cpu = place(g, load_target("cpu"), types)
    assert len(cpu.partitions) == 1 and cpu.transitions == 0 and not cpu.unsupported
    npu = place(g, load_target("npu-int8"), types)  # float: all on the host
    assert npu.counts["npu"] == 0 and npu.transitions == 0
    assert {n.reason for n in npu.nodes if n.op == "Conv"} == {"float32 compute (the npu runs int8/uint8)"}
    mcu = load_target("mcu")
    p = place(g, mcu, types)
    with pytest.raises(UnsupportedError, match=r"^mcu cannot run \d+ nodes and has no fallback: "):
        require_placeable(p, mcu)


@pytest.mark.parametrize("seed", range(40))
def test_random_graphs_place_consistently(seed):
    """Random graphs on the three targets: every node placed once, the partitions are the
    runs of the node list, reasons exactly on the nodes off the accelerator, the cpu target
    all-CPU, and mcu fails exactly when something cannot run on it."""
    from homec.testing.graphgen import random_model

    g = homec.load(random_model(seed))
    types = infer_shapes(g)
    expected = [n for n in g.nodes if not (n.op_type == "Constant" and n.domain == "")]
    for name in ("cpu", "npu-int8", "mcu"):
        target = load_target(name)
        p = place(g, target, types)
        assert [n.node for n in p.nodes] == [n.name or n.outputs[0].name for n in expected]
        assert sum(q.nodes for q in p.partitions) == len(p.nodes)
        assert sum(p.counts.values()) == sum(n.device is not None for n in p.nodes)
        for n in p.nodes:
            assert (n.reason is None) == (n.device == target.device), n
            assert n.device in (target.device, target.fallback), n
        assert p.as_dict() == place(g, target, types).as_dict()
        if name == "cpu":
            assert len(p.partitions) == 1 and p.transitions == 0
        if target.fallback is None:
            assert p.transitions == 0
            if p.unsupported:
                with pytest.raises(UnsupportedError):
                    require_placeable(p, target)
            else:
                require_placeable(p, target)
        devices = [q.device for q in p.partitions]
        assert all(a != b for a, b in zip(devices, devices[1:]))
        if target.fallback is not None:
            # every change of device between consecutive partitions is crossed by data or not;
            # the crossings can never exceed the activation edges
            edges = sum(len(o.users) for n in expected for o in n.outputs if o is not None)
            assert p.transitions <= edges


def test_placement_work_is_linear_in_the_graph(monkeypatch):
    from homec.analysis import cost
    from homec.targets import device_view, placement
    from homec.testing.graphgen import synthetic_chain

    visited = [0]
    original = cost.is_constant

    def counting(value, memo=None):
        memo = {} if memo is None else memo
        before = len(memo)
        result = original(value, memo)
        visited[0] += len(memo) - before
        return result

    monkeypatch.setattr(device_view, "is_constant", counting)
    monkeypatch.setattr(placement, "is_constant", counting)
    g = homec.load(synthetic_chain(400))
    place(g, load_target("npu-int8"), infer_shapes(g))
    values = sum(len(n.inputs) + len(n.outputs) for n in g.nodes)
    assert visited[0] <= 2 * values
