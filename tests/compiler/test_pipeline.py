"""The pass manager: walking schedules, stats, fixpoint, pass-limit, verify-each, reproducers."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import pytest

import homec
from homec.errors import VerificationError
from homec.ir import Node
from homec.pipeline import InternalPassError, PipelineRunner, RunOptions, is_modified
from homec.registry import PassRegistry, Tolerance, register_pass
from homec.schedule.parse import parse_text
from homec.schedule.validate import validate
from homec.verify import random_inputs


def _model() -> onnx.ModelProto:
    nodes = [oh.make_node("Identity", ["x"], ["a"], name="id1"),
             oh.make_node("Identity", ["a"], ["b"], name="id2"),
             oh.make_node("Relu", ["b"], ["y"], name="relu")]
    g = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", 1, [2, 3])],
                      [oh.make_tensor_value_info("y", 1, [2, 3])])
    return oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)])


@pytest.fixture()
def reg() -> PassRegistry:
    r = PassRegistry()
    r._plugins_loaded = True

    @register_pass("drop_one_identity", registry=r)
    def drop_one_identity(graph, ctx) -> dict:
        """Remove the first selected Identity (one per call, so fixpoints iterate).

        Algebra: Identity(x) = x.
        """
        for n in graph.nodes:
            if n.op_type == "Identity" and ctx.selected(n):
                graph.replace_all_uses(n.outputs[0], n.inputs[0])
                graph.remove_nodes([n])
                return {"removed": 1}
        return {"removed": 0, "checked_nodes": len(graph)}

    @register_pass("silent_change", registry=r)
    def silent_change(graph, ctx) -> dict:
        """Renames a node but reports nothing (a buggy pass).

        Algebra: none.
        """
        graph.nodes[0].name = "renamed"
        return {}

    @register_pass("break_numerics", registry=r, tolerance=Tolerance.exact())
    def break_numerics(graph, ctx) -> dict:
        """Turns Relu into Neg (a buggy pass).

        Algebra: wrong on purpose.
        """
        for n in graph.nodes:
            if n.op_type == "Relu":
                neg = graph.insert(Node("Neg", [n.inputs[0]], ["neg_out"]), after=n)
                graph.replace_all_uses(n.outputs[0], neg.outputs[0])
                out = n.outputs[0].name
                graph.remove_nodes([n])
                graph.rename_value(neg.outputs[0], out)
                return {"broken": 1}
        return {"broken": 0}

    @register_pass("crash", registry=r)
    def crash(graph, ctx) -> dict:
        """Raises.

        Algebra: none.
        """
        raise ZeroDivisionError("oops")

    return r


def _run(reg, text, *, target=None, **opts):
    g = homec.load(_model())
    sched = validate(parse_text(text, "s.hc"), reg, targets={"cpu", "npu-int8", "mcu"})
    feeds = [random_inputs(g.to_onnx(), seed=0)]
    runner = PipelineRunner(g, RunOptions(target_name=target, verify_feeds=feeds, **opts))
    return runner, runner.run(sched), g


def test_stats_and_modified(reg):
    _, recs, g = _run(reg, "schedule { drop_one_identity; drop_one_identity; drop_one_identity }")
    assert [r.stats.get("removed") for r in recs] == [1, 1, 0]
    assert [r.modified for r in recs] == [True, True, False]
    assert [r.index for r in recs] == [1, 2, 3]
    assert len(g) == 1


def test_fixpoint_stops_when_nothing_changes(reg):
    _, recs, g = _run(reg, "schedule { fixpoint(max=10) { drop_one_identity } }")
    assert len(recs) == 3 and not recs[-1].modified and len(g) == 1


def test_fixpoint_respects_max(reg):
    _, recs, _ = _run(reg, "schedule { fixpoint(max=1) { drop_one_identity } }")
    assert len(recs) == 1


def test_repeat_and_when(reg):
    _, recs, _ = _run(reg, 'schedule { when target == "mcu" { repeat(2) { drop_one_identity } } }',
                      target="mcu")
    assert len(recs) == 2
    _, recs, _ = _run(reg, 'schedule { when target == "mcu" { drop_one_identity } }', target="cpu")
    assert recs == []


def test_selector_reaches_the_pass(reg):
    _, recs, g = _run(reg, 'schedule { drop_one_identity on Identity where name ~ "id2" }')
    assert recs[0].selector == 'on Identity where name ~ "id2"'
    assert [n.name for n in g.nodes] == ["id1", "relu"]


def test_pass_limit_runs_only_the_first_n(reg):
    runner, recs, g = _run(reg, "schedule { repeat(3) { drop_one_identity } }", pass_limit=1)
    assert len(recs) == 1 and runner.stopped_by_limit and len(g) == 2


def test_informational_stats_do_not_count_as_change():
    assert not is_modified({"removed": 0, "checked_nodes": 5, "skipped_too_large": 2})
    assert is_modified({"removed": 1})


def test_verify_each_catches_unreported_change(reg):
    with pytest.raises(VerificationError, match="silent_change.*report no change"):
        _run(reg, "schedule { silent_change }", verify_each=True)


def test_verify_each_names_the_pass_that_broke_numerics(reg):
    with pytest.raises(VerificationError, match=r"after pass `break_numerics` \(invocation 2\).*tolerance"):
        _run(reg, "schedule { drop_one_identity; break_numerics }", verify_each=True)


def test_verify_each_passes_for_a_correct_pass(reg):
    _, recs, _ = _run(reg, "schedule { drop_one_identity }", verify_each=True)
    assert recs[0].verification["checker"] == "ok"
    assert recs[0].verification["onnxruntime"]["ok"] is True


def test_crash_writes_a_reproducer(reg, tmp_path):
    with pytest.raises(InternalPassError, match="crash.*ZeroDivisionError") as ei:
        _run(reg, "schedule { drop_one_identity; crash }", reproducer_dir=str(tmp_path),
             schedule_text="schedule { drop_one_identity; crash }", model_path="m.onnx")
    assert ei.value.exit_code == 70
    folder = tmp_path / "homec-crash-002-crash"
    readme = (folder / "README.txt").read_text()
    assert "invocation index: 2" in readme and "--pass-limit 2" in readme
    assert (folder / "schedule.hc").read_text().startswith("schedule")
    assert (folder / "graph-at-crash.onnx").exists()


def test_dump_dir_writes_every_stage(reg, tmp_path):
    _run(reg, "schedule { drop_one_identity; drop_one_identity }", dump_dir=str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["001-drop_one_identity.onnx",
                                                          "002-drop_one_identity.onnx"]
    assert len(onnx.load(tmp_path / "002-drop_one_identity.onnx").graph.node) == 1


def test_compile_api_with_builtin_cleanup(tmp_path):
    res = homec.compile(_model(), "schedule { eliminate_identity; eliminate_dead }", verify=True)
    assert res.report["before"]["nodes"] == 3 and res.report["after"]["nodes"] == 1
    assert res.report["verification"]["ok"]
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    from homec.verify import run_model

    np.testing.assert_array_equal(run_model(res.model, {"x": x})[0], np.maximum(x, 0))
