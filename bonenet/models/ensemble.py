"""An ensemble at load time: its members' heads become one Keras model that averages their probabilities.

How members are trained, selected and recorded is `bonenet.training.members`.
"""

from bonenet.runtime import in_float32


@in_float32
def ensemble_head(heads):
    """One model of an ensemble's heads: trunk output → the mean of the members' probabilities, in float32.

    The mean of probabilities, not of logits, as Stanford's MURA ensemble and deep ensembles
    (Lakshminarayanan et al., 2017) average; the temperature and threshold are then fitted on this
    mean. One member is returned as it is.
    """
    import keras

    if len(heads) == 1:
        return heads[0]
    features = keras.Input(heads[0].input_shape[1:], name="features")
    # Each member under its own name: a functional model's layers need distinct names.
    outputs = [keras.Model(h.inputs[0], h.outputs[0], name=f"{h.name}_m{i}")(features) for i, h in enumerate(heads, 1)]
    return keras.Model(features, keras.layers.Average(name="ensemble_mean")(outputs), name=heads[0].name)
