"""Shared fixtures for the schedule-language tests: the reference example and a private pass
registry with fake passes named like the real ones (which may not exist yet)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import pytest

from homec.registry import PassRegistry, Range, Tolerance, register_pass

# The example from docs/schedule-language.md; it must parse exactly as written.
EXAMPLE = '''\
# kitchen-camera classifier for the int8 NPU
include "common.hc"                       # relative to this file; include cycles are an error
pipeline tidy { fold_constants; eliminate_identity; eliminate_dead; cse }
schedule {
  tidy
  fold_batchnorm
  prune_channels(ratio=0.3, criterion="l1", align=16) on Conv where name ~ "backbone.*"
  low_rank(energy=0.95) on MatMul, Gemm
  quantize(weights="int8", per_channel=true, activations="uint8", calibration="percentile")
  fold_qdq
  when target == "npu-int8" { legalize }
  fixpoint(max=10) { tidy }
  repeat(2) { cse }
}
'''

COMMON = "pipeline common_tidy { eliminate_dead }\n"

TARGETS = {"cpu", "npu-int8", "mcu"}


@pytest.fixture
def example_text() -> str:
    return EXAMPLE


@pytest.fixture
def example_dir(tmp_path: Path) -> Path:
    """tmp_path holding schedule.hc (the example) and the common.hc it includes."""
    (tmp_path / "schedule.hc").write_text(EXAMPLE, encoding="utf-8")
    (tmp_path / "common.hc").write_text(COMMON, encoding="utf-8")
    return tmp_path


def make_registry() -> PassRegistry:
    """A registry of fake passes; `_plugins_loaded = True` keeps `get()` from importing
    homec.passes (the built-in passes) into it."""
    reg = PassRegistry()
    reg._plugins_loaded = True

    def plain(name: str, *, selectable: bool = True) -> None:
        def fn(graph, ctx):  # noqa: ANN001, ANN202
            """A fake pass without options."""
            return {}

        register_pass(name, registry=reg, selectable=selectable)(fn)

    for name in ("fold_constants", "eliminate_identity", "eliminate_dead", "cse",
                 "fold_batchnorm"):
        plain(name)
    plain("fold_qdq", selectable=False)
    plain("legalize", selectable=False)

    @register_pass("prune_channels", registry=reg, tolerance=Tolerance.bounded(min_cosine=0.9))
    def prune_channels(graph, ctx, *, ratio: Annotated[float, Range(0, 1)] = 0.25,  # noqa: ANN001, ANN202
                       criterion: Literal["l1", "l2", "bn_gamma"] = "l1", align: int = 1):
        """Fake channel pruning."""
        return {}

    @register_pass("low_rank", registry=reg)
    def low_rank(graph, ctx, *, energy: Annotated[float, Range(0, 1)] = 0.99):  # noqa: ANN001, ANN202
        """Fake low-rank factorization."""
        return {}

    @register_pass("quantize", registry=reg, selectable=True, needs_calibration=True)
    def quantize(graph, ctx, *, weights: Literal["int8", "uint8"] = "int8",  # noqa: ANN001, ANN202
                 per_channel: bool = True, activations: Literal["int8", "uint8"] = "uint8",
                 calibration: Literal["minmax", "percentile", "entropy"] = "minmax",
                 percentile: Annotated[float, Range(90, 100)] = 99.99,
                 exclude: list[str] = [],  # noqa: B006
                 bits: Annotated[int | None, Range(2, 8)] = None):
        """Fake quantization."""
        return {}

    return reg


@pytest.fixture
def registry() -> PassRegistry:
    return make_registry()
