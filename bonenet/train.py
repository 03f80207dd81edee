"""Training the router and the part models: tf.data in, a checked run folder out.

One function, `train_model`, trains any model of the hierarchy; `train_all` runs the router and
then the seven parts. Progress is Keras' own bar; a killed run continues with `resume=True`.

Every model is stored as the run's shared frozen trunk plus its own head. The default `cached`
mode computes the trunk's outputs once for all train images (and a few pre-drawn augmented views)
and trains the heads on that cache; `full` mode fits the whole model on live-augmented images.
Both train the same layers and store the same layout.
"""

import json
import shutil
import sys
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from bonenet import data as bdata
from bonenet.features import compute_features, weights_digest
from bonenet.models import (
    build_part_model,
    build_router,
    compile_model,
    copy_weights,
    resolve_weights,
    set_xla,
    split_model,
    trunk_outputs,
)
from bonenet.mura import fingerprint, holdout_split
from bonenet.parts import PARTS, short_name
from bonenet.store import (
    TRUNK_FILE,
    check_shared,
    check_writable,
    load_trunk,
    model_filename,
    model_key,
    read_manifest,
    record_model,
    save_model_atomic,
)
from preprocessing.augment import AugmentConfig
from preprocessing.recipes import DEFAULT_RECIPE, get_recipe

STRATEGIES = ("auto", "default", "mirrored", "multiworker")
MODES = ("cached", "full")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides how a model trains; written into the manifest as is.

    Attributes:
        epochs: most epochs to train. Defaults to 10.
        batch_size: global batch size (split across replicas). Defaults to 32.
        image_size: input side. Defaults to 224.
        weights: "imagenet", "none" or a backbone weights file. Defaults to "imagenet".
        trainable_layers: last base layers to fine-tune (BatchNorm stays frozen). Defaults to 20.
        learning_rate: Adam learning rate. Defaults to 1e-4.
        seed: seeds the split, shuffling, augmentation and initialisation. Defaults to 0.
        strategy: one of auto, default, mirrored, multiworker. Defaults to "auto".
        recipe: preprocessing recipe name or JSON file. Defaults to "equalize".
        augment: augment training images. Defaults to True.
        max_rotation: augmentation rotation bound in degrees (at most 30). Defaults to 15.
        holdout_fraction: patient-grouped hold-out share of train. Defaults to 0.2.
        dropout: dropout before the softmax. Defaults to 0.2.
        patience: epochs without hold-out improvement before stopping. Defaults to 4.
        cache_dir: where caches live: trunk outputs (cached mode) or prepared images (full mode).
            None means `<models-dir>/cache` for trunk outputs and memory for images. Defaults to None.
        mode: "cached" trains heads on cached trunk outputs; "full" fits the whole model on
            live-augmented images. Defaults to "cached".
        views: in cached mode with `augment`, augmented views drawn once per train image and
            cached beside the unaugmented one. Defaults to 2.
    """

    epochs: int = 10
    batch_size: int = 32
    image_size: int = 224
    weights: str = "imagenet"
    trainable_layers: int = 20
    learning_rate: float = 1e-4
    seed: int = 0
    strategy: str = "auto"
    recipe: str = DEFAULT_RECIPE
    augment: bool = True
    max_rotation: float = 15.0
    holdout_fraction: float = 0.2
    dropout: float = 0.2
    patience: int = 4
    cache_dir: str = None
    mode: str = "cached"
    views: int = 2

    def __post_init__(self):
        for name in ("epochs", "batch_size", "image_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.image_size < 32:
            raise ValueError(f"image_size must be at least 32 for EfficientNetB0, got {self.image_size}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if int(self.views) < 0:
            raise ValueError(f"views must be at least 0, got {self.views}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        AugmentConfig(max_rotation=self.max_rotation)  # checks the bound
        get_recipe(self.recipe)  # checks the recipe


def configure_accelerator():
    """Uses mixed float16 and XLA when a GPU is visible; plain float32 on CPU.

    Returns:
        True when a GPU is in use.
    """
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        for gpu in gpus:
            tf.config.experimental.set_memory_growth(gpu, True)
        keras.mixed_precision.set_global_policy("mixed_float16")
    return bool(gpus)


def get_strategy(name="auto"):
    """Returns the tf.distribute strategy for `name`.

    `auto` mirrors across GPUs when more than one is visible; `multiworker` reads the cluster from
    the TF_CONFIG environment variable (see README).
    """
    import os

    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {name!r}")
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("strategy 'multiworker' needs the TF_CONFIG environment variable (see README)")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "mirrored" or (name == "auto" and len(tf.config.list_logical_devices("GPU")) > 1):
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _shardable(ds):
    # Examples come from an in-memory list, not files, so shard by element across workers.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def _best_val_loss(log_path):
    """The lowest val_loss logged so far, so a resumed run keeps the true best checkpoint."""
    if not log_path.is_file():
        return None
    import pandas as pd

    try:
        log = pd.read_csv(log_path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError):
        return None
    return float(log["val_loss"].min()) if "val_loss" in log and len(log) else None


def _examples(target, images):
    if target == "router":
        paths, labels = bdata.router_examples(images)
        return paths, labels, len(PARTS)
    paths, labels = bdata.part_examples(images, target)
    return paths, labels, 2


def shared_settings(config, weights_origin, trainable):
    """The settings every model in a run must share, as recorded in the manifest."""
    settings = {
        "image_size": int(config.image_size),
        "recipe": get_recipe(config.recipe).to_dict(),
        "weights": weights_origin,
        "trainable_layers": {"count": int(config.trainable_layers), "trainable": trainable},
    }
    if trainable is None:  # not known before the model is built; compare the rest
        del settings["trainable_layers"]
    return settings


def checkpoint_dir(run_dir, key):
    """Where a model's training work files live: `<run>/checkpoints/<router|part short name>/`."""
    return Path(run_dir) / "checkpoints" / (key if key == "router" else short_name(key))


def _tune_on_holdout(scores, kept, val_images):
    """The study-level threshold maximising kappa on the hold-out (never on an evaluated split).

    `scores` are p(abnormal) for the hold-out images `kept` (those that decoded), in order.
    """
    from bonenet.metrics import tune_threshold

    if len(scores) != len(kept):
        return None
    table = val_images.set_index("path").loc[kept, ["study", "label"]].assign(score=scores)
    studies = table.groupby("study").agg(label=("label", "first"), score=("score", "mean"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(tune_threshold(studies["label"], studies["score"]))


def _cached_datasets(trunk, index, train_paths, train_labels, val_paths, val_labels, num_classes, config, run_dir,
                     verbose):
    """Train and hold-out datasets of cached trunk outputs, plus the hold-out paths they serve.

    One cache covers every train-split image, so the router and all seven parts share it.
    """
    everything = index.images.loc[index.images.split == "train", "path"].tolist()
    augment = AugmentConfig(max_rotation=config.max_rotation) if config.augment and config.views else None
    cache = compute_features(trunk, everything, config.recipe, config.image_size,
                             Path(config.cache_dir) if config.cache_dir else run_dir / "cache",
                             views=config.views if augment else 0, augment_config=augment, seed=config.seed,
                             batch_size=config.batch_size, verbose=verbose)
    n, position = len(cache.paths), {p: i for i, p in enumerate(cache.paths)}

    def rows_and_labels(paths, labels, views):
        by_image = np.full(n, -1, np.int64)
        by_image[[position[p] for p in paths]] = labels
        rows = cache.rows([position[p] for p in paths], views=views)
        return rows, by_image[rows % n]

    train_rows, train_y = rows_and_labels(train_paths, train_labels, views=True)
    val_rows, val_y = rows_and_labels(val_paths, val_labels, views=False)
    batch = dict(num_classes=num_classes, batch_size=config.batch_size)
    train_ds = cache.dataset(train_rows, train_y, training=True, seed=config.seed, **batch)
    val_ds = cache.dataset(val_rows, val_y, **batch)
    return train_ds, val_ds, [cache.paths[r % n] for r in val_rows]


def train_model(target, index, models_dir, config=TrainConfig(), resume=False, verbose=1):
    """Trains the router (`target="router"`) or one part's model and records it in the run.

    The model is built on the run's trunk when the run has one, so all its models share it; its
    head is saved to `heads/`, and the trunk to `trunk.keras` by the run's first model.

    Args:
        target: "router" or a part name (`wrist`, `XR_WRIST`).
        index: a `MuraIndex` (its train split is used, with a patient-grouped hold-out).
        models_dir: the run folder to write into.
        config: a `TrainConfig`.
        resume: continue a killed run from its last completed epoch. Defaults to False.
        verbose: Keras verbosity (1 shows the progress bar). Defaults to 1.

    Returns:
        (the model's manifest entry, the trained full Keras model).
    """
    key = model_key(target)
    run_dir = Path(models_dir)
    weights, origin = resolve_weights(config.weights)  # fail fast, before any data work
    existing = read_manifest(run_dir, required=False)
    if existing is not None:
        # Refuse a folder made with another size, recipe or backbone before spending any time.
        check_writable(existing, run_dir)
        check_shared(existing, shared_settings(config, origin, None), run_dir)
    split = holdout_split(index.studies, config.holdout_fraction, config.seed)
    held = set(split.loc[split.holdout, "study"])
    train_images = index.images[(index.images.split == "train") & ~index.images.study.isin(held)]
    val_images = index.images[index.images.study.isin(held)]
    train_paths, train_labels, num_classes = _examples(key, train_images)
    val_paths, val_labels, _ = _examples(key, val_images)
    present = np.unique(train_labels)
    if len(present) < num_classes and key != "router" or len(train_paths) == 0:
        raise ValueError(f"{key}: training data has classes {present.tolist()}, needs all {num_classes}")
    if len(val_paths) == 0:
        raise ValueError(f"{key}: the hold-out has no images; add more train studies")

    keras.utils.set_random_seed(config.seed)
    gpu = configure_accelerator()
    strategy = get_strategy(config.strategy)
    run_trunk = load_trunk(run_dir, existing) if existing is not None else None
    with strategy.scope():
        kwargs = dict(image_size=config.image_size, weights=weights, trainable_layers=config.trainable_layers,
                      dropout=config.dropout)
        model, trainable = build_router(**kwargs) if key == "router" else build_part_model(key, **kwargs)
        trunk, head = split_model(model, config.trainable_layers)
        if run_trunk is not None:
            # The run's trunk is the one every model shares (with --weights none, it is the only
            # copy of the random initialisation the first model drew).
            copy_weights(run_trunk, trunk)
        fitted = head if config.mode == "cached" else model
        set_xla(trunk)
        compile_model(fitted, config.learning_rate, jit_compile=gpu)
    shared = shared_settings(config, origin, trainable)
    if existing is not None:
        check_shared(existing, shared, run_dir)

    if config.mode == "cached":
        train_ds, val_ds, val_kept = _cached_datasets(trunk, index, train_paths, train_labels, val_paths, val_labels,
                                                      num_classes, config, run_dir, verbose)
    else:
        augment = AugmentConfig(max_rotation=config.max_rotation) if config.augment else None
        common = dict(recipe=config.recipe, size=config.image_size, batch_size=config.batch_size,
                      cache_dir=config.cache_dir)
        train_ds = bdata.make_dataset(train_paths, train_labels, num_classes, training=True, seed=config.seed,
                                      augment_config=augment, **common)
        val_ds = bdata.make_dataset(val_paths, val_labels, num_classes, **common)
        val_kept = None
    train_ds, val_ds = _shardable(train_ds), _shardable(val_ds)

    work = checkpoint_dir(run_dir, key)
    backup, log_path, best_path = work / "backup", work / "log.csv", work / "best.weights.h5"
    if resume:
        meta = backup / "training_metadata.json"
        start = json.loads(meta.read_text())["epoch"] if meta.is_file() else 0
        print(f"{key}: resuming from epoch {start}" if start else f"{key}: nothing to resume, starting at epoch 0",
              file=sys.stderr)
    elif work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    callbacks = [
        # BackupAndRestore comes first, so that when the CSV shows an epoch its backup exists.
        keras.callbacks.BackupAndRestore(str(backup)),
        keras.callbacks.ModelCheckpoint(str(best_path), monitor="val_loss", save_best_only=True,
                                        save_weights_only=True, initial_value_threshold=_best_val_loss(log_path)
                                        if resume else None),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.3, patience=max(1, config.patience // 2),
                                          min_lr=1e-7),
        keras.callbacks.CSVLogger(str(log_path), append=resume),
        keras.callbacks.TensorBoard(str(work / "tensorboard"), write_graph=False),
    ]
    with warnings.catch_warnings():
        # The datasets' length is unknown until the first epoch ends (unreadable files are
        # filtered out), and Keras warns about that once; it is expected here.
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        history = fitted.fit(train_ds, validation_data=val_ds, epochs=config.epochs, verbose=verbose, shuffle=False,
                             class_weight=bdata.class_weights(train_labels, num_classes), callbacks=callbacks)
        if best_path.is_file():
            fitted.load_weights(str(best_path))
        scores = fitted.evaluate(val_ds, verbose=0, return_dict=True)
        tuned = None
        if key != "router":
            probs = fitted.predict(val_ds, verbose=0)[:, 1]
            if val_kept is None:
                val_kept = [p for p in val_paths if p not in bdata.SKIPPED_IN_PIPELINE]
            tuned = _tune_on_holdout(probs, val_kept, val_images)
    trunk_entry = None
    if run_trunk is None:
        # The run's first model writes the trunk, before its head, so a listed head always has it.
        save_model_atomic(trunk, run_dir / TRUNK_FILE)
        trunk_entry = {"file": TRUNK_FILE, "outputs": trunk_outputs(model, config.trainable_layers),
                       "sha256_weights": weights_digest(trunk)}
    filename = model_filename(key)
    save_model_atomic(head, run_dir / filename)
    entry = {
        "file": filename,
        "input": "trunk",
        "labels": list(PARTS) if key == "router" else ["normal", "abnormal"],
        "threshold": 0.5,
        **({"tuned_threshold": tuned} if tuned is not None else {}),
        "config": asdict(config),
        "dataset": {"fingerprint": fingerprint(index), "train_images": len(train_paths),
                    "holdout_images": len(val_paths),
                    "holdout_studies": int(val_images[val_images.path.isin(val_paths)].study.nunique())},
        "holdout": {k: float(v) for k, v in scores.items()},
        "epochs_run": len(history.history.get("loss", [])),
        "log": str(log_path.relative_to(run_dir)),
    }
    record_model(run_dir, key, shared, entry, trunk=trunk_entry)
    return entry, model


def train_all(index, models_dir, config=TrainConfig(), resume=False, verbose=1, parts=PARTS):
    """Trains the router, then each part's model, into one run folder.

    A part that cannot be trained (no abnormal studies, say) is reported and skipped; the
    others still train. With `resume`, models that finished before an interruption are kept and
    the interrupted one continues from its last completed epoch.

    Returns:
        ({key: manifest entry}, {key: error message}).
    """
    entries, failures = {}, {}
    done = (read_manifest(models_dir, required=False) or {}).get("models", {}) if resume else {}
    for target in ["router", *parts]:
        key = model_key(target)
        backup = checkpoint_dir(models_dir, key) / "backup"
        if key in done and (Path(models_dir) / done[key]["file"]).is_file() and not backup.exists():
            # Finished before the interruption: keep it rather than train it again.
            print(f"{key}: already trained in this run, kept", file=sys.stderr)
            entries[key] = done[key]
            continue
        try:
            entries[key], _ = train_model(key, index, models_dir, config, resume=resume, verbose=verbose)
        except ValueError as exc:
            failures[key] = str(exc)
            print(f"bonenet: could not train {target}: {exc}", file=sys.stderr)
    return entries, failures
