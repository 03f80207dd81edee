"""Training an ensemble: K differently seeded members of one model, their probabilities averaged.

In cached mode the members are K heads on the run's one trunk and its one feature cache (K times the
head epochs, no more trunk passes); in full mode, K whole networks. Every member is selected on the
same hold-out; the model's temperature and threshold are then fitted on the members' mean, which is
what predicts. Each member is its own head file, listed with its weights digest in the manifest
(`bonenet.run.store.load_members` checks them); at load they become one Keras model
(`bonenet.models.ensemble.ensemble_head`).
"""

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bonenet.digests import weights_digest
from bonenet.run.manifest import model_filename
from bonenet.training.holdout import holdout_figures


@dataclass(frozen=True)
class Member:
    """One fitted member of a model: what was built, its seed, its hold-out softmax and labels, its log and times."""

    built: object
    seed: int
    probs: np.ndarray
    onehot: np.ndarray
    log_path: Path
    seconds: dict


def member_seed(seed, member):
    """Member `member`'s seed for initialisation, dropout and shuffling; member 0's is the run's own, so a
    one-member model is the model trained before ensembles. The hold-out split and the cached views keep the
    run's seed: every member is selected on the same hold-out and reads the same cache."""
    return int(seed) + 7919 * int(member)


def combined_probs(members):
    """The model's hold-out softmax: the mean of its members'."""
    return np.mean([m.probs for m in members], axis=0)


def epochs_run(log_path):
    """Epochs a training's CSV log records (0 without a log)."""
    return len(pd.read_csv(log_path)) if Path(log_path).is_file() else 0


def member_entry(key, number, member, home):
    """A member's manifest entry: its head file and weights digest, seed, epochs, hold-out figures and log."""
    return {"file": model_filename(key, number), "sha256_weights": weights_digest(member.built.head),
            "seed": member.seed, "epochs_run": epochs_run(member.log_path),
            "holdout": holdout_figures(member.probs, member.onehot),
            "log": str(Path(os.path.relpath(member.log_path, home)))}
