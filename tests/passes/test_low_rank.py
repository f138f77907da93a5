"""low_rank: low-rank factorization on tiny hand-built graphs, checked with onnxruntime.

The central check: at full rank (ratio=1, force=true) every layer kind (MatMul X·W and W·X,
Gemm in all its forms, Conv 1-D/2-D of every geometry, grouped) and every method, plain and
data-aware, reproduces the layer within 1e-4 relative error in a model that passes the full
ONNX check and whose outputs keep their names and shapes. Below full rank: the plain SVD
meets ||Y - Y'||_F <= ||X||_F sigma_{r+1}(W) and Eckart-Young on the emitted factors, and the
data-aware factorization beats the plain one at equal rank on correlated inputs.

Besides: rank / ratio / energy / align selection, "not cheaper" layers, the budget search
(macs, params, error), usage errors, selectors, determinism, statistics that agree with
homec.analysis.cost on the emitted model, and a model with nothing to factorize.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest

import homec
from homec.analysis.cost import analyze_cost
from homec.analysis.shapes import infer_shapes
from homec.errors import ExitCode, UsageError
from homec.testing.oracle import random_feeds
from homec.verify import make_session

F32 = onnx.TensorProto.FLOAT
FULL_RANK_REL = 1e-4  # the check: full rank reproduces the layer


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _normal(rng, *shape, scale: float = 1.0) -> np.ndarray:
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def _low_rank(m, options: str, *, calib=None, selector: str = "", seed: int = 0):
    """Compile `m` with one low_rank invocation; returns (result, its PassRecord)."""
    call = f"low_rank({options})" + (f" {selector}" if selector else "")
    res = homec.compile(m, f"schedule {{ {call} }}", calib=calib, seed=seed)
    rec = res.records[-1]
    assert rec.name == "low_rank"
    return res, rec


def _calib_folder(tmp_path, samples, name: str = "calib"):
    """A --calib folder: one .npz file per sample (feeds by input name)."""
    folder = tmp_path / name
    folder.mkdir()
    for i, sample in enumerate(samples):
        np.savez(folder / f"sample{i:03d}.npz", **sample)
    return folder


def _random_calib(tmp_path, m, n: int = 8, seed: int = 100):
    return _calib_folder(tmp_path, [random_feeds(m, seed + i) for i in range(n)])


def _run(m, feeds) -> list[np.ndarray]:
    return make_session(m).run(None, feeds)


def _rel(ref, got) -> float:
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


def _consts(m: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}


def _ops(m: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in m.graph.node]


def _attr(n: onnx.NodeProto, name: str):
    for a in n.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return None


def _static_cost(m: onnx.ModelProto) -> tuple[int, int]:
    """(MACs, parameter elements) of `m` as homec.analysis.cost counts them."""
    g = homec.load(m)
    report = analyze_cost(g, infer_shapes(g))
    assert report.complete, "the test models have static shapes"
    return report.total_macs, report.params.count


def _untouched(m) -> bytes:
    return homec.compile(m).model.SerializeToString(deterministic=True)


def _assert_reproduces(m, out, *, seeds=(0, 1, 2), rel=FULL_RANK_REL):
    """`out` is a valid model computing what `m` does: same output names, shapes, values."""
    onnx.checker.check_model(out, full_check=True)
    assert [o.name for o in out.graph.output] == [o.name for o in m.graph.output]
    for o_in, o_out in zip(m.graph.output, out.graph.output):
        assert o_in.type == o_out.type, f"output {o_in.name}: type {o_out.type} != {o_in.type}"
    for s in seeds:
        feeds = random_feeds(m, s)
        for ref, got in zip(_run(m, feeds), _run(out, feeds), strict=True):
            assert got.shape == ref.shape
            assert _rel(ref, got) <= rel, f"relative error {_rel(ref, got):.3g} > {rel}"


def _single(h, node, inputs, y_shape, inits):
    """One layer `node` reading graph inputs `inputs` ({name: shape}) and writing y."""
    return h.model([node], [(k, F32, s) for k, s in inputs.items()], [("y", F32, y_shape)],
                   [h.init(k, v) for k, v in inits.items()])


# ---------------------------------------------------------------------------------------
# 1. full rank reproduces every layer kind, with every method, plain and data-aware
# ---------------------------------------------------------------------------------------


def _matmul_case(h, kind: str):
    rng = _rng(1)
    if kind == "right_2d":
        x, w, y = [5, 12], _normal(rng, 12, 10), [5, 10]
        n = h.node("MatMul", ["x", "w"], ["y"], name="mm")
    elif kind == "right_3d":
        x, w, y = [2, 3, 12], _normal(rng, 12, 10), [2, 3, 10]
        n = h.node("MatMul", ["x", "w"], ["y"], name="mm")
    elif kind == "left_2d":  # constant on the left: y = W x over the columns of x
        x, w, y = [12, 5], _normal(rng, 10, 12), [10, 5]
        n = h.node("MatMul", ["w", "x"], ["y"], name="mm")
    else:  # left_3d
        x, w, y = [2, 12, 5], _normal(rng, 10, 12), [2, 10, 5]
        n = h.node("MatMul", ["w", "x"], ["y"], name="mm")
    return _single(h, n, {"x": x}, y, {"w": w})


@pytest.mark.parametrize("kind", ["right_2d", "right_3d", "left_2d", "left_3d"])
@pytest.mark.parametrize("data_aware", [False, True])
def test_matmul_at_full_rank_is_exact(h, tmp_path, kind, data_aware):
    m = _matmul_case(h, kind)
    calib = _random_calib(tmp_path, m) if data_aware else None
    res, rec = _low_rank(m, f"ratio=1.0, force=true, data_aware={str(data_aware).lower()}", calib=calib)
    assert rec.modified
    assert rec.stats["layers_factorized"] == 1 and rec.stats["svd"] == 1
    assert rec.stats["data_aware_layers"] == int(data_aware)
    assert _ops(res.model).count("MatMul") == 2 and "mm" not in [n.name for n in res.model.graph.node]
    (layer,) = rec.details["layers"]
    assert layer["ranks"] == layer["full_ranks"] == [10]
    assert layer["data_aware"] is data_aware
    _assert_reproduces(m, res.model)


GEMMS = {  # id: (transA, transB, alpha, beta, C)
    "plain_no_c": (0, 0, 1.0, 1.0, None),
    "transB_c_vector": (0, 1, 0.5, 2.0, "vector"),
    "transA_c_matrix": (1, 0, 1.5, 0.5, "matrix"),
    "both_computed_c": (1, 1, 0.7, 1.3, "computed"),
    "transB_c_scalar": (0, 1, 2.0, 0.5, "scalar"),
}


def _gemm_case(h, trans_a, trans_b, alpha, beta, c_kind):
    """Y (M=5, N=10) = alpha op(A) op(B) + beta C, K = 12, B constant."""
    rng = _rng(2)
    inputs = {"a": [12, 5] if trans_a else [5, 12]}
    inits = {"b": _normal(rng, 10, 12) if trans_b else _normal(rng, 12, 10)}
    names = ["a", "b"]
    if c_kind == "computed":  # C is a graph input: not a constant
        inputs["c"] = [5, 10]
        names.append("c")
    elif c_kind is not None:
        inits["c"] = _normal(rng, *{"vector": (10,), "matrix": (5, 10), "scalar": (1,)}[c_kind])
        names.append("c")
    n = h.node("Gemm", names, ["y"], name="gemm", transA=trans_a, transB=trans_b, alpha=alpha, beta=beta)
    return _single(h, n, inputs, [5, 10], inits)


@pytest.mark.parametrize("case", list(GEMMS))
@pytest.mark.parametrize("data_aware", [False, True])
def test_gemm_at_full_rank_is_exact(h, tmp_path, case, data_aware):
    m = _gemm_case(h, *GEMMS[case])
    calib = _random_calib(tmp_path, m) if data_aware else None
    res, rec = _low_rank(m, f"ratio=1.0, force=true, data_aware={str(data_aware).lower()}", calib=calib)
    assert rec.stats["layers_factorized"] == 1 and rec.stats["svd"] == 1
    assert rec.stats["data_aware_layers"] == int(data_aware)
    assert _ops(res.model).count("Gemm") == 2
    (layer,) = rec.details["layers"]
    assert layer["ranks"] == [10]
    _assert_reproduces(m, res.model)


# Conv 2-D geometries on x (1, 4, 8, 8): (kernel, attributes, bias)
CONVS_2D = {
    "pads_bias": ((3, 3), dict(pads=[1, 1, 1, 1]), True),
    "pads_asymmetric": ((3, 3), dict(pads=[0, 1, 2, 0]), False),
    "strides_2": ((3, 3), dict(pads=[1, 1, 1, 1], strides=[2, 2]), True),
    "dilations_2": ((3, 3), dict(pads=[2, 1, 2, 1], dilations=[2, 2]), False),
    "kernel_3x2_mixed": ((3, 2), dict(pads=[1, 0, 2, 1], strides=[2, 1], dilations=[1, 2]), True),
    "same_upper": ((3, 3), dict(auto_pad="SAME_UPPER", strides=[2, 2]), True),
    "same_lower": ((3, 3), dict(auto_pad="SAME_LOWER", strides=[2, 2]), False),
    "valid": ((3, 3), dict(auto_pad="VALID"), True),
}


def _conv_model(h, x_shape, w_shape, attrs, bias: bool, seed: int = 3):
    """x -> Conv -> y, with the output shape from onnx shape inference."""
    rng = _rng(seed)
    inits = {"w": _normal(rng, *w_shape)}
    if bias:
        inits["b"] = _normal(rng, w_shape[0])
    n = h.node("Conv", ["x", "w"] + (["b"] if bias else []), ["y"], name="conv", **attrs)
    m = _single(h, n, {"x": x_shape}, None, inits)
    inferred = onnx.shape_inference.infer_shapes(m, strict_mode=True)
    m.graph.output[0].CopyFrom(inferred.graph.output[0])
    assert m.graph.output[0].type.tensor_type.shape.dim[1].dim_value == w_shape[0]
    return m


def _check_conv_full_rank(m, method, data_aware, tmp_path, *, factors: int):
    calib = _random_calib(tmp_path, m) if data_aware else None
    res, rec = _low_rank(m, f'ratio=1.0, force=true, method="{method}", data_aware={str(data_aware).lower()}',
                         calib=calib)
    assert rec.stats["layers_factorized"] == 1 and rec.stats[method] == 1, rec.stats
    assert rec.stats["data_aware_layers"] == int(data_aware)
    assert _ops(res.model) == ["Conv"] * factors
    (layer,) = rec.details["layers"]
    assert layer["method"] == method and layer["ranks"] == layer["full_ranks"]
    _assert_reproduces(m, res.model)
    return res, rec


METHOD_FACTORS = {"channel_svd": 2, "spatial_svd": 2, "tucker2": 3}


@pytest.mark.parametrize("geometry", list(CONVS_2D))
@pytest.mark.parametrize("method", list(METHOD_FACTORS))
@pytest.mark.parametrize("data_aware", [False, True])
def test_conv2d_at_full_rank_is_exact(h, tmp_path, geometry, method, data_aware):
    kernel, attrs, bias = CONVS_2D[geometry]
    m = _conv_model(h, [1, 4, 8, 8], [6, 4, *kernel], attrs, bias)
    res, _ = _check_conv_full_rank(m, method, data_aware, tmp_path, factors=METHOD_FACTORS[method])
    if method == "spatial_svd":  # a kh x 1 then a 1 x kw Conv
        shapes = [_attr(n, "kernel_shape") for n in res.model.graph.node]
        assert shapes == [[kernel[0], 1], [1, kernel[1]]]


@pytest.mark.parametrize("method", ["channel_svd", "tucker2"])
@pytest.mark.parametrize("data_aware", [False, True])
def test_conv1d_at_full_rank_is_exact(h, tmp_path, method, data_aware):
    m = _conv_model(h, [2, 4, 11], [6, 4, 3], dict(pads=[1, 2], strides=[2]), True)
    _check_conv_full_rank(m, method, data_aware, tmp_path, factors=METHOD_FACTORS[method])


def test_spatial_svd_does_not_apply_to_a_conv1d(h):
    m = _conv_model(h, [2, 4, 11], [6, 4, 3], dict(pads=[1, 1]), True)
    res, rec = _low_rank(m, 'ratio=0.5, force=true, method="spatial_svd"')
    assert rec.stats == {"skipped_layers": 1}
    (skip,) = rec.details["skipped"]
    assert skip["node"] == "conv" and "spatial_svd does not apply" in skip["reason"]
    assert res.model.SerializeToString(deterministic=True) == _untouched(m)


@pytest.mark.parametrize("groups, channels", [(2, 4), (4, 8)])
@pytest.mark.parametrize("method", list(METHOD_FACTORS))
@pytest.mark.parametrize("data_aware", [False, True])
def test_grouped_conv_at_full_rank_is_exact(h, tmp_path, groups, channels, method, data_aware):
    m = _conv_model(h, [1, channels, 7, 7], [8, 2, 3, 3], dict(pads=[1, 1, 1, 1], group=groups), True)
    res, rec = _check_conv_full_rank(m, method, data_aware, tmp_path, factors=METHOD_FACTORS[method])
    for n in res.model.graph.node:  # every factor keeps the group count
        assert _attr(n, "group") == groups
    og = 8 // groups  # per group: O/g = og outputs, 2 input channels, 3x3
    assert rec.details["layers"][0]["full_ranks"] == {"channel_svd": [og], "spatial_svd": [min(6, 3 * og)],
                                                      "tucker2": [2, og]}[method]


@pytest.mark.parametrize("w_shape", [(4, 1, 3, 3), (8, 1, 3, 3)], ids=["depthwise", "multiplier_2"])
def test_depthwise_conv_is_skipped_with_the_reason(h, w_shape):
    m = _conv_model(h, [1, 4, 8, 8], list(w_shape), dict(pads=[1, 1, 1, 1], group=4), True)
    res, rec = _low_rank(m, "ratio=0.5, force=true")
    assert rec.stats == {"skipped_layers": 1}
    assert rec.details["skipped"] == [{"node": "conv", "op": "Conv",
                                       "reason": "depthwise conv (one input channel per group)"}]
    assert res.model.SerializeToString(deterministic=True) == _untouched(m)


def test_data_aware_full_rank_is_exact_with_a_singular_input_covariance(h, tmp_path):
    """Calibration rows confined to a 3-D subspace of the 12 features: the data cannot tell
    the other directions apart, yet full rank must reproduce W on any input."""
    m = _matmul_case(h, "right_2d")
    rng = _rng(4)
    basis = rng.standard_normal((3, 12))
    samples = [{"x": (rng.standard_normal((5, 3)) @ basis).astype(np.float32)} for _ in range(6)]
    res, rec = _low_rank(m, "ratio=1.0, force=true", calib=_calib_folder(tmp_path, samples))
    assert rec.stats["data_aware_layers"] == 1
    _assert_reproduces(m, res.model)


@pytest.mark.parametrize("method", list(METHOD_FACTORS))
def test_too_few_calibration_rows_fall_back_to_the_weights(h, tmp_path, method):
    """One calibration sample of 4x3 positions for 8 * 3 * 3 = 72 patch features: too few
    rows to estimate the input covariance, so the layer is factorized from its weights
    (data_aware false in the report), and full rank still reproduces the Conv."""
    m = _conv_model(h, [1, 8, 4, 5], [8, 8, 3, 3], dict(pads=[1, 0, 1, 2], strides=[1, 2]), True, seed=16)
    calib = _random_calib(tmp_path, m, n=1)
    res, rec = _low_rank(m, f'ratio=1.0, force=true, method="{method}"', calib=calib)
    assert rec.stats["data_aware_layers"] == 0
    assert [layer["data_aware"] for layer in rec.details["layers"]] == [False]
    _assert_reproduces(m, res.model)


def test_data_aware_full_rank_adds_no_bias_node(h, tmp_path):
    m = _matmul_case(h, "right_2d")
    rng = _rng(15)
    samples = [{"x": _normal(rng, 5, 12) + np.float32(3)} for _ in range(6)]  # a non-zero mean
    res, rec = _low_rank(m, "ratio=1.0, force=true", calib=_calib_folder(tmp_path, samples))
    assert rec.stats["data_aware_layers"] == 1
    assert _ops(res.model) == ["MatMul", "MatMul"]


# ---------------------------------------------------------------------------------------
# 2. below full rank: the SVD bounds, and data-aware versus plain
# ---------------------------------------------------------------------------------------


def _emitted_product(out: onnx.ModelProto) -> np.ndarray:
    """W' (F, O) of a factorized MatMul X·W: the product of its two factors' constants."""
    consts = _consts(out)
    first, second = [n for n in out.graph.node if n.op_type == "MatMul"]
    assert first.output[0] == second.input[0]
    return consts[first.input[1]].astype(np.float64) @ consts[second.input[1]].astype(np.float64)


@pytest.mark.parametrize("rank", [1, 3, 6, 9])
def test_plain_svd_meets_the_output_bound(h, rank):
    """||X W - X W'||_F <= ||X||_F sigma_{r+1}(W) on random X, and Eckart-Young on the
    emitted factors: ||W - W'||_F^2 = sum of the dropped sigma_i^2 (reported as weight_error)."""
    rng = _rng(5)
    w = _normal(rng, 12, 10)
    m = _single(h, h.node("MatMul", ["x", "w"], ["y"], name="mm"), {"x": [16, 12]}, [16, 10], {"w": w})
    res, rec = _low_rank(m, f"rank={rank}, force=true")
    assert rec.details["layers"][0]["ranks"] == [rank]
    s = np.linalg.svd(w.astype(np.float64), compute_uv=False)
    for seed in range(4):
        feeds = {"x": _normal(_rng(50 + seed), 16, 12)}
        (y,), (y2,) = _run(m, feeds), _run(res.model, feeds)
        err = np.linalg.norm(y.astype(np.float64) - y2)
        bound = np.linalg.norm(feeds["x"].astype(np.float64)) * s[rank]
        assert 0 < err <= bound * (1 + 1e-5) + 1e-5, (err, bound)
    dropped = float(np.sum(s[rank:] ** 2))
    got = float(np.sum((w - _emitted_product(res.model)) ** 2))
    assert got == pytest.approx(dropped, rel=1e-4)
    assert rec.details["layers"][0]["weight_error"] == pytest.approx(math.sqrt(dropped / np.sum(s ** 2)), abs=2e-6)


def _correlated_rows(rng, rows: int, features: int, basis: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Rows mean + z diag(10 ... 0.01) basis^T: a strongly non-isotropic covariance."""
    scales = np.logspace(1, -2, features)
    return (mean + (rng.standard_normal((rows, features)) * scales) @ basis.T).astype(np.float32)


def test_data_aware_matmul_beats_plain_on_correlated_inputs(h, tmp_path):
    rng = _rng(6)
    basis = np.linalg.qr(rng.standard_normal((16, 16)))[0]
    mean = rng.standard_normal(16)
    m = _single(h, h.node("MatMul", ["x", "w"], ["y"], name="mm"), {"x": [64, 16]}, [64, 12],
                {"w": _normal(rng, 16, 12)})
    calib_samples = [{"x": _correlated_rows(rng, 64, 16, basis, mean)} for _ in range(8)]
    calib = _calib_folder(tmp_path, calib_samples)
    aware, rec_aware = _low_rank(m, "rank=3", calib=calib)
    plain, rec_plain = _low_rank(m, "rank=3, data_aware=false", calib=calib)
    assert rec_aware.stats["data_aware_layers"] == 1 and rec_plain.stats["data_aware_layers"] == 0

    def error(out, samples):
        ref = np.concatenate([_run(m, s)[0] for s in samples])
        return _rel(ref, np.concatenate([_run(out, s)[0] for s in samples]))

    fresh = [{"x": _correlated_rows(rng, 64, 16, basis, mean)} for _ in range(4)]
    err_aware, err_plain = error(aware.model, fresh), error(plain.model, fresh)
    assert err_aware < 0.5 * err_plain, (err_aware, err_plain)
    # the reported output error is the relative error on the calibration rows
    reported = rec_aware.details["layers"][0]["output_error"]
    assert reported == pytest.approx(error(aware.model, calib_samples), rel=1e-3, abs=1e-5)


@pytest.mark.parametrize("method, rank", [("channel_svd", 3), ("spatial_svd", 4), ("tucker2", 3)])
def test_data_aware_conv_beats_plain_on_correlated_inputs(h, tmp_path, method, rank):
    """Input channels mixed from latent channels of scales 10 ... 0.01, plus a mean."""
    rng = _rng(7)
    mix = np.linalg.qr(rng.standard_normal((6, 6)))[0] * np.logspace(1, -2, 6)
    offset = rng.standard_normal((1, 6, 1, 1))

    def sample():
        z = rng.standard_normal((1, 6, 8, 8))
        return {"x": (np.einsum("ck,nkhw->nchw", mix, z) + offset).astype(np.float32)}

    m = _conv_model(h, [1, 6, 8, 8], [8, 6, 3, 3], dict(pads=[1, 1, 1, 1]), True, seed=8)
    calib = _calib_folder(tmp_path, [sample() for _ in range(8)])
    opts = f'rank={rank}, method="{method}", force=true'
    aware, rec = _low_rank(m, opts, calib=calib)
    plain, _ = _low_rank(m, opts + ", data_aware=false", calib=calib)
    assert rec.details["layers"][0]["data_aware"] is True
    fresh = [sample() for _ in range(4)]
    ref = np.concatenate([_run(m, s)[0] for s in fresh])
    err_aware = _rel(ref, np.concatenate([_run(aware.model, s)[0] for s in fresh]))
    err_plain = _rel(ref, np.concatenate([_run(plain.model, s)[0] for s in fresh]))
    assert err_aware < 0.9 * err_plain, (err_aware, err_plain)


# ---------------------------------------------------------------------------------------
# 3. rank / ratio / energy / align selection, and "not cheaper"
# ---------------------------------------------------------------------------------------

SPECTRUM = np.array([10, 6, 4, 3, 2, 1.5, 1, 0.5, 0.3, 0.2, 0.1, 0.05])


def _spectral_matmul(h, rows: int = 8):
    """x (rows, 12) · W (12, 40) with the singular values SPECTRUM: full rank 12; the SVD
    at rank r costs r * 52 parameters against 480, so it is cheaper up to r = 9."""
    rng = _rng(9)
    u = np.linalg.qr(rng.standard_normal((12, 12)))[0]
    v = np.linalg.qr(rng.standard_normal((40, 12)))[0]
    w = ((u * SPECTRUM) @ v.T).astype(np.float32)
    return _single(h, h.node("MatMul", ["x", "w"], ["y"], name="mm"), {"x": [rows, 12]}, [rows, 40], {"w": w})


def _energy_rank(s: np.ndarray, energy: float) -> int:
    kept = np.cumsum(s ** 2) / np.sum(s ** 2)
    return int(np.argmax(kept >= energy - 1e-12)) + 1


@pytest.mark.parametrize("options, rank", [
    ("rank=5", 5),
    ("rank=40, force=true", 12),  # capped at the full rank
    ("ratio=0.25", 3),  # exactly 3: no rounding up past it
    ("ratio=0.3", 4),  # ceil(3.6)
    ("ratio=0.5", 6),
    ("rank=5, align=4", 8),  # rounded up to a multiple of 4
    ("rank=9, align=8, force=true", 12),  # 16, capped at the full rank
    ("energy=0.5", _energy_rank(SPECTRUM, 0.5)),  # 1, 3 and 8 of the 12 singular values
    ("energy=0.9", _energy_rank(SPECTRUM, 0.9)),
    ("energy=0.999", _energy_rank(SPECTRUM, 0.999)),
    ("energy=1.0, force=true", 12),
])
def test_rank_selection(h, options, rank):
    m = _spectral_matmul(h)
    res, rec = _low_rank(m, options)
    rows, f, o = 8, 12, 40
    assert rec.stats == {"layers_factorized": 1, "svd": 1, "data_aware_layers": 0,
                         "macs_before": rows * f * o, "macs_after": rows * rank * (f + o),
                         "params_before": f * o, "params_after": rank * (f + o)}
    (layer,) = rec.details["layers"]
    assert layer["ranks"] == [rank] and layer["full_ranks"] == [12]
    consts = _consts(res.model)
    assert sorted(c.shape for c in consts.values()) == sorted([(12, rank), (rank, 40)])


def test_data_aware_energy_reads_the_whitened_spectrum(h, tmp_path):
    """Data-aware, energy counts the singular values of W Sigma^1/2 (Sigma the covariance
    of the calibration rows), computed here independently of the pass."""
    m = _spectral_matmul(h, rows=32)
    rng = _rng(10)
    basis = np.linalg.qr(rng.standard_normal((12, 12)))[0]
    samples = [{"x": _correlated_rows(rng, 32, 12, basis, np.zeros(12))} for _ in range(6)]
    rows = np.concatenate([s["x"] for s in samples]).astype(np.float64)
    sigma = np.cov(rows.T, bias=True)
    vals, vecs = np.linalg.eigh(sigma)
    root = (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T
    w = _consts(m)["w"].astype(np.float64).T  # (O, F)
    whitened = np.linalg.svd(w @ root, compute_uv=False)
    want = _energy_rank(whitened, 0.95)
    assert want != _energy_rank(SPECTRUM, 0.95)  # the data changes the choice
    _, rec = _low_rank(m, "energy=0.95, force=true", calib=_calib_folder(tmp_path, samples))
    assert rec.details["layers"][0]["ranks"] == [want]


@pytest.mark.parametrize("options, ranks", [
    ("rank=4", [4, 4]),
    ("rank=7", [6, 7]),  # rank_in capped at C = 6
    ("ratio=0.5", [3, 4]),  # per mode: ceil(0.5 * 6), ceil(0.5 * 8)
])
def test_tucker2_ranks_per_mode(h, options, ranks):
    m = _conv_model(h, [1, 6, 6, 6], [8, 6, 3, 3], dict(pads=[1, 1, 1, 1]), False)
    res, rec = _low_rank(m, f'{options}, method="tucker2", force=true')
    (layer,) = rec.details["layers"]
    assert layer["ranks"] == ranks and layer["full_ranks"] == [6, 8]
    r1, r2 = ranks
    shapes = [_consts(res.model)[n.input[1]].shape for n in res.model.graph.node]
    assert shapes == [(r1, 6, 1, 1), (r2, r1, 3, 3), (8, r2, 1, 1)]
    assert rec.stats["params_after"] == r1 * 6 + r2 * r1 * 9 + 8 * r2


def test_layers_not_cheaper_are_left_alone_unless_forced(h):
    m = _spectral_matmul(h)
    res, rec = _low_rank(m, "ratio=1.0")  # rank 12 costs 624 > 480 parameters
    assert rec.stats == {"skipped_not_cheaper": 1}
    assert res.model.SerializeToString(deterministic=True) == _untouched(m)
    _, forced = _low_rank(m, "ratio=1.0, force=true")
    assert forced.modified and forced.stats["layers_factorized"] == 1
    assert forced.stats["params_after"] > forced.stats["params_before"]


@pytest.mark.parametrize("case", ["depthwise", "not_cheaper"])
def test_a_run_that_changes_nothing_is_not_modified(h, case):
    if case == "depthwise":
        m = _conv_model(h, [1, 4, 8, 8], [4, 1, 3, 3], dict(pads=[1, 1, 1, 1], group=4), True)
        res, rec = _low_rank(m, "ratio=0.5")
    else:
        m = _spectral_matmul(h)
        res, rec = _low_rank(m, "ratio=1.0")
    assert res.model.SerializeToString(deterministic=True) == _untouched(m)
    assert not rec.modified, rec.stats


def test_equal_cost_is_not_cheaper_and_only_cheaper_layers_change(h):
    """fc1 (12 -> 40) at rank 6 is cheaper; fc2 (4 -> 4) at rank 2 costs 2 * 8 = 16 = 4 * 4:
    not cheaper, kept as it is."""
    rng = _rng(11)
    w1, w2 = _normal(rng, 12, 40), _normal(rng, 40, 4)
    m = h.model([h.node("MatMul", ["x", "w1"], ["t"], name="fc1"),
                 h.node("MatMul", ["t", "w2"], ["u"], name="mid"),
                 h.node("MatMul", ["u", "w3"], ["y"], name="fc2")],
                [("x", F32, [8, 12])], [("y", F32, [8, 4])],
                [h.init("w1", w1), h.init("w2", w2), h.init("w3", _normal(rng, 4, 4))])
    res, rec = _low_rank(m, "ratio=0.5", selector='on MatMul where name ~ "fc*"')
    assert rec.stats["layers_factorized"] == 1 and rec.stats["skipped_not_cheaper"] == 1
    names = [n.name for n in res.model.graph.node]
    assert "fc1" not in names and "fc2" in names and "mid" in names
    np.testing.assert_array_equal(_consts(res.model)["w3"], _consts(m)["w3"])


# ---------------------------------------------------------------------------------------
# 4. budget
# ---------------------------------------------------------------------------------------


def _budget_mlp(h):
    """x (16, 32) -> fc1 -> Relu -> fc2 -> Relu -> Gemm: weights with singular values 2^-i, so
    low ranks lose little."""
    rng = _rng(12)

    def decaying(o, f):
        u = np.linalg.qr(rng.standard_normal((o, min(o, f))))[0]
        v = np.linalg.qr(rng.standard_normal((f, min(o, f))))[0]
        return ((u * 0.5 ** np.arange(min(o, f))) @ v.T).astype(np.float32)

    nodes = [h.node("MatMul", ["x", "w1"], ["a1"], name="fc1"), h.node("Relu", ["a1"], ["r1"]),
             h.node("MatMul", ["r1", "w2"], ["a2"], name="fc2"), h.node("Relu", ["a2"], ["r2"]),
             h.node("Gemm", ["r2", "w3", "c3"], ["y"], name="head", transB=1)]
    return h.model(nodes, [("x", F32, [16, 32])], [("y", F32, [16, 24])],
                   [h.init("w1", decaying(32, 32).T), h.init("w2", decaying(32, 32).T),
                    h.init("w3", decaying(24, 32)), h.init("c3", _normal(rng, 24))])


@pytest.mark.parametrize("objective, budget", [
    ("macs", 0.3),
    ("params", 0.5),
])
def test_budget_on_macs_or_params_is_met(h, tmp_path, objective, budget):
    m = _budget_mlp(h)
    res, rec = _low_rank(m, f'budget={budget}, objective="{objective}", samples=6, sensitivity_samples=2',
                         calib=_random_calib(tmp_path, m, n=6))
    auto = rec.details["auto"]
    assert auto["objective"] == objective and auto["budget"] == budget and auto["saved"] >= budget
    st = rec.stats
    # the budget holds on the emitted model, counted by homec.analysis.cost
    (macs_in, params_in), (macs_out, params_out) = _static_cost(m), _static_cost(res.model)
    emitted = 1 - macs_out / macs_in if objective == "macs" else 1 - params_out / params_in
    assert emitted >= budget, emitted
    assert (st["macs_before"], st["macs_after"], st["params_before"]) == (macs_in, macs_out, params_in)
    sens = rec.details["sensitivity"]
    assert {s["node"] for s in sens} == {"fc1", "fc2", "head"}
    assert st["candidates_measured"] == sum(len(s["curve"]) for s in sens)
    onnx.checker.check_model(res.model, full_check=True)


def test_budget_on_the_error_keeps_the_measured_error_within_it(h, tmp_path):
    m = _budget_mlp(h)
    samples = [random_feeds(m, 200 + i) for i in range(6)]
    budget = 0.02
    res, rec = _low_rank(m, f'budget={budget}, objective="error", samples=6, sensitivity_samples=2',
                         calib=_calib_folder(tmp_path, samples))
    auto = rec.details["auto"]
    assert auto["rel_l2"] <= budget and rec.stats["layers_factorized"] >= 1
    # the error measured here on the sensitivity samples (all the same size: the first two)
    measured = np.mean([_rel(_run(m, s)[0], _run(res.model, s)[0]) for s in samples[:2]])
    assert measured <= budget
    assert measured == pytest.approx(auto["rel_l2"], abs=1e-5)


def test_budget_on_a_conv_tries_every_method(h, tmp_path):
    m = _conv_model(h, [1, 8, 6, 6], [16, 8, 3, 3], dict(pads=[1, 1, 1, 1]), True, seed=13)
    res, rec = _low_rank(m, 'budget=0.3, objective="params", samples=4, sensitivity_samples=1',
                         calib=_random_calib(tmp_path, m, n=4))
    (sens,) = rec.details["sensitivity"]
    assert {point[0] for point in sens["curve"]} == {"channel_svd", "spatial_svd", "tucker2"}
    assert rec.details["auto"]["saved"] >= 0.3
    assert 1 - rec.stats["params_after"] / rec.stats["params_before"] >= 0.3
    assert rec.stats["params_after"] == _static_cost(res.model)[1]


# ---------------------------------------------------------------------------------------
# 5. usage errors
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("options, message", [
    ("", r"exactly one of rank, ratio, energy, budget$"),
    ("rank=2, ratio=0.5", r"exactly one of rank, ratio, energy, budget \(got rank, ratio\)"),
    ("energy=0.9, budget=0.3", r"\(got energy, budget\)"),
    ("ratio=0", "must be > 0"),
    ("rank=2, data_aware=true", "calibration"),
    ("budget=0.3", "calibration"),
])
def test_usage_errors(h, options, message):
    m = _spectral_matmul(h)
    with pytest.raises(UsageError, match=message) as info:
        _low_rank(m, options)
    assert info.value.exit_code == ExitCode.USAGE == 2


# ---------------------------------------------------------------------------------------
# 6. selectors, determinism, truthful statistics, nothing to do
# ---------------------------------------------------------------------------------------


def _chain(h):
    """x (2, 4, 8, 8) -> conv1 (bias) -> Relu -> conv2 (stride 2) -> Reshape (2, 256) ->
    Gemm (transB, C) -> Relu -> MatMul -> y (2, 10): every layer kind, static shapes."""
    rng = _rng(14)
    nodes = [h.node("Conv", ["x", "k1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             h.node("Relu", ["c1"], ["r1"]),
             h.node("Conv", ["r1", "k2"], ["c2"], name="conv2", pads=[1, 1, 1, 1], strides=[2, 2]),
             h.node("Reshape", ["c2", "shape"], ["f"]),
             h.node("Gemm", ["f", "wg", "cg"], ["g"], name="gemm", transB=1),
             h.node("Relu", ["g"], ["rg"]),
             h.node("MatMul", ["rg", "wm"], ["y"], name="mm")]
    inits = [h.init("k1", _normal(rng, 16, 4, 3, 3)), h.init("b1", _normal(rng, 16)),
             h.init("k2", _normal(rng, 16, 16, 3, 3)), h.init("shape", np.array([2, 256], np.int64)),
             h.init("wg", _normal(rng, 32, 256)), h.init("cg", _normal(rng, 32)),
             h.init("wm", _normal(rng, 32, 10))]
    return h.model(nodes, [("x", F32, [2, 4, 8, 8])], [("y", F32, [2, 10])], inits)


@pytest.mark.parametrize("options, calibrated", [
    ("ratio=0.3", False),
    ('ratio=0.25, method="tucker2"', False),
    ('ratio=0.25, method="channel_svd", align=4', False),
    ("ratio=0.3", True),
    ('ratio=0.25, method="tucker2"', True),
])
def test_statistics_match_the_cost_of_the_emitted_model(h, tmp_path, options, calibrated):
    m = _chain(h)
    calib = _random_calib(tmp_path, m, n=24) if calibrated else None
    res, rec = _low_rank(m, options, calib=calib)
    st = rec.stats
    # 24 samples give the convs plenty of rows per patch feature; the Gemm and the MatMul see
    # 2 rows per sample for 256 and 32 features: too few, they use their weights
    assert st["layers_factorized"] == 4 and st["data_aware_layers"] == (2 if calibrated else 0)
    assert (st["macs_before"], st["params_before"]) == _static_cost(m)
    assert st["macs_after"] == _static_cost(res.model)[0]
    assert st["params_after"] == _static_cost(res.model)[1]
    for layer in rec.details["layers"]:
        assert layer["macs_after"] < layer["macs_before"] and layer["params_after"] < layer["params_before"]
    saved = sum(layer["macs_before"] - layer["macs_after"] for layer in rec.details["layers"])
    assert st["macs_before"] - st["macs_after"] == saved
    onnx.checker.check_model(res.model, full_check=True)
    assert [o.name for o in res.model.graph.output] == ["y"]


LAYER_KINDS = {
    "matmul_right_3d": lambda h: _matmul_case(h, "right_3d"),
    "matmul_left_3d": lambda h: _matmul_case(h, "left_3d"),
    "gemm_transA": lambda h: _gemm_case(h, *GEMMS["transA_c_matrix"]),
    "conv1d": lambda h: _conv_model(h, [2, 4, 11], [6, 4, 3], dict(pads=[1, 2], strides=[2]), True),
    "conv_same_upper": lambda h: _conv_model(h, [1, 4, 8, 8], [6, 4, 3, 3], CONVS_2D["same_upper"][1], False),
    "conv_3x2_mixed": lambda h: _conv_model(h, [1, 4, 8, 8], [6, 4, 3, 2], CONVS_2D["kernel_3x2_mixed"][1], True),
    "conv_group_2": lambda h: _conv_model(h, [1, 4, 7, 7], [8, 2, 3, 3], dict(pads=[1, 1, 1, 1], group=2), True),
}


@pytest.mark.parametrize("kind", list(LAYER_KINDS))
@pytest.mark.parametrize("method", ["channel_svd", "spatial_svd", "tucker2"])
def test_statistics_match_the_cost_for_every_layer_kind(h, kind, method):
    """Plain factorization at rank 2, forced: MACs and parameters before and after, in the
    statistics and per layer, are what homec.analysis.cost counts on the models."""
    m = LAYER_KINDS[kind](h)
    res, rec = _low_rank(m, f'rank=2, force=true, method="{method}"')
    if rec.stats.get("skipped_layers"):  # spatial_svd needs a 2-D kernel
        assert method == "spatial_svd" and kind == "conv1d"
        return
    st = rec.stats
    assert st["layers_factorized"] == 1
    assert (st["macs_before"], st["params_before"]) == _static_cost(m)
    assert (st["macs_after"], st["params_after"]) == _static_cost(res.model)
    (layer,) = rec.details["layers"]
    assert (layer["macs_before"], layer["macs_after"]) == (st["macs_before"], st["macs_after"])
    others = st["params_before"] - layer["params_before"]  # biases and C: the same on both sides
    assert layer["params_after"] == st["params_after"] - others


def test_selector_changes_only_the_selected_nodes(h):
    m = _chain(h)
    # conv2 and gemm: the Conv and Gemm nodes whose names end in 2 or m (a glob)
    res, rec = _low_rank(m, "ratio=0.25, force=true", selector='on Conv, Gemm where name ~ "*[2m]"')
    assert rec.stats["layers_factorized"] == 2
    assert {layer["node"] for layer in rec.details["layers"]} == {"conv2", "gemm"}
    by_name = {n.name: n for n in res.model.graph.node}
    assert "conv1" in by_name and "mm" in by_name and "conv2" not in by_name and "gemm" not in by_name
    before, after = _consts(m), _consts(res.model)
    for name in ("k1", "b1", "wm"):  # the unselected layers' weights, untouched
        np.testing.assert_array_equal(after[name], before[name])
    assert "k2" not in after and "wg" not in after


def test_compiling_twice_gives_identical_bytes(h, tmp_path):
    m = _budget_mlp(h)
    calib = _random_calib(tmp_path, m, n=4)
    for opts in ("ratio=0.3", 'budget=0.3, objective="macs", samples=4'):
        a, _ = _low_rank(m, opts, calib=calib)
        b, _ = _low_rank(m, opts, calib=calib)
        assert a.model.SerializeToString(deterministic=True) == b.model.SerializeToString(deterministic=True)


def test_nothing_to_factorize_reports_no_change(h):
    """A MatMul of two activations and a Conv with a computed kernel: no constant weight."""
    m = h.model([h.node("MatMul", ["a", "b"], ["p"], name="mm"),
                 h.node("Conv", ["x", "k"], ["y"], name="conv")],
                [("a", F32, [4, 6]), ("b", F32, [6, 4]), ("x", F32, [1, 2, 5, 5]), ("k", F32, [3, 2, 3, 3])],
                [("p", F32, [4, 4]), ("y", F32, [1, 3, 3, 3])])
    res, rec = _low_rank(m, "ratio=0.5, force=true")
    assert not rec.modified and rec.stats == {} and "layers" not in rec.details
    assert res.model.SerializeToString(deterministic=True) == _untouched(m)
