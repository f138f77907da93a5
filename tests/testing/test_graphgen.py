"""The random model generator: valid models, determinism, operator coverage, big graphs."""

from __future__ import annotations

import collections
import time

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings

import homec
from homec.testing import graphgen
from homec.testing.graphgen import DEFAULT_OPS, models, random_model, synthetic_chain, synthetic_wide
from homec.testing.oracle import (compare, random_feeds, regression_info, run_ort,
                                  save_regression)
from homec.registry import Tolerance

SEEDS = range(300)


@pytest.fixture(scope="module")
def generated() -> dict[int, onnx.ModelProto]:
    return {s: random_model(s) for s in SEEDS}


def _ops(model: onnx.ModelProto) -> collections.Counter:
    c: collections.Counter = collections.Counter()

    def walk(g: onnx.GraphProto) -> None:
        for n in g.node:
            c[n.op_type] += 1
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)

    walk(model.graph)
    return c


def test_300_seeds_are_valid_and_run(generated) -> None:
    bad = []
    for seed, m in generated.items():
        try:
            onnx.checker.check_model(m, full_check=True)
        except Exception as e:
            bad.append(f"seed {seed}: checker: {str(e).strip().splitlines()[0]}")
            continue
        try:
            outs = run_ort(m, random_feeds(m, seed))
        except Exception as e:
            bad.append(f"seed {seed}: onnxruntime: {str(e).strip().splitlines()[0][:300]}")
            continue
        # the declared output shapes are the generator's own bookkeeping: check them
        for o, vi in zip(outs, m.graph.output):
            dims = vi.type.tensor_type.shape.dim
            want = [d.dim_value if d.HasField("dim_value") else None for d in dims]
            if len(want) != o.ndim or any(w is not None and w != g for w, g in zip(want, o.shape)):
                bad.append(f"seed {seed}: output {vi.name} is {o.shape}, declared {want}")
            if o.dtype.kind == "f" and not np.isfinite(o).all():
                bad.append(f"seed {seed}: output {vi.name} is not finite")
    assert not bad, "\n".join(bad[:20])


def test_same_seed_same_bytes() -> None:
    for seed in (0, 1, 17, 123456, 2**31 + 5):
        a = random_model(seed).SerializeToString(deterministic=True)
        b = random_model(seed).SerializeToString(deterministic=True)
        assert a == b, f"seed {seed} is not deterministic"
    assert random_model(1).SerializeToString() != random_model(2).SerializeToString()


def test_node_budget_is_respected() -> None:
    for seed in range(200):
        for n in (1, 3, 8, 40):
            assert 1 <= len(random_model(seed, max_nodes=n).graph.node) <= n


def test_every_default_op_appears(generated) -> None:
    seen: collections.Counter = collections.Counter()
    for m in generated.values():
        seen.update(_ops(m))
    missing = sorted(set(DEFAULT_OPS) - set(seen))
    assert not missing, f"never generated over {len(SEEDS)} seeds: {missing}"


def test_features_are_generated(generated) -> None:
    """The shapes of things cleanup passes care about show up across seeds."""
    feats: collections.Counter = collections.Counter()
    for m in generated.values():
        g = m.graph
        inits = {t.name for t in g.initializer}
        readers: collections.Counter = collections.Counter(i for n in g.node for i in n.input if i)
        if any(d.dim_param for i in g.input for d in i.type.tensor_type.shape.dim):
            feats["symbolic batch"] += 1
        if len(g.output) > 1:
            feats["several outputs"] += 1
        if any(i.name in inits for i in g.input):
            feats["overridable initializer"] += 1
        if any(readers[o] >= 2 for n in g.node for o in n.output):
            feats["fan-out"] += 1
        if any(len(n.input) >= 2 and len(set(n.input)) < len(n.input) for n in g.node):
            feats["same value twice"] += 1
        for n in g.node:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            if n.op_type == "Conv" and attrs.get("group", 1) > 1:
                feats["grouped conv"] += 1
            if n.op_type == "QuantizeLinear" and "axis" in attrs:
                feats["per-channel Q"] += 1
            if n.op_type == "Conv" and len(set(attrs.get("pads", [0]))) > 1:
                feats["asymmetric pads"] += 1
            if n.op_type == "Slice" and any(readers[i] and i in inits for i in n.input[1:]):
                feats["slice"] += 1
    for f in ("symbolic batch", "several outputs", "overridable initializer", "fan-out",
              "same value twice", "grouped conv", "per-channel Q", "asymmetric pads", "slice"):
        assert feats[f] >= 3, f"feature {f!r} appeared in only {feats[f]} of {len(SEEDS)} models"


@pytest.mark.parametrize("opset", [13, 15, 18, 19, 21])
def test_other_opsets(opset: int) -> None:
    for seed in range(25):
        m = random_model(seed, opset=opset)
        onnx.checker.check_model(m, full_check=True)
        run_ort(m, random_feeds(m, seed))


def test_restricted_ops() -> None:
    ops = ("Gemm", "Relu", "Add")
    for seed in range(30):
        m = random_model(seed, ops=ops)
        assert set(_ops(m)) <= set(ops)
        onnx.checker.check_model(m, full_check=True)
        run_ort(m, random_feeds(m, seed))
    with pytest.raises(ValueError, match="unsupported ops"):
        random_model(0, ops=("Conv", "Frobnicate"))


def test_seed_is_recorded() -> None:
    m = random_model(42, max_nodes=12)
    props = {p.key: p.value for p in m.metadata_props}
    assert props["graphgen.seed"] == "42" and props["graphgen.max_nodes"] == "12"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(models(max_nodes=30))
def test_hypothesis_models_are_valid(model: onnx.ModelProto) -> None:
    onnx.checker.check_model(model, full_check=True)
    g = homec.load(model)
    g.verify()
    seed = int({p.key: p.value for p in model.metadata_props}["graphgen.seed"])
    feeds = random_feeds(model, seed)
    assert compare(run_ort(model, feeds), run_ort(g.to_onnx(), feeds), Tolerance.exact()).ok


def test_synthetic_chain_50k_builds_fast_and_loads() -> None:
    t0 = time.perf_counter()
    m = synthetic_chain(50_000)
    built = time.perf_counter() - t0
    assert len(m.graph.node) == 50_000
    assert built < 10, f"synthetic_chain(50000) took {built:.1f} s"
    g = homec.load(m.SerializeToString())
    assert len(g) == 50_000
    ops = _ops(m)
    for op in ("Conv", "BatchNormalization", "Relu", "Add", "QuantizeLinear", "Identity"):
        assert ops[op] > 100, ops


@pytest.mark.parametrize("make", [synthetic_chain, synthetic_wide])
@pytest.mark.parametrize("n", [1000, 5000])
def test_synthetic_graphs_are_valid(make, n: int) -> None:
    m = make(n, seed=3)
    assert len(m.graph.node) == n
    onnx.checker.check_model(m, full_check=True)
    if n == 1000:
        (y,) = run_ort(m, random_feeds(m, 0))
        assert y.shape == (1, 10) and np.isfinite(y).all()
    assert make(n, seed=3).SerializeToString() == m.SerializeToString()


def test_synthetic_wide_has_fan_out() -> None:
    m = synthetic_wide(5000)
    readers = collections.Counter(i for n in m.graph.node for i in n.input)
    assert max(readers[o] for n in m.graph.node for o in n.output) >= 16


def test_oracle_compare_and_regression(tmp_path) -> None:
    m = random_model(7)
    feeds = random_feeds(m, 7)
    ref = run_ort(m, feeds)
    assert compare(ref, ref, Tolerance.exact()).ok
    moved = [r + np.float32(1e-3) if r.dtype.kind == "f" else r for r in ref]
    c = compare(ref, moved, Tolerance.float_refold())
    assert not c.ok and "MISMATCH" in c.describe()
    assert compare(ref, moved, Tolerance.bounded(min_cosine=0.99)).ok
    path = save_regression(m, 7, tmp_path, "why it failed", prefix="cse", extra={"pass": "cse"})
    assert path.name == "cse-7.onnx"
    info = regression_info(onnx.load(str(path)))
    assert info == {"seed": "7", "reason": "why it failed", "pass": "cse"}


def test_random_feeds_resolve_symbolic_dims() -> None:
    for seed in range(200):
        m = random_model(seed)
        if any(d.dim_param for i in m.graph.input for d in i.type.tensor_type.shape.dim):
            feeds = random_feeds(m, 0, dim_values={"N": 3})
            assert all(v.shape[0] == 3 for v in feeds.values())
            assert all(v.dtype == np.float32 for v in feeds.values())
            assert len(run_ort(m, feeds)) == len(m.graph.output)
            return
    pytest.fail("no model with a symbolic batch in 200 seeds")


def test_module_exports() -> None:
    assert set(graphgen.__all__) >= {"random_model", "synthetic_chain", "synthetic_wide", "models",
                                     "DEFAULT_OPS"}
