"""The `homec` command line, run as a subprocess (`python -m homec ...`) like a user would.

A few error-path checks that need a fault injected (internal errors, Ctrl-C) call
`homec.cli.main` in-process instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "kws_cnn.onnx"


def homec(*args: str | os.PathLike, env: dict[str, str] | None = None,
          cwd: str | os.PathLike | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "HOMEC_DEBUG"}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "homec", *map(str, args)], capture_output=True,
                          text=True, env=full_env, cwd=cwd, timeout=300)


def assert_one_line_error(r: subprocess.CompletedProcess, code: int) -> str:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("homec: error: "), lines[0]
    return lines[0]


@pytest.fixture
def model(tmp_path: Path) -> Path:
    """A copy of the example model in a fresh folder."""
    dst = tmp_path / "kws_cnn.onnx"
    shutil.copyfile(EXAMPLE, dst)
    return dst


# -- the main job ------------------------------------------------------------------------


def test_main_job_writes_output(model: Path, tmp_path: Path):
    out = tmp_path / "out.onnx"
    r = homec(model, "-o", out)
    assert r.returncode == 0, r.stderr
    assert out.is_file() and out.stat().st_size > 0
    assert str(out) in r.stdout and "nodes" in r.stdout and "parameters" in r.stdout
    import homec as hc

    g = hc.load(out)
    assert len(g) == len(hc.load(model))
    assert not list(tmp_path.glob(".homec-*")), "temporary files left behind"


def test_main_job_default_output_beside_input(model: Path):
    r = homec(model)
    assert r.returncode == 0, r.stderr
    assert (model.parent / "kws_cnn.homec.onnx").is_file()


def test_quiet_prints_nothing(model: Path, tmp_path: Path):
    r = homec(model, "-q", "-o", tmp_path / "q.onnx")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and r.stderr == ""


@pytest.mark.parametrize("spelling", ["same", "dotted", "hardlink"])
def test_refuses_to_overwrite_input(model: Path, spelling: str):
    before = model.read_bytes()
    if spelling == "same":
        out = model
    elif spelling == "dotted":
        out = model.parent / "." / ".." / model.parent.name / model.name
    else:
        out = model.parent / "alias.onnx"
        os.link(model, out)
    r = homec(model, "-o", out)
    line = assert_one_line_error(r, 2)
    assert "input" in line
    assert model.read_bytes() == before


def test_missing_model(tmp_path: Path):
    r = homec(tmp_path / "nope.onnx")
    line = assert_one_line_error(r, 3)
    assert "nope.onnx" in line


@pytest.mark.parametrize("data", [b"this is not an onnx model\n", b"\x08\x07\x12\xff\xff\xff",
                                  bytes(range(256)) * 4])
def test_garbage_model(tmp_path: Path, data: bytes):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(data)
    assert_one_line_error(homec(bad), 3)
    assert_one_line_error(homec("inspect", bad), 3)


def test_output_folder_missing(model: Path, tmp_path: Path):
    r = homec(model, "-o", tmp_path / "no" / "such" / "dir" / "out.onnx")
    assert_one_line_error(r, 7)


def test_output_is_a_directory(model: Path, tmp_path: Path):
    (tmp_path / "adir").mkdir()
    assert_one_line_error(homec(model, "-o", tmp_path / "adir"), 7)


def test_output_is_deterministic(model: Path, tmp_path: Path):
    outs = []
    for i, seed in enumerate(["0", "1", "12345", "random"]):
        out = tmp_path / f"run{i}.onnx"
        r = homec(model, "-q", "-o", out, env={"PYTHONHASHSEED": seed})
        assert r.returncode == 0, r.stderr
        outs.append(out.read_bytes())
    assert all(o == outs[0] for o in outs)


def test_usage_errors_exit_2(tmp_path: Path):
    r = homec()
    assert r.returncode == 2 and "usage:" in r.stderr
    r = homec(EXAMPLE, "--no-such-option")
    assert r.returncode == 2 and "usage:" in r.stderr


def test_version_and_help():
    import homec as hc

    r = homec("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"homec {hc.__version__}"
    r = homec("--help")
    assert r.returncode == 0 and "inspect" in r.stdout and "exit codes" in r.stdout
    r = homec("inspect", "--help")
    assert r.returncode == 0 and "--input-shape" in r.stdout


# -- inspect ----------------------------------------------------------------------------


def test_inspect_human(model: Path):
    r = homec("inspect", model)
    assert r.returncode == 0, r.stderr
    assert "mfcc" in r.stdout and "probs" in r.stdout and "Conv" in r.stdout


def test_inspect_json(model: Path):
    r = homec("inspect", "--json", model)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    for key in ("nodes", "parameters", "inputs", "outputs"):
        assert key in d, f"missing key {key!r} in {sorted(d)}"
    import onnx

    m = onnx.load(str(model))
    assert d["nodes"] == len(m.graph.node)
    # every weight is an initializer; the int64 shape Constants are not parameters
    assert d["parameters"] == sum(int(np.prod(t.dims)) for t in m.graph.initializer)


def test_inspect_json_is_deterministic(model: Path):
    a = homec("inspect", "--json", model, env={"PYTHONHASHSEED": "1"})
    b = homec("inspect", "--json", model, env={"PYTHONHASHSEED": "2"})
    assert a.returncode == b.returncode == 0
    assert a.stdout == b.stdout


def test_inspect_with_input_shape(model: Path):
    r = homec("inspect", "--json", "--input-shape", "mfcc=1x1x49x10", model)
    assert r.returncode == 0, r.stderr
    json.loads(r.stdout)


@pytest.mark.parametrize("spec", ["mfcc", "mfcc=", "mfcc=1xax49x10", "mfcc=1x1,49x10",
                                  "mfcc=0x1x49x10", "=1x2"])
def test_inspect_malformed_input_shape(model: Path, spec: str):
    r = homec("inspect", model, "--input-shape", spec)
    assert_one_line_error(r, 2)


def test_inspect_input_shape_for_unknown_input(model: Path):
    r = homec("inspect", model, "--input-shape", "nosuchinput=1x2")
    assert_one_line_error(r, 2)


def test_inspect_missing_model(tmp_path: Path):
    assert_one_line_error(homec("inspect", tmp_path / "missing.onnx"), 3)


# -- error handling in-process (faults injected) -----------------------------------------


def _boom(*_a, **_k):
    raise RuntimeError("something\nbroke")


def test_internal_error_is_one_line_exit_70(monkeypatch, capsys, model: Path):
    import homec as hc
    from homec import cli

    monkeypatch.delenv("HOMEC_DEBUG", raising=False)
    monkeypatch.setattr(hc, "compile", _boom)
    assert cli.main([str(model)]) == 70
    err = capsys.readouterr().err
    assert err.strip() == ("homec: internal error: RuntimeError: something broke "
                           "(rerun with HOMEC_DEBUG=1 for a traceback)")


def test_internal_error_with_debug_shows_traceback(monkeypatch, capsys, model: Path):
    import homec as hc
    from homec import cli

    monkeypatch.setenv("HOMEC_DEBUG", "1")
    monkeypatch.setattr(hc, "compile", _boom)
    assert cli.main([str(model)]) == 70
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: something" in err


def test_ir_error_counts_as_internal(monkeypatch, capsys, model: Path):
    import homec as hc
    from homec import cli
    from homec.errors import IRError

    def bad(*_a, **_k):
        raise IRError("graph 'g': cycle")

    monkeypatch.delenv("HOMEC_DEBUG", raising=False)
    monkeypatch.setattr(hc, "compile", bad)
    assert cli.main([str(model)]) == 70
    assert capsys.readouterr().err.startswith("homec: internal error: IRError: ")


def test_keyboard_interrupt_exits_130_quietly(monkeypatch, capsys, model: Path):
    import homec as hc
    from homec import cli

    def interrupt(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(hc, "compile", interrupt)
    assert cli.main([str(model)]) == 130
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


# -- the README -----------------------------------------------------------------------


def _readme_code_blocks() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return [b.strip() for b in re.findall(r"^```[a-z]*\n(.*?)^```", text, re.S | re.M)]


def test_readme_first_command_works(tmp_path: Path):
    """README's first command, run in a temp dir (`pip install .` skipped: already installed)."""
    first = _readme_code_blocks()[0]
    prefix = "pip install . && "
    assert first.startswith(prefix), first
    steps = first[len(prefix):].replace("/tmp/", f"{tmp_path}/out/")
    (tmp_path / "out").mkdir()
    (tmp_path / "examples").mkdir()
    shutil.copyfile(EXAMPLE, tmp_path / "examples" / "kws_cnn.onnx")
    shutil.copyfile(REPO / "examples" / "cleanup.hc", tmp_path / "examples" / "cleanup.hc")
    # The console script lives beside this interpreter's other scripts.
    env = {**os.environ, "PATH": sysconfig.get_path("scripts") + os.pathsep + os.environ["PATH"]}
    env.pop("HOMEC_DEBUG", None)
    r = subprocess.run(["bash", "-c", f"set -euo pipefail; {steps}"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert (tmp_path / "out" / "kws_cnn.npu.onnx").is_file()
    assert (tmp_path / "out" / "kws_cnn.npu.manifest.json").is_file()
    assert (tmp_path / "out" / "kws_cnn.npu.html").is_file()
    assert "mfcc" in r.stdout


def test_readme_second_command_is_what_ci_runs():
    second = _readme_code_blocks()[1]
    assert second.endswith("pip install -e '.[test]' && python -m pytest -q")
    assert second in (REPO / ".ci" / "run").read_text().splitlines()
    assert os.access(REPO / ".ci" / "run", os.X_OK)
