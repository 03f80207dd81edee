"""The read path: one function reads and prepares an image, and what could not be used is a `Skip`.

Every stage that turns a file into a model input goes through `read_prepared` (or `try_prepared`,
its non-raising form): indexing a dataset checks headers only (`bonenet.imageio.check_image_file`),
then training's tf.data pipelines, the trunk-feature cache, evaluate, predict and serve read and
prepare here. An input that fails becomes a `Skip` (the file, the reason, the stage) that the
stage returns; only the command line prints it.
"""

from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from bonenet.imageio import ImageReadError, decode_gray, load_gray

SKIP_COLUMNS = ["path", "reason", "stage"]


@dataclass(frozen=True)
class Skip:
    """An input that could not be used: the file, why, and the stage that found it: "index" (listing and
    checking a dataset: headers, labels, layout) or "read" (reading and preparing an image in full)."""

    path: str
    reason: str
    stage: str = "read"

    def __str__(self):
        return f"{self.path}: {self.reason}"

    def as_dict(self):
        """The record as a JSON-ready dict."""
        return asdict(self)


def skip_from_error(exc, name, stage="read"):
    """A `Skip` from an `ImageReadError`, whose message already starts with the file's name."""
    return Skip(str(name), str(exc).removeprefix(f"{name}: "), stage)


def skip_table(skips):
    """Skip records as a table with `SKIP_COLUMNS` (how `skipped.csv` and `MuraIndex.skipped` hold them)."""
    return pd.DataFrame([s.as_dict() for s in skips], columns=SKIP_COLUMNS)


def read_gray(source, name=None):
    """A path, an upload's bytes (named `name`), or a uint8 H×W array, as a checked uint8 grayscale image.

    Raises:
        ImageReadError: "`name`: problem" (unreadable, not an image, too small…).
    """
    if isinstance(source, (bytes, bytearray)):
        return decode_gray(bytes(source), name)
    if isinstance(source, (str, Path)):
        return load_gray(source)
    return source


def read_prepared(source, recipe, size, name=None):
    """The one read-and-prepare function: `source` (see `read_gray`) through `recipe` at `size`.

    Returns:
        The uint8 size×size×3 model input.

    Raises:
        ImageReadError: naming the input and the problem.
    """
    name = name if name is not None else source if isinstance(source, (str, Path)) else "image"
    gray = read_gray(source, name)
    try:
        return recipe.apply(gray, size)
    except ValueError as exc:  # the recipe's own check (an array given directly)
        raise ImageReadError(f"{name}: {exc}") from exc


def try_prepared(path, recipe, size):
    """`read_prepared` for a pipeline: (image, None), or (None, the `Skip`) when it cannot be read."""
    path = path.decode() if isinstance(path, bytes) else str(path)
    try:
        return read_prepared(path, recipe, size), None
    except ImageReadError as exc:
        return None, skip_from_error(exc, path)


class SkipLog:
    """The skips one command meets, each file once, in the order found.

    A command makes one and hands it to the stages it runs (several tf.data pipelines, say); it is
    never module state, so nothing carries over between commands or tests.
    """

    def __init__(self, skips=()):
        self._by_path = {}
        for skip in skips:
            self.add(skip)

    def add(self, skip):
        """Records `skip` unless its file is already recorded."""
        self._by_path.setdefault(skip.path, skip)

    def note(self, path, reason, stage="read"):
        """Records a skip given as bytes or strings (from a tf.data pipeline); returns False (not kept)."""
        decode = lambda v: v.decode() if isinstance(v, bytes) else str(v)  # noqa: E731
        self.add(Skip(decode(path), decode(reason), stage))
        return False

    def __contains__(self, path):
        return str(path) in self._by_path

    def __iter__(self):
        return iter(self._by_path.values())

    def __len__(self):
        return len(self._by_path)


__all__ = ["Skip", "SkipLog", "read_gray", "read_prepared", "skip_from_error", "skip_table", "try_prepared"]
