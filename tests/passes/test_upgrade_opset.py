"""upgrade_opset: convert to the target's (or a given) opset, checked; never downgrade.

Hand-built graphs (h.check), the errors and their exit codes, generated graphs at older
opsets, a zoo model from opset 9 and PP-OCRv4 det from opset 12 to 17.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import onnx
import pytest

import homec
from homec.context import PassContext
from homec.errors import UnsupportedError, UsageError
from homec.registry import REGISTRY
from homec.targets.descriptor import load_target
from homec.testing.graphgen import random_model
from homec.testing.oracle import compare, random_feeds, run_ort

PASS = "upgrade_opset"
F32 = onnx.TensorProto.FLOAT


def _model(h, opset=11):
    """Ops whose spelling changes across versions: Clip bounds, Squeeze axes, Softmax axis."""
    nodes = [h.node("Clip", ["x", "lo", "hi"], ["c"]) if opset >= 11 else
             h.node("Clip", ["x"], ["c"], min=-1.0, max=2.0)]
    inits = [h.init("lo", np.float32(-1)), h.init("hi", np.float32(2))] if opset >= 11 else []
    if opset >= 13:
        nodes += [h.node("Unsqueeze", ["c", "axes"], ["u"]), h.node("Squeeze", ["u", "axes"], ["s"])]
        inits.append(h.init("axes", np.array([0], np.int64)))
    else:
        nodes += [h.node("Unsqueeze", ["c"], ["u"], axes=[0]), h.node("Squeeze", ["u"], ["s"], axes=[0])]
    nodes.append(h.node("Softmax", ["s"], ["y"], axis=1))
    return h.model(nodes, [("x", F32, [2, 3, 4])], [("y", F32, [2, 3, 4])], inits, opset=opset,
                   ir_version=7 if opset >= 11 else 5)


def _opset(m: onnx.ModelProto) -> int:
    return next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))


@pytest.mark.parametrize("opset", [9, 11, 13])
def test_upgrade_to_a_version(h, opset):
    ctx = PassContext()
    res = h.check(_model(h, opset), PASS, {"upgraded": 1}, ctx=ctx, version=17)
    assert _opset(res.model) == 17
    assert ctx.details["opset"] == {"from": opset, "to": 17}
    squeeze = next(n for n in res.graph.nodes if n.op_type == "Squeeze")
    assert len(squeeze.inputs) == 2  # axes moved to an input at opset 13


def test_upgrade_to_the_targets_opset(h):
    target = load_target("npu-int8")
    res = h.check(_model(h, 13), PASS, {"upgraded": 1}, ctx=PassContext(target=target))
    assert _opset(res.model) == target.opset == 17


def test_same_opset_is_a_noop(h):
    h.check_noop(_model(h, 17), PASS, version=17)
    h.check_noop(_model(h, 17), PASS, ctx=PassContext(target=load_target("mcu")))


def test_target_reading_any_opset_is_a_noop(h):
    any_opset = dataclasses.replace(load_target("mcu"), opset=None)
    h.check_noop(_model(h, 11), PASS, ctx=PassContext(target=any_opset))


def test_never_downgrades_for_a_target(h):
    m = _model(h, 19)
    info = REGISTRY.get(PASS)
    with pytest.raises(UnsupportedError) as e:
        info.fn(homec.load(m), PassContext(target=load_target("mcu")), **info.bind({}))
    assert str(e.value) == ("the model uses opset 19; target `mcu` runs opsets up to 17 "
                            "(homec never downgrades an opset)")
    assert e.value.exit_code == 4


def test_never_downgrades_to_a_version(h):
    info = REGISTRY.get(PASS)
    with pytest.raises(UnsupportedError, match=r"the model uses opset 17; "
                       r"upgrade_opset\(version=13\) asks for opset 13 \(homec never downgrades"):
        info.fn(homec.load(_model(h, 17)), PassContext(), **info.bind({"version": 13}))


def test_version_or_target_needed(h):
    with pytest.raises(UsageError) as e:
        homec.compile(_model(h, 13), "schedule { upgrade_opset }")
    assert e.value.exit_code == 2
    assert "upgrade_opset: no target to take the opset from" in str(e.value)


def test_version_is_checked_by_the_schedule(h):
    with pytest.raises(UsageError) as e:
        homec.compile(_model(h, 13), "schedule { upgrade_opset(version=0) }")
    assert e.value.exit_code == 2


def test_cli_downgrade_exit_code(h, tmp_path, capsys):
    from homec.cli import main

    path = tmp_path / "m.onnx"
    onnx.save(_model(h, 19), path)
    sched = tmp_path / "s.hc"
    sched.write_text("schedule { upgrade_opset(version=17) }\n")
    assert main([str(path), "-p", str(sched), "-o", str(tmp_path / "out.onnx")]) == 4
    assert "homec never downgrades an opset" in capsys.readouterr().err


@pytest.mark.parametrize("seed,opset", [(0, 13), (1, 13), (2, 15), (3, 15), (4, 13), (7, 15)])
def test_generated_graphs(seed, opset):
    m = random_model(seed, max_nodes=30, opset=opset)
    info = REGISTRY.get(PASS)
    g = homec.load(m)
    ctx = PassContext(seed=seed)
    stats = info.fn(g, ctx, **info.bind({"version": 17}))
    g.verify()
    out = g.to_onnx()
    onnx.checker.check_model(out, full_check=True)
    assert stats == {"upgraded": 1} and _opset(out) == 17
    feeds = random_feeds(m, seed, override_initializers=True)
    cmp = compare(run_ort(m, feeds), run_ort(out, feeds), info.tolerance)
    assert cmp.ok, cmp
    assert info.fn(g, ctx, **info.bind({"version": 17})) == {"upgraded": 0}


@pytest.mark.slow
def test_zoo_squeezenet_9_to_17():
    path = Path(os.path.dirname(onnx.__file__)) / "backend/test/data/light/light_squeezenet.onnx"
    m = onnx.load(path)
    assert _opset(m) == 9
    info = REGISTRY.get(PASS)
    g = homec.load(m)
    stats = info.fn(g, PassContext(target=load_target("mcu")), **info.bind({}))
    out = g.to_onnx()
    onnx.checker.check_model(out, full_check=True)
    assert stats == {"upgraded": 1} and _opset(out) == 17
    feeds = random_feeds(m, 0)
    cmp = compare(run_ort(m, feeds), run_ort(out, feeds), info.tolerance)
    assert cmp.ok, cmp


@pytest.mark.slow
def test_pp_ocr_det_12_to_17():
    import rapidocr_onnxruntime

    d = Path(rapidocr_onnxruntime.__file__).parent / "models"
    m = onnx.load(next(d.glob("*PP-OCRv4_det*.onnx")))
    assert _opset(m) == 12
    info = REGISTRY.get(PASS)
    g = homec.load(m)
    ctx = PassContext(target=load_target("mcu"))
    assert info.fn(g, ctx, **info.bind({})) == {"upgraded": 1}
    assert ctx.details["opset"] == {"from": 12, "to": 17}
    out = g.to_onnx()
    x = np.random.default_rng(0).random((1, 3, 96, 128), dtype=np.float32)
    cmp = compare(run_ort(m, {"x": x}), run_ort(out, {"x": x}), info.tolerance)
    assert cmp.ok, cmp
