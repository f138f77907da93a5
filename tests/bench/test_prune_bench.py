"""Smoke test of the issue-5 pruning benchmark (bench/ocr/prune.py): one tiny run (2 eval images,
a calibration capture of two images, minimal timing) with the default schedules, checking its
table, its det figures and its JSON."""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:          # bench/ is a plain folder of the checkout, not installed
    sys.path.insert(0, str(ROOT))

pytest.importorskip("rapidocr_onnxruntime")

from bench.ocr import prune  # noqa: E402

pytestmark = pytest.mark.slow

PRUNED_ROWS = ("pruned", "pruned-plain")
ROWS = (*PRUNED_ROWS, "unpruned")
# the shipped schedules run a sensitivity analysis (minutes on det); the smoke test prunes
# with a fixed global ratio instead, keeping what the rows differ in: reconstruct
FAST = ("schedule {{ cleanup; fuse_activations; prune_channels(ratio=0.2, criterion=\"data\", "
        "global=true, samples=2, reconstruct={}); cleanup }}\n")


@pytest.fixture(scope="module")
def prune_run(tmp_path_factory):
    """One tiny run of bench.ocr.prune: its work folder, printed text and --json figures."""
    work = tmp_path_factory.mktemp("prune")
    out, js = work / "table.txt", work / "figures.json"
    fast = []
    for name, flag in (("pruned", "true"), ("pruned-plain", "false")):
        f = work / f"{name}.hc"
        f.write_text(FAST.format(flag))
        fast += ["--schedule", f"{name}={f}"]
    assert prune.main([*fast, "--n", "2", "--calib-n", "2", "--work", str(work), "--time-n", "1",
                       "--repeats", "1", "--model-samples", "1", "--model-repeats", "1",
                       "--out", str(out), "--json", str(js)]) == 0
    return work, out.read_text(), json.loads(js.read_text())


def pipeline_rows(text: str) -> dict[str, str]:
    """Row name -> line of the pipeline table (rows that ran show their CER as a percentage)."""
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("pipeline ") and "dCER pt" in line)
    rows = {}
    for line in lines[header + 1:]:
        m = re.match(r"(\S+)\s+\d+\.\d\d% ", line)
        if not m:
            break
        rows[m.group(1)] = line
    return rows


def test_prune_bench_measures_the_shipped_det(prune_run):
    work, text, figures = prune_run
    assert text.startswith("# python -m bench.ocr.prune --schedule pruned=")
    assert "fp32" in pipeline_rows(text), text
    assert set(figures["schedules"]) == set(ROWS)
    fp32 = figures["det"]["fp32"]
    assert fp32["complete"] and fp32["macs_fixed"] > 0 and fp32["params"] > 0
    # the calibration mean is over the captured det shapes: the det MACs grow with the pixel
    # count (a fully convolutional net), so mean MACs / MACs at 640x640 ~ mean pixels / 640^2
    manifest = json.loads((work / "calib" / "manifest.json").read_text())
    shapes = manifest["shapes"]["det"]
    assert fp32["calib_inputs"] == len(shapes) == manifest["counts"]["det"] > 0
    pixels = statistics.fmean(h * w for _, _, h, w in shapes) / (640 * 640)
    assert fp32["macs_calib_mean"] / fp32["macs_fixed"] == pytest.approx(pixels, rel=0.05)
    r = figures["results"]["fp32"]
    assert r["n"] == 2 and 0.0 <= r["cer"] and 0.0 <= r["cer_nospace"] <= r["cer"] + 1e-9
    assert figures["timing"]["fp32"]["wall_s"] > 0 and figures["det_latency"]["fp32"]["cpu_s"] > 0
    assert "verdict (issue 5" in text


def test_prune_bench_prunes_det_in_both_rows(prune_run):
    _, text, figures = prune_run
    # needs the prune_channels pass: this fails until it is registered and prunes the det
    assert not any(figures["schedule_problems"].values()), figures["schedule_problems"]
    assert set(pipeline_rows(text)) == {"fp32", *ROWS}, text
    assert set(figures["results"]) == {"fp32", *ROWS}
    fp32 = figures["det"]["fp32"]
    for name in PRUNED_ROWS:
        det = figures["det"][name]
        assert det["macs_fixed"] < fp32["macs_fixed"], (name, det)
        assert det["macs_calib_mean"] < fp32["macs_calib_mean"], (name, det)
        assert det["params"] < fp32["params"], (name, det)
        # channel pruning scales every layer's MACs by a shape-independent factor per layer,
        # so the reduction at 640x640 and on the calibration shapes nearly agree
        red = figures["verdict"][name]["macs_reduction"]
        assert red["macs_fixed"] == pytest.approx(red["macs_calib_mean"], abs=0.03), (name, red)
        assert figures["results"][name]["n"] == 2
        assert figures["timing"][name]["wall_s"] > 0 and figures["det_latency"][name]["wall_s"] > 0
    # the two rows differ only in reconstruct, as their schedules say
    for name, reconstruct in (("pruned", True), ("pruned-plain", False)):
        records = [p for p in figures["compile"][name]["passes"] if p["name"] == prune.PRUNE_PASS]
        assert len(records) == 1 and records[0]["options"]["reconstruct"] is reconstruct, records
    assert "pruned (with reconstruction) vs fp32:" in text
    assert "pruned-plain (without reconstruction) vs fp32:" in text
