"""Target descriptors: the built-ins, user files, `extends`, and errors that name the key."""

from __future__ import annotations

import pytest
from onnx import helper

from homec.errors import ExitCode, UsageError
from homec.onnx_io import load
from homec.targets.descriptor import BUILTIN_TARGETS, load_target, target_from_dict

MINIMAL = """
name = "board"
[compute]
macs_per_cycle = 4
clock_mhz = 100
bandwidth_gbps = 0.5
"""


def _write(tmp_path, text, name="board.toml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize("name", BUILTIN_TARGETS)
def test_builtins_load_and_summarize(name):
    t = load_target(name)
    assert t.name == name
    assert t.summary()
    d = t.as_dict()
    assert d["name"] == name and d["quantization"]["form"] in ("qdq", "integer", "float")


def test_builtin_facts():
    cpu, npu, mcu = (load_target(n) for n in BUILTIN_TARGETS)
    assert cpu.all_ops and cpu.fallback is None and not cpu.quantization.required
    assert cpu.integer_kernels is True  # onnxruntime runs QLinearConv fastest (bench/results/fold_qdq.txt)
    assert npu.fallback == "cpu" and npu.channel_alignment == 16 and npu.quantization.required
    assert npu.static_shapes and npu.fallback_compute is not None
    assert mcu.fallback is None and mcu.static_shapes
    assert 100 * 1024 <= mcu.memory.sram <= 1024 * 1024  # "a few hundred KiB"
    assert 1024 * 1024 <= mcu.memory.flash <= 16 * 1024 * 1024  # "a few MiB"


def test_minimal_user_file(tmp_path):
    t = load_target(_write(tmp_path, MINIMAL))
    assert t.name == "board" and t.fallback is None and t.memory.sram is None
    assert t.compute.throughput("int8") == 4.0 and t.compute.clock_hz == 100e6
    assert t.path == str(tmp_path / "board.toml")


def test_extends_merges_tables_and_replaces_op_rules(tmp_path):
    path = _write(tmp_path, """
name = "oven"
extends = "mcu"
ops_remove = ["Resize"]
[memory]
sram_kib = 256
[ops.Conv]
dtypes = ["int8"]
max = { kernel_shape = 5 }
""")
    t = load_target(path)
    mcu = load_target("mcu")
    assert t.name == "oven" and t.memory.sram == 256 * 1024 and t.memory.flash == mcu.memory.flash
    assert "Resize" not in t.ops and "Softmax" in t.ops
    assert t.ops["Conv"].max == {"kernel_shape": 5} and t.ops["Conv"].groups is None
    assert t.compute == mcu.compute


@pytest.mark.parametrize("text, where", [
    ('name = "b"\n[memory]\nsram_kb = 4\n' + MINIMAL.split("\n", 2)[2], "memory.sram_kb: unknown key (did you mean `sram_kib`?)"),
    ('name = "b"\n[memory]\nsram_kib = "big"\n' + MINIMAL.split("\n", 2)[2], "memory.sram_kib: expected a positive integer"),
    ('name = "b"\nfallback = "gpu"\n' + MINIMAL.split("\n", 2)[2], "fallback: expected one of cpu, none"),
    ('name = "b"\n[ops.Conv]\ndtypes = ["int7"]\n' + MINIMAL.split("\n", 2)[2], "ops.Conv.dtypes: unknown value 'int7'"),
    ('name = "b"\n', "compute: missing table"),
    ('name = "b"\nfallback = "cpu"\n' + MINIMAL.split("\n", 2)[2], "fallback_compute: missing table"),
    ('name = "b"\nextends = "gpu"\n', "extends: expected one of cpu, npu-int8, mcu"),
    ('name = \n', "not valid TOML"),
    (MINIMAL.replace("clock_mhz = 100", "clock_mhz = -1"), "compute.clock_mhz: expected a positive number"),
])
def test_errors_name_file_and_key(tmp_path, text, where):
    path = _write(tmp_path, text)
    with pytest.raises(UsageError) as e:
        load_target(path)
    assert where in str(e.value)
    assert str(e.value).startswith(path + ":")
    assert e.value.exit_code == ExitCode.USAGE
    assert "\n" not in str(e.value)


def test_unknown_name_and_missing_file(tmp_path):
    with pytest.raises(UsageError, match="unknown target `gpu`"):
        load_target("gpu")
    with pytest.raises(UsageError, match="target file not found"):
        load_target(str(tmp_path / "nope.toml"))


def _node(op, **attrs):
    model = helper.make_model(helper.make_graph(
        [helper.make_node(op, ["x", "w"], ["y"], name="n", **attrs)], "g",
        [helper.make_tensor_value_info("x", 1, None), helper.make_tensor_value_info("w", 1, None)],
        [helper.make_tensor_value_info("y", 1, None)]))
    return load(model).nodes[0]


def test_attribute_rules():
    t = target_from_dict({
        "name": "b", "compute": {"macs_per_cycle": 1, "clock_mhz": 1, "bandwidth_gbps": 1},
        "ops": {"Conv": {"max": {"kernel_shape": 7, "strides": 2}},
                "Resize": {"attributes": {"mode": ["nearest"]}, "defaults": {"mode": "nearest"}}}})
    conv = t.ops["Conv"]
    assert conv.attribute_violation(_node("Conv", kernel_shape=[3, 3], strides=[2, 2])) is None
    assert conv.attribute_violation(_node("Conv", kernel_shape=[9, 9])) == "kernel_shape=[9, 9] (max 7)"
    assert conv.attribute_violation(_node("Conv", kernel_shape=[3, 3], strides=[1, 4])) == "strides=[1, 4] (max 2)"
    resize = t.ops["Resize"]
    assert resize.attribute_violation(_node("Resize")) is None  # the default mode is nearest
    assert resize.attribute_violation(_node("Resize", mode="cubic")) == "mode='cubic' (allowed: nearest)"
    assert t.rule(_node("Conv")) is conv and t.rule(_node("Gemm")) is None
