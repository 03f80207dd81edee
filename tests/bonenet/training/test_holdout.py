"""What the hold-out decides: its figures from one pass, a part's threshold only from enough studies."""

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from bonenet.models.efficientnet import compile_model
from bonenet.scoring.calibration import MIN_PER_CLASS
from bonenet.training.holdout import holdout_figures, holdout_outputs, tune_on_holdout


def test_the_hold_out_figures_from_one_pass_equal_keras_evaluate():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(2, activation="softmax")])
    compile_model(model, jit_compile=False)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(37, 5)).astype(np.float32)
    y = keras.utils.to_categorical(rng.integers(0, 2, 37), 2)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)  # a short last batch, as hold-outs have
    probs, onehot = holdout_outputs(model, ds)
    np.testing.assert_array_equal(onehot, y)
    ours = holdout_figures(probs, onehot)
    theirs = model.evaluate(ds, verbose=0, return_dict=True)
    assert set(ours) == {"loss", "accuracy", "auc"}
    for key in ours:
        assert ours[key] == pytest.approx(theirs[key], abs=1e-5), key


def _hold_out(normal, abnormal):
    n = normal + abnormal
    table = pd.DataFrame({"path": [f"p{i}" for i in range(n)], "study": [f"s{i}" for i in range(n)],
                          "label": [0] * normal + [1] * abnormal})
    scores = np.linspace(0.1, 0.9, n)
    return scores, table["path"].tolist(), table


@pytest.mark.corpus("C3")
def test_a_threshold_is_tuned_only_from_enough_studies_of_each_class():
    few = tune_on_holdout(*_hold_out(6, 6), "XR_WRIST")  # the 12-study wrist of the issue
    assert few["threshold"] is None and few["studies"] == 12
    assert few["reason"] == (f"the hold-out has 6 normal and 6 abnormal studies; a tuned threshold needs at least "
                             f"{MIN_PER_CLASS} of each")
    enough = tune_on_holdout(*_hold_out(MIN_PER_CLASS, MIN_PER_CLASS), "XR_WRIST")
    assert enough["threshold"] is not None and enough["studies"] == 2 * MIN_PER_CLASS
