"""examples/kws_cnn.onnx: reproducible from examples/make_example.py, valid, and runnable."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
MODEL = EXAMPLES / "kws_cnn.onnx"


def test_regenerating_gives_identical_bytes(tmp_path: Path):
    out = tmp_path / "kws_cnn.onnx"
    r = subprocess.run([sys.executable, str(EXAMPLES / "make_example.py"), str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == MODEL.read_bytes(), (
        "examples/kws_cnn.onnx is stale: run `python examples/make_example.py` and commit it")


def test_model_is_small_and_valid():
    assert MODEL.stat().st_size < 200 * 1024
    m = onnx.load(str(MODEL))
    onnx.checker.check_model(m, full_check=True)
    ops = Counter(n.op_type for n in m.graph.node)
    # the features the example is meant to show, including what a cleanup pass removes
    for op in ("Conv", "BatchNormalization", "Relu", "Add", "GlobalAveragePool", "Flatten",
               "Gemm", "Softmax", "Identity", "Dropout", "Constant", "Reshape"):
        assert ops[op] >= 1, op
    depthwise = [n for n in m.graph.node if n.op_type == "Conv"
                 and any(a.name == "group" and a.i > 1 for a in n.attribute)]
    assert depthwise, "no depthwise convolution"
    assert [i.name for i in m.graph.input] == ["mfcc"]
    assert [o.name for o in m.graph.output] == ["probs"]


def test_model_runs_in_onnxruntime():
    import onnxruntime as ort

    sess = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    x = np.random.RandomState(0).standard_normal((1, 1, 49, 10)).astype(np.float32)
    (probs,) = sess.run(None, {"mfcc": x})
    assert probs.shape == (1, 12)
    assert np.all(probs >= 0) and abs(float(probs.sum()) - 1.0) < 1e-5
