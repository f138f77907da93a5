"""Shared helpers for the pass tests, handed to tests as the `h` fixture.

    h.model(nodes, inputs, outputs, inits, opset=17, ir_version=8)   build a ModelProto
    h.vi(name, elem, shape) / h.init(name, array) / h.node(...)        onnx.helper shorthands
    h.check(model, pass_name, expected_stats, **options)               the full contract:
        load -> run pass -> verify -> emit -> onnx.checker(full_check) -> interface kept ->
        onnxruntime (optimizations off) before vs after within the pass's tolerance ->
        statistics equal `expected_stats` exactly (unlisted keys 0) -> a second run
        reports no change and emits the same bytes
    h.check_noop(model, pass_name, **options)                          nothing changes, and
        the emitted model is byte-identical to the untouched load's
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest

import homec
from homec.context import PassContext
from homec.ir import Graph
from homec.registry import REGISTRY
from homec.testing.oracle import compare, random_feeds, run_ort

F32 = onnx.TensorProto.FLOAT
I64 = onnx.TensorProto.INT64
INFO = ("skipped", "refused", "kept", "checked", "seen", "candidates", "iterations")


def vi(name: str, elem: int, shape: Sequence[int | str | None] | None) -> onnx.ValueInfoProto:
    return oh.make_tensor_value_info(name, elem, shape)


def init(name: str, array: Any) -> onnx.TensorProto:
    return onh.from_array(np.asarray(array), name)


node = oh.make_node


def model(nodes, inputs, outputs, inits=(), *, opset: int = 17, ir_version: int = 8,
          value_info=(), extra_opsets=()) -> onnx.ModelProto:
    g = oh.make_graph(list(nodes), "g", [i if isinstance(i, onnx.ValueInfoProto) else vi(*i) for i in inputs],
                      [o if isinstance(o, onnx.ValueInfoProto) else vi(*o) for o in outputs],
                      list(inits), value_info=list(value_info))
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", opset), *[oh.make_opsetid(d, v) for d, v in extra_opsets]])
    m.ir_version = ir_version
    return m


def changes(stats: dict) -> dict:
    return {k: v for k, v in stats.items()
            if not k.rsplit(".", 1)[-1].startswith(INFO) and v}


@dataclasses.dataclass
class Result:
    graph: Graph
    stats: dict
    model: onnx.ModelProto
    before: list | None = None
    after: list | None = None

    def ops(self) -> list[str]:
        return [n.op_type for n in self.graph.nodes]


def apply(m: onnx.ModelProto, name: str, ctx: PassContext | None = None, **options) -> Result:
    info = REGISTRY.get(name)
    assert info is not None, f"pass {name} is not registered"
    g = homec.load(m)
    stats = info.fn(g, ctx or PassContext(), **info.bind(options))
    g.verify()
    out = g.to_onnx()
    return Result(g, stats, out)


def check(m: onnx.ModelProto, name: str, expected: dict, *, ctx: PassContext | None = None,
          run: bool = True, feeds: dict | None = None, seed: int = 0, **options) -> Result:
    onnx.checker.check_model(m, full_check=True)
    res = apply(m, name, ctx, **options)
    onnx.checker.check_model(res.model, full_check=True)
    assert [i.name for i in res.model.graph.input if i.name not in _inits(res.model)] == \
        [i.name for i in m.graph.input if i.name not in _inits(m)], "graph inputs changed"
    assert [o.name for o in res.model.graph.output] == [o.name for o in m.graph.output], \
        "graph outputs changed"
    want = dict.fromkeys(res.stats, 0)
    unknown = set(expected) - set(res.stats)
    assert not unknown, f"statistics {sorted(unknown)} are not reported by {name}"
    want.update(expected)
    assert res.stats == want, f"{name} statistics {res.stats} != expected {want}"
    if run:
        feeds = feeds if feeds is not None else random_feeds(m, seed)
        res.before = run_ort(m, feeds)
        res.after = run_ort(res.model, feeds)
        cmp = compare(res.before, res.after, REGISTRY.get(name).tolerance)
        assert cmp.ok, cmp
    again = apply(res.model, name, ctx, **options)
    assert not changes(again.stats), f"second run of {name} changed: {changes(again.stats)}"
    assert again.model.SerializeToString(deterministic=True) == \
        res.model.SerializeToString(deterministic=True), "second run changed the model"
    return res


def check_noop(m: onnx.ModelProto, name: str, *, ctx: PassContext | None = None,
               expected: dict | None = None, **options) -> Result:
    onnx.checker.check_model(m, full_check=True)
    untouched = homec.load(m).to_onnx().SerializeToString(deterministic=True)
    res = apply(m, name, ctx, **options)
    assert not changes(res.stats), f"{name} reported changes {changes(res.stats)}"
    if expected is not None:
        want = dict.fromkeys(res.stats, 0)
        want.update(expected)
        assert res.stats == want
    assert res.model.SerializeToString(deterministic=True) == untouched, \
        f"{name} changed the model although it reported nothing"
    return res


def _inits(m: onnx.ModelProto) -> set[str]:
    return {t.name for t in m.graph.initializer}


@pytest.fixture
def h() -> types.SimpleNamespace:
    return types.SimpleNamespace(
        F32=F32, I64=I64, vi=vi, init=init, node=node, model=model, apply=apply, check=check,
        check_noop=check_noop, changes=changes, run_ort=run_ort, random_feeds=random_feeds)
