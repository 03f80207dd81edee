"""The fracture locator: where on a radiograph a fracture is, learned from FracAtlas' outlined fractures.

A dense head on EfficientNetB0's trunk reads three of its stages (`TAPS`: strides 8, 16 and 16), brought to
stride 8, and gives one logit per 8×8 pixels of its input: the probability that a fracture lies there. It
reads the whole film (no ROI crop, which has cut fractures at the film's edge), CLAHE-equalised and
letterboxed to `LOCATOR_SIZE` pixels, since fractures are small and the part models' inputs are 96 to 224.

It is its own model, beside whichever run classifies: a run trained on MURA with ImageNet weights draws
the same locator's map. The trunk's weights are the shipped radiograph backbone's, frozen; only the head
learns (`bonenet.training.fit_locator`), so the file holds the whole locator and loads without the backbone.
The shipped file and its provenance sit in `bonenet/models/assets/` (`fracture_locator_320.*`).
"""

import json
from pathlib import Path

import cv2
import keras
import numpy as np

from bonenet.models.backbones import ASSETS, checked_asset, provenance_path
from bonenet.models.efficientnet import build_base
from bonenet.preprocessing.recipes import Recipe, to_original
from bonenet.runtime import in_float32

LOCATOR_SIZE = 320
STRIDE = 8
TAPS = ("block3b_add", "block4c_add", "block5c_add")
HEAD_WIDTH = 64
# The whole film, CLAHE-equalised: no ROI crop, since a crop can cut a fracture at the film's edge.
LOCATOR_RECIPE = Recipe("locator", roi=False, channels=([{"op": "clahe"}],) * 3,
                        description="the whole film, CLAHE, copied to three channels")
SHIPPED_LOCATOR = ASSETS / f"fracture_locator_{LOCATOR_SIZE}.weights.h5"


@in_float32
def build_trunk(image_size=LOCATOR_SIZE, weights=None):
    """EfficientNetB0 up to its last tap: image (S×S×3, 0-255) → the `TAPS` outputs, frozen."""
    base = build_base(image_size, weights)
    trunk = keras.Model(base.input, [base.get_layer(name).output for name in TAPS], name="locator_trunk")
    trunk.trainable = False
    return trunk


@in_float32
def build_head(shapes, seed=0):
    """The dense head on the taps' outputs (`shapes`: their H×W×C, the first at stride 8): logits G×G, float32.

    The bias starts at a fracture prior of about 2% (log-odds −4), so the first steps do not spend
    themselves learning that most of a film is not fracture.
    """
    inputs = [keras.Input(shape, name=f"tap{k}") for k, shape in enumerate(shapes)]
    grid = shapes[0][0]
    up = [x if x.shape[1] == grid else
          keras.layers.UpSampling2D(grid // x.shape[1], interpolation="bilinear", name=f"up{k}")(x)
          for k, x in enumerate(inputs)]
    x = keras.layers.Concatenate(name="taps")(up)
    init = keras.initializers.HeNormal(seed)
    for k in range(2):
        x = keras.layers.Conv2D(HEAD_WIDTH, 3, padding="same", activation="relu", kernel_initializer=init,
                                name=f"conv{k}")(x)
    x = keras.layers.Conv2D(1, 1, bias_initializer=keras.initializers.Constant(-4.0), dtype="float32",
                            name="logit")(x)
    return keras.Model(inputs, keras.layers.Reshape((grid, grid), name="grid")(x), name="locator_head")


@in_float32
def build_locator(image_size=LOCATOR_SIZE, trunk_weights=None, seed=0):
    """The whole locator: image (S×S×3, 0-255) → fracture logits (S/8 × S/8), with its trunk and head
    reachable as layers `locator_trunk` and `locator_head`. Always float32, whatever policy the caller has
    set: the head is small and the trunk runs once per film, so a mixed policy would buy little, and the
    same weights give the same map on every CPU."""
    trunk = build_trunk(image_size, trunk_weights)
    head = build_head([tuple(t.shape[1:]) for t in trunk.outputs], seed)
    image = keras.Input((image_size, image_size, 3), name="image")
    return keras.Model(image, head(trunk(image)), name="fracture_locator")


def locator_input(gray, image_size=LOCATOR_SIZE):
    """One uint8 H×W radiograph as the locator reads it: (float32 S×S×3 input, its `Recipe.layout`)."""
    return (LOCATOR_RECIPE.apply(gray, image_size).astype(np.float32),
            LOCATOR_RECIPE.layout(gray, image_size))


def shipped_locator():
    """The shipped locator, checked against the sha256 in its provenance: (weights path, provenance dict).

    Raises:
        FileNotFoundError: the file or its provenance is missing.
        ValueError: the file's sha256 differs from its provenance's.
    """
    return checked_asset(SHIPPED_LOCATOR)


class Locator:
    """A fracture locator ready to draw: its model, its provenance, and the threshold its boxes are cut at.

    Attributes:
        model: `build_locator`'s model, weights loaded.
        provenance: the provenance dict of its file ({} for one trained in memory).
        threshold: the probability at which a region becomes a box that outputs draw (chosen on the
            training fold for the best F1).
        floor: the lowest peak at which a region is a candidate box when the locator is scored as a
            detector (FROC, AP), which ranks candidates by their peak (chosen on the training fold).
    """

    def __init__(self, model, provenance=None, threshold=None, floor=None):
        self.model = model
        self.provenance = dict(provenance or {})
        self.threshold = float(threshold if threshold is not None else self.provenance.get("threshold", 0.5))
        self.floor = float(floor if floor is not None else self.provenance.get("candidate_floor", self.threshold))
        self.image_size = int(model.input.shape[1])

    @classmethod
    def load(cls, path=None):
        """The locator in `path` (a `.weights.h5` with its provenance JSON beside it), or the shipped one.

        Raises:
            FileNotFoundError, ValueError: as `shipped_locator`, or for a file whose provenance is missing.
        """
        path, provenance = shipped_locator() if path is None else _provenance_of(path)
        model = build_locator(int(provenance.get("config", {}).get("image_size", LOCATOR_SIZE)))
        model.load_weights(str(path))
        return cls(model, provenance)

    def maps(self, grays, batch=16):
        """Fracture probability maps of uint8 H×W radiographs, each float32 on its original pixels."""
        out = []
        for start in range(0, len(grays), batch):
            chunk = grays[start:start + batch]
            inputs = [locator_input(g, self.image_size) for g in chunk]
            logits = self.model.predict_on_batch(np.stack([x for x, _ in inputs]))
            for gray, (_, layout), logit in zip(chunk, inputs, np.asarray(logits, np.float32), strict=True):
                prob = 1.0 / (1.0 + np.exp(-logit))
                big = cv2.resize(prob, (self.image_size, self.image_size), interpolation=cv2.INTER_LINEAR)
                out.append(to_original(big, layout, gray.shape))
        return out

    def note(self):
        """What the locator's map may claim, in one caption line: its measured hit rate on held-out films."""
        game = (self.provenance.get("held_out") or {}).get("all", {}).get("pointing")
        if not game:
            return "fracture locator: not validated on held-out films"
        return (f"fracture locator: its peak lies on the annotated fracture in {100 * game['hit']:.0f}% of "
                f"{game['images']} held-out FracAtlas films (the image's centre {100 * game['centre']:.0f}%)")


def _provenance_of(path):
    path, note = Path(path), provenance_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such locator file")
    if not note.is_file():
        raise FileNotFoundError(f"{note}: a locator's provenance JSON (its threshold and figures) is missing")
    return path, json.loads(note.read_text())
