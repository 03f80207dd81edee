"""One model's training job: what it learns from, where it is written, and the settings it runs under.

`prepare_job` does every check that can fail before any time is spent (the run folder's shared
settings, the backbone, the classes present) and splits train into fit and hold-out by patient.
"""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bonenet.configs import TrainConfig
from bonenet.data import pipeline as bdata
from bonenet.data.mura import holdout_split
from bonenet.data.read import SkipLog
from bonenet.models.efficientnet import resolve_weights
from bonenet.parts import PARTS
from bonenet.preprocessing.recipes import get_recipe
from bonenet.run.manifest import check_shared, model_key, read_manifest
from bonenet.training.adapt import adapted_trunk
from bonenet.training.distribute import is_chief, worker_scratch


def shared_settings(config, weights_origin, trainable, recipe=None):
    """The settings every model in a run must share, as recorded in the manifest."""
    settings = {
        "image_size": int(config.image_size),
        "recipe": (recipe or get_recipe(config.recipe)).to_dict(),
        "weights": weights_origin,
        "trainable_layers": {"count": int(config.trainable_layers), "trainable": trainable},
    }
    if trainable is None:  # not known before the model is built: the count alone is compared
        settings["trainable_layers"] = {"count": int(config.trainable_layers)}
    return settings


@dataclass(frozen=True)
class Examples:
    """What one model learns from: its key, classes, and the fit and hold-out images with labels."""

    key: str
    num_classes: int
    train_paths: list
    train_labels: np.ndarray
    val_paths: list
    val_labels: np.ndarray
    val_images: pd.DataFrame


@dataclass(frozen=True)
class Place:
    """Where a model is written and what it starts from: the run, its manifest, the backbone, the recipe."""

    run_dir: Path
    existing: dict
    weights: object
    origin: dict
    recipe: object
    scratch: Path = None  # a non-chief worker's private folder; None for the process that writes the run

    @property
    def home(self):
        """Where this process writes: the run folder, or a non-chief worker's scratch folder."""
        return self.scratch or self.run_dir


@dataclass(frozen=True)
class Job:
    """One model's training: its examples, its place, the dataset index and the command's settings."""

    examples: Examples
    place: Place
    index: object  # the `MuraIndex`
    config: TrainConfig
    resume: bool = False
    verbose: object = 0  # Keras verbosity
    skips: SkipLog = field(default_factory=SkipLog)  # the images of its data that could not be read

    @property
    def key(self):
        """The model's key ("router" or XR_PART)."""
        return self.examples.key

    @property
    def home(self):
        """Where this process writes (`Place.home`)."""
        return self.place.home


def _examples(target, images):
    if target == "router":
        paths, labels = bdata.router_examples(images)
        return paths, labels, len(PARTS)
    paths, labels = bdata.part_examples(images, target)
    return paths, labels, 2


def prepare_job(target, index, models_dir, config, resume=False, verbose=0):
    """Checks the run folder and the data, and splits train into fit and hold-out (by patient)."""
    key = model_key(target)
    run_dir = Path(models_dir)
    recipe = get_recipe(config.recipe)  # resolved once, here, and passed down
    weights, origin = resolve_weights(config.weights)  # fail fast, before any data work
    existing = read_manifest(run_dir, required=False)
    try:
        split = holdout_split(index.studies, config.holdout_fraction, config.seed)
    except ValueError as exc:  # too few patients or studies: say whose
        raise ValueError(f"{index.root}: {exc}") from exc
    held = set(split.loc[split.holdout, "study"])
    train_images = index.images[(index.images.split == "train") & ~index.images.study.isin(held)]
    val_images = index.images[index.images.study.isin(held)]
    if config.adapt_epochs:  # every model of the run trains on the one trunk adapted on every fit image
        weights, origin = adapted_trunk(train_images, val_images, run_dir, config, (weights, origin), resume)
    if existing is not None:
        # Refuse a folder made with another size, recipe or backbone before spending any time.
        check_shared(existing, shared_settings(config, origin, None, recipe), run_dir)
    train_paths, train_labels, num_classes = _examples(key, train_images)
    val_paths, val_labels, _ = _examples(key, val_images)
    present = np.unique(train_labels)
    if len(present) < num_classes and key != "router" or len(train_paths) == 0:
        raise ValueError(f"{key}: training data has classes {present.tolist()}, needs all {num_classes}")
    if len(val_paths) == 0:
        raise ValueError(f"{key}: the hold-out has no images; add more train studies")
    scratch = None if is_chief(config.strategy) else worker_scratch()
    examples = Examples(key, num_classes, train_paths, train_labels, val_paths, val_labels, val_images)
    place = Place(run_dir, existing, weights, origin, recipe, scratch)
    return Job(examples, place, index, config, resume, verbose)
