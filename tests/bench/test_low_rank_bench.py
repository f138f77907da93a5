"""Smoke test of the issue-6 low-rank benchmark (bench/ocr/low_rank.py): one tiny run in its own
process (2 eval images, a calibration capture of two images, minimal timing) with small
fixed-ratio schedules in place of the budget searches, checking its tables, its model figures
against the pass's own counts, the equal-rank pair and its JSON; plus the row parsing, which
needs no model."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:          # bench/ is a plain folder of the checkout, not installed
    sys.path.insert(0, str(ROOT))

pytest.importorskip("rapidocr_onnxruntime")

from bench.ocr import low_rank  # noqa: E402

# the shipped schedules run a sensitivity search (minutes); the smoke test factorizes with a
# fixed ratio instead, and leaves fuse_activations out (seconds on det) of them and of the
# reference, which is then cleanup alone: the pass's "before" figures are the reference's.
# The equal-rank pair is on det (the data-aware fit of rec takes longer); det-lowrank runs the
# same schedule file as det-r30-data, so the two rows share one compile.
FAST = "schedule {{ cleanup; low_rank(ratio={ratio}, data_aware={data}){on}; cleanup }}\n"
REFERENCE = "schedule { cleanup }\n"
# name -> ratio, data_aware, node selector (rec: its MatMuls only, a few SVDs)
SCHEDULES = {"data": (0.3, "true", ""), "plain": (0.3, "false", ""), "rec": (0.4, "false", " on MatMul")}
ROWS = {"det-lowrank": "det:data", "rec-lowrank": "rec:rec", "both": "det:data,rec:rec",
        "det-r30-data": "det:data", "det-r30-plain": "det:plain"}


@pytest.fixture(scope="module")
def low_rank_run(tmp_path_factory):
    """One tiny run of bench.ocr.low_rank: its work folder, printed text and --json figures."""
    work = tmp_path_factory.mktemp("low_rank")
    out, js = work / "table.txt", work / "figures.json"
    for key, (ratio, data, on) in SCHEDULES.items():
        (work / f"{key}.hc").write_text(FAST.format(ratio=ratio, data=data, on=on))
    (work / "ref.hc").write_text(REFERENCE)
    rows = []
    for name, spec in ROWS.items():
        models = ",".join(f"{kind}:{work / key}.hc" for kind, key in (m.split(":") for m in spec.split(",")))
        rows += ["--row", f"{name}={models}"]
    args = [*rows, "--rows", ",".join(ROWS), "--reference", str(work / "ref.hc"), "--n", "2",
            "--calib-n", "2", "--work", str(work), "--time-n", "1", "--repeats", "1",
            "--model-samples", "1", "--model-repeats", "1", "--error-samples", "2",
            "--out", str(out), "--json", str(js)]
    # its own process, with one OpenBLAS thread: on a loaded 2-core machine OpenBLAS's spinning
    # threads make the pass's small SVDs take seconds to tens of seconds instead of ~0.5 s
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "bench.ocr.low_rank", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return work, out.read_text(), json.loads(js.read_text())


def pipeline_rows(text: str) -> dict[str, str]:
    """Row name -> line of the pipeline table: the lines after its header that show a model
    column and a CER percentage."""
    lines = text.splitlines()
    start = 1 + next(i for i, line in enumerate(lines) if line.startswith("pipeline ") and "dCER pt" in line)
    table = itertools.takewhile(lambda line: re.match(r"\S+\s+\S+\s+\d+\.\d\d% ", line), lines[start:])
    return {line.split()[0]: line for line in table}


def low_rank_stats(figures: dict, label: str) -> dict:
    (record,) = [p for p in figures["compile"][label]["passes"] if p["name"] == "low_rank"]
    return record


@pytest.mark.slow
def test_low_rank_bench_runs_every_row(low_rank_run):
    _, text, figures = low_rank_run
    assert text.startswith("# python -m bench.ocr.low_rank --row det-lowrank=det:")
    assert not any(figures["schedule_problems"].values()), figures["schedule_problems"]
    assert set(pipeline_rows(text)) == {"fp32", *ROWS}, text
    for name, spec in ROWS.items():
        changed = "+".join(m.split(":")[0] for m in spec.split(","))
        assert pipeline_rows(text)[name].split()[1] == changed
        assert figures["results"][name]["n"] == 2
    # one compile per distinct (model, schedule): "both" and det-r30-data reuse those of the
    # single-model rows that name the same files first
    assert figures["row_variants"]["both"] == {"det": "det:det-lowrank", "rec": "rec:rec-lowrank"}
    assert figures["row_variants"]["det-r30-data"] == {"det": "det:det-lowrank"}
    assert set(figures["compile"]) == {"det:det-lowrank", "det:det-r30-plain", "rec:rec-lowrank",
                                       "det:reference", "rec:reference"}
    # the equal-rank rows are not timed in the pipeline; the others are, and every model alone
    assert set(figures["timing"]) == {"fp32", "det-lowrank", "rec-lowrank", "both"}
    assert {k: set(lat) for k, lat in figures["model_latency"].items()} == {
        "det": {"fp32", "det:det-lowrank", "det:det-r30-plain", "det:reference"},
        "rec": {"fp32", "rec:rec-lowrank", "rec:reference"}}
    # the shipped models hold subnormal weights (rec's SE convs, a few in det), which cleanup
    # keeps; the pass emits none, so a factorized model has fewer
    for kind in ("det", "rec"):
        f = figures["figures"][kind]
        assert f["fp32"]["subnormal_weights"] > 0
        assert f[f"{kind}:{kind}-lowrank"]["subnormal_weights"] <= f[f"{kind}:reference"]["subnormal_weights"]
    assert "verdict (issue 6" in text and "both vs fp32:" in text


@pytest.mark.slow
def test_low_rank_bench_figures_agree_with_the_pass(low_rank_run):
    _, _, figures = low_rank_run
    for kind, data_aware in (("det", True), ("rec", False)):
        label = f"{kind}:{kind}-lowrank"
        record = low_rank_stats(figures, label)
        st = record["stats"]
        assert record["options"]["data_aware"] is data_aware
        assert st["layers_factorized"] > 0 and (st.get("data_aware_layers", 0) > 0) is data_aware
        own, ref = figures["figures"][kind][label], figures["figures"][kind][f"{kind}:reference"]
        # the reference is the model the pass started from (cleanup only), and count_params of
        # the output is the pass's params_after
        assert ref["params"] == st["params_before"]
        assert own["params"] == st["params_after"]
        assert own["params"] < ref["params"] < figures["figures"][kind]["fp32"]["params"]
        # a factorized model computes something close to, but not exactly, the shipped one
        errors = figures["output_errors"][kind]
        assert errors[f"{kind}:reference"] < 1e-4 < errors[label] < 1.0
    # the pass counts MACs at its first calibration input's shape; det is fully convolutional,
    # so its reduction is the same at 640x640 and on the calibration shapes
    st = low_rank_stats(figures, "det:det-lowrank")["stats"]
    red = 1 - st["macs_after"] / st["macs_before"]
    reductions = figures["verdict"]["det-lowrank"]["models"]["det"]["reduction"]
    for key in ("macs_fixed", "macs_calib_mean"):
        vs_fp32, vs_reference = reductions[key]
        assert vs_fp32 == pytest.approx(red, abs=0.02) and vs_reference == pytest.approx(red, abs=0.02)
    # rec is judged on its parameters, against the reference: the pass's own reduction
    st = low_rank_stats(figures, "rec:rec-lowrank")["stats"]
    rec = figures["verdict"]["rec-lowrank"]["models"]["rec"]
    assert rec["figure"] == "params"
    assert rec["reduction"]["params"][1] == pytest.approx(1 - st["params_after"] / st["params_before"])
    assert {x["op"] for x in low_rank_stats(figures, "rec:rec-lowrank")["details"]["layers"]} == {"MatMul"}


@pytest.mark.slow
def test_low_rank_bench_equal_rank_pair(low_rank_run):
    _, text, figures = low_rank_run
    assert figures["pairs"] == {"det-r30": ["det", "det-r30-data", "det-r30-plain"]}
    data, plain = (low_rank_stats(figures, label) for label in ("det:det-lowrank", "det:det-r30-plain"))
    assert data["options"]["data_aware"] is True and plain["options"]["data_aware"] is False
    ranks = [[(x["node"], x["ranks"]) for x in r["details"]["layers"]] for r in (data, plain)]
    assert ranks[0] == ranks[1] and ranks[0]
    assert data["stats"]["data_aware_layers"] > 0 and plain["stats"].get("data_aware_layers", 0) == 0
    # fitting each layer's output on the calibration data leaves a smaller output error than
    # the weight SVD at the same ranks (measured on calibration inputs the fit has seen)
    errors = figures["output_errors"]["det"]
    assert errors["det:det-lowrank"] < errors["det:det-r30-plain"]
    line = next(line for line in text.splitlines() if line.startswith("det-r30 ") and " data " in line)
    assert line.split()[4] == "yes", line


def test_parse_rows_defaults_replacements_and_pairs(tmp_path):
    hc = tmp_path / "s.hc"
    hc.write_text("schedule { cleanup }\n")
    rows = low_rank.parse_rows([f"rec-lowrank=rec:{hc}", f"x=det:{hc},rec:{hc}"], None)
    assert rows["rec-lowrank"] == {"rec": str(hc)} and rows["x"] == {"det": str(hc), "rec": str(hc)}
    assert set(low_rank.DEFAULT_ROWS) < set(rows)
    assert set(low_rank.equal_rank_pairs(rows)) == {"rec-r30", "rec-r50", "det-r30", "det-r50"}
    kept = low_rank.parse_rows([f"a-data=rec:{hc}", f"a-plain=det:{hc}"], "a-data,a-plain")
    assert list(kept) == ["a-data", "a-plain"]
    assert low_rank.equal_rank_pairs(kept) == {}     # different models: not the same ranks
    for bad in ([f"y=cls:{hc}"], [f"y=rec:{hc},rec:{hc}"], ["y"], [f"fp32=det:{hc}"],
                [f"y=det:{tmp_path / 'missing.hc'}"]):
        with pytest.raises(SystemExit):
            low_rank.parse_rows(bad, None)
    with pytest.raises(SystemExit):
        low_rank.parse_rows([], "no-such-row")
