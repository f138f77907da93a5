"""lowrank.factor: the decompositions reproduce the weight at full rank, truncate optimally
(in weights when plain, in outputs when data-aware), and their factor Convs, run as real
convolutions (numpy im2col in float64, onnxruntime in float32), compute what
`factored_matrix` says."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest

from homec.lowrank.factor import (Factors, channel_svd, factored_matrix, matrix_svd,
                                  rank_for_energy, relative_output_error, spatial_svd,
                                  spectrum, tucker2)
from homec.prune.gram import GramAccumulator, conv_output_shape, conv_patches
from homec.verify import make_session

F32 = onnx.TensorProto.FLOAT


# ---------------------------------------------------------------------------------------
# Data and reference convolutions
# ---------------------------------------------------------------------------------------


def _gram(rows):
    z = np.column_stack([rows, np.ones(len(rows))])
    return z.T @ z / len(rows)


def _anisotropic_rows(rng, n, features):
    """Rows with a strongly non-isotropic covariance (scales 10 .. 0.01 along random
    orthogonal directions) and a non-zero mean."""
    basis, _ = np.linalg.qr(rng.standard_normal((features, features)))
    scales = np.geomspace(10.0, 0.01, features)
    return (rng.standard_normal((n, features)) * scales) @ basis.T + rng.uniform(-2, 2, features)


def _smooth_images(rng, n, channels, height, width, *, reach=9):
    """Smooth random fields: white noise blurred by a Gaussian (sigma 2) along both spatial
    axes, channels mixed, plus an offset; neighbouring pixels are strongly correlated."""
    taps = np.exp(-0.5 * ((np.arange(reach) - reach // 2) / 2.0) ** 2)
    taps /= taps.sum()
    noise = rng.standard_normal((n, channels, height + reach - 1, width + reach - 1))
    blurred = np.lib.stride_tricks.sliding_window_view(noise, reach, axis=2) @ taps
    blurred = np.lib.stride_tricks.sliding_window_view(blurred, reach, axis=3) @ taps
    mix = np.eye(channels) + 0.5 * rng.standard_normal((channels, channels))
    return np.einsum("dc,nchw->ndhw", mix, blurred) + rng.uniform(-1, 1, (1, channels, 1, 1))


def _conv(x, w, *, strides, pads, dilations):
    """Conv (no bias) in float64 through im2col: (N, O, *out)."""
    out_channels, kernel = w.shape[0], w.shape[2:]
    rows = conv_patches(np.asarray(x, np.float64), kernel, strides=strides, pads=pads,
                        dilations=dilations) @ w.reshape(out_channels, -1).T
    out = conv_output_shape(x.shape, kernel, strides=strides, pads=pads, dilations=dilations)
    return np.moveaxis(rows.reshape((x.shape[0],) + out + (out_channels,)), -1, 1)


def _ort_chain(x, layers):
    """onnxruntime's output of Convs applied one after the other; each layer is
    (weight, bias or None, strides, pads, dilations)."""
    nodes, initializers, previous = [], [], "x"
    for i, (w, bias, strides, pads, dilations) in enumerate(layers):
        inputs = [previous, f"w{i}"]
        initializers.append(onh.from_array(w.astype(np.float32), f"w{i}"))
        if bias is not None:
            inputs.append(f"b{i}")
            initializers.append(onh.from_array(bias.astype(np.float32), f"b{i}"))
        previous = f"y{i}"
        nodes.append(oh.make_node("Conv", inputs, [previous], kernel_shape=list(w.shape[2:]),
                                  strides=list(strides), pads=list(pads),
                                  dilations=list(dilations)))
    graph = oh.make_graph(nodes, "chain", [oh.make_tensor_value_info("x", F32, x.shape)],
                          [oh.make_tensor_value_info(previous, F32, None)], initializers)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    return make_session(model).run(None, {"x": x.astype(np.float32)})[0].astype(np.float64)


def _split_geometry(strides, pads, dilations):
    """The spatial SVD's two geometries: (vertical for V1, horizontal for H), from a 2-D
    Conv's strides, ONNX pads [top, left, bottom, right] and dilations."""
    vertical = dict(strides=(strides[0], 1), pads=(pads[0], 0, pads[2], 0),
                    dilations=(dilations[0], 1))
    horizontal = dict(strides=(1, strides[1]), pads=(0, pads[1], 0, pads[3]),
                      dilations=(1, dilations[1]))
    return vertical, horizontal


def _spatial_conv(x, factors, geometry):
    vertical, horizontal = _split_geometry(**geometry)
    V1, H = factors.weights
    return _conv(_conv(x, V1, **vertical), H, **horizontal)


def _output_error_on_rows(rows, W, W_new, bias_delta):
    """The squared relative output error computed on the rows themselves."""
    diff = rows @ (W_new - W).T + bias_delta
    return float(np.mean(np.sum(diff ** 2, axis=1)) / np.mean(np.sum((rows @ W.T) ** 2, axis=1)))


def _close(a, b, tol=1e-10):
    np.testing.assert_allclose(a, b, rtol=0, atol=tol * max(1.0, float(np.max(np.abs(b)))))


# ---------------------------------------------------------------------------------------
# Full rank is exact, for every method, plain and data-aware
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5, 8), (8, 5), (6, 6)])
@pytest.mark.parametrize("data_aware, options", [(False, {}), (True, {}),
                                                  (True, {"ridge": 1e-2})])
def test_matrix_svd_full_rank_reproduces_w(shape, data_aware, options):
    rng = np.random.default_rng(10)
    W = rng.standard_normal(shape)
    gram = _gram(_anisotropic_rows(rng, 400, shape[1])) if data_aware else None
    rank = min(shape)
    f = matrix_svd(W, rank, gram, **options)
    B, A = f.weights
    assert B.shape == (rank, shape[1]) and A.shape == (shape[0], rank)
    assert f.ranks == (rank,) and f.bias_delta.shape == (shape[0],)
    _close(factored_matrix(f, "svd", W.shape), W)
    _close(A @ B, W)
    _close(f.bias_delta, np.zeros(shape[0]), 1e-9)


CONV_KERNELS = [(4, 3, 3, 3), (3, 5, 2, 3), (6, 2, 1, 1)]


def _full_ranks(kind, shape):
    out, channels, kernel = shape[0], shape[1], shape[2:]
    if kind == "channel_svd":
        return (min(out, channels * math.prod(kernel)),)
    if kind == "spatial_svd":
        return (min(channels * kernel[0], out * kernel[1]),)
    return (channels, out)


def _factor(kind, K, ranks, gram=None, **options):
    method = {"channel_svd": channel_svd, "spatial_svd": spatial_svd, "tucker2": tucker2}[kind]
    return method(K, *ranks, gram, **options)


@pytest.mark.parametrize("kind, shape", [(kind, shape) for kind in ("channel_svd",
                                                                    "spatial_svd", "tucker2")
                                         for shape in CONV_KERNELS]
                         + [("channel_svd", (5, 3, 4)), ("tucker2", (5, 3, 4)),
                            ("channel_svd", (3, 2, 2, 3, 2)), ("tucker2", (3, 2, 2, 3, 2))])
@pytest.mark.parametrize("data_aware, options", [(False, {}), (True, {}),
                                                  (True, {"ridge": 0.0}),
                                                  (True, {"ridge": 1e-2})])
def test_conv_methods_full_rank_reproduce_k(kind, shape, data_aware, options):
    """Exact at full rank, data-aware too and whatever the ridge (it shrinks towards the
    plain decomposition, which is exact there)."""
    rng = np.random.default_rng(11)
    K = rng.standard_normal(shape)
    features = math.prod(shape[1:])
    gram = _gram(_anisotropic_rows(rng, 6 * features + 50, features)) if data_aware else None
    ranks = _full_ranks(kind, shape)
    f = _factor(kind, K, ranks, gram, **options)
    assert f.ranks == ranks
    _close(factored_matrix(f, kind, shape), K.reshape(shape[0], -1))
    _close(f.bias_delta, np.zeros(shape[0]), 1e-9)


def test_factor_shapes_follow_the_conv_chain():
    K = np.random.default_rng(12).standard_normal((6, 4, 3, 5))
    assert [w.shape for w in channel_svd(K, 3).weights] == [(3, 4, 3, 5), (6, 3, 1, 1)]
    assert [w.shape for w in spatial_svd(K, 3).weights] == [(3, 4, 3, 1), (6, 3, 1, 5)]
    assert [w.shape for w in tucker2(K, 2, 5).weights] == [(2, 4, 1, 1), (5, 2, 3, 5),
                                                           (6, 5, 1, 1)]
    K3 = np.random.default_rng(13).standard_normal((4, 3, 2, 2, 2))
    assert [w.shape for w in tucker2(K3, 2, 3).weights] == [(2, 3, 1, 1, 1), (3, 2, 2, 2, 2),
                                                            (4, 3, 1, 1, 1)]
    for f in (channel_svd(K, 3), spatial_svd(K, 3), tucker2(K, 2, 5)):
        assert isinstance(f, Factors)
        assert all(w.dtype == np.float64 for w in f.weights)
        np.testing.assert_array_equal(f.bias_delta, np.zeros(6))


# ---------------------------------------------------------------------------------------
# Plain SVD: Eckart-Young
# ---------------------------------------------------------------------------------------


def test_plain_svd_is_the_eckart_young_truncation():
    rng = np.random.default_rng(20)
    W = rng.standard_normal((7, 10))
    X = rng.standard_normal((50, 10))
    s = np.linalg.svd(W, compute_uv=False)
    np.testing.assert_allclose(spectrum(W), s, rtol=1e-12)
    for rank in range(1, 8):
        f = matrix_svd(W, rank)
        B, A = f.weights
        difference = W - factored_matrix(f, "svd", W.shape)
        assert np.linalg.matrix_rank(A @ B) == rank
        np.testing.assert_allclose(np.sum(difference ** 2), np.sum(s[rank:] ** 2),
                                   rtol=1e-9, atol=1e-12)
        # Balanced split: column i of A and row i of B have the same norm, sqrt(s_i).
        np.testing.assert_allclose(np.linalg.norm(A, axis=0), np.sqrt(s[:rank]), rtol=1e-10)
        np.testing.assert_allclose(np.linalg.norm(B, axis=1), np.sqrt(s[:rank]), rtol=1e-10)
        if rank < 7:
            bound = np.linalg.norm(X) * s[rank]
            assert np.linalg.norm(X @ difference.T) <= bound * (1 + 1e-12)


# ---------------------------------------------------------------------------------------
# Data-aware SVD: the output optimum
# ---------------------------------------------------------------------------------------


def test_data_aware_spectrum_is_the_whitened_one():
    rng = np.random.default_rng(30)
    W = rng.standard_normal((6, 9))
    rows = _anisotropic_rows(rng, 500, 9)
    centered = rows - rows.mean(axis=0)
    # W Sigma^1/2 and W X_c^T / sqrt(n) share their singular values (same Gram W Sigma W^T).
    expected = np.linalg.svd(W @ centered.T / math.sqrt(len(rows)), compute_uv=False)
    np.testing.assert_allclose(spectrum(W, _gram(rows)), expected, rtol=1e-9)


def test_data_aware_svd_is_the_output_optimum():
    rng = np.random.default_rng(31)
    W = rng.standard_normal((8, 12))
    rows = _anisotropic_rows(rng, 3000, 12)
    gram = _gram(rows)
    whitened = spectrum(W, gram)
    energy = float(np.mean(np.sum((rows @ W.T) ** 2, axis=1)))
    gains = []
    for rank in range(1, 9):
        plain = matrix_svd(W, rank)
        aware = matrix_svd(W, rank, gram)
        W_plain = factored_matrix(plain, "svd", W.shape)
        W_aware = factored_matrix(aware, "svd", W.shape)
        e_plain = relative_output_error(W, W_plain, plain.bias_delta, gram)
        e_aware = relative_output_error(W, W_aware, aware.bias_delta, gram)
        # The quadratic form agrees with the rows.
        np.testing.assert_allclose(e_aware ** 2,
                                   _output_error_on_rows(rows, W, W_aware, aware.bias_delta),
                                   rtol=1e-8, atol=1e-14)
        np.testing.assert_allclose(e_plain ** 2,
                                   _output_error_on_rows(rows, W, W_plain, plain.bias_delta),
                                   rtol=1e-8, atol=1e-14)
        assert e_aware ** 2 <= e_plain ** 2 + 1e-9
        # Its error is the dropped whitened spectrum, and the mean output is kept.
        np.testing.assert_allclose(e_aware ** 2 * energy, np.sum(whitened[rank:] ** 2),
                                   rtol=1e-7, atol=1e-10 * energy)
        mean_shift = (rows @ (W_aware - W).T + aware.bias_delta).mean(axis=0)
        np.testing.assert_allclose(mean_shift, 0.0, atol=1e-9 * math.sqrt(energy))
        B, A = aware.weights
        np.testing.assert_allclose(np.linalg.norm(A, axis=0), np.linalg.norm(B, axis=1),
                                   rtol=1e-10)
        if rank < 8:
            gains.append(e_aware / e_plain)
    # On strongly correlated inputs the output-aware truncation is much better.
    assert min(gains) < 0.5


def test_data_aware_svd_with_a_ridge_stays_close_to_the_optimum():
    rng = np.random.default_rng(32)
    W = rng.standard_normal((6, 10))
    gram = _gram(_anisotropic_rows(rng, 1000, 10))
    for rank in (2, 4):
        exact = matrix_svd(W, rank, gram)
        ridged = matrix_svd(W, rank, gram, ridge=1e-3)
        errors = [relative_output_error(W, factored_matrix(f, "svd", W.shape), f.bias_delta,
                                        gram) for f in (exact, ridged)]
        assert errors[0] <= errors[1] + 1e-12
        assert errors[1] <= errors[0] * 1.05 + 1e-9


def test_data_aware_svd_with_a_singular_covariance():
    """A constant feature (zero variance: singular covariance, ridge 0) costs the output
    nothing at rank = the data's rank, and full rank still reproduces W (the unexcited
    direction is taken from W itself); the same with linearly dependent features."""
    rng = np.random.default_rng(33)
    W = rng.standard_normal((6, 4))
    rows = rng.standard_normal((300, 4)) @ rng.standard_normal((4, 4))
    rows[:, 2] = 0.7
    gram = _gram(rows)
    assert spectrum(W, gram)[3] < 1e-6 * spectrum(W, gram)[0]
    f3 = matrix_svd(W, 3, gram)
    assert relative_output_error(W, factored_matrix(f3, "svd", W.shape), f3.bias_delta,
                                 gram) < 1e-6
    f4 = matrix_svd(W, 4, gram)
    _close(factored_matrix(f4, "svd", W.shape), W)
    _close(f4.bias_delta, np.zeros(6), 1e-9)

    # An exactly zero variance (binary fractions: no rounding anywhere) gives an exactly
    # zero whitened direction, where the SVD alone would return an arbitrary vector.
    sigma = np.diag([1.0, 2.0, 0.0, 3.0])
    mean = np.array([0.5, -1.0, 0.75, 0.25])
    exact = np.block([[sigma + np.outer(mean, mean), mean[:, None]], [mean[None, :], 1.0]])
    assert spectrum(W, exact)[3] == 0.0
    f4 = matrix_svd(W, 4, exact)
    _close(factored_matrix(f4, "svd", W.shape), W)
    _close(f4.bias_delta, np.zeros(6), 1e-9)
    f3 = matrix_svd(W, 3, exact)
    assert relative_output_error(W, factored_matrix(f3, "svd", W.shape), f3.bias_delta,
                                 exact) < 1e-7

    # Linearly dependent features (x0 = x1 + x2 here): no constant feature, but a whitened
    # direction at rounding level (eigh may clip its eigenvalue to exactly 0).
    mix = np.array([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    dependent = np.block([[mix @ mix.T + np.outer(mean, mean), mean[:, None]],
                          [mean[None, :], 1.0]])
    assert spectrum(W, dependent)[3] < 1e-7 * spectrum(W, dependent)[0]
    f4 = matrix_svd(W, 4, dependent)
    _close(factored_matrix(f4, "svd", W.shape), W)
    _close(f4.bias_delta, np.zeros(6), 1e-9)


# ---------------------------------------------------------------------------------------
# Spatial SVD as real convolutions
# ---------------------------------------------------------------------------------------


SPATIAL_CASES = [
    # (input shape, K shape, strides, pads [top, left, bottom, right], dilations)
    ((2, 3, 9, 10), (4, 3, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    ((2, 2, 11, 9), (3, 2, 3, 2), (2, 1), (2, 0, 1, 1), (1, 2)),
    ((2, 3, 10, 12), (2, 3, 2, 3), (1, 2), (0, 2, 1, 0), (2, 1)),
    ((2, 4, 9, 8), (5, 4, 3, 1), (2, 2), (1, 0, 0, 0), (2, 1)),
    ((2, 2, 9, 9), (3, 2, 1, 3), (1, 1), (0, 1, 0, 1), (1, 1)),
    ((1, 3, 13, 12), (4, 3, 3, 3), (2, 2), (2, 1, 0, 3), (2, 2)),
]


@pytest.mark.parametrize("x_shape, k_shape, strides, pads, dilations", SPATIAL_CASES)
def test_spatial_svd_convolutions(x_shape, k_shape, strides, pads, dilations):
    rng = np.random.default_rng(40)
    x = rng.standard_normal(x_shape)
    K = rng.standard_normal(k_shape)
    geometry = dict(strides=strides, pads=pads, dilations=dilations)
    expected = _conv(x, K, **geometry)
    full = _full_ranks("spatial_svd", k_shape)[0]

    # Full rank: the kh x 1 then 1 x kw Convs are the original Conv.
    f = spatial_svd(K, full)
    _close(_spatial_conv(x, f, geometry), expected)
    # ... also in onnxruntime, with the split pads / strides / dilations as ONNX attributes.
    vertical, horizontal = _split_geometry(**geometry)
    V1, H = f.weights
    bias = rng.standard_normal(k_shape[0])
    ort = _ort_chain(x, [(V1, None, *vertical.values()), (H, bias, *horizontal.values())])
    np.testing.assert_allclose(ort, expected + bias[:, None, None], rtol=1e-4, atol=1e-4)

    # Lower rank: the Convs compute the factored matrix.
    rank = max(1, full // 2)
    low = spatial_svd(K, rank)
    kernel = factored_matrix(low, "spatial_svd", k_shape).reshape(k_shape)
    _close(_spatial_conv(x, low, geometry), _conv(x, kernel, **geometry))

    # Data-aware: the error predicted from the gram of the ORIGINAL patches (through the
    # map P, padding included) is the error of the actual two Convs with the new bias.
    accumulator = GramAccumulator(math.prod(k_shape[1:]), max_rows_per_sample=None)
    accumulator.add_conv(x, k_shape[2:], **geometry)
    aware = spatial_svd(K, rank, accumulator.gram)
    actual = _spatial_conv(x, aware, geometry) + aware.bias_delta[:, None, None] - expected
    actual_error = np.sum(actual ** 2) / np.sum(expected ** 2)
    W = K.reshape(k_shape[0], -1)
    predicted = relative_output_error(W, factored_matrix(aware, "spatial_svd", k_shape),
                                      aware.bias_delta, accumulator.gram)
    np.testing.assert_allclose(predicted ** 2, actual_error, rtol=1e-8, atol=1e-13)


def test_data_aware_spatial_svd_is_better_on_correlated_images():
    rng = np.random.default_rng(41)
    x = _smooth_images(rng, 4, 3, 20, 20)
    K = rng.standard_normal((6, 3, 3, 3))
    W = K.reshape(6, -1)
    accumulator = GramAccumulator(27, max_rows_per_sample=None)
    accumulator.add_conv(x, (3, 3), pads=(1, 1, 1, 1))
    gram = accumulator.gram
    gains = []
    for rank in range(1, 10):
        errors = {}
        for name, f in (("plain", spatial_svd(K, rank)),
                        ("aware", spatial_svd(K, rank, gram, ridge=0.0)),
                        ("ridged", spatial_svd(K, rank, gram))):
            errors[name] = relative_output_error(
                W, factored_matrix(f, "spatial_svd", K.shape), f.bias_delta, gram)
        # The least-squares refit is the optimum given V1, so never worse than plain.
        assert errors["aware"] ** 2 <= errors["plain"] ** 2 + 1e-9
        assert errors["ridged"] <= errors["aware"] * (1 + 1e-3) + 1e-9
        if errors["plain"] > 1e-6:
            gains.append(errors["aware"] / errors["plain"])
    assert min(gains) < 0.8


# ---------------------------------------------------------------------------------------
# Tucker-2
# ---------------------------------------------------------------------------------------


def test_tucker2_errors_decrease_with_the_ranks():
    rng = np.random.default_rng(50)
    K = rng.standard_normal((6, 5, 3, 3))
    W = K.reshape(6, -1)
    x = _smooth_images(rng, 3, 5, 14, 14)
    accumulator = GramAccumulator(45, max_rows_per_sample=None)
    accumulator.add_conv(x, (3, 3), pads=(1, 1, 1, 1))
    gram = accumulator.gram
    weight_error = np.zeros((6, 7))
    plain_error = np.zeros((6, 7))
    aware_error = np.zeros((6, 7))
    for rank_in in range(1, 6):
        for rank_out in range(1, 7):
            plain = tucker2(K, rank_in, rank_out)
            aware = tucker2(K, rank_in, rank_out, gram, ridge=0.0)
            W_plain = factored_matrix(plain, "tucker2", K.shape)
            weight_error[rank_in, rank_out] = np.linalg.norm(W - W_plain)
            plain_error[rank_in, rank_out] = relative_output_error(W, W_plain,
                                                                   plain.bias_delta, gram)
            aware_error[rank_in, rank_out] = relative_output_error(
                W, factored_matrix(aware, "tucker2", K.shape), aware.bias_delta, gram)
    inner = (slice(1, None), slice(1, None))
    # Nested projections: larger ranks never lose (weights for plain, outputs for aware).
    for errors in (weight_error[inner], aware_error[inner]):
        assert np.all(np.diff(errors, axis=0) <= 1e-9)
        assert np.all(np.diff(errors, axis=1) <= 1e-9)
    assert np.all(aware_error[inner] ** 2 <= plain_error[inner] ** 2 + 1e-9)
    assert aware_error[5, 6] < 1e-8 and weight_error[5, 6] < 1e-10
    assert np.min(aware_error[1:5, 1:6] / plain_error[1:5, 1:6]) < 0.8


def test_tucker2_three_convs_in_onnxruntime():
    rng = np.random.default_rng(51)
    x = _smooth_images(rng, 2, 4, 9, 10)
    K = rng.standard_normal((5, 4, 3, 3))
    bias = rng.standard_normal(5)
    geometry = dict(strides=(2, 1), pads=(1, 0, 1, 2), dilations=(1, 2))
    accumulator = GramAccumulator(36, max_rows_per_sample=None)
    accumulator.add_conv(x, (3, 3), **geometry)
    ones = dict(strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1))
    for f in (tucker2(K, 2, 3), tucker2(K, 2, 3, accumulator.gram)):
        first, core, last = f.weights
        predicted = _conv(x, factored_matrix(f, "tucker2", K.shape).reshape(K.shape),
                          **geometry) + (bias + f.bias_delta)[:, None, None]
        ort = _ort_chain(x, [(first, None, *ones.values()), (core, None, *geometry.values()),
                             (last, bias + f.bias_delta, *ones.values())])
        np.testing.assert_allclose(ort, predicted, rtol=1e-4, atol=1e-4)


def test_channel_svd_two_convs_in_onnxruntime():
    rng = np.random.default_rng(52)
    x = _smooth_images(rng, 2, 3, 10, 9)
    K = rng.standard_normal((6, 3, 3, 2))
    geometry = dict(strides=(1, 2), pads=(0, 1, 2, 0), dilations=(2, 1))
    accumulator = GramAccumulator(18, max_rows_per_sample=None)
    accumulator.add_conv(x, (3, 2), **geometry)
    ones = dict(strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1))
    for f in (channel_svd(K, 3), channel_svd(K, 3, accumulator.gram)):
        K1, K2 = f.weights
        predicted = _conv(x, factored_matrix(f, "channel_svd", K.shape).reshape(K.shape),
                          **geometry) + f.bias_delta[:, None, None]
        ort = _ort_chain(x, [(K1, None, *geometry.values()), (K2, f.bias_delta,
                                                               *ones.values())])
        np.testing.assert_allclose(ort, predicted, rtol=1e-4, atol=1e-4)
    # The data-aware channel SVD is the data-aware matrix SVD of K's matrix.
    W = K.reshape(6, -1)
    aware = channel_svd(K, 3, accumulator.gram)
    reference = matrix_svd(W, 3, accumulator.gram)
    _close(factored_matrix(aware, "channel_svd", K.shape),
           factored_matrix(reference, "svd", W.shape))
    _close(aware.bias_delta, reference.bias_delta)


# ---------------------------------------------------------------------------------------
# Ranks for an energy, and bad input
# ---------------------------------------------------------------------------------------


def test_rank_for_energy():
    s = np.array([3.0, 2.0, 1.0])  # squares 9, 4, 1: total 14
    assert rank_for_energy(s, 9 / 14) == 1
    assert rank_for_energy(s, 9 / 14 + 1e-9) == 2
    assert rank_for_energy(s, 13 / 14) == 2
    assert rank_for_energy(s, 0.99) == 3
    assert rank_for_energy(s, 1.0) == 3
    assert rank_for_energy(s, 1e-12) == 1
    assert rank_for_energy(np.array([2.0, 1.0, 0.0, 0.0]), 1.0) == 2
    assert rank_for_energy(np.zeros(4), 0.5) == 1
    assert rank_for_energy(np.array([5.0]), 1.0) == 1
    for energy in (0.0, -0.1, 1.01, float("nan")):
        with pytest.raises(ValueError):
            rank_for_energy(s, energy)
    for bad in (np.array([]), np.ones((2, 2)), np.array([1.0, -1.0]), np.array([np.inf])):
        with pytest.raises(ValueError):
            rank_for_energy(bad, 0.5)


def test_bad_shapes_and_ranks_raise():
    rng = np.random.default_rng(60)
    W = rng.standard_normal((4, 6))
    K = rng.standard_normal((4, 3, 3, 3))
    good_gram = _gram(rng.standard_normal((100, 6)))
    bad = [
        lambda: matrix_svd(np.ones(5), 1),
        lambda: matrix_svd(np.ones((0, 3)), 1),
        lambda: matrix_svd(W, 0),
        lambda: matrix_svd(W, 5),
        lambda: matrix_svd(W, 2.0),
        lambda: matrix_svd(W, 2, np.eye(6)),
        lambda: matrix_svd(W, 2, good_gram, ridge=-1.0),
        lambda: spectrum(W, np.eye(5)),
        lambda: channel_svd(W, 1),
        lambda: channel_svd(K, 5),
        lambda: channel_svd(K, 2, good_gram),
        lambda: spatial_svd(rng.standard_normal((4, 3, 3)), 1),
        lambda: spatial_svd(rng.standard_normal((4, 3, 3, 3, 3)), 1),
        lambda: spatial_svd(K, 10),
        lambda: tucker2(K, 4, 2),
        lambda: tucker2(K, 2, 5),
        lambda: tucker2(K, 0, 2),
        lambda: tucker2(W, 1, 1),
        lambda: factored_matrix(matrix_svd(W, 2), "cp", W.shape),
        lambda: factored_matrix(matrix_svd(W, 2), "svd", (4, 7)),
        lambda: relative_output_error(W, W[:, :5], np.zeros(4), good_gram),
        lambda: relative_output_error(W, W, np.zeros(3), good_gram),
        lambda: relative_output_error(W, W, np.zeros(4), np.eye(6)),
    ]
    for call in bad:
        with pytest.raises(ValueError):
            call()


def test_relative_output_error_edge_cases():
    rng = np.random.default_rng(61)
    W = rng.standard_normal((3, 4))
    gram = _gram(rng.standard_normal((50, 4)) + 1.0)
    assert relative_output_error(W, W, np.zeros(3), gram) == 0.0
    # Only a bias shift: the error is |delta| against E ||W x||^2.
    delta = np.array([1.0, -2.0, 0.5])
    energy = float(np.sum((W @ gram[:4, :4]) * W))
    np.testing.assert_allclose(relative_output_error(W, W, delta, gram),
                               math.sqrt(np.sum(delta ** 2) / energy), rtol=1e-12)
    zero = np.zeros((3, 4))
    assert relative_output_error(zero, zero, np.zeros(3), gram) == 0.0
    assert relative_output_error(zero, zero, delta, gram) == math.inf


@pytest.mark.parametrize("shape", [(1100, 1030), (1030, 1100)])
def test_large_truncated_svd_takes_the_gram_route_with_the_same_result(shape):
    """From LARGE_SVD rows and columns on, the plain truncated SVD comes from eigh of the
    smaller Gram; the product must still be the Eckart–Young optimum, the split balanced."""
    rng = np.random.default_rng(7)
    W = rng.normal(size=shape) * np.linspace(1.0, 0.01, shape[1])
    r = 40
    B, A = matrix_svd(W, r).weights
    U, s, Vt = np.linalg.svd(W, full_matrices=False)
    best = (U[:, :r] * s[:r]) @ Vt[:r]
    assert np.linalg.norm(A @ B - best) <= 1e-10 * np.linalg.norm(best)
    np.testing.assert_allclose(np.linalg.norm(A, axis=0), np.linalg.norm(B, axis=1), rtol=1e-10)
