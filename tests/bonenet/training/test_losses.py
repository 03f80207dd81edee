"""The pretraining losses (`bonenet.training.losses`): NT-Xent over paired views, and masked cross-entropy."""

import keras
import numpy as np

from bonenet.training.losses import masked_binary_crossentropy, nt_xent, partner_found


def _pairs(n, rng, noise):
    """2n embeddings: rows 2i and 2i + 1 are one random direction plus `noise`."""
    base = np.repeat(rng.normal(size=(n, 16)), 2, axis=0)
    return (base + noise * rng.normal(size=base.shape)).astype(np.float32)


def test_nt_xent_is_low_when_each_view_is_nearest_its_partner_and_high_when_not():
    rng = np.random.default_rng(0)
    matched = _pairs(8, rng, 0.01)
    shuffled = matched[rng.permutation(16)]  # partners torn apart
    low = keras.ops.convert_to_numpy(nt_xent(None, matched))
    high = keras.ops.convert_to_numpy(nt_xent(None, shuffled))
    assert low.shape == (16,) and low.mean() < 0.5 and high.mean() > 1.5
    assert keras.ops.convert_to_numpy(partner_found(None, matched)).tolist() == [1.0] * 16
    assert keras.ops.convert_to_numpy(partner_found(None, shuffled)).mean() < 0.5


def test_nt_xent_ignores_each_views_similarity_to_itself():
    same = np.ones((4, 8), np.float32)  # every view alike: the partner is one of three equals, never itself
    np.testing.assert_allclose(keras.ops.convert_to_numpy(nt_xent(None, same)), np.log(3), rtol=1e-5)


def test_masked_binary_crossentropy_counts_only_the_targets_a_row_has():
    truth = np.array([[1, -1, 0], [-1, -1, -1]], np.float32)
    pred = np.array([[0.9, 0.01, 0.2], [0.5, 0.5, 0.5]], np.float32)
    loss = keras.ops.convert_to_numpy(masked_binary_crossentropy(truth, pred))
    np.testing.assert_allclose(loss, [-(np.log(0.9) + np.log(0.8)) / 2, 0.0], rtol=1e-5)
