"""fold_qdq: weight folding, cancellation, data movement, integer and float forms of QDQ models."""

from __future__ import annotations

import os
import types

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest

import homec
from homec.context import PassContext, Selector
from homec.registry import REGISTRY
from homec.testing.oracle import run_ort
from homec.passes._qdq import trace_weight
from homec.passes._util import Types
from homec.quant import numerics as N

TP = onnx.TensorProto
F32, U8, S8, I32 = TP.FLOAT, TP.UINT8, TP.INT8, TP.INT32
NP = {U8: np.uint8, S8: np.int8, I32: np.int32}


def f32(a):
    return np.asarray(a, np.float32)


class Q:
    """Builds QDQ graphs: each helper appends nodes and initializers, returns the output."""

    def __init__(self, opset: int = 17):
        self.nodes: list = []
        self.inits: list = []
        self.opset = opset
        self.n = 0

    def name(self, hint: str) -> str:
        self.n += 1
        return f"{hint}{self.n}"

    def const(self, arr, hint: str = "c") -> str:
        name = self.name(hint)
        self.inits.append(onh.from_array(np.asarray(arr), name))
        return name

    def node(self, op: str, inputs, hint: str = "v", **attrs) -> str:
        out = self.name(hint)
        self.nodes.append(oh.make_node(op, list(inputs), [out], **attrs))
        return out

    def q(self, x: str, scale, zp, **attrs) -> str:
        return self.node("QuantizeLinear", [x, self.const(f32(scale), "s"), self.const(zp, "z")], "q", **attrs)

    def dq(self, x: str, scale, zp, **attrs) -> str:
        return self.node("DequantizeLinear", [x, self.const(f32(scale), "s"), self.const(zp, "z")], "dq", **attrs)

    def qdq(self, x: str, scale, zp) -> str:
        return self.dq(self.q(x, scale, zp), scale, zp)

    def model(self, inputs, out: str, out_elem: int = F32, out_name: str = "y") -> onnx.ModelProto:
        self.nodes.append(oh.make_node("Identity", [out], [out_name]))
        g = oh.make_graph(self.nodes, "g", [oh.make_tensor_value_info(n, e, s) for n, e, s in inputs],
                          [oh.make_tensor_value_info(out_name, out_elem, None)], self.inits)
        m = oh.make_model(g, opset_imports=[oh.make_opsetid("", self.opset)])
        m.ir_version = 8
        inferred = {vi.name: vi for vi in onnx.shape_inference.infer_shapes(m).graph.value_info}
        m.graph.output[0].type.CopyFrom(inferred[out].type)  # the checker wants output shapes
        return m


def run_pass(m: onnx.ModelProto, ctx: PassContext | None = None, **options):
    info = REGISTRY.get("fold_qdq")
    assert info is not None, "fold_qdq is not registered"
    g = homec.load(m)
    stats = info.fn(g, ctx or PassContext(), **info.bind(options))
    g.verify()
    out = g.to_onnx()
    onnx.checker.check_model(out, full_check=True)
    again = homec.load(out)
    stats2 = info.fn(again, ctx or PassContext(), **info.bind(options))
    changed = {k: v for k, v in stats2.items() if v and not k.startswith("refused")}
    assert not changed, f"second run changed {changed}"
    assert again.to_onnx().SerializeToString(deterministic=True) == out.SerializeToString(deterministic=True)
    return types.SimpleNamespace(graph=g, stats={k: v for k, v in stats.items() if v}, model=out,
                                 ops=[n.op_type for n in g.nodes])


def outputs(m: onnx.ModelProto, x: np.ndarray, name: str = "x") -> np.ndarray:
    return run_ort(m, {name: x})[0]


def max_steps(ref: np.ndarray, got: np.ndarray, step: float) -> float:
    """The largest difference in output quantization steps, less float32 rounding of the
    dequantized values ((q - z) * s is rounded once on each side)."""
    diff = np.abs(ref.astype(np.float64) - got.astype(np.float64)).max() / step
    return float(diff) * (1 - 1e-6)


RNG = np.random.default_rng(0)
X = RNG.standard_normal((2, 4, 7, 7)).astype(np.float32)


# --------------------------------------------------------------------------------------
# 1. weights
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("per_channel", [False, True])
def test_qat_weights_fold_exactly_and_shrink(per_channel):
    b = Q()
    w = RNG.standard_normal((5, 4, 3, 3)).astype(np.float32)
    ws = f32(np.abs(w).reshape(5, -1).max(1) / 100) if per_channel else f32(0.02)
    w.reshape(-1)[:7] = 0.5 * f32(ws).reshape(-1)[0] * np.arange(-3, 4)  # ties round to even
    w.reshape(-1)[9] = 500.0  # saturates
    zp = np.zeros(5, np.int8) + np.int8(2) if per_channel else np.int8(-1)
    wq = b.q(b.const(w, "w"), ws, zp, axis=0)
    wd = b.dq(wq, ws, zp, axis=0)
    y = b.node("Conv", [b.qdq("x", 0.05, np.uint8(128)), wd], "conv")
    m = b.model([("x", F32, [2, 4, 7, 7])], y)
    r = run_pass(m, form="qdq")
    assert r.stats == {"weights_folded": 1}
    assert "QuantizeLinear" in r.ops and r.ops.count("DequantizeLinear") == 2
    folded = [t for t in r.model.graph.initializer if t.data_type == S8 and t.dims == [5, 4, 3, 3]]
    assert len(folded) == 1 and not [t for t in r.model.graph.initializer if t.dims == [5, 4, 3, 3] and t.data_type == F32]
    assert len(r.model.SerializeToString()) < len(m.SerializeToString()) / 2
    np.testing.assert_array_equal(outputs(m, X), outputs(r.model, X))  # exact


def test_fold_weights_off_leaves_the_float_weight():
    b = Q()
    w = b.const(RNG.standard_normal((3, 4)).astype(np.float32), "w")
    y = b.node("MatMul", ["x", b.qdq(w, 0.02, np.int8(0))])
    m = b.model([("x", F32, [2, 3])], y)
    r = run_pass(m, form="qdq", fold_weights=False)
    assert r.stats == {}


# --------------------------------------------------------------------------------------
# 2. cancellation, chains, data movement
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("qt,zp", [(U8, 128), (S8, -3)])
def test_identical_dq_q_pairs_cancel_bit_exactly(qt, zp):
    b = Q()
    z = NP[qt](zp)
    t = b.qdq("x", 0.037, z)
    t = b.node("Relu", [t])
    t = b.dq(b.q(t, 0.021, z), 0.021, z)
    t = b.dq(b.q(t, 0.021, z), 0.021, z)  # DQ -> Q with identical maps
    m = b.model([("x", F32, [2, 4, 7, 7])], t)
    r = run_pass(m, form="qdq")
    assert r.stats == {"pairs_cancelled": 1}
    np.testing.assert_array_equal(outputs(m, X), outputs(r.model, X))


def test_different_maps_do_not_cancel():
    b = Q()
    t = b.qdq("x", 0.05, np.uint8(128))
    t = b.dq(b.q(t, 0.05, np.uint8(127)), 0.05, np.uint8(127))
    t = b.dq(b.q(t, 0.06, np.uint8(127)), 0.06, np.uint8(127))
    m = b.model([("x", F32, [2, 4, 7, 7])], t)
    r = run_pass(m, form="qdq")
    assert r.stats == {}


def test_chain_merges_into_one_quantization_when_ranges_nest():
    b = Q()
    q1 = b.q("x", 0.04, np.int8(0))
    chain = b.q(b.dq(q1, 0.04, np.int8(0)), 0.04, np.uint8(128))  # [-128, 127] in both
    m = b.model([("x", F32, [2, 4, 7, 7])], b.dq(chain, 0.04, np.uint8(128)))
    r = run_pass(m, form="qdq")
    assert r.stats == {"chains_merged": 1}
    assert r.ops.count("QuantizeLinear") == 1
    np.testing.assert_array_equal(outputs(m, X * 5), outputs(r.model, X * 5))


def test_chain_with_a_narrower_first_clamp_is_kept():
    b = Q()
    q1 = b.q("x", 0.04, np.uint8(0))  # clamps below at 0 ...
    chain = b.q(b.dq(q1, 0.04, np.uint8(0)), 0.04, np.int8(0))  # ... which int8 alone would not
    m = b.model([("x", F32, [2, 4, 7, 7])], b.dq(chain, 0.04, np.int8(0)))
    assert run_pass(m, form="qdq").stats == {}


@pytest.mark.parametrize("op,extra,attrs", [
    ("Transpose", [], {"perm": [0, 2, 3, 1]}),
    ("Reshape", [np.array([2, -1], np.int64)], {}),
    ("MaxPool", [], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [2, 2]}),
    ("Flatten", [], {"axis": 2}),
    ("Slice", [np.array([1], np.int64), np.array([6], np.int64), np.array([3], np.int64)], {}),
    ("Unsqueeze", [np.array([1], np.int64)], {}),
    ("Squeeze", [np.array([0], np.int64)], {}),
    ("Resize", [np.zeros(0, np.float32), f32([1, 1, 2, 2])], {"mode": "nearest"}),
])
@pytest.mark.parametrize("qt,zp", [(U8, 120), (S8, 5)])
def test_qdq_around_data_movement_is_removed_exactly(op, extra, attrs, qt, zp):
    b = Q()
    z = NP[qt](zp)
    t = b.qdq("x", 0.03, z)
    ins = [t] + [b.const(e, "k") if e.size or op != "Resize" else "" for e in extra]
    if op == "Resize":
        ins = [t, "", b.const(extra[1], "scales")]
    t = b.node(op, ins, op.lower(), **attrs)
    t = b.qdq(t, 0.03, z)
    m = b.model([("x", F32, [1, 4, 7, 7] if op == "Squeeze" else [2, 4, 7, 7])], b.node("Neg", [t]))
    x = X[:1] if op == "Squeeze" else X
    r = run_pass(m, form="qdq")
    assert r.stats == {"movement_simplified": 1, "pairs_cancelled": 1}
    assert r.ops == ["QuantizeLinear", op, "DequantizeLinear", "Neg", "Identity"]
    np.testing.assert_array_equal(outputs(m, x), outputs(r.model, x))


def test_concat_moves_only_when_all_scales_agree():
    b = Q()
    a = b.qdq("x", 0.03, np.uint8(128))
    c = b.qdq(b.node("Neg", ["x"]), 0.03, np.uint8(128))
    t = b.qdq(b.node("Concat", [a, c], axis=1), 0.03, np.uint8(128))
    m = b.model([("x", F32, [2, 4, 7, 7])], t)
    r = run_pass(m, form="qdq")
    assert r.stats == {"movement_simplified": 1, "pairs_cancelled": 1}
    assert r.ops.count("DequantizeLinear") == 1
    np.testing.assert_array_equal(outputs(m, X), outputs(r.model, X))

    b = Q()
    a = b.qdq("x", 0.03, np.uint8(128))
    c = b.qdq(b.node("Neg", ["x"]), 0.031, np.uint8(128))
    t = b.qdq(b.node("Concat", [a, c], axis=1), 0.03, np.uint8(128))
    assert run_pass(b.model([("x", F32, [2, 4, 7, 7])], t), form="qdq").stats == {}


def test_resize_linear_is_not_data_movement():
    b = Q()
    t = b.qdq("x", 0.03, np.uint8(128))
    t = b.node("Resize", [t, "", b.const(f32([1, 1, 2, 2]))], mode="linear")
    m = b.model([("x", F32, [2, 4, 7, 7])], b.qdq(t, 0.03, np.uint8(128)))
    assert run_pass(m, form="qdq").stats == {}


def test_cancel_off():
    b = Q()
    t = b.node("Transpose", [b.qdq("x", 0.03, np.uint8(128))], perm=[0, 2, 3, 1])
    m = b.model([("x", F32, [2, 4, 7, 7])], b.qdq(t, 0.03, np.uint8(128)))
    assert run_pass(m, form="qdq", cancel=False).stats == {}


def test_graph_output_keeps_its_name_through_cancellation():
    b = Q()
    t = b.node("Transpose", [b.qdq("x", 0.03, np.uint8(128))], perm=[0, 2, 3, 1])
    m = b.model([("x", F32, [2, 4, 7, 7])], b.q(t, 0.03, np.uint8(128)), out_elem=U8)
    r = run_pass(m, form="qdq")
    assert r.stats == {"movement_simplified": 1, "pairs_cancelled": 1}
    assert [o.name for o in r.model.graph.output] == ["y"]
    np.testing.assert_array_equal(outputs(m, X), outputs(r.model, X))


# --------------------------------------------------------------------------------------
# 3. integer form
# --------------------------------------------------------------------------------------

COMBOS = [(U8, S8, 128, 0), (U8, U8, 128, 120), (S8, S8, -2, 0)]


def conv_model(xt, wt, xz, wz, *, per_channel, bias, group=1, y_scale=0.08, opset=17, quantized_output=True):
    b = Q(opset)
    cin, cout = 4, 6
    w = RNG.standard_normal((cout, cin // group, 3, 3)).astype(np.float32)
    if per_channel:
        ws = f32(np.abs(w).reshape(cout, -1).max(1) / 100 + 0.001)
        wzs = np.full(cout, wz, NP[wt])
    else:
        ws, wzs = f32(np.abs(w).max() / 100), NP[wt](wz)
    wq = N.quantize(w, ws, wzs, N.qtype(NP[wt].__name__), 0 if per_channel else None)
    xs = f32(0.03)
    ins = [b.qdq("x", xs, NP[xt](xz)), b.dq(b.const(wq, "wq"), ws, wzs, axis=0)]
    if bias == "float":
        ins.append(b.const(RNG.standard_normal(cout).astype(np.float32) * 0.3, "bias"))
    elif bias == "int32":
        bq, bs = N.quantize_bias(RNG.standard_normal(cout) * 0.3, xs, np.broadcast_to(ws, (cout,)))
        ins.append(b.dq(b.const(bq, "bq"), bs, np.zeros(cout, np.int32), axis=0))
    c = b.node("Conv", ins, "conv", pads=[1, 0, 1, 2], strides=[1, 2], group=group)
    yz = NP[xt](128 if xt == U8 else 1)
    return b.model([("x", F32, [2, 4, 7, 7])], b.qdq(c, y_scale, yz) if quantized_output else c), y_scale


@pytest.mark.parametrize("xt,wt,xz,wz", COMBOS)
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("bias", [None, "float", "int32"])
def test_qlinear_conv_within_one_step(xt, wt, xz, wz, per_channel, bias):
    m, step = conv_model(xt, wt, xz, wz, per_channel=per_channel, bias=bias, group=2 if bias == "float" else 1)
    r = run_pass(m, form="integer")
    assert r.stats == {"qlinear_conv": 1}
    assert r.ops == ["QuantizeLinear", "QLinearConv", "DequantizeLinear", "Identity"]
    assert max_steps(outputs(m, X), outputs(r.model, X), step) <= 1.0


@pytest.mark.parametrize("xt,wt,xz,wz", COMBOS)
@pytest.mark.parametrize("per_channel", [False, True])
def test_conv_integer_for_float_outputs(xt, wt, xz, wz, per_channel):
    m, _ = conv_model(xt, wt, xz, wz, per_channel=per_channel, bias="int32", quantized_output=False)
    r = run_pass(m, form="integer")
    assert r.stats == {"conv_integer": 1}
    assert r.ops == ["QuantizeLinear", "ConvInteger", "Cast", "Mul", "Add", "Identity"]
    ref, got = outputs(m, X), outputs(r.model, X)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_conv_weight_behind_transpose_and_unsqueeze_gets_its_axis_fixed():
    b = Q()
    w = RNG.standard_normal((4, 6, 3, 3)).astype(np.float32)  # [Cin, Cout, kh, kw]: axis 1
    ws = f32(np.abs(w).transpose(1, 0, 2, 3).reshape(6, -1).max(1) / 100 + np.arange(6) * 0.002)
    wq = N.quantize(w, ws, np.zeros(6, np.int8), N.qtype("int8"), 1)
    wt = b.node("Transpose", [b.dq(b.const(wq), ws, np.zeros(6, np.int8), axis=1)], perm=[1, 0, 2, 3])
    c1 = b.node("Conv", [b.qdq("x", 0.03, np.uint8(128)), wt], pads=[1, 1, 1, 1])
    w2 = RNG.standard_normal((5, 6, 3)).astype(np.float32)  # Conv1d-shaped, unsqueezed to (1, 3)
    ws2 = f32(np.abs(w2).reshape(5, -1).max(1) / 100)
    w2q = N.quantize(w2, ws2, np.zeros(5, np.int8), N.qtype("int8"), 0)
    wu = b.node("Unsqueeze", [b.dq(b.const(w2q), ws2, np.zeros(5, np.int8), axis=0),
                              b.const(np.array([2], np.int64))])
    c2 = b.node("Conv", [b.qdq(c1, 0.1, np.uint8(128)), wu])
    m = b.model([("x", F32, [2, 4, 7, 7])], b.qdq(c2, 0.2, np.uint8(128)))
    r = run_pass(m, form="integer")
    assert r.stats == {"qlinear_conv": 2}
    assert "Transpose" not in r.ops and "Unsqueeze" not in r.ops
    assert max_steps(outputs(m, X), outputs(r.model, X), 0.2) <= 1.0


def test_trace_weight_moves_the_axis_through_unsqueeze_and_transpose():
    b = Q()
    wq = RNG.integers(-100, 100, (3, 5)).astype(np.int8)
    d = b.dq(b.const(wq), f32([0.1, 0.2, 0.3, 0.4, 0.5]), np.zeros(5, np.int8), axis=1)
    u = b.node("Unsqueeze", [d, b.const(np.array([0, 2], np.int64))])  # [1, 3, 1, 5]: axis 3
    t = b.node("Transpose", [u], perm=[3, 1, 0, 2])  # [5, 3, 1, 1]: axis 0
    m = b.model([("x", F32, [1])], t)
    g = homec.load(m)
    w = trace_weight(g.value(t), Types(g))
    assert w is not None and w.params.axis == 0
    np.testing.assert_array_equal(w.data, wq.reshape(1, 3, 1, 5).transpose(3, 1, 0, 2))


@pytest.mark.parametrize("xt,wt,xz,wz", COMBOS)
@pytest.mark.parametrize("per_column", [False, True])
def test_qlinear_matmul_and_matmul_integer(xt, wt, xz, wz, per_column):
    b = Q()
    w = RNG.standard_normal((8, 5)).astype(np.float32)
    ws = f32(np.abs(w).max(0) / 100) if per_column else f32(np.abs(w).max() / 100)
    wzs = np.full(ws.shape, wz, NP[wt])
    wd = b.dq(b.const(N.quantize(w, ws, wzs, N.qtype(NP[wt].__name__), 1 if per_column else None)), ws, wzs, axis=1)
    x = b.qdq("x", 0.03, NP[xt](xz))
    mq = b.qdq(b.node("MatMul", [x, wd]), 0.05, NP[xt](xz))
    mf = b.node("MatMul", [x, wd])  # float output: MatMulInteger
    m = b.model([("x", F32, [3, 2, 8])], b.node("Add", [mq, mf]))
    r = run_pass(m, form="integer")
    assert r.stats == {"qlinear_matmul": 1, "matmul_integer": 1}
    xin = RNG.standard_normal((3, 2, 8)).astype(np.float32)
    assert max_steps(outputs(m, xin), outputs(r.model, xin), 0.05) <= 1.0 + 1e-3


def test_matmul_of_two_activations():
    b = Q()
    a = b.qdq("x", 0.03, np.uint8(128))
    t = b.qdq(b.node("Transpose", ["x"], perm=[0, 2, 1]), 0.03, np.uint8(128))
    m = b.model([("x", F32, [2, 4, 4])], b.qdq(b.node("MatMul", [a, t]), 0.05, np.uint8(128)))
    r = run_pass(m, form="integer")
    assert r.stats == {"qlinear_matmul": 1}
    xin = RNG.standard_normal((2, 4, 4)).astype(np.float32)
    assert max_steps(outputs(m, xin), outputs(r.model, xin), 0.05) <= 1.0


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("bias", [None, "float", "int32"])
def test_gemm(trans_b, bias):
    b = Q()
    w = RNG.standard_normal((8, 5)).astype(np.float32)
    ws = f32(np.abs(w).max(0) / 100)
    wq = N.quantize(w, ws, np.zeros(5, np.int8), N.qtype("int8"), 1)
    wd = b.dq(b.const(wq.T.copy() if trans_b else wq), ws, np.zeros(5, np.int8), axis=0 if trans_b else 1)
    xs = f32(0.03)
    ins = [b.qdq("x", xs, np.uint8(128)), wd]
    if bias == "float":
        ins.append(b.const(RNG.standard_normal(5).astype(np.float32), "c"))
    elif bias == "int32":
        bq, bs = N.quantize_bias(RNG.standard_normal(5), xs, ws)
        ins.append(b.dq(b.const(bq), bs, np.zeros(5, np.int32), axis=0))
    m = b.model([("x", F32, [3, 8])], b.qdq(b.node("Gemm", ins, transB=trans_b), 0.05, np.uint8(128)))
    r = run_pass(m, form="integer")
    assert r.stats == ({"qlinear_matmul": 1} if bias is None else {"gemm_as_qlinear_conv": 1})
    xin = RNG.standard_normal((3, 8)).astype(np.float32)
    assert max_steps(outputs(m, xin), outputs(r.model, xin), 0.05) <= 1.0


def _refusal_model(kind: str) -> onnx.ModelProto:
    b = Q()
    xz, yz = np.uint8(128), np.uint8(128)
    if kind == "type_combo":
        yz = np.int8(0)  # u8 x, s8 w, s8 y: no onnxruntime kernel
    w = RNG.integers(-50, 50, (6, 4, 3, 3)).astype(np.int8)
    ins = [b.qdq("x", 0.03, xz), b.dq(b.const(w), f32(0.01), np.int8(0))]
    if kind == "bias_scale":
        ins.append(b.dq(b.const(np.arange(6, dtype=np.int32)), f32(0.001), np.int32(0)))
    if kind == "weight_zero_point":
        ins[1] = b.dq(b.const(w), f32(np.full(6, 0.01)), np.arange(6, dtype=np.int8), axis=0)
    if kind == "activation_per_axis":
        ins[0] = b.dq(b.q("x", f32([0.03] * 4), np.full(4, 128, np.uint8), axis=1),
                      f32([0.03] * 4), np.full(4, 128, np.uint8), axis=1)
    if kind == "weight":
        ins[1] = "w"
    c = b.node("Conv", ins)
    inputs = [("x", F32, [2, 4, 7, 7])] + ([("w", F32, [6, 4, 3, 3])] if kind == "weight" else [])
    return b.model(inputs, b.qdq(c, 0.1, yz))


@pytest.mark.parametrize("kind", ["type_combo", "bias_scale", "weight_zero_point", "activation_per_axis"])
def test_refusals_are_counted_and_change_nothing(kind):
    m = _refusal_model(kind)
    r = run_pass(m, form="integer")
    assert r.stats == {f"refused_{kind}": 1}
    assert "Conv" in r.ops
    np.testing.assert_array_equal(outputs(m, X), outputs(r.model, X))


def test_gemm_alpha_and_per_axis_3d_matmul_are_refused():
    b = Q()
    wq = RNG.integers(-50, 50, (8, 5)).astype(np.int8)
    x = b.qdq("x", 0.03, np.uint8(128))
    g = b.qdq(b.node("Gemm", [x, b.dq(b.const(wq), f32(0.01), np.int8(0))], alpha=0.5), 0.05, np.uint8(128))
    w3 = RNG.integers(-50, 50, (2, 5, 3)).astype(np.int8)
    mm = b.node("MatMul", [g, b.dq(b.const(w3), f32([0.01, 0.02, 0.03]), np.zeros(3, np.int8), axis=2)])
    m = b.model([("x", F32, [4, 8])], b.qdq(mm, 0.05, np.uint8(128)))
    r = run_pass(m, form="integer")
    assert r.stats == {"refused_gemm_attrs": 1, "refused_weight_axis": 1}


def test_selector_picks_the_anchor_op():
    m, _ = conv_model(U8, S8, 128, 0, per_channel=True, bias="float")
    r = run_pass(m, PassContext(selector=Selector(op_types=("MatMul",))), form="integer")
    assert r.stats == {}
    r = run_pass(m, PassContext(selector=Selector(op_types=("Conv",))), form="integer")
    assert r.stats == {"qlinear_conv": 1}


# --------------------------------------------------------------------------------------
# 4. float form and `auto`
# --------------------------------------------------------------------------------------


def test_float_form_dequantizes_weights_and_drops_activation_pairs():
    m, step = conv_model(U8, S8, 128, 0, per_channel=True, bias="int32", y_scale=0.3)
    r = run_pass(m, form="float")
    assert r.stats == {"weights_dequantized": 2, "activation_qdq_removed": 2}
    assert r.ops == ["Clip", "Conv", "Clip", "Identity"]
    ref, got = outputs(m, X), outputs(r.model, X)
    cos = float(np.dot(ref.ravel(), got.ravel()) / np.linalg.norm(ref) / np.linalg.norm(got))
    assert cos > 0.999 and max_steps(ref, got, step) <= 3


@pytest.mark.parametrize("target,want", [(None, "qdq"), (types.SimpleNamespace(integer_kernels=True), "integer"),
                                         (types.SimpleNamespace(integer_kernels=False), "float"),
                                         (types.SimpleNamespace(), "qdq")])
def test_auto_form_follows_the_target(target, want):
    m, _ = conv_model(U8, S8, 128, 0, per_channel=False, bias=None)
    auto = run_pass(m, PassContext(target=target))
    explicit = run_pass(m, form=want)
    assert auto.stats == explicit.stats and auto.ops == explicit.ops


# --------------------------------------------------------------------------------------
# Models quantized by onnxruntime
# --------------------------------------------------------------------------------------


def _float_net() -> onnx.ModelProto:
    rng = np.random.default_rng(3)

    def init(name, *shape, scale=0.3):
        return onh.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    nodes = [oh.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             oh.make_node("Relu", ["c1"], ["r1"]),
             oh.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
             oh.make_node("Conv", ["p1", "w2", "b2"], ["c2"], group=2),
             oh.make_node("Transpose", ["c2"], ["t2"], perm=[0, 2, 3, 1]),
             oh.make_node("Reshape", ["t2", "shape"], ["f"]),
             oh.make_node("Gemm", ["f", "wg", "bg"], ["g"], transB=1),
             oh.make_node("Relu", ["g"], ["gr"]),
             oh.make_node("MatMul", ["gr", "wm"], ["y"])]
    inits = [init("w1", 8, 3, 3, 3), init("b1", 8, scale=0.1), init("w2", 8, 4, 3, 3, scale=0.2),
             init("b2", 8, scale=0.1), onh.from_array(np.array([0, -1], np.int64), "shape"),
             init("wg", 16, 32, scale=0.2), init("bg", 16, scale=0.1), init("wm", 16, 5)]
    g = oh.make_graph(nodes, "net", [oh.make_tensor_value_info("x", F32, [1, 3, 8, 8])],
                      [oh.make_tensor_value_info("y", F32, [1, 5])], inits)
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def _ort_quantize(src: onnx.ModelProto | str, dst: str, act: str, shape, n: int = 8):
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(7)
            self.data = iter([{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(n)])

        def get_next(self):
            return next(self.data, None)

    if isinstance(src, onnx.ModelProto):
        path = dst + ".float.onnx"
        onnx.save(src, path)
        src = path
    quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8 if act == "u8" else QuantType.QInt8,
                    weight_type=QuantType.QInt8)
    return onnx.load(dst)


def _output_step(m: onnx.ModelProto) -> float:
    """The scale of the DequantizeLinear producing the (only) graph output."""
    out = m.graph.output[0].name
    dq = next(n for n in m.graph.node if out in n.output)
    assert dq.op_type == "DequantizeLinear"
    inits = {t.name: onh.to_array(t) for t in m.graph.initializer}
    return float(inits[dq.input[1]])


@pytest.mark.parametrize("act", ["u8", "s8"])
def test_onnxruntime_quantized_net(tmp_path, act):
    q = _ort_quantize(_float_net(), str(tmp_path / f"q_{act}.onnx"), act, (1, 3, 8, 8))
    step = _output_step(q)
    xs = [np.random.default_rng(s).standard_normal((1, 3, 8, 8)).astype(np.float32) for s in range(4)]
    refs = [outputs(q, x) for x in xs]

    qdq = run_pass(q, form="qdq")  # exact: pairs around MaxPool/Transpose/Reshape cancel
    assert qdq.stats.get("movement_simplified", 0) >= 2 and qdq.stats.get("pairs_cancelled", 0) >= 2
    for x, ref in zip(xs, refs):
        np.testing.assert_array_equal(outputs(qdq.model, x), ref)

    integer = run_pass(q, form="integer")
    assert integer.stats.get("qlinear_conv") == 2 and integer.stats.get("qlinear_matmul") == 1
    assert integer.stats.get("gemm_as_qlinear_conv") == 1
    assert not [k for k in integer.stats if k.startswith("refused")]
    assert "Conv" not in integer.ops and "Gemm" not in integer.ops and "MatMul" not in integer.ops
    for x, ref in zip(xs, refs):
        assert max_steps(ref, outputs(integer.model, x), step) <= 1.0

    flt = run_pass(q, form="float")  # fake-quantized weights, activations clipped but not rounded
    assert [op for op in flt.ops if op != "Clip"] == ["Conv", "MaxPool", "Conv", "Transpose", "Reshape", "Gemm", "MatMul"]
    for x, ref in zip(xs, refs):
        got = outputs(flt.model, x)
        assert float(np.dot(ref.ravel(), got.ravel()) / np.linalg.norm(ref) / np.linalg.norm(got)) > 0.995


def test_int8_activations_become_uint8_exactly(tmp_path):
    """An S8S8 model from onnxruntime's quantizer: int8 activation maps become uint8 with the
    zero point moved by 128 (exact in the QDQ form), then the integer form runs u8 x s8."""
    q = _ort_quantize(_float_net(), str(tmp_path / "q_s8.onnx"), "s8", (1, 3, 8, 8))
    step = _output_step(q)
    xs = [np.random.default_rng(s).standard_normal((1, 3, 8, 8)).astype(np.float32) for s in range(4)]
    refs = [outputs(q, x) for x in xs]
    shifted = run_pass(q, form="qdq", activations="uint8")
    assert shifted.stats["activations_to_uint8"] >= 4
    zps = [n.inputs[2].const.numpy() for n in shifted.graph.nodes if n.op_type == "QuantizeLinear"]
    kept = run_pass(q, form="qdq")  # the same rewrites without the type change
    zps_s8 = [n.inputs[2].const.numpy() for n in kept.graph.nodes if n.op_type == "QuantizeLinear"]
    assert zps and all(z.dtype == np.uint8 for z in zps) and all(z.dtype == np.int8 for z in zps_s8)
    assert sorted(int(z) for z in zps) == sorted(int(z) + 128 for z in zps_s8)
    for x, ref in zip(xs, refs):
        np.testing.assert_array_equal(outputs(shifted.model, x), ref)
    integer = run_pass(q, form="integer", activations="uint8")
    assert integer.stats.get("qlinear_conv") == 2 and not [k for k in integer.stats if k.startswith("refused")]
    for n in integer.graph.nodes:
        if n.op_type == "QLinearConv":
            assert n.inputs[2].const.dtype == onnx.TensorProto.UINT8
    for x, ref in zip(xs, refs):
        assert max_steps(ref, outputs(integer.model, x), step) <= 1.0


def test_qat_style_model_integer_form():
    b = Q()
    w = RNG.standard_normal((6, 4, 3, 3)).astype(np.float32)
    ws = f32(np.abs(w).reshape(6, -1).max(1) / 127)
    wd = b.dq(b.q(b.const(w, "w"), ws, np.zeros(6, np.int8), axis=0), ws, np.zeros(6, np.int8), axis=0)
    c = b.node("Conv", [b.qdq("x", 0.03, np.uint8(128)), wd, b.const(f32(np.linspace(-1, 1, 6)), "b")],
               pads=[1, 1, 1, 1])
    m = b.model([("x", F32, [2, 4, 7, 7])], b.qdq(c, 0.1, np.uint8(128)))
    r = run_pass(m, form="integer")
    assert r.stats == {"weights_folded": 1, "qlinear_conv": 1}
    assert max_steps(outputs(m, X), outputs(r.model, X), 0.1) <= 1.0
    folded = run_pass(m, form="integer", fold_weights=False)  # reads Q(constant) directly
    assert folded.stats == {"qlinear_conv": 1}
    np.testing.assert_array_equal(outputs(r.model, X), outputs(folded.model, X))


# --------------------------------------------------------------------------------------
# A real model
# --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ppocr_cls_integer_form(tmp_path):
    rapidocr = pytest.importorskip("rapidocr_onnxruntime")
    src = os.path.join(os.path.dirname(rapidocr.__file__), "models", "ch_ppocr_mobile_v2.0_cls_infer.onnx")
    from homec.onnx_io import convert_opset

    g = homec.load(src)
    convert_opset(g, 13)
    g = homec.compile(g, "schedule { cleanup }").graph
    path = str(tmp_path / "cls.onnx")
    homec.save(g, path)
    q = _ort_quantize(path, str(tmp_path / "cls_u8.onnx"), "u8", (1, 3, 48, 192), n=4)
    r = run_pass(q, form="integer")
    assert r.stats.get("qlinear_conv", 0) >= 20
    step = _output_step(q)
    for seed in range(2):
        x = np.random.default_rng(seed).standard_normal((1, 3, 48, 192)).astype(np.float32)
        name = q.graph.input[0].name
        assert max_steps(outputs(q, x, name), outputs(r.model, x, name), step) <= 1.0
