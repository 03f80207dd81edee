"""Training the router and the part models: tf.data in, a checked run folder out.

One function, `train_model`, trains any model of the hierarchy; `train_all` runs the router and
then the seven parts. Progress is Keras' own bar; a killed run continues with `resume=True`.

Every model is stored as the run's shared frozen trunk plus its own head. The default `cached`
mode computes the trunk's output once for all train images (and a few pre-drawn augmented views)
and trains the heads on that cache, one view per image per epoch; `full` mode fits
`head(trunk(image))` on live-augmented images, the trunk in inference mode. Both train the same
function, count an epoch as one pass over the images, and store the same layout.
"""

import atexit
import functools
import json
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from bonenet import data as bdata
from bonenet import runtime
from bonenet.configs import STRATEGIES, TrainConfig
from bonenet.features import compute_features, weights_digest
from bonenet.metrics import tune_threshold
from bonenet.models import (
    build_part_model,
    build_router,
    compile_model,
    copy_weights,
    join_model,
    resolve_weights,
    set_xla,
    split_model,
    trunk_cut,
)
from bonenet.mura import fingerprint, holdout_split, is_synthetic
from bonenet.outputs import check_free_space
from bonenet.parts import PARTS, short_name
from bonenet.store import (
    TRUNK_FILE,
    ManifestError,
    check_shared,
    load_model,
    load_trunk,
    model_filename,
    model_key,
    read_manifest,
    record_model,
    run_lock,
    save_model_atomic,
)
from bonenet.study import DEFAULT_THRESHOLD, aggregate_studies
from preprocessing.augment import AugmentConfig
from preprocessing.recipes import get_recipe

_STRATEGIES = {}


def get_strategy(name="auto"):
    """Returns the tf.distribute strategy for `name`, one instance per process.

    `auto` mirrors across GPUs when more than one is visible. `mirrored` mirrors across every GPU,
    or across the logical CPUs where there is no GPU (how tests run it on a CPU). `multiworker`
    reads the cluster from the TF_CONFIG environment variable (see README). A strategy is made
    once and reused by every model the process trains (`train-all` trains eight): a second
    instance would start its collective operations over and clash with the first's.
    """
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {name!r}")
    if name not in _STRATEGIES:
        _STRATEGIES[name] = _make_strategy(name)
    return _STRATEGIES[name]


def _make_strategy(name):
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("strategy 'multiworker' needs the TF_CONFIG environment variable (see README)")
        return _MultiWorkerStrategy()
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(gpus or [d.name for d in tf.config.list_logical_devices("CPU")])
    if name == "auto" and len(gpus) > 1:
        return tf.distribute.MirroredStrategy(gpus)
    return tf.distribute.get_strategy()


class _MultiWorkerStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """MultiWorkerMirroredStrategy whose `reduce` accepts what Keras 3.15's `fit` passes it.

    Across several workers Keras' TensorFlow trainer calls `reduce` with a whole (x, y,
    sample_weight) batch before building, and with `axis=0` on scalar per-replica logs after
    each step; the collective reduce takes one tensor and needs the axis to exist, so both fail
    (keras-team/keras#20585). Each leaf is reduced on its own, and a scalar across replicas only,
    which is what those calls mean.
    """

    def reduce(self, reduce_op, value, axis):
        """Reduces every leaf of `value` across replicas (see `tf.distribute.Strategy.reduce`)."""

        def leaf(v):
            scalar = axis is not None and self.experimental_local_results(v)[0].shape.rank == 0
            return super(_MultiWorkerStrategy, self).reduce(reduce_op, v, None if scalar else axis)

        return tf.nest.map_structure(leaf, value)


def is_chief(strategy_name):
    """Whether this process writes the run.

    Under `multiworker`, only the chief does (TF_CONFIG's "chief" task, or worker 0 when the
    cluster names none), as Keras' multi-worker guide prescribes; the other workers write their
    checkpoints, logs and cache into a private temporary folder that is removed afterwards.
    """
    if strategy_name != "multiworker":
        return True
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}"))
    task = tf_config.get("task", {})
    kind, index = task.get("type"), int(task.get("index", 0))
    return kind is None or kind == "chief" or (kind == "worker" and index == 0
                                               and "chief" not in tf_config.get("cluster", {}))


def _shardable(ds):
    # Examples come from an in-memory list, not files, so shard by element across workers.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def _best_val_loss(log_path):
    """The lowest val_loss logged so far, so a resumed run keeps the true best checkpoint."""
    if not log_path.is_file():
        return None
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
    if trainable is None:  # not known before the model is built: the count alone is compared
        settings["trainable_layers"] = {"count": int(config.trainable_layers)}
    return settings


def checkpoint_dir(run_dir, key):
    """Where a model's training work files live: `<run>/checkpoints/<router|part short name>/`."""
    return Path(run_dir) / "checkpoints" / (key if key == "router" else short_name(key))


def tune_on_holdout(scores, kept, val_images, part):
    """The study-level threshold maximising kappa on the training hold-out (never an evaluated split).

    Studies are scored by the study rule (`bonenet.study`), each with its own part's model.

    Args:
        scores: p(abnormal) for the hold-out images `kept` (those that decoded), in order.
        kept: their paths.
        val_images: the hold-out image table.
        part: the part.

    Returns:
        {"threshold": float} or {"threshold": None, "reason": why tuning was not possible}.
    """
    table = val_images.set_index("path").loc[kept, ["study", "label"]].reset_index()
    table = table.assign(part_true=part, **{f"p_{part}": 1.0, f"s_{part}": np.asarray(scores, float)})
    studies = aggregate_studies(table, [part], {part: (DEFAULT_THRESHOLD, "default")}, oracle=True)
    try:
        return {"threshold": tune_threshold(studies["label"], studies["score"]), "studies": len(studies)}
    except ValueError as exc:
        return {"threshold": None, "reason": str(exc), "studies": len(studies)}


def _cached_datasets(trunk, index, job, config, run_dir, verbose):
    """Train and hold-out datasets of cached trunk outputs, plus the hold-out paths they serve.

    One cache covers every train-split image, so the router and all seven parts share it.
    """
    everything = index.images.loc[index.images.split == "train", "path"].tolist()
    augment = AugmentConfig(max_rotation=config.max_rotation) if config.augment and config.views else None
    if job.scratch:  # a non-chief worker computes its own copy rather than race the chief's
        cache_dir = job.scratch / "cache"
    else:
        cache_dir = Path(config.cache_dir) if config.cache_dir else run_dir / "cache"
    cache = compute_features(trunk, everything, config.recipe, config.image_size, cache_dir,
                             views=config.views if augment else 0, augment_config=augment, seed=config.seed,
                             batch_size=config.batch_size, verbose=verbose)
    position = {p: i for i, p in enumerate(cache.paths)}

    def rows(paths, labels):
        label_of = dict(zip((position[p] for p in paths), labels, strict=True))
        images = cache.usable([position[p] for p in paths])
        return images, np.asarray([label_of[i] for i in images], np.int64)

    batch = dict(num_classes=job.num_classes, batch_size=config.batch_size)
    train_images, train_y = rows(job.train_paths, job.train_labels)
    val_images, val_y = rows(job.val_paths, job.val_labels)
    return (cache.dataset(train_images, train_y, training=True, seed=config.seed, **batch),
            cache.dataset(val_images, val_y, **batch), [cache.paths[i] for i in val_images])


def _full_datasets(job, config):
    augment = AugmentConfig(max_rotation=config.max_rotation) if config.augment else None
    common = dict(recipe=config.recipe, size=config.image_size, batch_size=config.batch_size,
                  cache_dir=config.cache_dir)
    train_ds = bdata.make_dataset(job.train_paths, job.train_labels, job.num_classes, training=True,
                                  seed=config.seed, augment_config=augment, **common)
    val_ds = bdata.make_dataset(job.val_paths, job.val_labels, job.num_classes, **common)
    return train_ds, val_ds, None


@dataclass
class _Job:
    """What one model's training works on: its key, run folder, data split and built models."""

    key: str
    run_dir: Path
    existing: dict
    origin: dict
    weights: object
    train_paths: list
    train_labels: np.ndarray
    val_paths: list
    val_labels: np.ndarray
    val_images: object
    num_classes: int
    model: object = None
    trunk: object = None
    head: object = None
    fitted: object = None
    shared: dict = None
    run_trunk: object = None
    scratch: Path = None  # a non-chief worker's private folder; None for the process that writes the run

    @property
    def home(self):
        """Where this process writes: the run folder, or a non-chief worker's scratch folder."""
        return self.scratch or self.run_dir


def _prepare(target, index, models_dir, config):
    """Checks the run folder and the data, and splits train into fit and hold-out (by patient)."""
    key = model_key(target)
    run_dir = Path(models_dir)
    weights, origin = resolve_weights(config.weights)  # fail fast, before any data work
    existing = read_manifest(run_dir, required=False)
    if existing is not None:
        # Refuse a folder made with another size, recipe or backbone before spending any time.
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
    scratch = None if is_chief(config.strategy) else _worker_scratch()
    return _Job(key, run_dir, existing, origin, weights, train_paths, train_labels, val_paths, val_labels,
                val_images, num_classes, scratch=scratch)


@functools.cache
def _worker_scratch():
    """A non-chief worker's private folder, one per process (so `train-all` computes its feature
    cache once, not once per model), removed when the process exits."""
    path = Path(tempfile.mkdtemp(prefix="bonenet-worker-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


_TRUNK_MEMO = {}


def _run_trunk(run_dir, manifest):
    """The run's trunk, loaded once per process while its file is unchanged.

    `train_all` builds eight models on one trunk; deserialising it for each cost seconds apiece.
    """
    path = Path(run_dir, manifest["trunk"]["file"]).resolve() if "trunk" in manifest else None
    stat = path.stat() if path is not None and path.is_file() else None
    key = (str(path), stat.st_mtime_ns, stat.st_size) if stat else None
    if key is None or key not in _TRUNK_MEMO:
        trunk = load_trunk(run_dir, manifest)  # raises the manifest's own error for a missing file
        _TRUNK_MEMO.clear()  # one entry: a long process training many runs keeps one trunk alive
        _TRUNK_MEMO[key] = trunk
    return _TRUNK_MEMO[key]


def _build(job, config):
    """Builds the classifier in the strategy's scope, split at the trunk cut, on the run's trunk."""
    gpu = runtime.start(config.precision)["gpus"] > 0
    strategy = get_strategy(config.strategy)
    job.run_trunk = _run_trunk(job.run_dir, job.existing) if job.existing is not None else None
    # Seeded after the trunk is loaded: deserialising it draws seeds for its dropout layers from
    # Python's generator, so seeding first gave a model built into a folder that already held a
    # trunk (a rerun, or any model after the first when the trunk memo was cold) other initial
    # weights and dropout masks than the same command into an empty folder.
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        kwargs = dict(image_size=config.image_size, weights=job.weights, trainable_layers=config.trainable_layers,
                      train_batchnorm=config.train_batchnorm,
                      dropout=config.dropout)
        job.model, trainable = (build_router(**kwargs) if job.key == "router"
                                else build_part_model(job.key, **kwargs))
        job.trunk, job.head = split_model(job.model, config.trainable_layers)
        if job.run_trunk is not None:
            # The run's trunk is the one every model shares (with --weights none, it is the only
            # copy of the random initialisation the first model drew).
            copy_weights(job.run_trunk, job.trunk)
        job.fitted = job.head if config.mode == "cached" else join_model(job.trunk, job.head)
        set_xla(job.trunk)
        compile_model(job.fitted, config.learning_rate, jit_compile=gpu)
    job.shared = shared_settings(config, job.origin, trainable)
    if job.existing is not None:
        check_shared(job.existing, job.shared, job.run_dir)
    return strategy


def _check_free_space(job):
    """Refuses to train into a disk that cannot hold this model's files: the head and its save's
    temporary copy, Keras' backup (weights and optimizer moments), the best weights, and the
    run's trunk when this is its first model."""
    nbytes = 6 * 4 * job.fitted.count_params() + (4 * job.trunk.count_params() if job.run_trunk is None else 0)
    check_free_space(job.home, nbytes, f"training {job.key} (model files and checkpoints)")


def _datasets(job, index, config, verbose):
    """(train, hold-out, hold-out paths kept) for the mode, sharded by element across workers."""
    if config.mode == "cached":
        train_ds, val_ds, kept = _cached_datasets(job.trunk, index, job, config, job.run_dir, verbose)
    else:
        train_ds, val_ds, kept = _full_datasets(job, config)
    return _shardable(train_ds), _shardable(val_ds), kept


def _fit(job, train_ds, val_ds, config, resume, verbose):
    """Fits with resumable backups, best-by-hold-out-loss weights, early stopping and logs."""
    work = checkpoint_dir(job.home, job.key)
    backup, log_path, best_path = work / "backup", work / "log.csv", work / "best.weights.h5"
    if resume and job.scratch is not None:
        # Every worker must resume at the chief's epoch, from the chief's weights. Its checkpoints
        # stay put until this fit's first epoch ends, which needs this worker too.
        chief_work = checkpoint_dir(job.run_dir, job.key)
        shutil.rmtree(work, ignore_errors=True)
        if chief_work.is_dir():
            shutil.copytree(chief_work, work, ignore=shutil.ignore_patterns("tensorboard"))
    if resume:
        meta = backup / "training_metadata.json"
        start = json.loads(meta.read_text())["epoch"] if meta.is_file() else 0
        print(f"{job.key}: resuming from epoch {start}" if start else
              f"{job.key}: nothing to resume, starting at epoch 0", file=sys.stderr)
    elif work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    callbacks = [
        # BackupAndRestore comes first, so that when the CSV shows an epoch its backup exists.
        # Kept after training ends: a kill during the final save must still resume at the last
        # epoch, not from scratch. `_finalize` removes it once the model is saved and listed.
        keras.callbacks.BackupAndRestore(str(backup), delete_checkpoint=False),
        keras.callbacks.ModelCheckpoint(str(best_path), monitor="val_loss", save_best_only=True,
                                        save_weights_only=True, initial_value_threshold=_best_val_loss(log_path)
                                        if resume else None),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.3, patience=max(1, config.patience // 2),
                                          min_lr=1e-7),
        keras.callbacks.CSVLogger(str(log_path), append=resume),
        keras.callbacks.TensorBoard(str(work / "tensorboard"), write_graph=False),
    ]
    with bdata.length_found_at_the_end():
        job.fitted.fit(train_ds, validation_data=val_ds, epochs=config.epochs, verbose=verbose, shuffle=False,
                       class_weight=bdata.class_weights(job.train_labels, job.num_classes), callbacks=callbacks)
    if best_path.is_file():
        job.fitted.load_weights(str(best_path))
    return log_path


def _holdout_probabilities(job, val_ds):
    """p(abnormal) of the hold-out in dataset order, computed eagerly: `predict` under a
    multi-worker strategy would gather each worker's shard in no fixed order."""
    return np.concatenate([np.asarray(job.fitted(x, training=False))[:, 1] for x, _ in val_ds])


def _finalize(job, index, val_ds, kept, log_path, config):
    """Scores the hold-out, tunes a part's threshold there, saves the head (and the run's first trunk)."""
    with bdata.length_found_at_the_end():
        scores = job.fitted.evaluate(val_ds, verbose=0, return_dict=True)
    tuning = None
    if job.key != "router":
        if kept is None:
            kept = [p for p in job.val_paths if p not in bdata.SKIPPED_IN_PIPELINE]
        tuning = tune_on_holdout(_holdout_probabilities(job, val_ds), kept, job.val_images, job.key)
    filename = model_filename(job.key)
    save_model_atomic(job.head, job.home / filename)  # unlisted until the manifest names it below
    trunk_entry, trunk_digest = None, weights_digest(job.trunk)
    log = pd.read_csv(log_path) if log_path.is_file() else pd.DataFrame()
    entry = {
        "file": filename,
        "input": "trunk",
        "labels": list(PARTS) if job.key == "router" else ["normal", "abnormal"],
        "threshold": DEFAULT_THRESHOLD,
        "recipe": job.shared["recipe"],
        "trunk_sha256": trunk_digest,
        **({"tuning": tuning} if tuning is not None else {}),
        "config": asdict(config),
        "dataset": {"fingerprint": fingerprint(index), "synthetic": is_synthetic(index),
                    "train_images": len(job.train_paths),
                    "holdout_images": len(job.val_paths),
                    "holdout_studies": int(job.val_images[job.val_images.path.isin(job.val_paths)].study.nunique())},
        "holdout": {k: float(v) for k, v in scores.items()},
        "epochs_run": len(log),
        "log": str(Path(os.path.relpath(log_path, job.home))),
    }
    # One lock around the trunk check, the trunk's save and the manifest's update: a training
    # started beside this one into the same folder waits here, and cannot slip its trunk in between.
    with run_lock(job.home):
        if job.run_trunk is None:
            # The run's first model writes the trunk. Every worker saves (saving may take part in
            # collectives); only the chief's lands in the run.
            written = (read_manifest(job.home, required=False) or {}).get("trunk")
            if written is None:
                save_model_atomic(job.trunk, job.home / TRUNK_FILE)
                trunk_entry = {"file": TRUNK_FILE, "output": trunk_cut(job.model, config.trainable_layers)[1],
                               "sha256_weights": trunk_digest}
            elif written.get("sha256_weights") != trunk_digest:
                raise ValueError(f"{job.home / TRUNK_FILE}: another training wrote this run's trunk while "
                                 f"{job.key} trained on a different one (another seed or backbone); train "
                                 f"{job.key} again into this folder, or use a new --models-dir")
        if job.scratch is None:
            record_model(job.run_dir, job.key, job.shared, entry, trunk=trunk_entry)
    # Saved: nothing left to resume. A non-chief's checkpoints were only ever its own copy.
    work = checkpoint_dir(job.home, job.key)
    shutil.rmtree(work if job.scratch else work / "backup", ignore_errors=True)
    return entry


def train_model(target, index, models_dir, config=TrainConfig(), resume=False, verbose="auto"):
    """Trains the router (`target="router"`) or one part's model and records it in the run.

    The story: prepare (checks and a patient-grouped hold-out), build (on the run's trunk when it
    has one), datasets (cached trunk outputs or live images), fit, finalize (hold-out scores, a
    part's tuned threshold, atomic saves, the manifest entry).

    Args:
        target: "router" or a part name (`wrist`, `XR_WRIST`).
        index: a `MuraIndex` (its train split is used, with a patient-grouped hold-out).
        models_dir: the run folder to write into.
        config: a `TrainConfig`.
        resume: continue a killed run from its last completed epoch. Defaults to False.
        verbose: Keras verbosity; "auto" shows progress bars on a terminal only. Defaults to "auto".

    Returns:
        (the model's manifest entry, the trained full Keras model).
    """
    verbose = progress_verbosity(verbose)
    job = _prepare(target, index, models_dir, config)
    strategy = _build(job, config)
    _check_free_space(job)
    with strategy.scope():
        train_ds, val_ds, kept = _datasets(job, index, config, verbose)
    log_path = _fit(job, train_ds, val_ds, config, resume, verbose)
    return _finalize(job, index, val_ds, kept, log_path, config), job.model


def progress_verbosity(verbose="auto"):
    """Keras verbosity: "auto" shows progress bars on a terminal, and one line per epoch otherwise
    ("Epoch 3/10" and its figures), so that a log still counts the epochs."""
    if verbose != "auto":
        return verbose
    return 1 if sys.stdout.isatty() else 2


def summary_line(key, entry):
    """One line after a model has trained: its hold-out figures and, for a part, its threshold."""
    holdout = entry["holdout"]
    text = f"{key}: {entry['epochs_run']} epoch(s); hold-out loss {holdout.get('loss', float('nan')):.3f}, " \
           f"accuracy {holdout.get('accuracy', float('nan')):.3f}"
    if "auc" in holdout:
        text += f", AUC {holdout['auc']:.3f}"
    tuning = entry.get("tuning")
    if tuning is not None:
        text += (f"; threshold {tuning['threshold']:.3f} tuned on {tuning['studies']} hold-out studies"
                 if tuning["threshold"] is not None else f"; threshold 0.5 (tuning not possible: {tuning['reason']})")
    return text


def train_all(index, models_dir, config=TrainConfig(), resume=False, verbose="auto", parts=PARTS):
    """Trains the router, then each part's model, into one run folder.

    A part absent from the data gets one line and is left out; the router learns the parts
    present, and the run covers those. A part that is present but cannot be trained (no abnormal
    studies, say) is a failure, reported, and the others still train. With `resume`, models that
    finished before an interruption are kept and
    the interrupted one continues from its last completed epoch. Each model gets a header
    ("XR_ELBOW 2/8") and one summary line.

    Returns:
        ({key: manifest entry}, {key: error message}).
    """
    entries, failures = {}, {}
    done = (read_manifest(models_dir, required=False) or {}).get("models", {}) if resume else {}
    in_data = set(index.images.loc[index.images["split"] == "train", "part"])
    for part in parts:
        if model_key(part) not in in_data:  # a subset of the parts is a dataset, not a failure
            print(f"{model_key(part)}: absent from the training data; not trained", flush=True)
    targets = ["router", *(p for p in parts if model_key(p) in in_data)]
    for number, target in enumerate(targets, 1):
        key = model_key(target)
        print(f"{key} {number}/{len(targets)}", flush=True)
        backup = checkpoint_dir(models_dir, key) / "backup"
        if key in done and (Path(models_dir) / done[key]["file"]).is_file() and not backup.exists():
            # Finished before the interruption: keep it rather than train it again, if it still loads.
            try:
                load_model(Path(models_dir) / done[key]["file"])
            except ManifestError as exc:
                print(f"{key}: {exc}; training it again", file=sys.stderr, flush=True)
            else:
                print(f"{key}: already trained in this run, kept", flush=True)
                entries[key] = done[key]
                continue
        try:
            entries[key], _ = train_model(key, index, models_dir, config, resume=resume,
                                          verbose=progress_verbosity(verbose))
        except ValueError as exc:
            failures[key] = str(exc)
            print(f"bonenet: could not train {target}: {exc}", file=sys.stderr)
            continue
        print(summary_line(key, entries[key]), flush=True)
    return entries, failures
