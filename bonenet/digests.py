"""sha256 digests, the one home for them: of a file, of a list of files, of a folder's data, of a model's weights.

A digest names content: a trunk by its weight values, a backbone file by its bytes, pretraining data by its
pixels. The feature cache's key (`bonenet.training.features.features_key`) is built from them.
"""

import hashlib
from pathlib import Path

import numpy as np


def file_sha256(path):
    """sha256 of a file's bytes, read in chunks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def files_digest(paths):
    """sha256 over each file's name and bytes, in the order given: names the exact pixels of a list of images."""
    h = hashlib.sha256()
    for path in paths:
        h.update(Path(path).name.encode() + b"\0")
        h.update(Path(path).read_bytes())
    return h.hexdigest()


def folder_digest(root, suffixes=(".csv", ".png")):
    """sha256 over the relative path and bytes of every file under `root` with one of `suffixes`, in sorted
    order: names a generated dataset's exact pixels."""
    h = hashlib.sha256()
    for path in sorted(Path(root).rglob("*")):
        if path.is_file() and path.suffix in suffixes:
            h.update(str(path.relative_to(root)).encode() + b"\0")
            h.update(path.read_bytes())
    return h.hexdigest()


def weights_digest(model):
    """sha256 of a model's weight values, in layer order: identifies a trunk or head by content."""
    h = hashlib.sha256()
    for w in model.weights:
        # Values and shapes only: layer names are numbered per process and would differ.
        h.update(str(tuple(w.shape)).encode())
        h.update(np.ascontiguousarray(w.numpy()).tobytes())
    return h.hexdigest()
