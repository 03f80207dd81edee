"""The losses of backbone pretraining: masked binary cross-entropy for targets that some images lack, and
SimCLR's NT-Xent for two views of each image (`bonenet.training.contrastive`)."""

import keras

TEMPERATURE = 0.2  # SimCLR's range for small batches (0.1-0.5); lower sharpens the pull towards the partner


def _similarities(y_pred):
    """(cosine similarities over TEMPERATURE with each row's own masked out, each row's partner index) for a
    batch whose rows 2i and 2i + 1 are two views of one image (`Feed.pairs`)."""
    z = keras.ops.normalize(keras.ops.cast(y_pred, "float32"), axis=-1)
    n = keras.ops.shape(z)[0]
    logits = keras.ops.matmul(z, keras.ops.transpose(z)) / TEMPERATURE - 1e9 * keras.ops.eye(n)
    index = keras.ops.arange(n)
    return logits, index + 1 - 2 * (index % 2)


def nt_xent(y_true, y_pred):
    """SimCLR's loss per view: cross-entropy of its softmax over the batch's other views, its partner the answer
    (`y_true` unused)."""
    logits, partner = _similarities(y_pred)
    return keras.ops.sparse_categorical_crossentropy(partner, logits, from_logits=True)


def partner_found(y_true, y_pred):
    """Per view, 1 where its most similar other view in the batch is its partner: how well the embedding tells
    one film from the rest (chance: one in the batch's size less one)."""
    logits, partner = _similarities(y_pred)
    return keras.ops.cast(keras.ops.argmax(logits, axis=-1) == partner, "float32")


def masked_binary_crossentropy(y_true, y_pred):
    """Binary cross-entropy over the targets a row has: a target below 0 (a source lacking it) counts for nothing."""
    known = keras.ops.cast(y_true >= 0, "float32")
    truth = keras.ops.clip(y_true, 0.0, 1.0)
    p = keras.ops.clip(y_pred, 1e-7, 1 - 1e-7)
    loss = -(truth * keras.ops.log(p) + (1 - truth) * keras.ops.log(1 - p)) * known
    return keras.ops.sum(loss, axis=-1) / keras.ops.maximum(keras.ops.sum(known, axis=-1), 1.0)
