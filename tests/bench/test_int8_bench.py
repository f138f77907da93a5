"""Smoke test of the issue-4 int8 benchmarks (bench/ocr/int8.py, bench/fold_qdq.py): tiny runs
with the cls model only, on a calibration capture of two images, printing their tables."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:          # bench/ is a plain folder of the checkout, not installed
    sys.path.insert(0, str(ROOT))

pytest.importorskip("rapidocr_onnxruntime")

from bench import fold_qdq  # noqa: E402
from bench.ocr import int8  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def int8_run(tmp_path_factory):
    """One tiny run of bench.ocr.int8 (cls int8, 2 eval images): its work folder, printed text,
    --out file and --json figures."""
    work = tmp_path_factory.mktemp("int8")
    out, js = work / "table.txt", work / "figures.json"
    assert int8.main(["--n", "2", "--calib-n", "2", "--models", "cls", "--work", str(work),
                      "--time-n", "1", "--repeats", "1", "--model-samples", "1",
                      "--model-repeats", "1", "--out", str(out), "--json", str(js)]) == 0
    return work, out.read_text(), json.loads(js.read_text())


def test_int8_bench_prints_every_pipeline_with_homec(int8_run):
    work, text, figures = int8_run
    assert text.startswith("# python -m bench.ocr.int8 --n 2 ")
    assert "onnxruntime " in text.splitlines()[2] and "homec " in text.splitlines()[2]
    rows = {line.split()[0]: line for line in text.splitlines()
            if line.split() and line.split()[0] in ("fp32", "ort-s8s8", "ort-u8s8", "homec")
            and "%" in line}
    # the homec row needs the quantize and fold_qdq passes: this fails until both exist and
    # produce a cls model onnxruntime accepts
    assert set(rows) == {"fp32", "ort-s8s8", "ort-u8s8", "homec"}, text
    assert not figures["schedule_problems"]["cls"]
    for name in rows:
        r = figures["results"][name]
        assert 0.0 <= r["cer"] and r["n"] == 2
        t = figures["timing"][name]
        assert t["wall_s"] > 0 and t["cpu_s"] > 0
    # the peers really differ in their activation type; only cls was quantized
    q = figures["quantization"]
    assert set(q["ort-s8s8"]["cls"]["activation_types"]) == {"INT8"}
    assert set(q["ort-u8s8"]["cls"]["activation_types"]) == {"UINT8"}
    assert set(q["homec"]) == {"cls"}
    sizes = figures["sizes"]
    assert sizes["homec"]["det"] == sizes["fp32"]["det"] and sizes["homec"]["rec"] == sizes["fp32"]["rec"]
    assert sizes["homec"]["cls"] < sizes["fp32"]["cls"]
    # fold_qdq(form="integer") left integer operators in the model
    ops = q["homec"]["cls"]["ops"]
    assert any(op in ops for op in ("QLinearConv", "ConvInteger", "QLinearMatMul", "MatMulInteger")), ops
    assert {"fp32", "ort-s8s8", "ort-u8s8", "homec"} <= set(figures["per_model_latency"]["cls"])
    assert "homec vs fp32: CER " in text and "homec vs ort-u8s8: " in text
    # the capture recorded its fingerprint, so the next script reuses it (below)
    manifest = json.loads((work / "calib" / "manifest.json").read_text())
    assert manifest["calib_n"] == 2 and manifest["calib_fingerprint"]


def test_fold_qdq_bench_prints_its_table(int8_run, capsys):
    work, _, _ = int8_run
    capsys.readouterr()
    assert fold_qdq.main(["--kinds", "cls", "--peers", "ort-u8s8", "--work", str(work),
                          "--calib-n", "2", "--reuse-peers", "--feeds", "1", "--runs", "10",
                          "--diff-samples", "1"]) == 0
    text = capsys.readouterr().out
    assert "calibration: reusing" in text and "(fingerprint" in text
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("model "))
    row = lines[header + 1].split()
    # cls ort-u8s8 N0 -> N1 MB0 -> MB1 QDQ-ms folded-ms speed-up vs-ref vs-ort ort~ref fold-s
    assert row[:2] == ["cls", "ort-u8s8"], lines[header + 1]
    assert row[3] == "->" and row[4] != "-", lines[header + 1]        # folded: needs fold_qdq
    assert int(row[4]) < int(row[2])                                  # Q/DQ pairs folded away
    assert float(row[8]) > 0 and float(row[9]) > 0 and row[10].endswith("x")
    diffs = [float(x) for x in row[11:14]]
    assert all(math.isfinite(d) and d >= 0 for d in diffs), row


def test_output_steps_finds_the_last_quantize_scale(tmp_path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    scale = np.float32(0.05)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"]),
        helper.make_node("Sigmoid", ["dq"], ["y"]),
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["yq"]),
    ]
    g = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4]),
         helper.make_tensor_value_info("yq", TensorProto.UINT8, [4])],
        [helper.make_tensor("s", TensorProto.FLOAT, [], [float(scale)]),
         helper.make_tensor("z", TensorProto.UINT8, [], [128])])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), path)
    assert fold_qdq.output_steps(str(path)) == {"y": pytest.approx(float(scale)), "yq": 1.0}
