"""low_rank on generated graphs and real models.

Generated graphs (homec.testing.graphgen.random_model, fast): for every seed of SEEDS the
pass runs on the graph after `cleanup` (which lifts computed weights to initializers) with
force=true, so every MatMul/Gemm/Conv with a constant weight is factorized, at ratio 0.5
and at full rank, plain and data-aware (calibration: random feeds of the graph's inputs),
with the default method and with tucker2 / channel_svd. The result must verify, pass
onnx.checker (full check) when the original does, keep its interface and run in
onnxruntime with the original's output shapes; at full rank every float output must match
the original within FULL_RANK_RTOL (relative L2). The reported MACs and parameters must
equal an independent count (homec.analysis.cost) of the models before and after; without
force the model never grows; initializers a caller may override are never factorized.

Real models (slow): VGG19 and AlexNet (their Gemm layers, selected with `on Gemm`) and
ResNet50 (its 3x3 convs, selected by name) from the ONNX zoo models shipped with onnx,
after cleanup, with a seeded random weight per layer (the shipped weights are constants,
every channel identical: a rank-1 matrix; randomize_weights of test_prune_channels_models);
PP-OCRv4 det and rec from rapidocr_onnxruntime, where data-aware factorization must beat
plain factorization at the same ranks on held-out images. Every factorized model must be
valid, run, report the recounted MACs and parameters, and reproduce the original at full
rank. `pytest -s` prints the figures table (MACs and parameters before and after).

Regression checks for bugs these tests found: overridable weights are not factorized, a
shared weight is left alone (every reader would get its own factors), and the first Gemm
factor gets a zero C before opset 11 (the zoo models are opset 9).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest

import homec
from homec.analysis.cost import analyze_cost
from homec.analysis.shapes import infer_shapes
from homec.calib import CalibrationSet
from homec.testing.graphgen import random_model
from homec.testing.oracle import random_feeds, run_ort, text_like_image


def _sibling(name: str):
    """A module of this folder, for its helpers (the tests folder is not a package)."""
    key = f"_homec_passes_tests_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, Path(__file__).with_name(f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


_models = _sibling("test_prune_channels_models")
_crash_reports_in_tmp = _models._crash_reports_in_tmp  # autouse: reproducers out of the checkout
is_valid = _models._is_valid
opset_of_seed = _models._opset
randomize_weights = _models.randomize_weights
zoo_feeds = _models._zoo_feeds
ocr_path = _models._ocr_path
input_name = _models._input_name

MAX_NODES = 60
# The pass trusts a layer's input covariance from 2 rows per input feature on; a Gemm sees
# one or two rows per sample (the batch), so it takes a few dozen samples to be data-aware.
CALIB_SAMPLES = 16
FULL_RANK_RTOL = 1e-4
MAC_OPS = ("MatMul", "Gemm", "Conv")
# Extra MatMul/Gemm/Conv nodes a factorized layer becomes (two factors; tucker2 three).
EXTRA_NODES = {"svd": 1, "channel_svd": 1, "spatial_svd": 1, "tucker2": 2}

# Seeds chosen by content (after cleanup): MatMul heads (0, 3, 9, 60, 74, 108, 115), Gemm with
# transB / alpha / beta / C, computed C (11, 12, 52, 93, 101), 1x1 convs (6, 13, 25, 108),
# square kernels 3x3 / 5x5 with symmetric and asymmetric pads (0, 3, 12, 15, 44), 1xk, kx1
# and 3x5 kernels (13, 15, 25, 76, 92), grouped convs (6, 13, 25, 44, 52, 60, 62, 74, 88 with
# 23 groups, 92, 108), depthwise convs that are skipped (6, 13, 15, 62, 88, 92), a weight
# shared by two layers (12, 101), a symbolic batch (9, 11, 12, 62, 74, 108, 115).
# test_seeds_cover_the_structures checks the coverage.
SEEDS = (0, 3, 6, 9, 11, 12, 13, 15, 25, 37, 44, 52, 60, 62, 74, 76, 88, 92, 93, 101, 108, 115)
REQUIRED_STRUCTURES = {"MatMul", "Gemm", "Gemm_transB", "conv1x1", "conv_square", "conv_kx1",
                       "conv_1xk", "conv_rect", "grouped", "depthwise", "shared_weight", "symbolic_batch"}


@dataclasses.dataclass(frozen=True)
class Case:
    model: onnx.ModelProto  # after cleanup
    valid: bool
    calib: tuple[dict, ...]
    held: dict
    ref: tuple[np.ndarray, ...]  # outputs on `held`

    def calibration(self) -> CalibrationSet:
        return CalibrationSet([dict(s) for s in self.calib])


@functools.lru_cache(maxsize=None)
def _case(seed: int) -> Case:
    raw = random_model(seed, max_nodes=MAX_NODES, opset=opset_of_seed(seed))
    m = homec.compile(raw, "schedule { cleanup }").model
    calib = tuple(random_feeds(m, 10 * seed + i) for i in range(CALIB_SAMPLES))
    held = random_feeds(m, 10 * seed + CALIB_SAMPLES)
    return Case(m, is_valid(raw), calib, held, tuple(run_ort(m, held)))


def relative_l2(want: np.ndarray, have: np.ndarray) -> float:
    """||have - want|| / ||want|| in float64 (the absolute difference when want is 0)."""
    want64, have64 = want.astype(np.float64), have.astype(np.float64)
    diff = float(np.linalg.norm(have64 - want64))
    scale = float(np.linalg.norm(want64))
    return diff / scale if scale > 0 else diff


def recount(m: onnx.ModelProto, feeds: dict | None) -> tuple[int | None, int]:
    """(MACs, weight elements) of a model by homec.analysis.cost, the graph inputs pinned to
    the shapes of `feeds` (None: the declared shapes); MACs None when some are unknown."""
    g = homec.load(m)
    shapes = {v.name: feeds[v.name].shape for v in g.inputs if not v.is_initializer} if feeds else None
    cost = analyze_cost(g, infer_shapes(g, shapes, symbolic_fallback=False))
    return (cost.total_macs if cost.complete else None), cost.params.count


def mac_nodes(m: onnx.ModelProto) -> int:
    return sum(1 for n in m.graph.node if n.op_type in MAC_OPS)


def expected_skips(m: onnx.ModelProto, method: str) -> list[str]:
    """Why the pass must leave MatMul/Gemm/Conv nodes with a constant weight alone, one entry
    per node: "shared" (the weight has other readers or is a graph output), "depthwise"
    (a Conv with one input channel per group), "method" (tucker2 on a 1x1 Conv: its kernel
    has a single tap). The generated graphs keep their weights on the right (input 1)."""
    inits = {t.name: tuple(t.dims) for t in m.graph.initializer}
    readers = Counter(x for n in m.graph.node for x in n.input)
    outputs = {o.name for o in m.graph.output}
    out = []
    for n in m.graph.node:
        if n.op_type not in MAC_OPS or len(n.input) < 2 or n.input[1] not in inits:
            continue
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        if readers[n.input[1]] > 1 or n.input[1] in outputs:
            out.append("shared")
        elif n.op_type == "Conv" and group > 1 and inits[n.input[1]][1] == 1:
            out.append("depthwise")
        elif n.op_type == "Conv" and method == "tucker2" and math.prod(inits[n.input[1]][2:]) == 1:
            out.append("method")
    return out


# ---------------------------------------------------------------------------------------
# Generated graphs
# ---------------------------------------------------------------------------------------


def _structures(m: onnx.ModelProto) -> set[str]:
    """What a model offers the pass: layer kinds by op and kernel, from the ONNX graph."""
    inits = {t.name: tuple(t.dims) for t in m.graph.initializer}
    weight_uses: Counter = Counter()
    out = set()
    for n in m.graph.node:
        attrs = {a.name: oh.get_attribute_value(a) for a in n.attribute}
        if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in inits:
            out.add(n.op_type)
            if attrs.get("transB"):
                out.add("Gemm_transB")
            weight_uses[n.input[1]] += 1
        elif n.op_type == "Conv" and n.input[1] in inits:
            shape = inits[n.input[1]]
            kh, kw = shape[2:] if len(shape) == 4 else (None, None)
            group = attrs.get("group", 1)
            if group > 1:
                out.add("depthwise" if shape[1] == 1 else "grouped")
            if (kh, kw) == (1, 1):
                out.add("conv1x1")
            elif kh == kw:
                out.add("conv_square")
            elif kh == 1 or kw == 1:
                out.add("conv_1xk" if kh == 1 else "conv_kx1")
            else:
                out.add("conv_rect")
            weight_uses[n.input[1]] += 1
    if any(c > 1 for c in weight_uses.values()):
        out.add("shared_weight")
    if any(d.dim_param for i in m.graph.input for d in i.type.tensor_type.shape.dim):
        out.add("symbolic_batch")
    return out


def test_seeds_cover_the_structures():
    seen: set[str] = set()
    for seed in SEEDS:
        seen |= _structures(_case(seed).model)
    missing = REQUIRED_STRUCTURES - seen
    assert not missing, f"SEEDS no longer exercise {sorted(missing)}: pick new seeds"


# name -> (options, data-aware, ratio)
VARIANTS = {
    "half_plain": ("ratio=0.5, force=true, data_aware=false", False, 0.5),
    "half_data": ("ratio=0.5, force=true, data_aware=true", True, 0.5),
    "full_plain": ("ratio=1.0, force=true, data_aware=false", False, 1.0),
    "full_data": ("ratio=1.0, force=true, data_aware=true", True, 1.0),
    "half_tucker2_data": ('ratio=0.5, force=true, method="tucker2", data_aware=true', True, 0.5),
    "full_tucker2_data": ('ratio=1.0, force=true, method="tucker2", data_aware=true', True, 1.0),
    "full_channel_svd": ('ratio=1.0, force=true, method="channel_svd", data_aware=false', False, 1.0),
}


@functools.lru_cache(maxsize=None)
def _low_rank(seed: int, variant: str):
    options, data_aware, _ = VARIANTS[variant]
    case = _case(seed)
    return homec.compile(case.model, f"schedule {{ low_rank({options}) }}",
                         calib=case.calibration() if data_aware else None)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("seed", SEEDS)
def test_random_graph_low_rank(seed, variant):
    case = _case(seed)
    options, data_aware, ratio = VARIANTS[variant]
    r = _low_rank(seed, variant)
    r.graph.verify()
    if case.valid:
        onnx.checker.check_model(r.model, full_check=True)
    assert [i.name for i in r.model.graph.input] == [i.name for i in case.model.graph.input]
    assert [o.name for o in r.model.graph.output] == [o.name for o in case.model.graph.output]

    st, details = r.records[-1].stats, r.records[-1].details
    layers = details.get("layers", [])
    assert st.get("layers_factorized", 0) == len(layers)
    assert layers, "force=true factorizes every MatMul/Gemm/Conv with a constant weight"
    kinds = {"shared": "shared", "depthwise": "depthwise", "does not apply": "method"}
    reasons = Counter(next((k for word, k in kinds.items() if word in entry["reason"]), entry["reason"])
                      for entry in details.get("skipped", []))
    method = "tucker2" if "tucker2" in options else "other"
    assert reasons == Counter(expected_skips(case.model, method)), details.get("skipped")
    assert st.get("data_aware_layers", 0) == sum(1 for layer in layers if layer["data_aware"])
    if not data_aware:
        assert st.get("data_aware_layers", 0) == 0
    for layer in layers:
        want = [max(1, math.ceil(ratio * f - 1e-9)) for f in layer["full_ranks"]]
        assert layer["ranks"] == want, layer
    extra = sum(EXTRA_NODES[layer["method"]] for layer in layers)
    assert mac_nodes(r.model) == mac_nodes(case.model) + extra

    got = run_ort(r.model, case.held)
    for i, (want, have) in enumerate(zip(case.ref, got)):
        assert have.shape == want.shape, f"output {i}: shape {have.shape}, original {want.shape}"
        if want.dtype.kind != "f":
            continue
        assert np.isfinite(have[np.isfinite(want)]).all(), f"output {i} is not finite"
        if ratio == 1.0:
            err = relative_l2(want, have)
            assert err <= FULL_RANK_RTOL, f"output {i}: relative L2 {err:.3g} at full rank"


@pytest.mark.parametrize("data_aware", [False, True], ids=["plain", "data"])
@pytest.mark.parametrize("seed", SEEDS)
def test_random_graph_reported_costs_match_a_recount(seed, data_aware):
    """At ratio 0.5 (calibration given, so the shapes are static) the reported MACs and
    parameters before and after are those homec.analysis.cost counts on the input and output
    models (data-aware: with the bias constants the corrections add)."""
    case = _case(seed)
    if data_aware:
        r = _low_rank(seed, "half_data")
    else:  # with the calibration data, for its shapes
        r = homec.compile(case.model, "schedule { low_rank(ratio=0.5, force=true, data_aware=false) }",
                          calib=case.calibration())
    st = r.records[-1].stats
    assert st.get("layers_factorized"), "every seed has a layer to factorize"
    macs_before, params_before = recount(case.model, case.calib[0])
    macs_after, params_after = recount(r.model, case.calib[0])
    assert (st["macs_before"], st["macs_after"]) == (macs_before, macs_after)
    assert (st["params_before"], st["params_after"]) == (params_before, params_after)


def test_random_graph_data_aware_covers_most_layers():
    """With CALIB_SAMPLES samples most layers get their data-aware factors (the rest have
    too few calibration rows for their number of input features), of every op."""
    counts: Counter = Counter()
    for seed in SEEDS:
        for layer in _low_rank(seed, "full_data").records[-1].details["layers"]:
            counts[layer["op"], layer["data_aware"]] += 1
    total = sum(counts.values())
    aware = sum(n for (_, flag), n in counts.items() if flag)
    assert aware >= 0.7 * total, counts
    assert {op for (op, flag) in counts if flag} == set(MAC_OPS), counts


# A weight read by several nodes is left alone: each reader would get its own factors, and
# the model would hold k copies of them where it held one weight (it grew before the pass
# skipped them, although every layer alone was "cheaper").
SHARED_WEIGHT_SEEDS = (12, 101)


@pytest.mark.parametrize("seed", SEEDS)
def test_random_graph_without_force_never_grows(seed):
    """Without force a layer is rewritten only when cheaper in MACs and parameters, so the
    model's MACs and parameters (recounted) never grow, whatever the ratio."""
    case = _case(seed)
    assert ("shared_weight" in _structures(case.model)) == (seed in SHARED_WEIGHT_SEEDS)
    macs_before, params_before = recount(case.model, case.calib[0])
    for options in ("ratio=0.5", "ratio=0.75", "energy=0.9"):
        r = homec.compile(case.model, f"schedule {{ low_rank({options}) }}")
        macs_after, params_after = recount(r.model, case.calib[0])
        assert params_after <= params_before, f"{options}: {params_before} -> {params_after} parameters"
        assert macs_after <= macs_before, f"{options}: {macs_before} -> {macs_after} MACs"


# Seeds whose MatMul/Gemm/Conv read an initializer that is also a graph input (an IR >= 4
# default the caller may override, and overriding it changes the outputs): weights (28, 42,
# 55, 59, 189, 244), a Conv bias (85, 90, 302) and a Gemm C (293). Such a weight is no
# constant and must not be factorized; an overridable bias or C must stay an input of the
# rewritten layer.
OVERRIDABLE_WEIGHT_SEEDS = (28, 42, 55, 59, 189, 244)
OVERRIDABLE_BIAS_SEEDS = (85, 90, 293, 302)


def _overridable_layer_inputs(m: onnx.ModelProto) -> list[str]:
    overridable = {i.name for i in m.graph.input} & {t.name for t in m.graph.initializer}
    return [x for n in m.graph.node if n.op_type in MAC_OPS for x in n.input[1:] if x in overridable]


def run_with_overrides(m: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    """Outputs of `m` on `feeds` including overridden initializers (oracle.run_ort passes only
    the session's get_inputs(), which leaves the overridable initializers out)."""
    from homec.verify import make_session

    sess = make_session(m, quiet=True)
    names = {i.name for i in sess.get_inputs()} | {i.name for i in sess.get_overridable_initializers()}
    return sess.run(None, {k: v for k, v in feeds.items() if k in names})


@pytest.mark.parametrize("data_aware", [False, True], ids=["plain", "data"])
@pytest.mark.parametrize("seed", OVERRIDABLE_BIAS_SEEDS + OVERRIDABLE_WEIGHT_SEEDS)
def test_random_graph_overridable_initializers_stay_inputs(seed, data_aware):
    """On the generated graph as it is (cleanup would not change what matters here), at full
    rank, with every overridable initializer fed a different value."""
    m = random_model(seed, max_nodes=MAX_NODES, opset=opset_of_seed(seed))
    read = _overridable_layer_inputs(m)
    assert read, "the premise: a layer reads an overridable initializer"
    feeds = random_feeds(m, seed, override_initializers=True)
    want = run_with_overrides(m, feeds)
    assert any(relative_l2(a, b) > 1e-3 for a, b in zip(run_with_overrides(m, random_feeds(m, seed)), want)
               if a.dtype.kind == "f"), "the premise: the overrides change the outputs"
    calib = CalibrationSet([random_feeds(m, 10 * seed + i) for i in range(CALIB_SAMPLES)])
    r = homec.compile(m, "schedule { low_rank(ratio=1.0, force=true, data_aware=%s) }"
                      % str(data_aware).lower(), calib=calib)
    r.graph.verify()
    if is_valid(m):
        onnx.checker.check_model(r.model, full_check=True)
    assert [i.name for i in r.model.graph.input] == [i.name for i in m.graph.input]
    got = run_with_overrides(r.model, feeds)
    for i, (a, b) in enumerate(zip(want, got)):
        assert b.shape == a.shape
        if a.dtype.kind == "f":
            err = relative_l2(a, b)
            assert err <= FULL_RANK_RTOL, f"output {i}: relative L2 {err:.3g} at full rank"
    still_read = {x for n in r.model.graph.node for x in n.input}
    assert set(read) <= still_read, "an overridable input is no longer read"


def test_gemm_before_opset_11_stays_valid():
    """The zoo models are opset 9, where Gemm's C is not optional; a factorized Gemm must
    still give every Gemm a C (a zero for the first factor) or use MatMul for it."""
    rng = np.random.default_rng(0)
    m = oh.make_model(oh.make_graph(
        [oh.make_node("Gemm", ["x", "w", "c"], ["y"], name="fc", transB=1)], "g",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4, 12])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4, 10])],
        [onh.from_array(rng.standard_normal((10, 12)).astype(np.float32), "w"),
         onh.from_array(rng.standard_normal(10).astype(np.float32), "c")]),
        opset_imports=[oh.make_opsetid("", 9)])
    m.ir_version = 4
    onnx.checker.check_model(m, full_check=True)
    r = homec.compile(m, "schedule { low_rank(ratio=1.0, force=true) }")
    assert r.records[-1].stats.get("layers_factorized") == 1, "the premise: the Gemm is factorized"
    onnx.checker.check_model(r.model, full_check=True)
    feeds = {"x": rng.standard_normal((4, 12)).astype(np.float32)}
    (want,), (have,) = run_ort(m, feeds), run_ort(r.model, feeds)
    assert relative_l2(want, have) <= FULL_RANK_RTOL


# ---------------------------------------------------------------------------------------
# Real models (slow): figures
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def figures():
    """Rows of the figures table, printed once at the end of the module (pytest -s)."""
    rows: list[tuple] = []
    yield rows
    if rows:
        head = ("model", "method", "options", "layers", "MACs before -> after", "params before -> after")
        table = [head] + [tuple(str(c) for c in row) for row in rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(head))]
        print("\n\nlow_rank figures")
        for row in table:
            print("  " + " | ".join(c.ljust(w) for c, w in zip(row, widths)))


def figures_row(rows: list, model: str, method: str, options: str, st: dict) -> None:
    def change(before: int, after: int) -> str:
        return f"{before:,} -> {after:,} ({100 * (after - before) / before:+.1f}%)" if before else "unknown"

    row = (model, method, options, st.get("layers_factorized", 0),
           change(st.get("macs_before", 0), st.get("macs_after", 0)),
           change(st.get("params_before", 0), st.get("params_after", 0)))
    rows.append(row)
    print(f"\nlow_rank {' | '.join(str(c) for c in row)}")


def check_factorized(base: onnx.ModelProto, r, feeds: dict, ref: list[np.ndarray]) -> list[np.ndarray]:
    """The factorized model is valid, runs with the original's output shapes and finite
    outputs, removed MACs and parameters, and reports the counts homec.analysis.cost makes
    of the models before and after. Returns its outputs on `feeds`."""
    onnx.checker.check_model(r.model, full_check=True)
    got = run_ort(r.model, feeds)
    assert [o.shape for o in got] == [o.shape for o in ref]
    assert all(np.isfinite(o).all() for o in got)
    st = r.records[-1].stats
    macs_before, params_before = recount(base, None)  # the declared input shape
    macs_after, params_after = recount(r.model, None)
    assert (st["macs_before"], st["macs_after"]) == (macs_before, macs_after)
    assert (st["params_before"], st["params_after"]) == (params_before, params_after)
    assert 0 < st["macs_after"] < st["macs_before"]
    assert 0 < st["params_after"] < st["params_before"]
    return got


def assert_exact(ref: list[np.ndarray], got: list[np.ndarray]) -> None:
    for i, (want, have) in enumerate(zip(ref, got)):
        err = relative_l2(want, have)
        assert err <= FULL_RANK_RTOL, f"output {i}: relative L2 {err:.3g} at full rank"


# ---------------------------------------------------------------------------------------
# ONNX zoo models (slow)
# ---------------------------------------------------------------------------------------


def unshare_weights(m: onnx.ModelProto) -> onnx.ModelProto:
    """Give every reader of a float initializer (rank >= 1) read by several nodes its own
    copy. cleanup's CSE merges the zoo models' identical ConstantOfShape weights into one
    initializer per shape (ResNet50: 53 convs read 24 weights); random weights must then
    differ per layer, as a trained model's do."""
    out = onnx.ModelProto()
    out.CopyFrom(m)
    inits = {t.name: t for t in out.graph.initializer
             if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) > 0}
    listed = {i.name: i for i in out.graph.input}  # IR < 4 lists every initializer as an input
    seen: Counter = Counter()
    for n in out.graph.node:
        for slot, x in enumerate(n.input):
            if x not in inits:
                continue
            seen[x] += 1
            if seen[x] > 1:
                copy = onnx.TensorProto()
                copy.CopyFrom(inits[x])
                copy.name = f"{x}__{seen[x]}"
                out.graph.initializer.append(copy)
                if x in listed:
                    entry = out.graph.input.add()
                    entry.CopyFrom(listed[x])
                    entry.name = copy.name
                n.input[slot] = copy.name
    return out


def zoo_base(name: str) -> bytes:
    """A zoo model after cleanup, each layer with its own seeded random weights."""
    m = homec.compile(str(_models.ZOO_DIR / f"light_{name}.onnx"), "schedule { cleanup }").model
    return randomize_weights(unshare_weights(m)).SerializeToString()


GEMM_MODELS = ("bvlc_alexnet", "vgg19")  # opset 9; their weights: 61M and 144M parameters
GEMM_RATIO = 0.25


@pytest.mark.slow
@pytest.mark.parametrize("name", GEMM_MODELS)
def test_zoo_gemm_layers_factorize(name, figures):
    """Every Gemm of the classifier (`on Gemm`: the convolutions stay) at a quarter of its
    rank; then the last Gemm alone at full rank (force), which must reproduce the model (the
    full-rank SVD of the big Gemms would double the run time)."""
    base = onnx.load_from_string(zoo_base(name))  # hundreds of MiB: not cached
    feeds = zoo_feeds(base)
    ref = run_ort(base, feeds)
    gemms = [n.name for n in base.graph.node if n.op_type == "Gemm"]
    r = homec.compile(base, f"schedule {{ low_rank(ratio={GEMM_RATIO}) on Gemm }}")
    st, layers = r.records[-1].stats, r.records[-1].details["layers"]
    figures_row(figures, name, "svd", f"ratio={GEMM_RATIO} on Gemm", st)
    assert sorted(layer["node"] for layer in layers) == sorted(gemms)
    assert st["layers_factorized"] == st["svd"] == len(gemms) == 3
    check_factorized(base, r, feeds, ref)
    last = f'on Gemm where name ~ "{gemms[-1]}"'
    full = homec.compile(base, f"schedule {{ low_rank(ratio=1.0, force=true) {last} }}")
    assert full.records[-1].stats["layers_factorized"] == 1
    onnx.checker.check_model(full.model, full_check=True)
    assert_exact(ref, run_ort(full.model, feeds))


RESNET_PREFIX = "conv3x3_"
RESNET_METHODS = (("spatial_svd", 0.25), ("tucker2", 0.5), ("channel_svd", 0.5))


@functools.lru_cache(maxsize=None)
def _resnet50_3x3() -> tuple[bytes, int]:
    """ResNet50 with random weights (one per layer), its 3x3 convs renamed RESNET_PREFIX +
    name so that a selector picks exactly them (1x1 convs and the 7x7 stem keep their
    names); and their number."""
    m = onnx.load_from_string(zoo_base("resnet50"))
    kernels = {t.name: tuple(t.dims[2:]) for t in m.graph.initializer}
    count = 0
    for n in m.graph.node:
        if n.op_type == "Conv" and kernels.get(n.input[1]) == (3, 3):
            n.name = RESNET_PREFIX + n.name
            count += 1
    return m.SerializeToString(), count


@pytest.mark.slow
@pytest.mark.parametrize(("method", "ratio"), RESNET_METHODS)
def test_resnet50_3x3_convs_factorize(method, ratio, figures):
    data, count = _resnet50_3x3()
    base = onnx.load_from_string(data)
    feeds = zoo_feeds(base)
    ref = run_ort(base, feeds)
    selector = f'on Conv where name ~ "{RESNET_PREFIX}*"'
    r = homec.compile(base, f'schedule {{ low_rank(ratio={ratio}, method="{method}") {selector} }}')
    st, layers = r.records[-1].stats, r.records[-1].details["layers"]
    figures_row(figures, "resnet50", method, f"ratio={ratio}, 3x3 convs", st)
    assert count == 16
    assert st["layers_factorized"] == st[method] == count, "every 3x3 conv is cheaper at this ratio"
    assert all(layer["node"].startswith(RESNET_PREFIX) for layer in layers)
    check_factorized(base, r, feeds, ref)
    full = homec.compile(base, f'schedule {{ low_rank(ratio=1.0, method="{method}", force=true) '
                               f'{selector} }}')
    assert full.records[-1].stats["layers_factorized"] == count
    onnx.checker.check_model(full.model, full_check=True)
    assert_exact(ref, run_ort(full.model, feeds))


# ---------------------------------------------------------------------------------------
# PP-OCRv4 (slow)
# ---------------------------------------------------------------------------------------

OCR_RATIO = 0.3
# Small inputs (the models are fully convolutional; rec takes any width): calibration and
# held-out images of different sizes, text-like pages (noise leaves det's map at ~0). rec's
# SVTR MatMuls see one row per token (W/8 of them): 16 images give them enough rows for a
# covariance (the pass wants 2 per feature; with 6 images they fall back to the weights).
OCR_SHAPES = {
    "rec": ([(1, 3, 48, 160 + 32 * (i % 6)) for i in range(16)],
            [(1, 3, 48, w) for w in (176, 240, 304)]),
    "det": ([(1, 3, h, w) for h, w in ((128, 160), (160, 224), (192, 256), (256, 192))],
            [(1, 3, h, w) for h, w in ((160, 160), (224, 192), (128, 256))]),
}
TINY = 1e-12


def log_probabilities_error(want: np.ndarray, have: np.ndarray) -> float:
    """Relative L2 of the log-probabilities. rec ends in a Softmax over 6625 characters whose
    winners are near 1: the relative L2 of the probabilities measures little but how sure
    the winners stay, while the log-probabilities (the logits less a per-position constant)
    carry every class's error linearly."""
    return relative_l2(np.log(np.maximum(want, TINY)), np.log(np.maximum(have, TINY)))


@functools.lru_cache(maxsize=None)
def _ocr_case(kind: str):
    """(model after cleanup and fuse_activations, calibration feeds, held-out feeds, the
    model's outputs on them)."""
    base = homec.compile(str(ocr_path(kind)), "schedule { cleanup; fuse_activations }").model
    name = input_name(base)
    calib_shapes, held_shapes = OCR_SHAPES[kind]
    rng, held_rng = np.random.default_rng(0), np.random.default_rng(100)
    calib = tuple({name: text_like_image(rng, s)} for s in calib_shapes)
    held = tuple({name: text_like_image(held_rng, s)} for s in held_shapes)
    return base, calib, held, tuple(run_ort(base, f)[0] for f in held)


@dataclasses.dataclass(frozen=True)
class Factorized:
    model: onnx.ModelProto
    stats: dict
    details: dict
    rel_l2: list[float]  # per held-out input: relative L2 of the output
    log_rel_l2: list[float]  # the same for the log of the output (rec: log-probabilities)


@functools.lru_cache(maxsize=None)
def _ocr_factorized(kind: str, options: str) -> Factorized:
    base, calib, held, refs = _ocr_case(kind)
    r = homec.compile(base, f"schedule {{ low_rank({options}, samples={len(calib)}) }}",
                      calib=CalibrationSet([dict(c) for c in calib]))
    outs = [run_ort(r.model, f)[0] for f in held]
    return Factorized(r.model, r.records[-1].stats, r.records[-1].details,
                      [relative_l2(want, have) for want, have in zip(refs, outs)],
                      [log_probabilities_error(want, have) for want, have in zip(refs, outs)])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["rec", "det"])
def test_ocr_data_aware_beats_plain_at_equal_rank(kind, figures, record_property):
    """The same ranks (a uniform ratio keeps ceil(ratio x full rank) whatever the data), with
    and without the calibration statistics: fitting each layer's output on the calibration
    images must give a smaller output error on held-out images than the truncated SVD of
    the weights. det: the relative L2 of its probability map; rec: of its log-probabilities
    (see log_probabilities_error; both are printed)."""
    _, calib, _, _ = _ocr_case(kind)
    data = _ocr_factorized(kind, f"ratio={OCR_RATIO}, data_aware=true")
    plain = _ocr_factorized(kind, f"ratio={OCR_RATIO}, data_aware=false")
    figures_row(figures, f"PP-OCRv4 {kind}", "auto, data-aware", f"ratio={OCR_RATIO}", data.stats)
    figures_row(figures, f"PP-OCRv4 {kind}", "auto, plain", f"ratio={OCR_RATIO}", plain.stats)
    plan = [(x["node"], x["method"], x["ranks"]) for x in plain.details["layers"]]
    assert plan, "the premise: layers are factorized"
    assert [(x["node"], x["method"], x["ranks"]) for x in data.details["layers"]] == plan
    assert data.stats["data_aware_layers"] > 0 and plain.stats["data_aware_layers"] == 0
    for f in (data, plain):
        onnx.checker.check_model(f.model, full_check=True)
        macs_after, params_after = recount(f.model, calib[0])
        assert (f.stats["macs_after"], f.stats["params_after"]) == (macs_after, params_after)
        assert f.stats["macs_after"] < f.stats["macs_before"]
        assert f.stats["params_after"] < f.stats["params_before"]
    for key in ("rel_l2", "log_rel_l2"):
        record_property(f"{key}_data_aware", [round(e, 4) for e in getattr(data, key)])
        record_property(f"{key}_plain", [round(e, 4) for e in getattr(plain, key)])
    print(f"\nPP-OCRv4 {kind}, ratio {OCR_RATIO}, {len(plan)} layers "
          f"({data.stats['data_aware_layers']} data-aware), held-out error data-aware vs plain: "
          f"relative L2 {np.mean(data.rel_l2):.4f} vs {np.mean(plain.rel_l2):.4f} "
          f"{np.round(data.rel_l2, 4).tolist()} vs {np.round(plain.rel_l2, 4).tolist()}; "
          f"of the log {np.mean(data.log_rel_l2):.4f} vs {np.mean(plain.log_rel_l2):.4f}")
    key = "log_rel_l2" if kind == "rec" else "rel_l2"
    assert np.mean(getattr(data, key)) < np.mean(getattr(plain, key))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["rec", "det"])
def test_ocr_full_rank_is_exact(kind):
    """Data-aware at full rank (force): every layer factorized, the outputs unchanged."""
    f = _ocr_factorized(kind, "ratio=1.0, force=true, data_aware=true")
    assert f.stats["layers_factorized"] > 0 and f.stats["data_aware_layers"] > 0
    onnx.checker.check_model(f.model, full_check=True)
    assert max(f.rel_l2) <= FULL_RANK_RTOL, f.rel_l2
