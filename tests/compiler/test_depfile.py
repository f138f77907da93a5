"""homec.depfile: what a compiled model depends on, and depfiles that make and ninja read back."""

from __future__ import annotations

import os
import shutil
import string
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import pytest
from onnx import TensorProto, numpy_helper

from homec.depfile import dependencies, format_depfile, write_depfile
from homec.errors import OutputError, UsageError
from homec.targets.descriptor import builtin_target_path, load_target

ROOT = Path(__file__).resolve().parents[2]


def _mlp(with_subgraph: bool = False) -> onnx.ModelProto:
    w1 = numpy_helper.from_array(np.arange(64, dtype=np.float32).reshape(8, 8), "w1")
    w2 = numpy_helper.from_array(np.ones((8, 4), np.float32), "w2")
    nodes = [oh.make_node("MatMul", ["x", "w1"], ["h"]), oh.make_node("MatMul", ["h", "w2"], ["y"])]
    outputs = [oh.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])]
    if with_subgraph:  # a tensor inside an If branch, which external data can hold too
        branch_const = numpy_helper.from_array(np.full((4,), 2.0, np.float32), "k")
        then = oh.make_graph([oh.make_node("Constant", [], ["t"], value=branch_const)], "then", [],
                             [oh.make_tensor_value_info("t", TensorProto.FLOAT, [4])])
        other = oh.make_graph([oh.make_node("Constant", [], ["e"], value_floats=[0.0] * 4)],
                              "else", [], [oh.make_tensor_value_info("e", TensorProto.FLOAT, [4])])
        nodes.append(oh.make_node("If", ["c"], ["z"], then_branch=then, else_branch=other))
        outputs.append(oh.make_tensor_value_info("z", TensorProto.FLOAT, [4]))
    inputs = [oh.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])]
    if with_subgraph:
        inputs.append(oh.make_tensor_value_info("c", TensorProto.BOOL, []))
    graph = oh.make_graph(nodes, "mlp", inputs, outputs, [w1, w2])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


# ---------------------------------------------------------------------------------------
# dependencies()
# ---------------------------------------------------------------------------------------


def test_model_with_external_data_files_in_main_graph_and_subgraph(tmp_path, monkeypatch):
    (tmp_path / "models").mkdir()
    onnx.save(_mlp(with_subgraph=True), tmp_path / "models" / "m.onnx",
              save_as_external_data=True, all_tensors_to_one_file=False, size_threshold=0,
              convert_attribute=True)
    stored = sorted(p.name for p in (tmp_path / "models").iterdir())
    assert stored == ["k", "m.onnx", "w1", "w2"]  # one file per tensor, the branch's included
    monkeypatch.chdir(tmp_path)
    assert dependencies(model_path="./models/m.onnx") == [
        "models/k", "models/m.onnx", "models/w1", "models/w2"]
    absolute = str(tmp_path / "models" / "m.onnx")
    assert dependencies(model_path=absolute) == [
        str(tmp_path / "models" / n) for n in ("k", "m.onnx", "w1", "w2")]


def test_shared_external_data_file_is_listed_once(tmp_path, monkeypatch):
    (tmp_path / "weights").mkdir()
    onnx.save(_mlp(), tmp_path / "m.onnx", save_as_external_data=True,
              all_tensors_to_one_file=True, location="weights/all.bin", size_threshold=0)
    monkeypatch.chdir(tmp_path)
    assert dependencies(model_path="m.onnx") == ["m.onnx", "weights/all.bin"]


def test_inline_model_depends_on_itself_only(tmp_path):
    onnx.save(_mlp(), tmp_path / "m.onnx")
    assert dependencies(model_path=tmp_path / "m.onnx") == [str(tmp_path / "m.onnx")]


def test_schedule_with_nested_includes(tmp_path, monkeypatch):
    (tmp_path / "lib").mkdir()
    (tmp_path / "main.hc").write_text('include "lib/a.hc"\nschedule { p1 }\n')
    (tmp_path / "lib" / "a.hc").write_text('include "b.hc"\ninclude "../shared.hc"\n'
                                          "pipeline p1 { p2 }\n")
    (tmp_path / "lib" / "b.hc").write_text('include "../shared.hc"\npipeline p2 { p3 }\n')
    (tmp_path / "shared.hc").write_text("pipeline p3 { cse }\n")
    (tmp_path / "unused.hc").write_text("pipeline p4 { cse }\n")
    onnx.save(_mlp(), tmp_path / "m.onnx")
    monkeypatch.chdir(tmp_path)
    assert dependencies(model_path="m.onnx", schedule_path="main.hc") == [
        "lib/a.hc", "lib/b.hc", "m.onnx", "main.hc", "shared.hc"]


def test_calibration_file_and_folder(tmp_path, monkeypatch):
    onnx.save(_mlp(), tmp_path / "m.onnx")
    (tmp_path / "samples").mkdir()
    for name in ("s1.npz", "s0.npz"):
        np.savez(tmp_path / "samples" / name, x=np.zeros((1, 8), np.float32))
    (tmp_path / "samples" / "notes.txt").write_text("not read by homec.calib")
    np.savez(tmp_path / "stacked.npz", x=np.zeros((2, 1, 8), np.float32))
    monkeypatch.chdir(tmp_path)
    assert dependencies(model_path="m.onnx", calib_path="samples") == [
        "m.onnx", "samples", "samples/s0.npz", "samples/s1.npz"]
    assert dependencies(model_path="m.onnx", calib_path="stacked.npz") == [
        "m.onnx", "stacked.npz"]


def test_user_target_file_and_the_builtin_it_extends(tmp_path, monkeypatch):
    onnx.save(_mlp(), tmp_path / "m.onnx")
    (tmp_path / "boards").mkdir()
    (tmp_path / "boards" / "oven.toml").write_text(
        'extends = "mcu"\nname = "oven"\n[memory]\nsram_kib = 256\n')
    monkeypatch.chdir(tmp_path)
    mcu = builtin_target_path("mcu")
    # The -t argument as given keeps the path relative; a loaded Target gives its absolute path.
    assert dependencies(model_path="m.onnx", target="boards/oven.toml") == sorted(
        [mcu, "boards/oven.toml", "m.onnx"])
    assert dependencies(model_path="m.onnx", target=load_target("boards/oven.toml")) == sorted(
        [mcu, str(tmp_path / "boards" / "oven.toml"), "m.onnx"])
    for name in ("cpu", "npu-int8"):
        expected = sorted([builtin_target_path(name), "m.onnx"])
        assert dependencies(model_path="m.onnx", target=name) == expected
        assert dependencies(model_path="m.onnx", target=load_target(name)) == expected


# ---------------------------------------------------------------------------------------
# format_depfile() / write_depfile()
# ---------------------------------------------------------------------------------------


def test_format_escapes_space_hash_colon_dollar():
    text = format_depfile(["out dir/m.onnx", "out dir/m.manifest.json"],
                          ["a b.onnx", "c#d.hc", "e$f.npz", "g:h", "p%q"])
    assert text == (
        "out\\ dir/m.onnx out\\ dir/m.manifest.json: \\\n"
        "  a\\ b.onnx \\\n  c\\#d.hc \\\n  e$$f.npz \\\n  g\\:h \\\n  p%q\n"
        "\na\\ b.onnx:\n\nc\\#d.hc:\n\ne$$f.npz:\n\ng\\:h:\n")  # no pattern rule `p%q:`
    assert format_depfile(["o"], []) == "o:\n"


@pytest.mark.parametrize("path", [
    "a\nb", "a\rb", "tab\there", "a\\ b", "x|y", "x;y", "k=v", "r[1]s", "~/m.onnx", "lib(m.o)",
    "a*b", "a?b", "a'b", 'a"b', "a&b", "a<b", "a>b", "a^b", "a`b"])
def test_names_make_or_ninja_would_misread_are_refused(path):
    with pytest.raises(UsageError, match="cannot write .* in a depfile"):
        format_depfile(["out.onnx"], [path])
    with pytest.raises(UsageError, match="cannot write .* in a depfile"):
        format_depfile([path], ["m.onnx"])


def test_percent_is_refused_in_an_output_only():
    with pytest.raises(UsageError, match="pattern rule"):
        format_depfile(["out%.onnx"], ["m.onnx"])


def test_write_is_atomic_and_keeps_the_old_file_on_error(tmp_path):
    d = tmp_path / "out.d"
    write_depfile(d, ["out.onnx"], ["m.onnx"])
    assert d.read_text() == "out.onnx: \\\n  m.onnx\n\nm.onnx:\n"
    with pytest.raises(UsageError):
        write_depfile(d, ["out.onnx"], ["bad\nname"])
    assert d.read_text() == "out.onnx: \\\n  m.onnx\n\nm.onnx:\n"
    write_depfile(d, ["out.onnx"], ["n.onnx"])
    assert d.read_text() == "out.onnx: \\\n  n.onnx\n\nn.onnx:\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.d"]  # no temporary left
    with pytest.raises(OutputError, match="depfile folder .* does not exist"):
        write_depfile(tmp_path / "missing" / "out.d", ["out.onnx"], ["m.onnx"])


# ---------------------------------------------------------------------------------------
# make and ninja read the depfile back
# ---------------------------------------------------------------------------------------

def _accepted(name: str) -> bool:
    try:
        format_depfile(["out"], [name])
        return True
    except UsageError:
        return False


# Every punctuation character format_depfile accepts, and names people really use.
ODD_NAMES = [f"a{c}b" for c in string.punctuation + " " if c != "/" and _accepted(f"a{c}b")] + [
    "model (1).onnx", "sub dir/inc.hc", "x~y"]


def test_the_readback_checks_cover_the_escaped_characters():
    assert {"a b", "a#b", "a$b", "a:b", "a%b", "a(b", "a)b", "a!b", "a@b", "a+b"} <= set(ODD_NAMES)


def _after_a_tick() -> None:
    time.sleep(0.05)  # file times come from a coarse clock: a later touch must get a later time


def _odd_tree(tmp_path: Path) -> list[str]:
    for name in ODD_NAMES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    write_depfile(tmp_path / "out.d", ["out"], ODD_NAMES)
    return ODD_NAMES


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
def test_gnu_make_reads_every_prerequisite(tmp_path):
    names = _odd_tree(tmp_path)
    (tmp_path / "Makefile").write_text("out:\n\ttouch out\n-include out.d\n")

    def make(*args):
        return subprocess.run(["make", *args], cwd=tmp_path, capture_output=True, text=True)

    assert make().returncode == 0
    assert make("-q", "out").returncode == 0  # up to date
    for name in names:
        _after_a_tick()
        os.utime(tmp_path / name)
        assert make("-q", "out").returncode == 1, f"make did not see {name!r} change"
        assert make().returncode == 0
        assert make("-q", "out").returncode == 0
    # A prerequisite that is gone (dropped from the schedule) rebuilds instead of failing.
    _after_a_tick()
    (tmp_path / "sub dir" / "inc.hc").unlink()
    r = make()
    assert r.returncode == 0 and "touch out" in r.stdout, r.stderr


@pytest.mark.skipif(shutil.which("ninja") is None, reason="ninja is not installed")
def test_ninja_reads_every_prerequisite(tmp_path):
    names = _odd_tree(tmp_path)
    keep = (tmp_path / "out.d").read_text()
    (tmp_path / "out.d.keep").write_text(keep)
    (tmp_path / "build.ninja").write_text(
        "rule gen\n  command = touch out && cp out.d.keep out.d\n  depfile = out.d\n"
        "  deps = gcc\nbuild out: gen\n")
    r = subprocess.run(["ninja"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout
    deps = subprocess.run(["ninja", "-t", "deps"], cwd=tmp_path, capture_output=True,
                          text=True).stdout.splitlines()
    assert sorted(line.strip() for line in deps[1:] if line.strip()) == sorted(names)


def test_cli_depfile_lists_what_the_compile_read(tmp_path):
    onnx.save(_mlp(), tmp_path / "m.onnx", save_as_external_data=True,
              all_tensors_to_one_file=True, location="m.bin", size_threshold=0)
    (tmp_path / "common.hc").write_text("pipeline tidy { eliminate_identity; cse }\n")
    (tmp_path / "s.hc").write_text('include "common.hc"\nschedule { tidy }\n')
    (tmp_path / "out").mkdir()
    r = subprocess.run([sys.executable, "-m", "homec", "m.onnx", "-p", "s.hc", "-t", "cpu",
                        "-o", "out/m.onnx", "--depfile", "out/m.onnx.d", "-q"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "out" / "m.onnx.d").read_text()
    head = text.split("\n\n")[0]
    assert head.startswith("out/m.onnx")
    for dep in ("m.onnx", "m.bin", "s.hc", "common.hc", builtin_target_path("cpu")):
        assert f"  {dep}" in head
