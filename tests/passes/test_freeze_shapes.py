"""freeze_shapes: dynamic input dims made static from `shapes` / --input-shape, values typed.

Hand-built graphs (h.check: outputs identical for inputs of the frozen shape, statistics,
idempotence, checker), the usage errors and their messages, ctx.input_shapes against the
option, generated graphs with a symbolic batch and PP-OCRv4 det at 1x3x64x64.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import homec
from homec.analysis.shapes import infer_shapes
from homec.context import PassContext
from homec.errors import UsageError
from homec.registry import REGISTRY
from homec.targets.descriptor import load_target
from homec.testing.graphgen import random_model
from homec.testing.oracle import compare, random_feeds, run_ort

PASS = "freeze_shapes"
F32 = onnx.TensorProto.FLOAT


def _conv_model(h, x_shape=("N", 3, "H", "W"), y_shape=("N", 4, "H", "W")):
    """x -> Conv(3x3, pad 1) -> Relu -> y, intermediates without value_info."""
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    nodes = [h.node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), h.node("Relu", ["c"], ["y"])]
    return h.model(nodes, [("x", F32, list(x_shape))], [("y", F32, list(y_shape))],
                   [h.init("w", w)])


def _dims(vi: onnx.ValueInfoProto) -> list:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param or None
            for d in vi.type.tensor_type.shape.dim]


def _feeds(shape, seed=0):
    return {"x": np.random.default_rng(seed).standard_normal(shape).astype(np.float32)}


def test_freezes_an_input_and_types_the_output(h):
    res = h.check(_conv_model(h), PASS,
                  {"inputs_frozen": 1, "dims_frozen": 3,
                   "values_typed": 2},
                  shapes=["x=1x3x8x10"], feeds=_feeds((1, 3, 8, 10)))
    assert _dims(res.model.graph.input[0]) == [1, 3, 8, 10]
    assert _dims(res.model.graph.output[0]) == [1, 4, 8, 10]


def test_comma_syntax_and_partly_static_input(h):
    m = _conv_model(h, x_shape=(1, 3, "H", 10), y_shape=(1, 4, "H", 10))
    res = h.check(m, PASS, {"inputs_frozen": 1, "dims_frozen": 1,
                            "values_typed": 2},
                  shapes=["x=1,3,6,10"], feeds=_feeds((1, 3, 6, 10)))
    assert _dims(res.model.graph.input[0]) == [1, 3, 6, 10]


def test_static_model_is_a_noop(h):
    m = _conv_model(h, x_shape=(1, 3, 8, 8), y_shape=(1, 4, 8, 8))
    info = onnx.helper.make_tensor_value_info("c", F32, [1, 4, 8, 8])
    m.graph.value_info.append(info)
    h.check_noop(m, PASS, shapes=["x=1x3x8x8"])
    h.check_noop(m, PASS)


def test_shape_from_the_context(h):
    ctx = PassContext()
    ctx.input_shapes = {"x": (2, 3, 5, 5)}
    res = h.check(_conv_model(h), PASS, {"inputs_frozen": 1, "dims_frozen": 3,
                                         "values_typed": 2},
                  ctx=ctx, feeds=_feeds((2, 3, 5, 5)))
    assert _dims(res.model.graph.input[0]) == [2, 3, 5, 5]


def test_option_wins_over_the_context(h):
    ctx = PassContext()
    ctx.input_shapes = {"x": (2, 3, 5, 5)}
    res = h.apply(_conv_model(h), PASS, ctx, shapes=["x=1x3x7x7"])
    assert _dims(res.model.graph.input[0]) == [1, 3, 7, 7]


@pytest.mark.parametrize("spec,message", [
    ("x=1x3x8", "input `x` is [N,3,H,W] (rank 4) in the model; the given shape 1x3x8 has rank 3"),
    ("x=1x4x8x8", "input `x` is [N,3,H,W] in the model; the given shape 1x4x8x8 differs in dim 1 (4 != 3)"),
    ("z=1x3x8x8", "freeze_shapes: the model has no input `z` to give a shape to; its inputs are: `x`"),
    ("x=1x0x8x8", "dimension 0 must be positive"),
])
def test_mismatched_shapes_are_usage_errors(h, spec, message):
    m = _conv_model(h)
    g = homec.load(m)
    before = g.to_onnx().SerializeToString(deterministic=True)
    info = REGISTRY.get(PASS)
    with pytest.raises(UsageError) as e:
        info.fn(g, PassContext(), **info.bind({"shapes": [spec]}))
    assert message in str(e.value)
    assert e.value.exit_code == 2
    assert g.to_onnx().SerializeToString(deterministic=True) == before  # nothing changed


def test_dynamic_input_without_a_shape(h):
    m = _conv_model(h)
    info = REGISTRY.get(PASS)
    with pytest.raises(UsageError) as e:
        info.fn(homec.load(m), PassContext(), **info.bind({}))
    assert str(e.value) == "input `x` has dynamic dims (N, H, W); give --input-shape x=DIMS"
    # require=false leaves it (and types nothing more than inference can)
    res = h.apply(m, PASS, require=False)
    assert res.stats["inputs_frozen"] == 0 and _dims(res.model.graph.input[0]) == ["N", 3, "H", "W"]
    # ... unless the target needs static shapes
    with pytest.raises(UsageError, match="give --input-shape x=DIMS"):
        info.fn(homec.load(m), PassContext(target=load_target("mcu")), **info.bind({"require": False}))


def test_through_compile_with_input_shapes(h):
    """homec.compile(input_shapes=...) reaches the pass as ctx.input_shapes (the CLI's
    --input-shape), and a missing one is exit 2 from the CLI."""
    m = _conv_model(h)
    res = homec.compile(m, "schedule { freeze_shapes }", input_shapes={"x": (1, 3, 8, 8)},
                        verify=True)
    assert _dims(res.model.graph.input[0]) == [1, 3, 8, 8]
    with pytest.raises(UsageError) as e:
        homec.compile(m, "schedule { freeze_shapes }")
    assert e.value.exit_code == 2


def test_cli_exit_code(h, tmp_path, capsys):
    from homec.cli import main

    path = tmp_path / "m.onnx"
    onnx.save(_conv_model(h), path)
    sched = tmp_path / "s.hc"
    sched.write_text("schedule { freeze_shapes }\n")
    out = tmp_path / "out.onnx"
    assert main([str(path), "-p", str(sched), "-o", str(out)]) == 2
    assert "input `x` has dynamic dims (N, H, W)" in capsys.readouterr().err
    assert main([str(path), "-p", str(sched), "-o", str(out), "--input-shape", "x=1x3x8x8"]) == 0
    assert _dims(onnx.load(out).graph.input[0]) == [1, 3, 8, 8]


def test_overridable_initializer_inputs_are_not_touched(h):
    m = _conv_model(h)
    m.graph.input.append(h.vi("w", F32, [4, 3, 3, 3]))
    res = h.check(m, PASS, {"inputs_frozen": 1, "dims_frozen": 3,
                            "values_typed": 2},
                  shapes=["x=1x3x4x4"], feeds=_feeds((1, 3, 4, 4)))
    assert _dims(res.model.graph.input[1]) == [4, 3, 3, 3]


def test_intermediates_are_described_in_the_emitted_model(h):
    res = h.apply(_conv_model(h), PASS, shapes=["x=1x3x8x10"])
    described = {vi.name: _dims(vi) for vi in res.model.graph.value_info}
    assert described == {"c": [1, 4, 8, 10]}


@pytest.mark.parametrize("seed", [1, 4, 6, 9, 14, 22, 31, 40])
def test_generated_graphs(seed):
    """Generated models (a symbolic batch N in about a quarter): N frozen to 3, outputs
    identical for batch-3 inputs, every value's inferred type static."""
    m = random_model(seed, max_nodes=30)
    info = REGISTRY.get(PASS)
    g = homec.load(m)
    shapes = []
    for vi in m.graph.input:
        if vi.name in {t.name for t in m.graph.initializer}:
            continue
        shapes.append(vi.name + "=" + "x".join(str(d.dim_value or 3) for d in vi.type.tensor_type.shape.dim))
    stats = info.fn(g, PassContext(), **info.bind({"shapes": shapes}))
    g.verify()
    out = g.to_onnx()
    onnx.checker.check_model(out, full_check=True)
    symbolic = any(d.dim_param for vi in m.graph.input for d in vi.type.tensor_type.shape.dim)
    assert bool(stats["inputs_frozen"]) == symbolic
    for vi in out.graph.input:
        assert all(d.HasField("dim_value") for d in vi.type.tensor_type.shape.dim)
    for vi in out.graph.output:
        assert all(d.HasField("dim_value") for d in vi.type.tensor_type.shape.dim), vi
    types = infer_shapes(g, symbolic_fallback=False)
    for node in g.nodes:
        for v in node.outputs:
            if v is not None and v.name in types and types[v.name].shape is not None:
                assert types[v.name].static_shape() is not None, v.name
    feeds = random_feeds(out, seed, override_initializers=True)
    cmp = compare(run_ort(m, feeds), run_ort(out, feeds), info.tolerance)
    assert cmp.ok, cmp
    again = info.fn(g, PassContext(), **info.bind({"shapes": shapes}))
    assert not any(again.values())


def _det_model() -> Path:
    import rapidocr_onnxruntime

    d = Path(rapidocr_onnxruntime.__file__).parent / "models"
    return next(d.glob("*PP-OCRv4_det*.onnx"))


@pytest.mark.slow
def test_pp_ocr_det_1x3x64x64():
    m = onnx.load(_det_model())
    info = REGISTRY.get(PASS)
    g = homec.load(m)
    stats = info.fn(g, PassContext(), **info.bind({"shapes": ["x=1x3x64x64"]}))
    g.verify()
    out = g.to_onnx()
    onnx.checker.check_model(out, full_check=True)
    assert stats["inputs_frozen"] == 1 and stats["dims_frozen"] == 3
    assert _dims(out.graph.input[0]) == [1, 3, 64, 64]
    assert all(_dims(o) == [1, 1, 64, 64] for o in out.graph.output)
    types = infer_shapes(g)  # no input shapes given: the graph itself is static now
    values = [v for n in g.nodes for v in n.outputs if v is not None]
    assert values and all(types[v.name].static_shape() is not None for v in values)
    assert all(v.tensor_type() is not None and v.tensor_type().static_shape() is not None
               for v in values)
    assert stats["values_typed"] == len(values)
    x = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    cmp = compare(run_ort(m, {"x": x}), run_ort(out, {"x": x}), info.tolerance)
    assert cmp.ok, cmp
