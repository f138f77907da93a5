"""examples/build: the Makefile and the CMake function compile models as build steps with
correct incremental rebuilds (real make, cmake with the Makefile and Ninja generators)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "build"
# The four outputs: two models x two targets.
NAMES = ["kws_cnn.cpu", "kws_cnn.npu-int8", "sensor_mlp.cpu", "sensor_mlp.npu-int8"]

pytestmark = pytest.mark.slow


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"`{name}` is not installed")
    return path


@pytest.fixture
def homec_exe(tmp_path) -> str:
    """The environment's homec (next to this Python first), else a launcher for it."""
    found = shutil.which("homec", path=os.path.dirname(sys.executable)) or shutil.which("homec")
    if found:
        return found
    launcher = tmp_path / "bin" / "homec"
    launcher.parent.mkdir()
    launcher.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m homec "$@"\n')
    launcher.chmod(0o755)
    return str(launcher)


@pytest.fixture
def project(tmp_path) -> Path:
    """examples/build and the model it uses from examples/, copied (no build products)."""
    shutil.copytree(EXAMPLE, tmp_path / "build",
                    ignore=shutil.ignore_patterns("out", "build", "__pycache__", "*.d"))
    shutil.copy(ROOT / "examples" / "kws_cnn.onnx", tmp_path / "kws_cnn.onnx")
    return tmp_path / "build"


def _env() -> dict[str, str]:
    return {**os.environ, "OPENBLAS_NUM_THREADS": "1"}


def _mtimes(folder: Path) -> dict[str, int]:
    return {n: (folder / f"{n}.onnx").stat().st_mtime_ns for n in NAMES}


def _touch(path: Path) -> None:
    time.sleep(0.05)  # file times come from a coarse clock: the touch must come out later
    os.utime(path)


class _Build:
    """Runs a build tool and says which outputs it rewrote."""

    def __init__(self, command: list[str], cwd: Path, outdir: Path):
        self.command, self.cwd, self.outdir = command, cwd, outdir

    def run(self) -> str:
        r = subprocess.run(self.command, cwd=self.cwd, capture_output=True, text=True,
                           timeout=600, env=_env())
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout

    def rebuilt_after(self, change) -> set[str]:
        before = _mtimes(self.outdir)
        if change is not None:
            change()
        log = self.run()
        after = _mtimes(self.outdir)
        rebuilt = {n for n in NAMES if after[n] != before[n]}
        # The build log agrees: homec ran exactly for the outputs that changed (make echoes
        # the command, CMake the custom command's comment).
        ran = {n for n in NAMES if f"{n}.onnx --depfile" in log or f"compiling {n} for" in log}
        assert ran == rebuilt, log
        return rebuilt


def _check_outputs(outdir: Path) -> None:
    for name in NAMES:
        onnx.checker.check_model(onnx.load(outdir / f"{name}.onnx"))
        assert (outdir / f"{name}.onnx.d").is_file()


def _check_incremental(build: _Build, project: Path) -> None:
    _check_outputs(build.outdir)
    assert build.rebuilt_after(None) == set()
    assert build.rebuilt_after(lambda: _touch(project / "schedules" / "cpu.hc")) == {
        "kws_cnn.cpu", "sensor_mlp.cpu"}
    # Only the depfile says that the schedules include common.hc ...
    assert build.rebuilt_after(lambda: _touch(project / "schedules" / "common.hc")) == set(NAMES)
    # ... that sensor_mlp keeps its weights in a second file ...
    assert build.rebuilt_after(lambda: _touch(project / "models" / "sensor_mlp.onnx.data")) == {
        "sensor_mlp.cpu", "sensor_mlp.npu-int8"}
    # ... and which files of the calibration folder the int8 build read.
    sample = sorted((project / "calib" / "sensor_mlp").glob("*.npz"))[1]
    assert build.rebuilt_after(lambda: _touch(sample)) == {"sensor_mlp.npu-int8"}
    assert build.rebuilt_after(lambda: _touch(project.parent / "kws_cnn.onnx")) == {
        "kws_cnn.cpu", "kws_cnn.npu-int8"}
    assert build.rebuilt_after(None) == set()


def test_makefile_rebuilds_exactly_what_changed(project, homec_exe):
    make = _tool("make")
    build = _Build([make, f"HOMEC={homec_exe}", "OUTDIR=out"], project, project / "out")
    log = build.run()
    assert log.count(homec_exe) == 4
    q = subprocess.run([make, "-q", f"HOMEC={homec_exe}"], cwd=project, env=_env())
    assert q.returncode == 0  # up to date
    _check_incremental(build, project)
    _touch(project / "schedules" / "npu-int8.hc")
    q = subprocess.run([make, "-q", f"HOMEC={homec_exe}"], cwd=project, env=_env())
    assert q.returncode == 1


@pytest.mark.parametrize("generator", ["Unix Makefiles", "Ninja"])
def test_cmake_function_rebuilds_exactly_what_changed(project, homec_exe, generator):
    cmake = _tool("cmake")
    _tool("make" if generator == "Unix Makefiles" else "ninja")
    binary = project.parent / "cmake-build"
    r = subprocess.run([cmake, "-S", str(project), "-B", str(binary), "-G", generator,
                        f"-DHOMEC_EXECUTABLE={homec_exe}"],
                       capture_output=True, text=True, timeout=300, env=_env())
    assert r.returncode == 0, r.stdout + r.stderr
    build = _Build([cmake, "--build", str(binary)], project, binary)
    log = build.run()
    assert all(f"homec: compiling {n} for" in log for n in NAMES), log
    for name in NAMES:  # the manifest is a declared output too
        assert (binary / f"{name}.manifest.json").is_file()
    _check_incremental(build, project)


def test_make_inputs_regenerates_the_same_inputs(tmp_path):
    subprocess.run([sys.executable, str(EXAMPLE / "make_inputs.py"), str(tmp_path)], check=True,
                   env=_env(), timeout=300)
    for name in ("models/sensor_mlp.onnx", "models/sensor_mlp.onnx.data"):
        assert (tmp_path / name).read_bytes() == (EXAMPLE / name).read_bytes(), name
    files = sorted(p.relative_to(EXAMPLE) for p in (EXAMPLE / "calib").rglob("*.npz"))
    assert files == sorted(p.relative_to(tmp_path) for p in (tmp_path / "calib").rglob("*.npz"))
    for rel in files:  # .npz zips carry timestamps: compare the arrays
        with np.load(EXAMPLE / rel) as want, np.load(tmp_path / rel) as got:
            assert sorted(want.files) == sorted(got.files)
            for key in want.files:
                np.testing.assert_array_equal(want[key], got[key])
