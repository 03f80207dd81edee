"""The ensemble head (`bonenet.models.ensemble`): one Keras model averaging its members' probabilities."""

import numpy as np

from bonenet.models.ensemble import ensemble_head


def test_the_ensemble_head_is_the_mean_of_its_members_and_one_member_is_itself(ensemble_net):
    heads = ensemble_net.members["XR_WRIST"]
    combined = ensemble_head(heads)
    features = np.random.default_rng(0).normal(size=(4, *heads[0].input_shape[1:])).astype(np.float32)
    each = np.stack([np.asarray(h.predict_on_batch(features)) for h in heads])
    np.testing.assert_allclose(np.asarray(combined.predict_on_batch(features)), each.mean(axis=0), atol=1e-6)
    assert combined.name == heads[0].name and ensemble_head(heads[:1]) is heads[0]
