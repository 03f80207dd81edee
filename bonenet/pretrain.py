"""Backbone pretraining on the data at hand, for machines that cannot download ImageNet weights.

The last-20-layer recipe needs a trunk whose frozen layers already compute useful features; a
randomly initialised trunk gives features that no head can use. Offline, the honest substitute is
to train the whole EfficientNetB0 once on the training split (all layers, BatchNorm learning),
on a joint part × normal/abnormal task, and then hand its weights to the recipe as
`--weights PATH`. The weights file is recorded as exactly that, never as ImageNet.
"""

import json
import math
from pathlib import Path

import keras

from bonenet import data as bdata
from bonenet.models import build_base
from bonenet.mura import fingerprint, holdout_split
from bonenet.parts import PART_INDEX, PARTS
from preprocessing.augment import AugmentConfig


def pretrain_backbone(index, out, image_size=96, epochs=12, batch_size=32, learning_rate=1e-3, seed=0,
                      recipe="equalize", verbose=1):
    """Trains EfficientNetB0 end to end on the train split and saves the base's weights.

    Only train studies outside the patient-grouped hold-out are used, so the hold-out the part
    models are later selected on stays unseen.

    Args:
        index: a `MuraIndex`.
        out: the `.weights.h5` file to write; a `.json` note beside it records the origin.
        image_size: input side. Defaults to 96.
        epochs: training epochs. Defaults to 12.
        batch_size: batch size. Defaults to 32.
        learning_rate: Adam learning rate (from scratch, so higher than fine-tuning). Defaults to 1e-3.
        seed: seeds the split, shuffling and initialisation. Defaults to 0.
        recipe: preprocessing recipe. Defaults to "equalize".
        verbose: Keras verbosity. Defaults to 1.

    Returns:
        The weights path.
    """
    out = Path(out)
    if not out.name.endswith(".weights.h5"):
        raise ValueError(f"{out}: backbone weights file must end in .weights.h5")
    keras.utils.set_random_seed(seed)
    split = holdout_split(index.studies, seed=seed)
    held = set(split.loc[split.holdout, "study"])
    images = index.images[(index.images.split == "train") & ~index.images.study.isin(held)]
    # One joint label per image: which part, and whether its study is abnormal.
    labels = images["part"].map(PART_INDEX).to_numpy() * 2 + images["label"].to_numpy()
    ds = bdata.make_dataset(images["path"].tolist(), labels, 2 * len(PARTS), recipe, image_size, batch_size,
                            training=True, seed=seed, augment_config=AugmentConfig())
    base = build_base(image_size, weights=None)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(base.output)
    x = keras.layers.Dropout(0.2, name="head_dropout")(x)
    outputs = keras.layers.Dense(2 * len(PARTS), activation="softmax", dtype="float32", name="joint")(x)
    model = keras.Model(base.input, outputs, name="pretrain")
    model.compile(keras.optimizers.Adam(learning_rate), keras.losses.CategoricalCrossentropy(label_smoothing=0.05),
                  metrics=["accuracy"], jit_compile=False)
    schedule = keras.callbacks.LearningRateScheduler(
        lambda epoch: learning_rate * 0.5 * (1 + math.cos(math.pi * epoch / epochs))  # cosine decay
    )
    model.fit(ds, epochs=epochs, verbose=verbose, callbacks=[schedule], shuffle=False,
              class_weight=bdata.class_weights(labels, 2 * len(PARTS)))
    out.parent.mkdir(parents=True, exist_ok=True)
    base.save_weights(out)
    note = {
        "origin": "EfficientNetB0 pretrained end to end by bonenet.pretrain on the data below (NOT ImageNet)",
        "dataset_fingerprint": fingerprint(index),
        "root": str(index.root),
        "image_size": image_size,
        "epochs": epochs,
        "recipe": recipe,
    }
    out.with_suffix("").with_suffix(".json").write_text(json.dumps(note, indent=2))
    return out
