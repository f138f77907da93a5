"""analysis.summary: the `homec inspect` dict (stable, JSON-able) and its text rendering,
plus a real-model check on PP-OCRv4 det cross-checked against onnx directly."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import homec
from homec.analysis.summary import format_inspect, inspect_graph
from homec.errors import UsageError
from homec.ir import Dim, Graph, ModelInfo, Node, TensorType

F32 = onnx.TensorProto.FLOAT

TOP_KEYS = ["schema_version", "graph", "input_shapes", "inputs", "outputs", "nodes",
            "subgraph_nodes", "op_histogram", "parameters", "parameter_bytes",
            "parameter_tensors", "macs", "memory"]


def tt(*dims) -> TensorType:
    return TensorType(F32, tuple(Dim(value=d) if isinstance(d, int) else Dim(param=d) for d in dims))


def small() -> Graph:
    """x[N,2,6,6] -> Conv(4x2x3x3, pad 1) -> Relu -> Relu -> GlobalAveragePool -> y."""
    g = Graph("small")
    g.model = ModelInfo(opset_imports=[("", 17)])
    x = g.add_input("x", tt("N", 2, 6, 6))
    w = g.add_initializer("w", np.zeros((4, 2, 3, 3), np.float32))
    v = g.append(Node("Conv", [x, w], ["c"], name="conv", attrs={"pads": [1, 1, 1, 1]})).outputs[0]
    v = g.append(Node("Relu", [v], ["r1"], name="relu1")).outputs[0]
    v = g.append(Node("Relu", [v], ["r2"], name="relu2")).outputs[0]
    v = g.append(Node("GlobalAveragePool", [v], ["y"], name="gap")).outputs[0]
    g.set_outputs([v])
    return g


def test_inspect_dict_is_stable_and_json_able():
    d = inspect_graph(small())
    assert list(d) == TOP_KEYS
    assert json.loads(json.dumps(d)) == d
    assert d["inputs"] == [{"name": "x", "dtype": "float", "shape": ["N", 2, 6, 6]}]
    assert d["outputs"][0]["shape"][:2] == ["N", 4]
    assert d["nodes"] == 4 and d["op_histogram"] == {"Conv": 1, "GlobalAveragePool": 1, "Relu": 2}
    assert (d["parameters"], d["parameter_bytes"], d["parameter_tensors"]) == (72, 288, 1)
    assert d["macs"]["total"] == 0 and not d["macs"]["complete"]
    assert d["macs"]["layers"][0]["note"].startswith("symbolic")
    assert d["memory"]["lower_bound"]
    text = format_inspect(d)
    assert "unknown" in text and "x" in text and "Conv" in text


def test_inspect_with_input_shapes():
    d = inspect_graph(small(), {"x": [2, 2, 6, 6]})
    assert d["input_shapes"] == {"x": [2, 2, 6, 6]}
    assert d["inputs"][0]["shape"] == [2, 2, 6, 6]
    assert d["outputs"][0]["shape"] == [2, 4, 1, 1]
    # conv: 2*4*6*6 * 2*3*3 = 5184
    assert d["macs"] == {"total": 5184, "complete": True, "by_op": {"Conv": 5184}, "layers": [
        {"node": "conv", "op": "Conv", "macs": 5184, "attention_like": False, "note": ""}]}
    # x is 576 B, c/r1/r2 are 1152 B each: step 0 holds x + c = 1728, steps 1 and 2 hold
    # 2304 (c + r1, r1 + r2), step 3 r2 + y (32 B); the peak is first reached at step 1.
    m = d["memory"]
    assert (m["peak_bytes"], m["peak_step"], m["peak_node"], m["lower_bound"]) == (2304, 1, "relu1", False)
    assert [t["name"] for t in m["live_at_peak"]] == ["c", "r1"]
    text = format_inspect(d)
    for needle in ("x=2x2x6x6", "[2,4,1,1]", "5.18 k", "2.25 KiB", "relu1"):
        assert needle in text, needle


def test_inspect_rejects_unknown_input():
    with pytest.raises(UsageError, match="no input 'y'"):
        inspect_graph(small(), {"y": [1]})


# -- a real model ----------------------------------------------------------------------------


def _ppocr_det_path() -> str:
    rapidocr = pytest.importorskip("rapidocr_onnxruntime")
    path = os.path.join(os.path.dirname(rapidocr.__file__), "models", "ch_PP-OCRv4_det_infer.onnx")
    if not os.path.isfile(path):
        pytest.skip(f"{path} not shipped by this rapidocr-onnxruntime")
    return path


def _independent_counts(path: str, shape: list[int]) -> tuple[int, int, int, int]:
    """(Conv MACs, ConvTranspose MACs, constant elements, largest activation bytes) straight
    from the protobuf and onnx shape inference, with textbook formulas (no homec code)."""
    model = onnx.load(path)
    for d, n in zip(model.graph.input[0].type.tensor_type.shape.dim, shape):
        d.Clear()
        d.dim_value = n
    model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    g = model.graph
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in [*g.input, *g.value_info, *g.output]}
    consts = {n.output[0]: n.attribute[0].t for n in g.node if n.op_type == "Constant"}
    for t in g.initializer:
        consts[t.name] = t
    conv = deconv = 0
    for n in g.node:
        if n.op_type not in ("Conv", "ConvTranspose"):
            continue
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        n_, cin, *spatial_in = shapes[n.input[0]]
        _, cout, *spatial_out = shapes[n.output[0]]
        kernel = list(consts[n.input[1]].dims[2:])
        assert all(v > 0 for v in [n_, cin, cout, *spatial_in, *spatial_out])
        if n.op_type == "Conv":
            conv += n_ * cout * math.prod(spatial_out) * (cin // group) * math.prod(kernel)
        else:
            deconv += n_ * cin * math.prod(spatial_in) * (cout // group) * math.prod(kernel)
    params = sum(numpy_helper.to_array(t).size for t in consts.values())
    largest = max(4 * math.prod(s) for name, s in shapes.items() if name not in consts)
    return conv, deconv, params, largest


def test_ppocrv4_det_totals():
    path = _ppocr_det_path()
    d = inspect_graph(homec.load(path), {"x": (1, 3, 640, 640)})
    conv, deconv, params, largest = _independent_counts(path, [1, 3, 640, 640])

    macs = d["macs"]
    assert macs["complete"]
    assert macs["by_op"] == {"Conv": conv, "ConvTranspose": deconv}
    assert macs["total"] == conv + deconv
    assert 1e9 < macs["total"] < 5e9  # a mobile detector at 640x640: a few GMACs
    assert sum(1 for layer in macs["layers"] if layer["op"] == "Conv") == 62
    assert not any(layer["attention_like"] for layer in macs["layers"])

    # weights live in float Constant nodes (no initializers in this export)
    assert d["parameters"] == params and 1e6 < params < 2e6
    assert d["parameter_bytes"] == 4 * params

    assert d["outputs"][0]["shape"] == [1, 1, 640, 640]
    m = d["memory"]
    assert not m["lower_bound"] and m["unknown_tensors"] == []
    assert largest == max(t["bytes"] for t in m["live_at_peak"])  # [1,32,320,320] f32
    assert 2 * largest <= m["peak_bytes"] < 256 * 2**20
    assert sum(t["bytes"] for t in m["live_at_peak"]) <= m["peak_bytes"]
