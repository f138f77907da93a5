"""docs/targets.md stays in step with the code: every ```toml block is a complete descriptor
that loads (through load_target, so `extends` resolves as for `-t file.toml`), every key the
built-in files use is documented, and the flags and figures it quotes exist.

Fragments that are not complete descriptors are written in plain ``` blocks in the doc."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from homec.cli import build_compile_parser
from homec.errors import UsageError
from homec.targets.descriptor import BUILTIN_TARGETS, builtin_target_path, load_target

DOC = Path(__file__).resolve().parents[2] / "docs" / "targets.md"
TEXT = DOC.read_text()
TOML_BLOCKS = re.findall(r"```toml\n(.*?)```", TEXT, flags=re.S)


def _load(tmp_path, text: str, name: str = "board.toml"):
    path = tmp_path / name
    path.write_text(text)
    return load_target(str(path))


def test_the_doc_has_toml_examples():
    assert len(TOML_BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(TOML_BLOCKS)))
def test_every_toml_block_is_a_valid_descriptor(tmp_path, index):
    target = _load(tmp_path, TOML_BLOCKS[index])
    assert target.name and target.compute.clock_hz > 0


def test_the_oven_example_is_what_the_text_says(tmp_path):
    block = next(b for b in TOML_BLOCKS if 'extends = "mcu"' in b)
    oven = _load(tmp_path, block, "oven.toml")
    mcu = load_target("mcu")
    assert oven.name == "oven"
    assert oven.memory.sram == 256 * 1024 and oven.memory.flash == 2048 * 1024
    assert "Resize" not in oven.ops and set(oven.ops) == set(mcu.ops) - {"Resize"}
    assert oven.ops["Conv"].max["kernel_shape"] == 5
    # merged key by key: the clock changed, the rest of mcu's compute model stayed
    assert oven.compute.clock_hz == 550e6
    assert oven.compute.macs_per_cycle == mcu.compute.macs_per_cycle
    assert oven.compute.bandwidth == mcu.compute.bandwidth
    assert (oven.fallback, oven.static_shapes, oven.quantization) == (None, True, mcu.quantization)


def _keys(table: dict, prefix: str = "") -> set[str]:
    out = set()
    for key, value in table.items():
        if prefix == "ops.":
            key = "ops.NAME"  # one rule table stands for all
        out.add(prefix + key)
        if isinstance(value, dict) and key not in ("macs_per_cycle", "attributes", "defaults", "max"):
            out |= _keys(value, f"{key}.")
    return out


def test_every_key_of_the_builtin_files_is_documented():
    keys: set[str] = set()
    for name in BUILTIN_TARGETS:
        with open(builtin_target_path(name), "rb") as f:
            keys |= _keys(tomllib.load(f))
    for key in sorted(keys):
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "NAME":
            assert "[ops.NAME]" in TEXT
        else:
            assert f"`{leaf}`" in TEXT or f"`[{leaf}]`" in TEXT, f"docs/targets.md does not document `{key}`"


def test_builtin_table_op_counts_match_the_files():
    for name in BUILTIN_TARGETS:
        t = load_target(name)
        if not t.all_ops:
            assert f"{len(t.ops)} listed" in TEXT, name


def test_documented_flags_exist():
    options = {s for a in build_compile_parser()._actions for s in a.option_strings}
    for flag in ("-t", "--input-shape", "--measure", "--report", "--manifest", "--depfile"):
        assert f"`{flag}" in TEXT
        assert flag in options, flag


def test_ops_remove_without_extends_is_an_error(tmp_path):
    block = next(b for b in TOML_BLOCKS if "extends" not in b)
    with pytest.raises(UsageError, match="ops_remove"):
        _load(tmp_path, block.replace('device = "npu"', 'ops_remove = ["Relu"]\ndevice = "npu"'))


def test_ops_remove_on_the_cpu_target_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="ops_remove"):
        _load(tmp_path, 'extends = "cpu"\nname = "c"\nops_remove = ["Resize"]\n')


def test_ops_remove_of_an_unknown_operator_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="Resise"):
        _load(tmp_path, 'extends = "mcu"\nname = "m"\nops_remove = ["Resise"]\n')
