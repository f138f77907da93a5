"""The example plugin package, pip-installed, adds a pass homec lists and runs from a schedule."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import onnx
import onnx.helper as oh
import pytest

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "examples" / "plugin"


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    # pip builds the package in an isolated environment (setuptools from the registry)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--target", str(target), str(PLUGIN)],
                   check=True, capture_output=True, text=True)
    return target


def _homec(args, plugin_path: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(plugin_path))
    return subprocess.run([sys.executable, "-m", "homec", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_plugin_pass_is_listed(plugin_path, tmp_path):
    r = _homec(["passes", "--json"], plugin_path, tmp_path)
    assert r.returncode == 0, r.stderr
    names = {p["name"]: p for p in json.loads(r.stdout)}
    assert "strip_doc_strings" in names
    assert names["strip_doc_strings"]["module"] == "homec_example_plugin.strip_doc_strings"
    assert [o["name"] for o in names["strip_doc_strings"]["options"]] == ["keep_graph_doc"]


def test_plugin_pass_runs_from_a_schedule(plugin_path, tmp_path):
    nodes = [oh.make_node("Relu", ["x"], ["y"], name="r", doc_string="a rectifier")]
    g = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", 1, [2])],
                      [oh.make_tensor_value_info("y", 1, [2])], doc_string="graph doc")
    model = oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)])
    src = tmp_path / "m.onnx"
    onnx.save(model, src)
    (tmp_path / "strip.hc").write_text("schedule {\n  strip_doc_strings(keep_graph_doc=true)\n}\n")
    r = _homec([src, "-p", "strip.hc", "-o", "out.onnx", "--verify-each", "--stats"],
               plugin_path, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "node_doc_strings_removed=1" in r.stdout
    out = onnx.load(tmp_path / "out.onnx")
    assert out.graph.node[0].doc_string == ""
    assert out.graph.doc_string == "graph doc"


def test_without_the_plugin_the_pass_is_unknown(tmp_path):
    (tmp_path / "strip.hc").write_text("schedule { strip_doc_strings }\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-m", "homec", "check", "strip.hc"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert "unknown pass `strip_doc_strings`" in r.stderr
