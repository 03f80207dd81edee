"""Training the router and the part models: tf.data in, a checked run folder out.

One function, `train_model`, trains any model of the hierarchy; `train_all` runs the router and
then every part present. Progress is Keras' own bar on a terminal and a line per epoch otherwise;
a killed run continues with `resume=True`. Images that cannot be read are recorded in the command's
`SkipLog` and in each model's manifest entry (`dataset.unread`), never printed here.

Every model is stored as the run's shared frozen trunk plus its own head. The default `cached`
mode computes the trunk's output once for all train images (and a few pre-drawn augmented views)
and trains the heads on that cache, one view per image per epoch; `full` mode fits
`head(trunk(image))` on live-augmented images, the trunk in inference mode. Both train the same
function, count an epoch as one pass over the images, and store the same layout.
"""

import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np

from bonenet import runtime
from bonenet.configs import TrainConfig
from bonenet.data import pipeline as bdata
from bonenet.data.mura import fingerprint_of, is_synthetic
from bonenet.data.read import Skip, SkipLog
from bonenet.digests import weights_digest
from bonenet.files import check_free_space
from bonenet.models.efficientnet import (
    Tuning,
    build_part_model,
    build_router,
    compile_model,
    copy_weights,
    join_model,
    set_xla,
    split_model,
    trunk_cut,
)
from bonenet.parts import PARTS
from bonenet.preprocessing.augment import AugmentConfig
from bonenet.progress import keras_verbosity
from bonenet.run.manifest import (
    MANIFEST,
    ManifestError,
    ModelRecord,
    check_shared,
    model_filename,
    model_key,
    read_manifest,
    record_model,
    run_lock,
)
from bonenet.run.model_card import write_model_card
from bonenet.run.store import load_model, save_model_atomic, save_trunk_once, shared_trunk
from bonenet.training.checkpoints import WholeBackup, WholeBest, best_val_loss, checkpoint_dir, resume_point
from bonenet.training.distribute import get_strategy, shardable
from bonenet.training.features import compute_features
from bonenet.training.holdout import decide_on_holdout, holdout_figures, holdout_outputs, summary_line
from bonenet.training.job import prepare_job, shared_settings
from bonenet.training.members import Member, combined_probs, epochs_run, member_entry, member_seed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Built:
    """The models built for a job: the whole classifier, its trunk and head, what is fitted, and
    the run's trunk they started from (None for a run's first model)."""

    model: object
    trunk: object
    head: object
    fitted: object
    shared: dict
    run_trunk: object


def _cache_folder(place, config):
    if place.scratch:  # a non-chief worker computes its own copy rather than race the chief's
        return place.scratch / "cache"
    return Path(config.cache_dir) if config.cache_dir else place.run_dir / "cache"


def _cached_datasets(job, built, seed):
    """Train and hold-out datasets of cached trunk outputs, plus the hold-out paths they serve.

    One cache covers every train-split image, so the router and all seven parts share it; the
    images it could not read are recorded in the job's `skips` when they are this model's.
    """
    index, config = job.index, job.config
    everything = index.images.loc[index.images.split == "train", "path"].tolist()
    augment = AugmentConfig(max_rotation=config.max_rotation) if config.augment and config.views else None
    prep = bdata.Preparation(job.place.recipe, config.image_size, config.views if augment else 0, augment,
                             config.seed)
    cache = compute_features(built.trunk, everything, prep, _cache_folder(job.place, config), verbose=job.verbose)
    ex = job.examples
    mine = {*ex.train_paths, *ex.val_paths}
    for skip in cache.skips:
        if skip.path in mine:
            job.skips.add(skip)
    position = {p: i for i, p in enumerate(cache.paths)}

    def rows(paths, labels):
        label_of = dict(zip((position[p] for p in paths), labels, strict=True))
        images = cache.usable([position[p] for p in paths])
        return images, np.asarray([label_of[i] for i in images], np.int64)

    batch = dict(num_classes=ex.num_classes, batch_size=config.batch_size)
    train_images, train_y = rows(ex.train_paths, ex.train_labels)
    val_images, val_y = rows(ex.val_paths, ex.val_labels)
    return (cache.dataset(train_images, train_y, training=True, seed=seed, **batch),
            cache.dataset(val_images, val_y, **batch))


def _full_datasets(job, seed):
    """Train and hold-out datasets of live images; their unreadable images are recorded in the job's `skips`."""
    ex, config = job.examples, job.config
    augment = AugmentConfig(max_rotation=config.max_rotation) if config.augment else None
    prep = bdata.Preparation(job.place.recipe, config.image_size, augment=augment, seed=seed)
    cache = config.cache_dir or "memory"
    train_ds = bdata.make_dataset(ex.train_paths, ex.train_labels, ex.num_classes, prep,
                                  bdata.Feed(config.batch_size, training=True, cache=cache), job.skips)
    val_ds = bdata.make_dataset(ex.val_paths, ex.val_labels, ex.num_classes, prep,
                                bdata.Feed(config.batch_size, cache=cache), job.skips)
    return train_ds, val_ds


def _build(job, seed, first=None):
    """Builds the classifier in the strategy's scope, split at the trunk cut, on the run's trunk (or on
    `first`'s, the model's first member, which is the run's trunk to be).

    Returns:
        (`_Built`, the strategy).
    """
    config = job.config
    gpu = runtime.start(config.precision)["gpus"] > 0
    strategy = get_strategy(config.strategy)
    place = job.place
    run_trunk = shared_trunk(place.run_dir, place.existing) if place.existing is not None else None
    if run_trunk is None and first is not None:
        run_trunk = first.run_trunk if first.run_trunk is not None else first.trunk
    # Seeded after the trunk is loaded: deserialising it draws seeds for its dropout layers from
    # Python's generator, so seeding first gave a model built into a folder that already held a
    # trunk (a rerun, or any model after the first when the trunk memo was cold) other initial
    # weights and dropout masks than the same command into an empty folder.
    keras.utils.set_random_seed(seed)
    # The training precision applies to this build only: what is saved and loaded computes in float32.
    with strategy.scope(), runtime.precision_scope(runtime.start(config.precision)["precision"]):
        tuning = Tuning(config.trainable_layers, config.train_batchnorm, config.dropout)
        kwargs = dict(image_size=config.image_size, weights=place.weights, tuning=tuning)
        model, trainable = (build_router(**kwargs) if job.key == "router"
                            else build_part_model(job.key, **kwargs))
        trunk, head = split_model(model, config.trainable_layers)
        if run_trunk is not None:
            # The run's trunk is the one every model shares (with --weights none, it is the only
            # copy of the random initialisation the first model drew).
            copy_weights(run_trunk, trunk)
        fitted = head if config.mode == "cached" else join_model(trunk, head)
        set_xla(trunk)
        compile_model(fitted, config.learning_rate, jit_compile=gpu)
    shared = shared_settings(config, place.origin, trainable, place.recipe)
    if place.existing is not None:
        check_shared(place.existing, shared, place.run_dir)
    return _Built(model, trunk, head, fitted, shared, run_trunk), strategy


def _check_free_space(job, built):
    """Refuses to train into a disk that cannot hold this model's files: the head and its save's
    temporary copy, Keras' backup (weights and optimizer moments), the best weights, and the
    run's trunk when this is its first model."""
    nbytes = 6 * 4 * built.fitted.count_params() + (4 * built.trunk.count_params() if built.run_trunk is None else 0)
    check_free_space(job.home, nbytes, f"training {job.key} (model files and checkpoints)")


def _datasets(job, built, seed):
    """(train, hold-out) datasets for the mode, the train one shuffled by `seed`, sharded by element across
    workers; the images they cannot read are recorded in the job's `skips`."""
    if job.config.mode == "cached":
        train_ds, val_ds = _cached_datasets(job, built, seed)
    else:
        train_ds, val_ds = _full_datasets(job, seed)
    return shardable(train_ds), shardable(val_ds)


def _fit(job, built, datasets, member=0):
    """Fits with resumable backups, best-by-hold-out-loss weights, early stopping and logs.

    A fit that had finished when its command was killed (a member of an ensemble before the next, or a model
    during its save) is not fitted again on `resume`: its best weights are read back.
    """
    config, resume = job.config, job.resume
    work = checkpoint_dir(job.home, job.key, member)
    backup, log_path, best_path = work / "backup", work / "log.csv", work / "best.weights.h5"
    finished = work / "finished"
    resume_point(job.key, work, resume, config, job.place.run_dir if job.place.scratch is not None else None)
    if resume and finished.is_file() and best_path.is_file():
        # The file holds the optimizer's state too: built first (in the model's strategy), it loads whole and quietly.
        with built.fitted.distribute_strategy.scope():
            built.fitted.optimizer.build(built.fitted.trainable_variables)
        built.fitted.load_weights(str(best_path))
        return log_path
    callbacks = [
        # BackupAndRestore comes first, so that when the CSV shows an epoch its backup exists.
        # Kept after training ends: a kill during the final save must still resume at the last
        # epoch, not from scratch. `_finalize` removes it once the model is saved and listed.
        WholeBackup(str(backup), delete_checkpoint=False),
        WholeBest(str(best_path), monitor="val_loss", save_best_only=True, save_weights_only=True,
                  initial_value_threshold=best_val_loss(log_path) if resume else None),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.3, patience=max(1, config.patience // 2),
                                          min_lr=1e-7),
        keras.callbacks.CSVLogger(str(log_path), append=resume),
        keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: runtime.raise_if_interrupted()),
        keras.callbacks.TensorBoard(str(work / "tensorboard"), write_graph=False),
    ]
    ex = job.examples
    with bdata.length_found_at_the_end():
        built.fitted.fit(datasets[0], validation_data=datasets[1], epochs=config.epochs, verbose=job.verbose,
                         shuffle=False,
                         class_weight=bdata.class_weights(ex.train_labels, ex.num_classes), callbacks=callbacks)
    if best_path.is_file():
        built.fitted.load_weights(str(best_path))
    finished.touch()
    return log_path


def _model_entry(job, built, scores, tuning, log_path, seconds):
    """The model's manifest entry: its file, labels, recipe, trunk, tuning, config, data and hold-out figures."""
    ex, config, index = job.examples, job.config, job.index
    return {
        "file": model_filename(job.key),
        "input": "trunk",
        "labels": list(PARTS) if job.key == "router" else ["normal", "abnormal"],
        "recipe": built.shared["recipe"],
        "trunk_sha256": weights_digest(built.trunk),
        **({"tuning": tuning} if tuning is not None else {}),
        "config": asdict(config),
        "runtime": runtime.start(config.precision),  # what "auto" resolved to: GPUs, precision, XLA
        "dataset": {"fingerprint": fingerprint_of(index), "synthetic": is_synthetic(index),
                    "train_images": len(ex.train_paths),
                    "holdout_images": len(ex.val_paths),
                    "holdout_studies": int(ex.val_images[ex.val_images.path.isin(ex.val_paths)].study.nunique()),
                    "unread": [s.as_dict() for s in job.skips if s.path in set(ex.train_paths) | set(ex.val_paths)]},
        "holdout": {k: float(v) for k, v in scores.items()},
        "epochs_run": epochs_run(log_path),
        "seconds": seconds,
        "log": str(Path(os.path.relpath(log_path, job.home))),
    }


def _finalize(job, members):
    """Combines the members' hold-out softmax (their mean), calibrates the model and tunes a part's threshold on
    it, saves every member's head (and the run's first trunk), and records the model."""
    first, config = members[0].built, job.config
    probs = combined_probs(members)
    scores = holdout_figures(probs, members[0].onehot)
    # The hold-out dataset served every hold-out image but those recorded as unreadable.
    kept = [p for p in job.examples.val_paths if p not in job.skips]
    calibration, tuning = decide_on_holdout(job.key, probs, kept, job.examples)
    for number, member in enumerate(members):  # unlisted until the manifest names them
        save_model_atomic(member.built.head, job.home / model_filename(job.key, number))
    seconds = {stage: round(sum(m.seconds.get(stage, 0) for m in members), 2) for stage in members[0].seconds}
    entry = _model_entry(job, first, scores, tuning, members[0].log_path, seconds)
    entry["calibration"] = calibration
    entry["members"] = [member_entry(job.key, number, member, job.home) for number, member in enumerate(members)]
    # One lock around the trunk check, the trunk's save and the manifest's update: a training
    # started beside this one into the same folder waits here, and cannot slip its trunk in between.
    record = ModelRecord.from_json(job.key, entry, job.home / MANIFEST)
    with run_lock(job.home):
        trunk_entry = None if first.run_trunk is not None else save_trunk_once(
            job.home, first.trunk, trunk_cut(first.model, config.trainable_layers)[1], job.key)
        if job.place.scratch is None:
            record_model(job.place.run_dir, job.key, first.shared, entry, trunk=trunk_entry)
            write_model_card(job.place.run_dir)
    # Saved: nothing left to resume. A non-chief's checkpoints were only ever its own copy.
    for number in range(len(members)):
        work = checkpoint_dir(job.home, job.key, number)
        shutil.rmtree(work if job.place.scratch else work / "backup", ignore_errors=True)
        (work / "finished").unlink(missing_ok=True)
    return record


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
        (the model's `ModelRecord`, whose `dataset["unread"]` lists the images of its data that could
        not be read, the trained full Keras model).
    """
    job = prepare_job(target, index, models_dir, config, resume, keras_verbosity(verbose))
    members = []
    for number in range(config.ensemble):
        if config.ensemble > 1:
            log.info(f"{job.key} member {number + 1}/{config.ensemble}")
        members.append(_fit_member(job, number, members[0].built if members else None))
    return _finalize(job, members), members[0].built.model


def _fit_member(job, number, first):
    """Builds, fits and scores on the hold-out one member of the model (`first`: member 0's `_Built`)."""
    clock = _Stopwatch()
    seed = member_seed(job.config.seed, number)
    built, strategy = _build(job, seed, first)
    _check_free_space(job, built)
    clock.lap("build")
    with strategy.scope():
        datasets = _datasets(job, built, seed)
    clock.lap("data")  # the trunk-feature cache, when this model is the first to need it
    log_path = _fit(job, built, datasets, number)
    clock.lap("fit")
    probs, onehot = holdout_outputs(built.fitted, datasets[1])  # the one pass over the hold-out
    return Member(built, seed, probs, onehot, log_path, clock.laps)


class _Stopwatch:
    """Seconds per named stage of one model's training, recorded in its manifest entry (`seconds`)."""

    def __init__(self):
        self.laps, self._last = {}, time.perf_counter()

    def lap(self, name):
        """Closes the stage `name` at now."""
        now = time.perf_counter()
        self.laps[name] = round(now - self._last, 2)
        self._last = now


def _kept_from_before(models_dir, key, done):
    """A model finished before an interruption, when every member still loads: its entry, else None."""
    if key not in done:
        return None
    members = done[key].members
    if any(checkpoint_dir(models_dir, key, number).joinpath("backup").exists() for number in range(len(members))):
        return None
    try:
        for member in members:
            load_model(Path(models_dir) / member["file"])
    except ManifestError as exc:
        log.warning(f"{key}: {exc}; training it again")
        return None
    log.info(f"{key}: already trained in this run, kept")
    return done[key]


def train_all(index, models_dir, config=TrainConfig(), resume=False, verbose="auto", parts=PARTS):
    """Trains the router, then each part's model, into one run folder.

    A part absent from the data gets one line and is left out; the router learns the parts
    present, and the run covers those. A part that is present but cannot be trained (no abnormal
    studies, say) is a failure, reported, and the others still train. With `resume`, models that
    finished before an interruption are kept and the interrupted one continues from its last
    completed epoch. Each model gets a header ("XR_ELBOW 2/8") and one summary line.

    Returns:
        ({key: `ModelRecord`}, {key: error message}).
    """
    entries, failures = {}, {}
    done = getattr(read_manifest(models_dir, required=False), "models", {}) if resume else {}
    in_data = set(index.images.loc[index.images["split"] == "train", "part"])
    for part in parts:
        if model_key(part) not in in_data:  # a subset of the parts is a dataset, not a failure
            log.info(f"{model_key(part)}: absent from the training data; not trained")
    targets = ["router", *(p for p in parts if model_key(p) in in_data)]
    for number, target in enumerate(targets, 1):
        key = model_key(target)
        log.info(f"{key} {number}/{len(targets)}")
        kept = _kept_from_before(models_dir, key, done)
        if kept is not None:
            entries[key] = kept
            continue
        try:
            entries[key], _ = train_model(key, index, models_dir, config, resume=resume,
                                          verbose=keras_verbosity(verbose))
        except ValueError as exc:
            failures[key] = str(exc)
            log.warning(f"could not train {target}: {exc}")
            continue
        log.info(summary_line(key, entries[key]))
    return entries, failures


def unread_images(entries):
    """The images the models of a run could not read, each once, as `Skip`s (from their entries)."""
    return list(SkipLog(Skip(**s) for entry in entries for s in entry.dataset.get("unread", [])))
