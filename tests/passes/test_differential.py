"""Differential tests of the cleanup passes on generated graphs, with verify-each semantics.

Every generated model (homec.testing.graphgen.random_model; most at opset 17, some at
13/15/18/19/21, see OPSETS) goes through `cleanup` and, separately, through each cleanup
pass (and a few non-default options, VARIANTS) on a fresh load. After the pass:

  1. the pass did not raise;
  2. `Graph.verify()` holds;
  3. the emitted model passes `onnx.checker.check_model(full_check=True)`;
  4. the graph interface (input and output names, in order) is unchanged;
  5. if the model bytes changed, the statistics report a change;
  6. onnxruntime's outputs match the original model's within the pass's declared tolerance
     (`REGISTRY.get(name).tolerance`, judged by homec.testing.oracle.compare); the inputs
     also override every initializer that is listed as a graph input (an IR >= 4 default a
     caller may replace), so a pass treating one as a constant is caught;
  7. running the pass again on the result reports no change and leaves the bytes identical.

"A change" is a statistic that is non-zero and not informational: `pipeline.is_modified`'s
rule applied to the last dotted component of a key (cleanup reports `pass.key`), with
`converged` and `iterations` as bookkeeping. Separately, test_cleanup_rerun_is_not_a_change
checks that the pass manager's own `is_modified` reads a no-op cleanup as unchanged.

A failure prints seed, pass and what went wrong, and saves the model (up to SAVE_PER_KIND
per pass and kind of failure per run) as tests/regressions/<pass>-<seed>.onnx, with the
pass, its options and the reason in the model's metadata (see the README there); every
saved model is re-run by `test_saved_regression`, so a bug once found stays fixed.

Seeds: BASE_SEED .. BASE_SEED + DEFAULT_COUNT - 1 by default. HOMEC_DIFF_SEEDS overrides:
  "500"          -> 500 seeds from BASE_SEED
  "7000:7500"    -> seeds 7000 .. 7499
  "17,42,99"     -> exactly these seeds (a single seed: "42,")
The slow test runs SLOW_COUNT larger graphs (HOMEC_DIFF_SLOW_SEEDS, same syntax, from
SLOW_BASE_SEED). HOMEC_DIFF_SAVE=0 disables saving regression models.

A pass (or option) that is not registered fails the test.

Known non-bug: QuantizeLinear and Cast to float16 or an integer type round, so a pass that
legitimately moves a value by one ulp (float refolding) can flip an element by one
quantization step (or one float16 ulp, or one integer). For a pass with a non-exact
tolerance on a model with such a rounding step, a mismatch with cosine >= 0.9999 and
either <= 1% of the elements off or every element within 1e-3 of the output's magnitude is
reported as a warning, not a failure (models without rounding steps, about half of them,
keep the strict check).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import traceback
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest

import homec
from homec.context import PassContext
from homec.registry import REGISTRY, Tolerance
from homec.testing.graphgen import random_model
from homec.testing.oracle import compare, random_feeds, regression_info, run_ort, save_regression

from homec.pipeline import is_modified

PASSES = ("cleanup", "fold_constants", "fold_shapes", "eliminate_identity", "fuse_matmul_add",
          "fold_batchnorm", "cse", "eliminate_dead", "fuse_activations", "fold_qdq")
# Non-default options worth the same checks (each runs on the same graphs).
VARIANTS = (
    ("fold_constants", {"fold_dequantize": True}),
    ("fold_batchnorm", {"decompose_standalone": True}),
    ("cse", {"initializers": False}),
    ("eliminate_dead", {"remove_custom": True}),
    ("fold_qdq", {"form": "integer"}),
)
CONFIGS = [(name, {}) for name in PASSES] + list(VARIANTS)


def config_id(name: str, options: dict) -> str:
    return name + "".join(f"[{k}={v}]" for k, v in sorted(options.items()))

BASE_SEED = 1000
DEFAULT_COUNT = 240
MAX_NODES = 40
SLOW_BASE_SEED = 500_000
SLOW_COUNT = 300
SLOW_MAX_NODES = 100
SAVE_PER_KIND = 3  # regression models saved per (pass, kind of failure) and run

REGRESSIONS = Path(__file__).resolve().parent.parent / "regressions"


def _parse_seeds(text: str | None, base: int, count: int) -> list[int]:
    if not text or not text.strip():
        return list(range(base, base + count))
    text = text.strip()
    if "," in text:
        return [int(s) for s in text.split(",") if s.strip()]
    if ":" in text:
        a, b = text.split(":", 1)
        return list(range(int(a), int(b)))
    return list(range(base, base + int(text)))


def default_seeds() -> list[int]:
    return _parse_seeds(os.environ.get("HOMEC_DIFF_SEEDS"), BASE_SEED, DEFAULT_COUNT)


def slow_seeds() -> list[int]:
    return _parse_seeds(os.environ.get("HOMEC_DIFF_SLOW_SEEDS"), SLOW_BASE_SEED, SLOW_COUNT)


# ---------------------------------------------------------------------------------------
# One case: model, inputs, reference outputs (cached across the per-pass tests)
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Case:
    seed: int
    model: onnx.ModelProto
    data: bytes  # deterministic serialization
    feeds: dict[str, np.ndarray]
    ref: list[np.ndarray]
    input_names: list[str]
    output_names: list[str]
    rounding: bool  # has a rounding step (QuantizeLinear, Cast to float16 or an integer)


def _rounds(node: onnx.NodeProto) -> bool:
    if node.op_type == "QuantizeLinear":
        return True
    if node.op_type == "Cast":
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        return to not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE)
    return any(_rounds(n) for a in node.attribute if a.type == onnx.AttributeProto.GRAPH
               for n in a.g.node)


def make_case(model: onnx.ModelProto, seed: int) -> Case:
    feeds = random_feeds(model, seed, override_initializers=True)
    return Case(seed, model, model.SerializeToString(deterministic=True), feeds,
                run_ort(model, feeds), [i.name for i in model.graph.input],
                [o.name for o in model.graph.output],
                any(_rounds(n) for n in model.graph.node))


# Most graphs use opset 17; every eighth seed position another opset, so passes meet the
# older and newer spellings (Split num_outputs, Squeeze/Unsqueeze axes inputs, ...).
OPSETS = (17, 17, 17, 13, 15, 18, 19, 21)


def opset_for(seed: int) -> int:
    return OPSETS[seed % len(OPSETS)]


@functools.lru_cache(maxsize=None)
def generated_case(seed: int, max_nodes: int) -> Case:
    return make_case(random_model(seed, max_nodes=max_nodes, opset=opset_for(seed)), seed)


# ---------------------------------------------------------------------------------------
# The checks
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Problem:
    kind: str  # crash, verify, emit, checker, interface, unreported, ort, mismatch, rerun
    detail: str
    warning_only: bool = False


def _first_lines(e: BaseException, n: int = 3) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: " + " | ".join(lines[:n])[:600]


# Bookkeeping a fixpoint driver reports whether or not anything changed.
_BOOKKEEPING = ("converged", "iterations")


def _changes(stats: dict) -> dict:
    """The statistics that record a change. `cleanup` namespaces its passes' keys
    (`fold_batchnorm.refused_other_users`), so the informational-prefix rule of
    `pipeline.is_modified` is applied to the last dotted component; `converged` and
    `iterations` are bookkeeping. (Whether the pass manager itself reads cleanup's
    statistics this way is checked separately: test_cleanup_rerun_is_not_a_change.)"""
    out = {}
    for k, v in stats.items():
        leaf = k.rsplit(".", 1)[-1]
        if leaf in _BOOKKEEPING:
            continue
        if is_modified({leaf: v}):
            out[k] = v
    return out


def _looks_like_rounding_flip(case: Case, tol: Tolerance, cmp) -> bool:
    """A mismatch a legitimate ulp-level change explains once a rounding step amplified it:
    the model rounds somewhere, the pass may refold floats, and every failing output is
    still almost parallel to the reference (cosine >= 0.9999) with either few values off
    (<= 1%) or all of them close (max error <= 1e-3 of the output's magnitude)."""
    if not case.rounding or (tol.atol == 0 and tol.rtol == 0):
        return False
    if cmp.reason:
        return False
    for o in cmp.outputs:
        if o.ok:
            continue
        if "values off by" not in o.reason or o.cosine < 0.9999:
            return False
        n_bad = int(o.reason.split(" of ")[0])
        total = int(o.reason.split(" of ")[1].split()[0])
        few = n_bad <= max(1, total // 100)
        close = o.max_abs_err <= 1e-3 * o.ref_max_abs
        if not (few or close):
            return False
    return True


def check_pass(name: str, case: Case, given: dict | None = None) -> list[Problem]:
    """Run pass `name` (with options `given` over its defaults) on a fresh load of the case's
    model; every verify-each check."""
    info = REGISTRY.get(name)
    assert info is not None
    options = info.bind(dict(given or {}))
    graph = homec.load(case.model)
    try:
        stats = info.fn(graph, PassContext(), **options)
    except Exception as e:
        return [Problem("crash", _first_lines(e) + "\n" + "".join(traceback.format_exc(limit=-3)))]
    problems: list[Problem] = []
    try:
        graph.verify()
    except Exception as e:
        return [Problem("verify", _first_lines(e))]
    try:
        out = graph.to_onnx()
    except Exception as e:
        return [Problem("emit", _first_lines(e))]
    data = out.SerializeToString(deterministic=True)
    if data != case.data and not _changes(stats):
        problems.append(Problem("unreported", f"the model changed but the statistics report no "
                                f"change: {stats}"))
    try:
        onnx.checker.check_model(out, full_check=True)
    except Exception as e:
        problems.append(Problem("checker", _first_lines(e)))
    ins = [i.name for i in out.graph.input]
    outs = [o.name for o in out.graph.output]
    if ins != case.input_names or outs != case.output_names:
        problems.append(Problem("interface", f"inputs {case.input_names} -> {ins}, "
                                f"outputs {case.output_names} -> {outs}"))
    try:
        got = run_ort(out, case.feeds)
    except Exception as e:
        problems.append(Problem("ort", _first_lines(e)))
    else:
        cmp = compare(case.ref, got, info.tolerance, names=case.output_names)
        if not cmp.ok:
            problems.append(Problem("mismatch", cmp.describe(),
                                    warning_only=_looks_like_rounding_flip(case, info.tolerance, cmp)))
    # idempotence: the same graph object, run again
    try:
        stats2 = info.fn(graph, PassContext(), **options)
    except Exception as e:
        problems.append(Problem("rerun", "second run crashed: " + _first_lines(e)))
        return problems
    changes = _changes(stats2)
    try:
        data2 = graph.to_onnx().SerializeToString(deterministic=True)
    except Exception as e:
        problems.append(Problem("rerun", "emit after the second run failed: " + _first_lines(e)))
        return problems
    if changes or data2 != data:
        what = []
        if changes:
            what.append(f"second run reports changes {changes}")
        if data2 != data:
            what.append("second run changed the model bytes")
        problems.append(Problem("rerun", "; ".join(what)))
    return problems


def _report(name: str, options: dict, seeds: list[int], max_nodes: int) -> None:
    info = REGISTRY.get(name)
    assert info is not None, f"pass `{name}` is not registered"
    unknown = sorted(set(options) - set(info.options))
    assert not unknown, f"pass `{name}` has no option(s) {unknown}"
    label = config_id(name, options)
    save = os.environ.get("HOMEC_DIFF_SAVE", "1") != "0"
    failures: list[str] = []
    kinds: dict[str, int] = {}
    warns: list[str] = []
    saved: dict[str, int] = {}
    for seed in seeds:
        case = generated_case(seed, max_nodes)
        for p in check_pass(name, case, options):
            line = f"seed={seed} pass={label} max_nodes={max_nodes} [{p.kind}] {p.detail}"
            if p.warning_only:
                warns.append(line)
                continue
            if save and saved.get(p.kind, 0) < SAVE_PER_KIND:
                saved[p.kind] = saved.get(p.kind, 0) + 1
                path = save_regression(case.model, seed, REGRESSIONS, f"[{p.kind}] {p.detail}",
                                       prefix=label, extra={"pass": name,
                                                            "options": json.dumps(options),
                                                            "max_nodes": str(max_nodes),
                                                            "opset": str(opset_for(seed))})
                line += f"\n    saved {path}"
            failures.append(line)
            kinds[p.kind] = kinds.get(p.kind, 0) + 1
    for w in warns:
        warnings.warn(f"rounding flip (not a failure): {w.splitlines()[0]}", stacklevel=1)
    if failures:
        head = (f"pass `{label}`: {len(failures)} problem(s) over {len(seeds)} generated graphs "
                f"({', '.join(f'{k}: {v}' for k, v in sorted(kinds.items()))}); "
                f"rebuild a model with homec.testing.graphgen.random_model(seed, max_nodes={max_nodes}, "
                f"opset=opset_for(seed)) from tests/passes/test_differential.py")
        pytest.fail(head + "\n" + "\n".join(failures[:40])
                    + (f"\n... and {len(failures) - 40} more" if len(failures) > 40 else ""),
                    pytrace=False)


def test_cleanup_rerun_is_not_a_change() -> None:
    """The pass manager decides convergence (`fixpoint { cleanup }`) and verify-each's
    "changed but reported no change" with `pipeline.is_modified`; a second cleanup on an
    already clean graph must read as unchanged there."""
    assert REGISTRY.get("cleanup") is not None, "pass `cleanup` is not registered"
    info = REGISTRY.get("cleanup")
    graph = homec.load(generated_case(BASE_SEED, MAX_NODES).model)
    info.fn(graph, PassContext(), **info.bind({}))
    before = graph.to_onnx().SerializeToString(deterministic=True)
    stats = info.fn(graph, PassContext(), **info.bind({}))
    assert graph.to_onnx().SerializeToString(deterministic=True) == before
    assert not is_modified(stats), (
        f"pipeline.is_modified() reads a no-op cleanup as a change: "
        f"{ {k: v for k, v in stats.items() if is_modified({k: v})} }")


_CONFIG_PARAMS = [pytest.param(n, o, id=config_id(n, o)) for n, o in CONFIGS]


@pytest.mark.parametrize(("name", "options"), _CONFIG_PARAMS)
def test_pass_on_generated_graphs(name: str, options: dict) -> None:
    _report(name, options, default_seeds(), MAX_NODES)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "options"), _CONFIG_PARAMS)
def test_pass_on_larger_generated_graphs(name: str, options: dict) -> None:
    _report(name, options, slow_seeds(), SLOW_MAX_NODES)


# ---------------------------------------------------------------------------------------
# Saved regressions
# ---------------------------------------------------------------------------------------


def _saved() -> list:
    files = sorted(REGRESSIONS.glob("*.onnx"))
    if not files:
        return [pytest.param(None, marks=pytest.mark.skip(reason="no saved regression models"),
                             id="none")]
    return [pytest.param(f, id=f.stem) for f in files]


@pytest.mark.parametrize("path", _saved())
def test_saved_regression(path: Path) -> None:
    model = onnx.load(str(path))
    meta = regression_info(model)
    name = meta.get("pass") or path.stem.rsplit("-", 1)[0]
    seed = int(meta.get("seed") or path.stem.rsplit("-", 1)[1])
    options = json.loads(meta.get("options") or "{}")
    info = REGISTRY.get(name)
    assert info is not None, f"saved regression names pass `{name}`, which is not registered"
    assert not set(options) - set(info.options), \
        f"pass `{name}` has no option(s) {sorted(set(options) - set(info.options))}"
    problems = [p for p in check_pass(name, make_case(model, seed), options) if not p.warning_only]
    if problems:
        pytest.fail(f"{path.name} (seed={seed} pass={config_id(name, options)}, first seen as: "
                    f"{meta.get('reason', '?').splitlines()[0]}):\n"
                    + "\n".join(f"[{p.kind}] {p.detail}" for p in problems), pytrace=False)
