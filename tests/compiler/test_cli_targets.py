"""`homec -t TARGET`: manifests, summaries, budgets (exit 6), unsupported ops (exit 4),
user descriptor files, reports, depfiles and byte-identical output across hash seeds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "kws_cnn.onnx"
CLEANUP = ROOT / "examples" / "cleanup.hc"
MANIFEST_KEYS = {"schema_version", "model", "target", "io", "placement", "memory", "estimate",
                 "measured"}


def homec(*args, cwd=None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "homec", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def board(tmp_path, body: str, name="oven") -> Path:
    p = tmp_path / f"{name}.toml"
    p.write_text(f'name = "{name}"\nextends = "mcu"\n{body}')
    return p


def test_targets_lists_the_builtins():
    r = homec("targets")
    assert r.returncode == 0
    for name in ("cpu", "npu-int8", "mcu"):
        assert any(line.startswith(name) for line in r.stdout.splitlines())
    data = json.loads(homec("targets", "--json").stdout)
    assert [t["name"] for t in data] == ["cpu", "npu-int8", "mcu"]


def test_targets_describes_a_user_file(tmp_path):
    r = homec("targets", board(tmp_path, "[memory]\nsram_kib = 128\n"))
    assert r.returncode == 0 and "SRAM 128 KiB" in r.stdout and "ops: " in r.stdout


@pytest.mark.parametrize("target", ["cpu", "npu-int8", "mcu"])
def test_every_builtin_target_compiles_the_example(tmp_path, target):
    out = tmp_path / "kws.onnx"
    r = homec(EXAMPLE, "-p", CLEANUP, "-t", target, "-o", out, "--verify")
    assert r.returncode == 0, r.stderr
    assert "placement" in r.stdout and "latency" in r.stdout and "arena" in r.stdout
    manifest = json.loads((tmp_path / "kws.manifest.json").read_text())
    assert set(manifest) == MANIFEST_KEYS
    assert manifest["model"] == "kws.onnx" and manifest["target"]["name"] == target
    placement = manifest["placement"]
    if target == "cpu":
        assert placement["counts"] == {"cpu": sum(placement["counts"].values())}
        assert len(placement["partitions"]) == 1 and placement["transitions"] == 0
    if target == "mcu":
        assert placement["unsupported"] == [] and set(placement["counts"]) == {"mcu"}
    if target != "cpu":  # int8 targets quantize a float model (random calibration, warned)
        assert "the float model was quantized" in r.stdout and "random inputs" in r.stdout
        assert manifest["io"]["inputs"][0]["quantization"] is not None
    assert manifest["memory"]["arena_bytes"] >= manifest["memory"]["lower_bound_bytes"] > 0
    assert manifest["estimate"]["total_ms"] > 0
    onnx.checker.check_model(onnx.load(out), full_check=True)


def test_sram_budget_failure_exits_6_with_the_largest_tensors(tmp_path):
    out, rep = tmp_path / "o.onnx", tmp_path / "r.json"
    r = homec(EXAMPLE, "-t", board(tmp_path, "[memory]\nsram_kib = 8\n"), "-o", out,
              "--report", rep)
    assert r.returncode == 6, r.stderr
    line = r.stderr.strip()
    assert "\n" not in line and line.startswith("homec: error: ")
    assert "SRAM: " in line and "KiB needed, 8 KiB available; largest live tensors: " in line
    assert "Traceback" not in r.stderr
    assert not out.exists() and not (tmp_path / "o.manifest.json").exists()
    report = json.loads(rep.read_text())  # the report is still written, to see why
    assert report["manifest"]["memory"]["arena_bytes"] > 8 * 1024


def test_flash_budget_failure_exits_6(tmp_path):
    r = homec(EXAMPLE, "-t", board(tmp_path, "[memory]\nflash_kib = 4\n"), "-o", tmp_path / "o.onnx")
    assert r.returncode == 6 and "flash: " in r.stderr and "4 KiB available" in r.stderr


def test_unsupported_op_on_a_target_without_fallback_exits_4(tmp_path):
    r = homec(EXAMPLE, "-t", board(tmp_path, 'ops_remove = ["Gemm"]\n'), "-o", tmp_path / "o.onnx")
    assert r.returncode == 4, r.stderr
    assert "oven cannot run" in r.stderr and "Gemm" in r.stderr and "op not supported" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_bad_descriptor_is_one_line_exit_2(tmp_path):
    bad = board(tmp_path, "[memory]\nsram = 3\n")
    r = homec(EXAMPLE, "-t", bad, "-o", tmp_path / "o.onnx")
    assert r.returncode == 2
    assert r.stderr.strip() == f"homec: error: {bad}: memory.sram: unknown key (did you mean `sram_kib`?)"


def test_schedule_can_branch_on_a_user_target_name(tmp_path):
    sched = tmp_path / "s.hc"
    sched.write_text('schedule {\n  when target == "oven" { cleanup }\n}\n')
    out = tmp_path / "o.onnx"
    r = homec(EXAMPLE, "-p", sched, "-t", board(tmp_path, ""), "-o", out, "--stats")
    assert r.returncode == 0, r.stderr
    assert "cleanup" in r.stdout


def test_reports_depfile_and_manifest_path(tmp_path):
    out, dep = tmp_path / "o.onnx", tmp_path / "o.d"
    man = tmp_path / "m.json"
    tgt = board(tmp_path, "")
    r = homec(EXAMPLE, "-p", CLEANUP, "-t", tgt, "-o", out, "--manifest", man,
              "--report", tmp_path / "r.json", "--report", tmp_path / "r.html", "--depfile", dep)
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["manifest"]["placement"] == json.loads(man.read_text())["placement"]
    assert [p["phase"] for p in report["passes"]][-1] == "legalize-after"
    assert report["memory_over_schedule"][0]["pass"] == "(input)"
    assert len(report["memory_over_schedule"]) == len(report["passes"]) + 1
    html = (tmp_path / "r.html").read_text()
    assert html.lstrip().lower().startswith("<!doctype html") and "<svg" in html
    text = dep.read_text()
    for path in (out, EXAMPLE, CLEANUP, tgt):
        assert str(path) in text or os.path.relpath(path) in text
    assert text.startswith(f"{out}:")


def test_report_suffix_and_manifest_without_target_are_usage_errors(tmp_path):
    r = homec(EXAMPLE, "-o", tmp_path / "o.onnx", "--report", tmp_path / "r.txt")
    assert r.returncode == 2 and ".json or .html" in r.stderr
    r = homec(EXAMPLE, "-o", tmp_path / "o.onnx", "--manifest", tmp_path / "m.json")
    assert r.returncode == 2 and "needs a target" in r.stderr


@pytest.mark.parametrize("target", ["cpu", "npu-int8", "mcu"])
def test_target_output_is_byte_identical_across_hash_seeds(tmp_path, target):
    outs = []
    for seed in ("0", "98765"):
        d = tmp_path / seed
        d.mkdir()
        r = homec(EXAMPLE, "-p", CLEANUP, "-t", target, "-o", d / "m.onnx", "-q",
                  env={"PYTHONHASHSEED": seed})
        assert r.returncode == 0, r.stderr
        outs.append(((d / "m.onnx").read_bytes(), (d / "m.manifest.json").read_bytes()))
    assert outs[0] == outs[1]


def test_measure_reports_onnxruntime_latency_on_cpu(tmp_path):
    r = homec(EXAMPLE, "-p", CLEANUP, "-t", "cpu", "-o", tmp_path / "o.onnx", "--measure")
    assert r.returncode == 0, r.stderr
    measured = json.loads((tmp_path / "o.manifest.json").read_text())["measured"]
    assert measured["before"]["median_ms"] > 0 and measured["after"]["median_ms"] > 0
    assert "measured" in r.stdout
