"""prune.gram: im2col rows equal to onnxruntime's Conv, and the (sampled) Gram statistics."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest

from homec.prune.gram import (ChannelStats, CrossGramAccumulator, GramAccumulator,
                              channel_features, conv_output_shape, conv_patches, feature_mask,
                              feature_rows, sample_positions)
from homec.verify import make_session

F32 = onnx.TensorProto.FLOAT


def _ort_conv(x, w, bias, *, strides, pads, dilations):
    """onnxruntime's Conv output for x, weight w, bias."""
    node = oh.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=list(w.shape[2:]),
                        strides=list(strides), pads=list(pads), dilations=list(dilations))
    graph = oh.make_graph([node], "conv", [oh.make_tensor_value_info("x", F32, x.shape)],
                          [oh.make_tensor_value_info("y", F32, None)],
                          [onh.from_array(w, "w"), onh.from_array(bias, "b")])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    return make_session(model).run(None, {"x": x})[0]


CONV_CASES = [
    # (input shape, kernel, strides, pads [begin..., end...], dilations)
    ((2, 3, 11), (3,), (1,), (1, 1), (1,)),
    ((2, 3, 13), (4,), (2,), (0, 3), (2,)),
    ((2, 3, 9, 8), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    ((1, 4, 10, 9), (3, 2), (2, 3), (2, 0, 1, 3), (1, 2)),
    ((2, 2, 7, 12), (2, 3), (3, 1), (0, 1, 2, 0), (3, 2)),
    ((1, 2, 5, 6, 4), (2, 3, 2), (1, 2, 1), (1, 0, 1, 0, 2, 1), (2, 1, 1)),
]


@pytest.mark.parametrize("shape, kernel, strides, pads, dilations", CONV_CASES)
def test_conv_patches_match_onnxruntime(shape, kernel, strides, pads, dilations):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(np.float32)
    out_channels = 5
    w = rng.standard_normal((out_channels, shape[1]) + kernel).astype(np.float32)
    bias = rng.standard_normal(out_channels).astype(np.float32)
    expected = _ort_conv(x, w, bias, strides=strides, pads=pads, dilations=dilations)
    out = conv_output_shape(shape, kernel, strides=strides, pads=pads, dilations=dilations)
    assert expected.shape == (shape[0], out_channels) + out

    rows = conv_patches(x, kernel, strides=strides, pads=pads, dilations=dilations)
    assert rows.shape == (shape[0] * int(np.prod(out)), shape[1] * int(np.prod(kernel)))
    assert rows.dtype == np.float32
    y = rows.astype(np.float64) @ w.reshape(out_channels, -1).T.astype(np.float64) + bias
    np.testing.assert_allclose(y, np.moveaxis(expected, 1, -1).reshape(-1, out_channels),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape, kernel, strides, pads, dilations", CONV_CASES)
def test_conv_patches_at_positions_are_the_same_rows(shape, kernel, strides, pads,
                                                      dilations):
    rng = np.random.default_rng(2)
    x = rng.standard_normal(shape).astype(np.float32)
    geometry = dict(strides=strides, pads=pads, dilations=dilations)
    full = conv_patches(x, kernel, **geometry)
    positions = rng.choice(full.shape[0], size=min(7, full.shape[0]), replace=False)
    np.testing.assert_array_equal(conv_patches(x, kernel, positions=positions, **geometry),
                                  full[positions])
    assert conv_patches(x, kernel, positions=np.array([], np.int64), **geometry).shape == \
        (0, full.shape[1])


def test_conv_patches_at_positions_do_not_build_every_patch():
    # 4 x 96 x 160 x 160 with a 9x9 kernel: all patches would be ~12 GB of float32.
    x = np.zeros((4, 96, 160, 160), np.float32)
    x[3, 5, 100, 37] = 2.0
    row = 3 * 160 * 160 + 100 * 160 + 37  # image 3, output position (100, 37)
    rows = conv_patches(x, (9, 9), pads=(4, 4, 4, 4), positions=np.array([row]))
    assert rows.shape == (1, 96 * 81)
    # The centre tap (4, 4) of channel 5 sees the single non-zero input.
    assert rows[0, 5 * 81 + 4 * 9 + 4] == 2.0 and np.count_nonzero(rows) == 1


def test_conv_patches_rejects_a_kernel_larger_than_the_input():
    with pytest.raises(ValueError):
        conv_patches(np.zeros((1, 1, 2, 2), np.float32), (3, 3))
    with pytest.raises(ValueError):
        conv_patches(np.zeros((1, 1, 5), np.float32), (3, 3))


def test_feature_rows_multiply_like_matmul():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 6)).astype(np.float32)
    weight = rng.standard_normal((6, 3)).astype(np.float32)
    rows = feature_rows(x, -1)
    assert rows.shape == (8, 6)
    np.testing.assert_allclose(rows @ weight, (x @ weight).reshape(-1, 3), rtol=1e-6)
    # Channel axis 1 of an NCHW tensor: a 1x1 Conv as a product over the rows.
    x4 = rng.standard_normal((2, 6, 3, 5)).astype(np.float32)
    rows = feature_rows(x4, 1)
    expected = np.einsum("nchw,co->nhwo", x4, weight).reshape(-1, 3)
    np.testing.assert_allclose(rows @ weight, expected, rtol=1e-5, atol=1e-6)


def test_channel_features_and_feature_mask_follow_the_weight_layout():
    blocks = channel_features(3, 4)
    assert [b.tolist() for b in blocks] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    mask = feature_mask(np.array([True, False, True]), 4)
    w = np.arange(2 * 3 * 2 * 2).reshape(2, 3, 2, 2)
    np.testing.assert_array_equal(w.reshape(2, -1)[:, mask], w[:, [0, 2]].reshape(2, -1))


def _explicit_gram(rows):
    z = np.column_stack([rows.astype(np.float64), np.ones(len(rows))])
    return z.T @ z / len(rows)


def test_gram_of_rows_over_several_calls():
    rng = np.random.default_rng(4)
    parts = [rng.standard_normal((n, 5)) * [1, 2, 3, 4, 5] + [0, 1, -1, 3, 0.5]
             for n in (30, 11, 50)]
    acc = GramAccumulator(5, max_rows_per_sample=None)
    for part in parts:
        acc.add_rows(part.astype(np.float32))
    rows = np.concatenate([p.astype(np.float32) for p in parts])
    assert acc.rows == 91
    np.testing.assert_allclose(acc.gram, _explicit_gram(rows), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(acc.mean, rows.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(acc.covariance, np.cov(rows.astype(np.float64).T, bias=True),
                               rtol=1e-10, atol=1e-12)
    assert acc.gram[5, 5] == 1.0


def test_gram_of_a_conv_input_with_a_limit_above_the_rows_is_the_full_gram():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 8, 7)).astype(np.float32)
    geometry = dict(strides=(2, 1), pads=(1, 0, 1, 2), dilations=(1, 2))
    rows = conv_patches(x, (3, 2), **geometry)
    sampled = GramAccumulator(3 * 6, max_rows_per_sample=rows.shape[0])
    sampled.add_conv(x, (3, 2), **geometry)
    unlimited = GramAccumulator(3 * 6, max_rows_per_sample=None)
    unlimited.add_conv(x, (3, 2), **geometry)
    assert sampled.rows == unlimited.rows == rows.shape[0]
    np.testing.assert_array_equal(sampled.gram, unlimited.gram)
    np.testing.assert_allclose(sampled.gram, _explicit_gram(rows), rtol=1e-12, atol=1e-12)


def test_sample_positions_are_distinct_sorted_and_repeatable():
    assert sample_positions(100, 100, 0, 0) is None
    assert sample_positions(100, None, 0, 0) is None
    first = sample_positions(1000, 64, 3, 2)
    assert first.shape == (64,) and np.unique(first).size == 64
    assert np.all(np.diff(first) > 0) and first.min() >= 0 and first.max() < 1000
    np.testing.assert_array_equal(first, sample_positions(1000, 64, 3, 2))
    assert not np.array_equal(first, sample_positions(1000, 64, 3, 3))
    assert not np.array_equal(first, sample_positions(1000, 64, 4, 2))


def test_sampled_conv_gram_uses_the_sampled_rows_deterministically():
    rng = np.random.default_rng(6)
    batches = [rng.standard_normal((2, 2, 9, 9)).astype(np.float32) for _ in range(3)]
    geometry = dict(strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1))

    def accumulate(seed):
        acc = GramAccumulator(2 * 9, max_rows_per_sample=40, seed=seed)
        for x in batches:
            acc.add_conv(x, (3, 3), **geometry)
        return acc

    acc = accumulate(7)
    assert acc.rows == 3 * 40
    np.testing.assert_array_equal(acc.gram, accumulate(7).gram)
    assert not np.array_equal(acc.gram, accumulate(8).gram)
    chosen = np.concatenate([conv_patches(x, (3, 3), **geometry)[sample_positions(162, 40, 7, i)]
                             for i, x in enumerate(batches)])
    np.testing.assert_allclose(acc.gram, _explicit_gram(chosen), rtol=1e-12, atol=1e-12)


def test_sampling_is_uniform_over_images_and_positions():
    # Channel 0 holds the flat row index of each output position (1x1 kernel): the sample's
    # mean index is close to the middle, and both images are drawn from.
    n, h, w = 2, 50, 40
    x = np.arange(n * h * w, dtype=np.float32).reshape(n, 1, h, w)
    acc = GramAccumulator(1, max_rows_per_sample=1000, seed=0)
    acc.add_conv(x, (1, 1))
    total = n * h * w
    # Mean of 1000 of 4000 uniform indices: standard error ~ 0.29 * 4000 / sqrt(1000) ~ 32.
    assert abs(acc.mean[0] - (total - 1) / 2) < 150
    positions = sample_positions(total, 1000, 0, 0)
    assert 350 < np.count_nonzero(positions < h * w) < 650


def test_cross_gram_reads_both_inputs_at_the_same_sampled_rows():
    rng = np.random.default_rng(9)
    xa = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    # Without padding, every patch of 2 xa + 1 is 2 (patch of xa) + 1.
    xb = np.concatenate([2 * xa + 1, rng.standard_normal((2, 1, 8, 8)).astype(np.float32)],
                        axis=1)
    fa, fb = 3 * 9, 4 * 9
    acc = CrossGramAccumulator(fa, fb, max_rows_per_sample=20, seed=1)
    for _ in range(2):
        acc.add_conv_pair(xa, xb, (3, 3), strides=(1, 1), pads=(0, 0, 0, 0))
    assert acc.rows == 40
    A, B, C = acc.gram_a, acc.gram_b, acc.cross
    assert A.shape == (fa + 1, fa + 1) and B.shape == (fb + 1, fb + 1)
    assert C.shape == (fa + 1, fb + 1)
    np.testing.assert_allclose(C[:, :fa], 2 * A[:, :fa] + A[:, [fa]], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(C[:, fb], A[:, fa], rtol=1e-12)
    # A alone equals a GramAccumulator with the same seed and limit.
    single = GramAccumulator(fa, max_rows_per_sample=20, seed=1)
    for _ in range(2):
        single.add_conv(xa, (3, 3))
    np.testing.assert_array_equal(A, single.gram)
    np.testing.assert_allclose(B[:fa, :fa],
                               4 * A[:fa, :fa] + 2 * A[:fa, [fa]] + 2 * A[[fa], :fa] + 1,
                               rtol=1e-5, atol=1e-5)


def test_cross_gram_of_rows_matches_explicit_products():
    rng = np.random.default_rng(10)
    ra = rng.standard_normal((60, 4))
    rb = rng.standard_normal((60, 6))
    acc = CrossGramAccumulator(4, 6, max_rows_per_sample=None)
    acc.add_rows_pair(ra[:25], rb[:25])
    acc.add_rows_pair(ra[25:], rb[25:])
    za = np.column_stack([ra, np.ones(60)])
    zb = np.column_stack([rb, np.ones(60)])
    np.testing.assert_allclose(acc.cross, za.T @ zb / 60, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(acc.gram_b, zb.T @ zb / 60, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError):
        acc.add_rows_pair(ra[:3], rb[:4])


def test_channel_stats_mean_abs_and_zero_fraction():
    rng = np.random.default_rng(11)
    shift = np.array([0.5, -1.0, 0.0, 2.0]).reshape(4, 1, 1)
    parts = [np.maximum(rng.standard_normal((2, 4, 5, 3)) + shift, 0).astype(np.float32)
             for _ in range(3)]
    parts[1][:, 2] = -3.0  # a negative channel: mean and mean |x| differ
    stats = ChannelStats(4)
    for part in parts:
        stats.add(part)
    x = np.concatenate(parts).astype(np.float64)
    assert stats.count == 3 * 2 * 5 * 3
    np.testing.assert_allclose(stats.mean, x.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(stats.mean_abs, np.abs(x).mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(stats.zero_fraction, (x == 0).mean(axis=(0, 2, 3)), rtol=1e-12)
    channels_last = ChannelStats(4, axis=-1)
    channels_last.add(np.moveaxis(x, 1, -1))
    np.testing.assert_allclose(channels_last.mean, stats.mean, rtol=1e-12)
    np.testing.assert_array_equal(channels_last.zero_fraction, stats.zero_fraction)
    with pytest.raises(ValueError):
        stats.add(np.zeros((2, 3, 4)))
