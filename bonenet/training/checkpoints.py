"""A model's training work folder: its checkpoints, its log, the settings it trains under, and resuming.

`<run>/checkpoints/<router|part>/` holds Keras' backup (weights, optimizer and epoch, written after every
epoch), the best weights by hold-out loss, the CSV and TensorBoard logs, and `settings.json`. A killed
training continues from its last epoch with `--resume`, and only under the settings it was started with:
anything but the number of epochs or the cache folder would have the checkpoint continue under the old
settings while the manifest recorded the new.
"""

import json
import logging
import os
import shutil
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import keras
import pandas as pd

from bonenet.files import remove_dead_writers_temps, temp_prefix
from bonenet.parts import short_name

log = logging.getLogger(__name__)


def checkpoint_dir(run_dir, key, member=0):
    """Where a model's training work files live: `<run>/checkpoints/<router|part short name>[.m<k>]/`, member k
    (from 2) of an ensemble in its own folder."""
    name = key if key == "router" else short_name(key)
    return Path(run_dir) / "checkpoints" / (f"{name}.m{member + 1}" if member else name)


@contextmanager
def _written_beside(callback, names):
    """Points the callback's path attributes `names` at temporary files beside them (named as `bonenet.files`
    names its temporary files, so a killed writer's are found and removed) for the block; when it succeeds,
    renames each file written over its path, in order. Keras writes checkpoints in place, so a kill mid-save
    (SIGKILL, an out-of-memory kill, power) left half a file that no resume could read."""
    finals = [Path(getattr(callback, name)) for name in names]
    parts = [final.parent / f"{temp_prefix(final)}{final.name}" for final in finals]
    for name, final, part in zip(names, finals, parts, strict=True):
        remove_dead_writers_temps(final)
        setattr(callback, name, str(part))
    try:
        yield
        for part, final in zip(parts, finals, strict=True):
            if part.exists():
                os.replace(part, final)
    finally:
        for name, final, part in zip(names, finals, parts, strict=True):
            setattr(callback, name, str(final))
            part.unlink(missing_ok=True)


class WholeBackup(keras.callbacks.BackupAndRestore):
    """Keras' `BackupAndRestore`, each save written whole (`_written_beside`): a resume finds the previous epoch's
    backup or the new one (or, killed between the two renames, the new weights under the previous epoch's number:
    that one epoch runs again)."""

    def _save_model(self):
        with _written_beside(self, ("_weights_path", "_training_metadata_path")):
            super()._save_model()


class WholeBest(keras.callbacks.ModelCheckpoint):
    """Keras' `ModelCheckpoint`, each save written whole (`_written_beside`): a kill mid-save leaves the previous
    best weights."""

    def _save_model(self, epoch, batch, logs):
        with _written_beside(self, ("filepath",)):
            super()._save_model(epoch, batch, logs)


def best_val_loss(log_path):
    """The lowest val_loss logged so far, so a resumed run keeps the true best checkpoint."""
    if not log_path.is_file():
        return None
    try:
        table = pd.read_csv(log_path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError):
        return None
    return float(table["val_loss"].min()) if "val_loss" in table and len(table) else None


# What a resumed training may change: how many epochs in all, where its image cache lives, and how it spreads
# over devices (the batch size is global, so a run killed on one machine may resume on two workers).
RESUMABLE_CHANGES = ("epochs", "cache_dir", "strategy")


def _check_resumable(work, config):
    """Refuses to resume a training under settings other than the ones its checkpoint was made with, naming
    each that differs; the checkpoint would continue under the old ones while the manifest recorded the new."""
    recorded = work / "settings.json"
    if not recorded.is_file():
        return
    before = json.loads(recorded.read_text())
    now = json.loads(json.dumps(asdict(config)))
    changed = [f"--{k.replace('_', '-')} {before.get(k)} → {now[k]}" for k in now
               if k not in RESUMABLE_CHANGES and before.get(k) != now[k]]
    if changed:
        raise ValueError(f"{recorded}: cannot --resume under other settings than the interrupted training's "
                         f"({'; '.join(changed)}); run it with its own settings, or without --resume to start over")


def resume_point(key, work, resume, config, chief_run=None):
    """Prepares model `key`'s work folder: kept to resume, after checking the settings match
    (`_check_resumable`), else emptied; records the settings it trains under.

    Args:
        chief_run: for a non-chief worker, the chief's run folder, whose checkpoints it copies to resume.
    """
    if resume and chief_run is not None:
        # Every worker must resume at the chief's epoch, from the chief's weights. Its checkpoints
        # stay put until this fit's first epoch ends, which needs this worker too.
        chief_work = checkpoint_dir(chief_run, key)
        shutil.rmtree(work, ignore_errors=True)
        if chief_work.is_dir():
            shutil.copytree(chief_work, work, ignore=shutil.ignore_patterns("tensorboard"))
    if resume:
        _check_resumable(work, config)
        meta = work / "backup" / "training_metadata.json"
        start = json.loads(meta.read_text())["epoch"] if meta.is_file() else 0
        log.info(f"{key}: resuming from epoch {start}" if start else
                 f"{key}: nothing to resume, starting at epoch 0")
    elif work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    (work / "settings.json").write_text(json.dumps(asdict(config), indent=2))
