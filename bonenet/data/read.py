"""The read path: one function reads and prepares an image, and what could not be used is a `Skip`.

Every stage that turns a file into a model input goes through `read_prepared` (or `try_prepared`,
its non-raising form): indexing a dataset checks headers only (`bonenet.data.decode.check_image_file`),
then training's tf.data pipelines, the trunk-feature cache, evaluate, predict and serve read and
prepare here. An input that fails becomes a `Skip` (the file, the reason, the stage) that the
stage returns; only the command line prints it.
"""

from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from bonenet.data.decode import DICOM_PREAMBLE, IMAGE_SUFFIXES, ImageReadError, decode_gray, image_format, load_gray

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


def find_images(path):
    """Lists the images a user pointed at, and what else a folder holds, with why it is left out.

    A file is taken as given. A folder is searched recursively: files named like images
    (`bonenet.data.decode.IMAGE_SUFFIXES`) and files without such a name whose first bytes are a PNG,
    JPEG or DICOM (DICOM exports often have no suffix) are images; everything else, a resource
    fork (`._*`), a text file, `.DS_Store`, a broken link or an empty folder, is listed as
    skipped. Raises ImageReadError for a path that does not exist.

    Returns:
        (image paths, [(path, reason)] skipped), both in path order.
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: does not exist")
    if path.is_file():
        return [path], []
    images, skipped = [], []
    for p in sorted(path.rglob("*")):
        if p.is_dir():
            if not any(p.iterdir()):
                skipped.append((p, "empty folder"))
        elif not p.exists():
            skipped.append((p, "broken link (its target does not exist)"))
        elif p.name.startswith("._"):
            skipped.append((p, "macOS resource fork (._ file), not an image"))
        elif p.suffix.lower() in IMAGE_SUFFIXES or _looks_like_an_image(p):
            images.append(p)
        else:
            skipped.append((p, "not a PNG, JPEG or DICOM image"))
    return images, skipped


def _looks_like_an_image(path):
    try:
        with open(path, "rb") as f:
            return image_format(f.read(DICOM_PREAMBLE + 4)) is not None
    except OSError:
        return True  # an image-like name or not, reading it will say what is wrong, naming it


def group_inputs(paths, per_image=False):
    """Turns user inputs into work items, in input order: the rule by which images become studies.

    A file named on its own is a study of one image. A folder's images are grouped by the folder
    that directly holds them, each group being one study (a MURA study folder, or any folder of
    views); subfolders are studies of their own. With `per_image`, every image is a study of one.
    A study whose images the router sends to different parts is flagged (`bonenet.scoring.study`).

    Returns:
        A list of ("image", path, [path]), ("study", folder, [its images]), ("skip", path, reason) for
        what a folder holds besides images, or ("error", path, reason).
    """
    items = []
    for raw in paths:
        path = Path(raw)
        try:
            exists = path.exists()
        except OSError as exc:  # a name too long for the file system, say: this input alone fails
            items.append(("error", path, f"cannot be read ({exc.strerror or exc})"))
            continue
        if not exists:
            items.append(("error", path, "does not exist"))
        elif path.is_dir():
            studies = {}
            images, skipped = find_images(path)
            for image in images:
                studies.setdefault(image.parent, []).append(image)
            if not studies:
                items.append(("error", path, "no PNG, JPEG or DICOM images in this folder "
                                             f"({', '.join(IMAGE_SUFFIXES)})"))
            for folder, images in sorted(studies.items()):
                items.extend([("image", image, [image]) for image in images] if per_image
                             else [("study", folder, images)])
            items.extend(("skip", file, reason) for file, reason in skipped)
        else:
            items.append(("image", path, [path]))
    return items
