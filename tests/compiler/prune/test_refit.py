"""prune.refit: removal costs and least-squares refits from Gram statistics, checked against
explicit computations on the calibration rows."""

from __future__ import annotations

import numpy as np
import pytest

from homec.prune.gram import (CrossGramAccumulator, GramAccumulator, channel_features,
                              conv_patches, feature_mask)
from homec.prune.refit import (cross_output_error, mean_fold, output_energy, output_error,
                               prune_plain, refit, refit_cross, relative_error,
                               removal_error)


def _gram(rows):
    z = np.column_stack([rows, np.ones(len(rows))])
    return z.T @ z / len(rows)


def _correlated_rows(rng, n, features, *, offset=True):
    """Rows with correlated features, uneven scales and non-zero means."""
    mix = rng.standard_normal((features, features)) * 0.6 + np.eye(features)
    rows = rng.standard_normal((n, features)) @ mix * rng.uniform(0.3, 3.0, features)
    return rows + (rng.uniform(-2, 2, features) if offset else 0.0)


def _layer(rng, out, features):
    return rng.standard_normal((out, features)), rng.standard_normal(out)


def _explicit_error(rows, W, b, keep, W_new, b_new):
    """Mean over rows of ||W_new x_K + b_new - (W x + b)||^2."""
    diff = rows[:, keep] @ W_new.T + b_new - (rows @ W.T + b)
    return float(np.mean(np.sum(diff ** 2, axis=1)))


def _keep(features, removed):
    keep = np.ones(features, bool)
    keep[list(removed)] = False
    return keep


def test_refit_is_the_least_squares_optimum():
    rng = np.random.default_rng(0)
    rows = _correlated_rows(rng, 400, 12)
    W, b = _layer(rng, 5, 12)
    keep = _keep(12, [1, 4, 5, 10])
    W_new, b_new = refit(W, b, _gram(rows), keep, ridge=0.0)
    design = np.column_stack([rows[:, keep], np.ones(len(rows))])
    solution = np.linalg.lstsq(design, rows @ W.T + b, rcond=None)[0]
    np.testing.assert_allclose(W_new, solution[:-1].T, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(b_new, solution[-1], rtol=1e-9, atol=1e-9)


def test_refit_is_exact_when_the_removed_channels_are_zero():
    rng = np.random.default_rng(1)
    rows = _correlated_rows(rng, 300, 10)
    keep = _keep(10, [2, 3, 7])
    rows[:, ~keep] = 0.0
    W, b = _layer(rng, 4, 10)
    G = _gram(rows)
    for ridge in (0.0, 1e-6, 1e-2):
        W_new, b_new = refit(W, b, G, keep, ridge=ridge)
        np.testing.assert_allclose(W_new, W[:, keep], rtol=0, atol=1e-12)
        np.testing.assert_allclose(b_new, b, rtol=0, atol=1e-12)
    assert output_error(W, b, G, keep, W_new, b_new) < 1e-20


def test_refit_is_exact_when_nothing_is_removed():
    rng = np.random.default_rng(2)
    rows = _correlated_rows(rng, 100, 6)
    W, b = _layer(rng, 3, 6)
    W_new, b_new = refit(W, b, _gram(rows), np.ones(6, bool))
    np.testing.assert_allclose(W_new, W, rtol=0, atol=1e-12)
    np.testing.assert_allclose(b_new, b, rtol=0, atol=1e-12)


def test_refit_is_never_worse_than_plain_pruning_or_the_mean_fold():
    rng = np.random.default_rng(3)
    for trial in range(5):
        rows = _correlated_rows(rng, 200, 9)
        W, b = _layer(rng, 4, 9)
        keep = _keep(9, rng.choice(9, size=3, replace=False))
        G = _gram(rows)
        errors = {name: _explicit_error(rows, W, b, keep, *weights) for name, weights in {
            "refit": refit(W, b, G, keep),
            "plain": prune_plain(W, b, keep),
            "mean_fold": mean_fold(W, b, G, keep),
        }.items()}
        assert errors["refit"] <= errors["mean_fold"] * (1 + 1e-9), (trial, errors)
        assert errors["mean_fold"] <= errors["plain"] * (1 + 1e-9), (trial, errors)
        # The refit really compensates on correlated data, the mean fold removes the offset.
        assert errors["refit"] < 0.9 * errors["mean_fold"] < 0.9 * errors["plain"], (trial, errors)


def test_ridge_shrinks_the_correction_towards_plain_pruning():
    rng = np.random.default_rng(4)
    rows = _correlated_rows(rng, 200, 8)
    W, b = _layer(rng, 3, 8)
    keep = _keep(8, [0, 5])
    G = _gram(rows)
    exact = refit(W, b, G, keep, ridge=0.0)
    previous = np.inf
    for ridge in (1e-3, 1e-1, 1e1, 1e5):
        W_new, b_new = refit(W, b, G, keep, ridge=ridge)
        distance = np.linalg.norm(W_new - W[:, keep])
        assert distance < previous
        previous = distance
        assert _explicit_error(rows, W, b, keep, W_new, b_new) >= \
            _explicit_error(rows, W, b, keep, *exact) * (1 - 1e-9)
    # A huge ridge leaves only the (unpenalized) bias correction: the mean fold.
    W_new, b_new = refit(W, b, G, keep, ridge=1e12)
    W_fold, b_fold = mean_fold(W, b, G, keep)
    np.testing.assert_allclose(W_new, W_fold, atol=1e-6)
    np.testing.assert_allclose(b_new, b_fold, atol=1e-5)


def test_refit_with_a_duplicated_feature_and_no_ridge_stays_optimal():
    # Removed feature 3 is a copy of kept feature 0: G[K1, K1] is singular only if a kept
    # feature is duplicated too (feature 5 = feature 1), so the minimum-norm solve is used.
    rng = np.random.default_rng(5)
    rows = _correlated_rows(rng, 150, 6)
    rows[:, 3] = rows[:, 0]
    rows[:, 5] = rows[:, 1]
    W, b = _layer(rng, 3, 6)
    keep = _keep(6, [3])
    W_new, b_new = refit(W, b, _gram(rows), keep, ridge=0.0)
    assert np.all(np.isfinite(W_new)) and np.abs(W_new).max() < 1e3
    energy = np.mean(np.sum((rows @ W.T + b) ** 2, axis=1))
    assert _explicit_error(rows, W, b, keep, W_new, b_new) < 1e-12 * energy


def test_output_error_and_energy_match_explicit_rows():
    rng = np.random.default_rng(6)
    rows = _correlated_rows(rng, 250, 10)
    W, b = _layer(rng, 6, 10)
    keep = _keep(10, [0, 6, 7])
    G = _gram(rows)
    energy = float(np.mean(np.sum((rows @ W.T + b) ** 2, axis=1)))
    assert output_energy(W, b, G) == pytest.approx(energy, rel=1e-9)
    random_weights = (rng.standard_normal((6, 7)), rng.standard_normal(6))
    for weights in (refit(W, b, G, keep), prune_plain(W, b, keep), mean_fold(W, b, G, keep),
                    random_weights):
        expected = _explicit_error(rows, W, b, keep, *weights)
        assert output_error(W, b, G, keep, *weights) == pytest.approx(expected, rel=1e-9)
        assert relative_error(W, b, G, keep, *weights) == pytest.approx(expected / energy,
                                                                        rel=1e-9)
    assert relative_error(np.zeros((2, 3)), None, _gram(rows[:, :3]), np.ones(3, bool),
                          np.zeros((2, 3)), np.zeros(2)) == 0.0


@pytest.mark.parametrize("centered", [False, True])
def test_removal_error_of_each_channel_matches_explicit_rows(centered):
    rng = np.random.default_rng(7)
    # Blocks of unequal sizes (3, 3, 1, 2, 3) to cover the grouping by size.
    sizes = [3, 3, 1, 2, 3]
    features = sum(sizes)
    blocks = np.split(rng.permutation(features), np.cumsum(sizes)[:-1])
    rows = _correlated_rows(rng, 300, features)
    W, b = _layer(rng, 4, features)
    G = _gram(rows)
    errors = removal_error(W, G, blocks, centered=centered)
    assert errors.shape == (5,)
    for c, block in enumerate(blocks):
        keep = np.ones(features, bool)
        keep[block] = False
        weights = mean_fold(W, b, G, keep) if centered else prune_plain(W, b, keep)
        assert errors[c] == pytest.approx(_explicit_error(rows, W, b, keep, *weights),
                                          rel=1e-9)


def test_removal_error_on_conv_channels():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 4, 9, 9)) + rng.uniform(-1, 1, (1, 4, 1, 1))
    rows = conv_patches(x, (3, 3), pads=(1, 1, 1, 1))
    W = rng.standard_normal((5, 4, 3, 3)).reshape(5, -1)
    G = _gram(rows)
    errors = removal_error(W, G, channel_features(4, 9), centered=False)
    for c in range(4):
        keep = feature_mask(np.arange(4) != c, 9)
        expected = np.mean(np.sum((rows[:, ~keep] @ W[:, ~keep].T) ** 2, axis=1))
        assert errors[c] == pytest.approx(expected, rel=1e-9)


def test_refit_from_a_sampled_conv_gram_reduces_the_conv_output_error():
    # End to end on a 3x3 Conv: channels 1 and 4 of 6 are removed; the input channels are
    # correlated, so the refit recovers most of the error, which `output_error` predicts.
    rng = np.random.default_rng(9)
    base = rng.standard_normal((4, 3, 12, 12))
    x = np.concatenate([base, base[:, :2] * 0.8 + 0.3 * rng.standard_normal((4, 2, 12, 12)),
                        base[:, [1]] - base[:, [2]]], axis=1).astype(np.float32)
    x = x[:, [0, 3, 1, 2, 4, 5]]
    W = rng.standard_normal((7, 6, 3, 3)).reshape(7, -1)
    b = rng.standard_normal(7)
    acc = GramAccumulator(6 * 9, max_rows_per_sample=300, seed=0)
    for image in np.split(x, 4):
        acc.add_conv(image, (3, 3), strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1))
    keep = feature_mask(np.isin(np.arange(6), [1, 4], invert=True), 9)
    W_new, b_new = refit(W, b, acc.gram, keep)
    rows = conv_patches(x, (3, 3), pads=(1, 1, 1, 1)).astype(np.float64)
    refit_error = _explicit_error(rows, W, b, keep, W_new, b_new)
    plain_error = _explicit_error(rows, W, b, keep, *prune_plain(W, b, keep))
    assert refit_error < 0.5 * plain_error
    # The sampled Gram predicts the error on all rows to within sampling noise.
    predicted = output_error(W, b, acc.gram, keep, W_new, b_new)
    assert predicted == pytest.approx(refit_error, rel=0.25)


def test_refit_cross_is_the_least_squares_fit_to_the_original_outputs():
    rng = np.random.default_rng(10)
    rows_b = _correlated_rows(rng, 300, 8)
    # The pruned model's input: a distorted version of b plus an extra channel.
    rows_a = np.column_stack([rows_b @ (np.eye(8) + 0.1 * rng.standard_normal((8, 8))),
                              rng.standard_normal(300)])
    W, b = _layer(rng, 5, 8)
    keep_a = _keep(9, [2, 6])
    acc = CrossGramAccumulator(9, 8, max_rows_per_sample=None)
    acc.add_rows_pair(rows_a, rows_b)
    W_new, b_new = refit_cross(W, b, acc.gram_a, acc.cross, keep_a, ridge=0.0)
    design = np.column_stack([rows_a[:, keep_a], np.ones(300)])
    target = rows_b @ W.T + b
    solution = np.linalg.lstsq(design, target, rcond=None)[0]
    np.testing.assert_allclose(W_new, solution[:-1].T, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(b_new, solution[-1], rtol=1e-8, atol=1e-8)

    # Its error, from the statistics alone, matches the rows; an anchored ridge fit is
    # between the anchor and the optimum.
    def explicit(weights):
        diff = rows_a[:, keep_a] @ weights[0].T + weights[1] - target
        return float(np.mean(np.sum(diff ** 2, axis=1)))

    def predicted(weights):
        return cross_output_error(W, b, acc.gram_a, acc.gram_b, acc.cross, keep_a, *weights)

    # a's first 8 features approximate b's: the original weights, 0 on the extra channel.
    anchor = (np.column_stack([W, np.zeros(5)])[:, keep_a], b)
    for weights in ((W_new, b_new), anchor):
        assert predicted(weights) == pytest.approx(explicit(weights), rel=1e-9)
    anchored = refit_cross(W, b, acc.gram_a, acc.cross, keep_a, ridge=10.0, anchor=anchor)
    assert explicit((W_new, b_new)) <= explicit(anchored) < explicit(anchor)


def test_refit_cross_on_identical_inputs_equals_refit():
    rng = np.random.default_rng(11)
    rows = _correlated_rows(rng, 200, 7)
    W, b = _layer(rng, 3, 7)
    keep = _keep(7, [1, 2])
    acc = CrossGramAccumulator(7, 7, max_rows_per_sample=None)
    acc.add_rows_pair(rows, rows)
    for ridge in (0.0, 1e-2):
        cross = refit_cross(W, b, acc.gram_a, acc.cross, keep, ridge=ridge,
                            anchor=prune_plain(W, b, keep))
        direct = refit(W, b, acc.gram_a, keep, ridge=ridge)
        np.testing.assert_allclose(cross[0], direct[0], rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(cross[1], direct[1], rtol=1e-9, atol=1e-10)


def test_inputs_are_validated():
    G = _gram(np.random.default_rng(12).standard_normal((20, 4)))
    W, b = np.ones((2, 4)), np.zeros(2)
    with pytest.raises(ValueError):
        refit(W, b, G, np.ones(3, bool))
    with pytest.raises(ValueError):
        refit(W, b, G, np.ones(4, int))
    with pytest.raises(ValueError):
        refit(np.ones((2, 5)), b, G, np.ones(5, bool))
    with pytest.raises(ValueError):
        output_error(W, b, G, _keep(4, [0]), np.ones((2, 4)), b)
