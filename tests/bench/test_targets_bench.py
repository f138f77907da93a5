"""The targets benchmark (bench/targets.py): its calibration fitting and formatting helpers
against independent oracles, and one small run of the whole bench (slow). The last tests pin
homec bugs the bench ran into (each docstring says what failed)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:          # bench/ is a plain folder of the checkout, not installed
    sys.path.insert(0, str(ROOT))

from bench import targets as tb  # noqa: E402

import homec  # noqa: E402
from homec.errors import UsageError  # noqa: E402
from homec.pipeline import InternalPassError  # noqa: E402
from homec.verify import make_session  # noqa: E402


# --------------------------------------------------------------------------- calibration fitting

@pytest.mark.parametrize("src, dst", [((7, 13), (4, 5)), ((40, 90), (32, 32)), ((6, 6), (9, 14))])
def test_resize_bilinear_matches_onnx_resize(src, dst):
    """Oracle: onnxruntime's Resize(mode=linear, half_pixel), downscaling and upscaling."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, *src)).astype(np.float32)
    sizes = onh.from_array(np.array([1, 3, *dst], np.int64), "sizes")
    node = oh.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear",
                        coordinate_transformation_mode="half_pixel")
    g = oh.make_graph([node], "g", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x.shape)],
                      [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], [sizes])
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", 13)])
    want = make_session(m).run(None, {"x": x})[0]
    got = tb.resize_bilinear(x, *dst)
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_fit_sample_rec_pads_right_with_zeros_or_squeezes():
    rng = np.random.default_rng(1)
    batch = rng.uniform(-1, 1, (3, 3, 48, 200)).astype(np.float32)
    crops = tb.fit_sample("rec", batch, (1, 3, 48, 320))
    assert len(crops) == 3
    for i, c in enumerate(crops):
        assert c.shape == (1, 3, 48, 320)
        np.testing.assert_array_equal(c[0, :, :, :200], batch[i])
        assert not c[..., 200:].any()
    wide = rng.uniform(-1, 1, (1, 3, 48, 640)).astype(np.float32)
    (squeezed,) = tb.fit_sample("rec", wide, (1, 3, 48, 320))
    # halving the width with half-pixel centers averages each pair of columns
    np.testing.assert_allclose(squeezed[0], 0.5 * (wide[0, ..., 0::2] + wide[0, ..., 1::2]), atol=1e-6)


def test_fit_sample_det_and_cls():
    rng = np.random.default_rng(2)
    det = rng.uniform(-1, 1, (1, 3, 64, 192)).astype(np.float32)
    (d,) = tb.fit_sample("det", det, (1, 3, 32, 32))
    assert d.shape == (1, 3, 32, 32)
    cls = rng.uniform(-1, 1, (4, 3, 48, 192)).astype(np.float32)
    out = tb.fit_sample("cls", cls, (1, 3, 48, 192))
    assert [c.shape for c in out] == [(1, 3, 48, 192)] * 4
    np.testing.assert_array_equal(out[3][0], cls[3])
    with pytest.raises(ValueError, match="channels"):
        tb.fit_sample("cls", cls[:, :1], (1, 3, 48, 192))


def test_calibration_reads_folders_in_file_order(tmp_path):
    folder = tmp_path / "rec"
    folder.mkdir()
    for i, w in enumerate((100, 400)):   # the second file is wider than 320
        np.savez(folder / f"rec_{i:04d}.npz", x=np.full((2, 3, 48, w), i + 1, np.float32))
    feeds = tb.calibration("rec", "x", (1, 3, 48, 320), {"rec": str(folder)}, n=3)
    assert len(feeds) == 3 and all(f["x"].shape == (1, 3, 48, 320) for f in feeds)
    assert feeds[0]["x"][..., :100].min() == 1 and not feeds[0]["x"][..., 100:].any()
    assert np.all(feeds[2]["x"] == 2)
    random = tb.calibration("squeezenet", "data", (1, 3, 8, 8), None, n=2)
    assert len(random) == 2 and not np.array_equal(random[0]["data"], random[1]["data"])


def test_model_file_fixes():
    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, "h", 4])
    w = onh.from_array(np.ones((2, 3, 1, 1), np.float32), "w")
    g = oh.make_graph([oh.make_node("Conv", ["x", "w"], ["y"])], "g",
                      [x, oh.make_tensor_value_info("w", onnx.TensorProto.FLOAT, [2, 3, 1, 1])],
                      [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2, 3, 4])], [w])
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", 9)])
    m.ir_version = 3
    tb.weights_not_inputs(m)
    assert m.ir_version == 4 and [i.name for i in m.graph.input] == ["x"]
    onnx.checker.check_model(m)


# --------------------------------------------------------------------------- figures and table

def _report(arena=1280, lb=1024, nr=4096, flash=8192, measured=True):
    nodes = [{"node": "c1", "op": "Conv", "device": "npu", "dtype": "int8", "reason": None},
             {"node": "c2", "op": "Conv", "device": "cpu", "dtype": "float32", "reason": "x"},
             {"node": "r", "op": "Relu", "device": None, "dtype": "float32", "reason": "y"},
             {"node": "q", "op": "QuantizeLinear", "device": "npu", "dtype": "int8", "reason": None}]
    layers = [{"node": "c1", "macs": 300}, {"node": "c2", "macs": 100}, {"node": "r", "macs": 0},
              {"node": "q", "macs": None}]
    return {
        "after": {"nodes": 4},
        "verification": {"ok": True, "outputs": [{"cosine": 0.999, "max_abs": 0.01},
                                                 {"cosine": 0.98, "max_abs": 0.002}]},
        "manifest": {
            "target": {"device": "npu", "memory": {"sram_bytes": None, "flash_bytes": flash}},
            "placement": {"counts": {"npu": 2, "cpu": 1}, "nodes": nodes,
                          "partitions": [{}, {}, {}], "transitions": 2},
            "memory": {"arena_bytes": arena, "lower_bound_bytes": lb, "no_reuse_bytes": nr,
                       "weight_bytes": 2048},
            "estimate": {"total_ms": 1.5, "layers": layers},
            "measured": {"before": {"median_ms": 3.0}, "after": {"median_ms": 2.0}} if measured else None,
        },
    }


def test_row_figures_and_format():
    fig = tb.row_figures(_report())
    # the unplaceable Relu counts as off the accelerator; MACs by placement, not estimate device
    assert fig["node_share"] == 0.5 and fig["mac_share"] == 0.75
    assert (fig["partitions"], fig["transitions"], fig["cosine"], fig["max_abs"]) == (3, 2, 0.98, 0.01)
    row = {"model": "m", "target": "npu-int8", "exit_code": 0, "seconds": 1.23, **fig}
    line = tb.format_row(row)
    cells = line.split()
    head = tb.header_line()
    assert len(head) >= len(line) - 4 and head.split()[0] == "model"
    assert cells[:3] == ["m", "npu-int8", "ok"]
    assert "50%" in cells and "75%" in cells
    assert cells[cells.index("1.2") - 0] == "1.2"       # arena 1280 B
    assert "1.25" in cells and "0.31" in cells        # arena / LB, arena / no-reuse
    assert "25%" in cells                             # 2048 weight bytes of 8192 flash
    assert "1.50x" in cells and "0.75" in cells       # 3.0 / 2.0 ms; estimate 1.5 / measured 2.0
    assert cells[-1] == "1.2"


def test_failed_row_without_report():
    row = {"model": "m", "target": "mcu", "exit_code": 4, "seconds": 0.5, **tb.row_figures(None)}
    cells = tb.format_row(row).split()
    assert cells[:4] == ["m", "mcu", "4", "unsupp"] and set(cells[4:-1]) == {"-"}
    fig = tb.row_figures(_report(flash=None, measured=False))
    assert fig["flash"] is None and fig["ort_in_ms"] is None


# --------------------------------------------------------------------------- the bench, small

@pytest.mark.slow
def test_bench_smoke(tmp_path):
    """cls on cpu and npu-int8 plus its int8 cpu row, random calibration (no captured data
    needed): every row compiles, the table and the JSON agree."""
    pytest.importorskip("rapidocr_onnxruntime")
    out, js = tmp_path / "targets.txt", tmp_path / "rows.json"
    assert tb.main(["--models", "cls", "--targets", "cpu,npu-int8", "--int8-models", "cls",
                    "--calib-n", "3", "--runs", "2", "--work", str(tmp_path / "work"),
                    "--out", str(out), "--json", str(js)]) == 0
    text = out.read_text()
    data = json.loads(js.read_text())
    assert "calibration: RANDOM" in text
    rows = {r["target"]: r for r in data["rows"]}
    assert set(rows) == {"cpu", "npu-int8"}
    cpu, npu = rows["cpu"], rows["npu-int8"]
    assert cpu["status"] == "ok" and cpu["node_share"] == 1.0 and cpu["transitions"] == 0
    assert cpu["ort_in_ms"] > 0 and cpu["ort_out_ms"] > 0 and cpu["cosine"] > 0.9999
    assert npu["ort_in_ms"] is None and npu["flash"] == 32768 * 1024
    for r in data["rows"]:
        assert r["lower_bound"] <= r["arena"] <= r["no_reuse"]
        line = next(x for x in text.splitlines() if re.match(rf"cls\s+{re.escape(r['target'])}\s", x))
        assert line == tb.format_row(r)
    (int8,) = data["int8"]
    assert int8["status"] == "ok" and int8["peer_ok"]
    assert set(int8["int8_ms"]) == {"float", "homec", "peer"}
    assert int8["bytes"]["homec"] < 0.5 * int8["bytes"]["float"]
    assert tb.format_int8_row(int8) in text
    assert 0 < int8["cosine"] <= 1 + 1e-9 and 0 <= int8["peer_cosine"] <= 1 + 1e-9


def test_cos_mark_flags_what_quantize_does_not_promise():
    floor = tb.quantize_min_cosine()
    assert 0.5 < floor < 1
    assert tb.cos_mark(floor - 1e-3).endswith("!") and not tb.cos_mark(floor).endswith("!")
    assert tb.cos_mark(None) == "-"


# --------------------------------------------------------------------------- homec bugs found

def test_negative_dim_is_dynamic_for_input_shapes():
    """PaddleOCR's cls model declares its batch as dim_value -1 (Paddle2ONNX's "dynamic"):
    `--input-shape x=1,...` sets it (it was refused as "fixed to -1", which kept cls off the
    static-shape targets)."""
    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [-1, 3, 4, 4])
    g = oh.make_graph([oh.make_node("Relu", ["x"], ["y"])], "g", [x],
                      [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)])
    res = homec.compile(m, None, input_shapes={"x": (1, 3, 4, 4)})
    assert [d.dim_value for d in res.model.graph.input[0].type.tensor_type.shape.dim][1:] == [3, 4, 4]
    with pytest.raises(UsageError, match="dim 1 is fixed to 3"):
        homec.compile(m, None, input_shapes={"x": (1, 4, 4, 4)})


def _conv_relu(weights_as_constant_node: bool) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = onh.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    nodes = [oh.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), oh.make_node("Relu", ["c"], ["y"])]
    inits = [w]
    if weights_as_constant_node:
        nodes.insert(0, oh.make_node("Constant", [], ["w"], value=w))
        inits = []
    g = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 16, 16])],
                      [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 8, 16, 16])], inits)
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_int8_target_quantizes_constant_node_weights():
    """Weights in a Constant node (as PP-OCR ships them) are quantized and the Conv runs on
    the NPU."""
    res = homec.compile(_conv_relu(True), "schedule { cleanup }", target="npu-int8")
    assert "quantize" in [p["name"] for p in res.report["passes"]]
    assert res.report["manifest"]["placement"]["counts"]["npu"] > 0


def test_int8_target_quantizes_initializer_weights():
    """Weights as initializers (every current exporter; the bench's zoo models) are quantized
    too: the rows of the zoo models on npu-int8 and mcu depend on it."""
    res = homec.compile(_conv_relu(False), None, target="npu-int8")
    assert "quantize" in [p["name"] for p in res.report["passes"]]
    assert res.report["manifest"]["placement"]["counts"]["npu"] > 0


def test_mcu_after_fuse_activations_runs_hardswish():
    """A schedule with fuse_activations (the bench's: PP-OCR's HardSwish spelled
    x*clip(x+3,0,6)/6 becomes HardSwish) leaves nothing the mcu cannot run (it did: exit 4):
    the mcu runs HardSwish as an int8 activation fused into the Conv before it."""
    rng = np.random.default_rng(0)
    w = onh.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    k = {n: onh.from_array(np.array(v, np.float32), n) for n, v in
         (("three", 3.0), ("zero", 0.0), ("six", 6.0))}
    nodes = [oh.make_node("Constant", [], ["w"], value=w),
             *[oh.make_node("Constant", [], [n], value=t) for n, t in k.items()],
             oh.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             oh.make_node("Add", ["c", "three"], ["a"]),
             oh.make_node("Clip", ["a", "zero", "six"], ["cl"]),
             oh.make_node("Mul", ["c", "cl"], ["m"]),
             oh.make_node("Div", ["m", "six"], ["y"])]
    g = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 16, 16])],
                      [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 8, 16, 16])])
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)])
    m.ir_version = 8
    res = homec.compile(m, "schedule { cleanup; fuse_activations }", target="mcu", verify=True)
    nodes = res.report["manifest"]["placement"]["nodes"]
    assert [n["dtype"] for n in nodes if n["op"] == "HardSwish"] == ["int8"]
    assert res.report["manifest"]["placement"]["unsupported"] == []


def _affine_model() -> tuple[onnx.ModelProto, object]:
    """Conv -> Mul(scalar) -> Add(scalar) -> Conv: PP-OCRv4's learnable affine between layers."""
    from homec.calib import CalibrationSet

    rng = np.random.default_rng(0)
    inits = [onh.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w"),
             onh.from_array(np.array(1.5, np.float32), "a"), onh.from_array(np.array(0.3, np.float32), "b"),
             onh.from_array(rng.standard_normal((8, 8, 1, 1)).astype(np.float32), "w2")]
    nodes = [oh.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), oh.make_node("Mul", ["c", "a"], ["m"]),
             oh.make_node("Add", ["m", "b"], ["h"]), oh.make_node("Conv", ["h", "w2"], ["y"])]
    g = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 16, 16])],
                      [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 8, 16, 16])], inits)
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)])
    m.ir_version = 8
    cal = CalibrationSet([{"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(4)])
    return m, cal


def test_quantize_absorbs_scalar_affine():
    """With Conv only, the affine folds into the quantizer."""
    m, cal = _affine_model()
    res = homec.compile(m, 'schedule { quantize(ops=["Conv"]) }', calib=cal, verify=True)
    assert res.report["passes"][-1]["stats"]["affine_absorbed"] >= 1


def test_quantize_add_mul_with_scalar_affine(tmp_path):
    """The int8 targets quantize with ops=[Conv, ConvTranspose, Gemm, MatMul, Add, Mul]; with
    PP-OCRv4's Add(Mul(h, a), b) affine between layers that crashed (exit 70, StopIteration in
    compiler/quant/static._absorb_affine: quantizing the Mul put a Q/DQ pair between it and
    the Add the plan meant to absorb). It must compile and verify."""
    m, cal = _affine_model()
    try:
        homec.compile(m, 'schedule { quantize(ops=["Conv", "Add", "Mul"]) }', calib=cal,
                      verify=True, reproducer_dir=str(tmp_path))
    except InternalPassError as e:
        pytest.fail(f"quantize crashed: {e.message}")
