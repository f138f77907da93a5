"""`homec MODEL -p SCHEDULE ...`: the main job's options, files and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "kws_cnn.onnx"
CLEANUP = ROOT / "examples" / "cleanup.hc"


def homec(*args, cwd=None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "homec", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def test_compile_with_schedule_verify_report(tmp_path):
    out, rep = tmp_path / "out.onnx", tmp_path / "r.json"
    r = homec(EXAMPLE, "-p", CLEANUP, "-o", out, "--verify", "--report", rep)
    assert r.returncode == 0, r.stderr
    assert "nodes       26 -> 15" in r.stdout and "verified" in r.stdout
    report = json.loads(rep.read_text())
    assert report["before"]["nodes"] == 26 and report["after"]["nodes"] == 15
    assert report["verification"]["ok"] is True
    assert all({"name", "seconds", "stats", "modified"} <= set(p) for p in report["passes"])
    onnx.checker.check_model(onnx.load(out), full_check=True)


def test_schedule_error_has_position_and_caret_and_exit_2(tmp_path):
    bad = tmp_path / "bad.hc"
    bad.write_text("schedule {\n  fold_constant\n}\n")
    out = tmp_path / "out.onnx"
    r = homec(EXAMPLE, "-p", bad, "-o", out)
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert lines[0] == (f"{bad}:2:3: error: unknown pass `fold_constant`; "
                        "did you mean `fold_constants`?")
    assert lines[1] == "      fold_constant" and lines[2] == "      ^"
    assert not out.exists()
    assert "Traceback" not in r.stderr


def test_check_and_fmt(tmp_path):
    r = homec("check", CLEANUP)
    assert r.returncode == 0 and "ok" in r.stdout
    r = homec("fmt", CLEANUP)
    assert r.returncode == 0
    formatted = tmp_path / "f.hc"
    formatted.write_text(r.stdout)
    assert homec("fmt", formatted).stdout == r.stdout  # idempotent


def test_verification_failure_exits_5_and_writes_nothing(tmp_path):
    # An impossible tolerance for a pass that refolds float arithmetic (BatchNorm folding).
    sched = tmp_path / "bn.hc"
    sched.write_text("schedule { fold_constants; fold_batchnorm }\n")
    out = tmp_path / "out.onnx"
    r = homec(EXAMPLE, "-p", sched, "-o", out, "--verify", "--tolerance", "atol=0,rtol=0")
    assert r.returncode == 5, r.stderr
    assert "verification failed" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_dump_dir_pass_limit_stats(tmp_path):
    dump = tmp_path / "dump"
    r = homec(EXAMPLE, "-p", CLEANUP, "-o", tmp_path / "o.onnx", "--dump-dir", dump,
              "--pass-limit", "3", "--stats")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in dump.iterdir()) == [
        "001-fold_constants.onnx", "002-fold_shapes.onnx", "003-eliminate_identity.onnx"]
    assert "stopped by --pass-limit after 3" in r.stdout


def test_calibration_inputs_drive_verification(tmp_path):
    calib = tmp_path / "calib.npz"
    np.savez(calib, mfcc=np.random.default_rng(0).standard_normal((3, 1, 1, 49, 10)).astype(np.float32))
    rep = tmp_path / "r.json"
    r = homec(EXAMPLE, "-p", CLEANUP, "-o", tmp_path / "o.onnx", "--calib", calib, "--verify",
              "--report", rep)
    assert r.returncode == 0, r.stderr
    ver = json.loads(rep.read_text())["verification"]
    assert ver["inputs"] == "calibration" and ver["samples"] == 3


def test_calibration_with_wrong_keys_is_a_usage_error(tmp_path):
    calib = tmp_path / "calib.npz"
    np.savez(calib, wrong=np.zeros((2, 1, 1, 49, 10), np.float32))
    r = homec(EXAMPLE, "-p", CLEANUP, "-o", tmp_path / "o.onnx", "--calib", calib)
    assert r.returncode == 2 and "missing input(s) mfcc" in r.stderr


def test_unknown_target_is_a_usage_error(tmp_path):
    r = homec(EXAMPLE, "-o", tmp_path / "o.onnx", "-t", "toaster")
    assert r.returncode == 2 and "unknown target" in r.stderr


@pytest.mark.parametrize("seed", ["0", "1", "4242"])
def test_compiled_output_is_byte_identical_across_hash_seeds(tmp_path, seed):
    ref = tmp_path / "ref.onnx"
    homec(EXAMPLE, "-p", CLEANUP, "-o", ref, "-q", env={"PYTHONHASHSEED": "123"})
    out = tmp_path / "out.onnx"
    r = homec(EXAMPLE, "-p", CLEANUP, "-o", out, "-q", env={"PYTHONHASHSEED": seed})
    assert r.returncode == 0 and r.stdout == ""
    assert out.read_bytes() == ref.read_bytes()


def test_passes_lists_builtin_cleanup_passes():
    r = homec("passes", "--json")
    names = {p["name"] for p in json.loads(r.stdout)}
    assert {"fold_constants", "eliminate_dead", "eliminate_identity", "cse", "fold_batchnorm",
            "fuse_matmul_add", "fold_shapes", "cleanup"} <= names
    r = homec("passes", "fold_batchnorm")
    assert r.returncode == 0 and "decompose_standalone" in r.stdout
    r = homec("passes", "fold_batchnrm")
    assert r.returncode == 2 and "did you mean `fold_batchnorm`" in r.stderr
