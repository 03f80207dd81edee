"""sha256 digests, the one home for them: of a file, of a list of files, of a folder's data, of a model's weights.

A digest names content: a trunk by its weight values, a backbone file by its bytes, pretraining data by its
pixels. Every cache's key is one `cache_key`: what the cached data depends on, and its files' stamps.
"""

import hashlib
import json
import os
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


def file_stamps(paths):
    """A sha256 over each file's path, size and modification time, in order: the one rule by which a
    cache knows its images, so an image edited in place never hits an old cache."""
    h = hashlib.sha256()
    for p in paths:
        try:
            st = os.stat(p)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        h.update(f"{p}\0{stamp}\0".encode())
    return h.hexdigest()


def cache_key(facts, paths, length=20):
    """The one cache-key scheme: a short sha256 of `facts` (a JSON-able dict of everything the cached data
    depends on besides its files) and the files' stamps (`file_stamps`). A cache under another key is never
    reused."""
    h = hashlib.sha256(json.dumps(facts, sort_keys=True).encode())
    h.update(file_stamps(paths).encode())
    return h.hexdigest()[:length]
