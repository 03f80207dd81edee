"""Indexing MURA-v1.1: the official CSVs (or a walk of the tree), checked and tabulated.

Every file that cannot be used is skipped and listed with a reason; nothing is dropped silently
and nothing is relabelled.
"""

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bonenet.configs import HOLDOUT_FRACTION
from bonenet.data.decode import ImageReadError, check_image_file
from bonenet.data.read import SKIP_COLUMNS, Skip, read_gray, skip_from_error, skip_table
from bonenet.parts import PART_INDEX, PARTS
from bonenet.progress import Progress

SPLITS = ("train", "valid")
HEADER_CHECK = "header and trailer of every image (PNG, JPEG or DICOM, told by its bytes; at least 8×8)"
INDEX_IMAGE_COLUMNS = ["path", "split", "part", "patient", "study", "label"]
INDEX_STUDY_COLUMNS = ["study", "split", "part", "patient", "label", "n_images"]

# split/XR_PART/patientNNNNN/studyK_{positive|negative}[/imageN.png], anywhere in a path.
_PATH_RE = re.compile(
    r"(?:^|/)(?P<study>(?P<split>train|valid)/(?P<part>XR_[A-Z]+)/(?P<patient>patient\d+)/"
    r"study\d+_(?P<suffix>positive|negative))(?:/(?P<image>[^/]+))?/?$"
)


class MuraError(ValueError):
    """A MURA folder or CSV that cannot be read at all (as opposed to a skipped file)."""


@dataclass(frozen=True)
class MuraIndex:
    """The checked contents of a MURA-v1.1 folder.

    Attributes:
        root: the MURA-v1.1 folder.
        images: one row per usable image: `path` (absolute), `split`, `part`, `patient`, `study`, `label`.
        studies: one row per usable study: `study`, `split`, `part`, `patient`, `label`, `n_images`.
        skipped: one row per unusable file, row or study: `path`, `reason`, `stage` (`index`);
            `skips` gives them as `bonenet.data.read.Skip` records.
        check: how image files were checked.
    """

    root: Path
    images: pd.DataFrame
    studies: pd.DataFrame
    skipped: pd.DataFrame
    check: str = HEADER_CHECK

    @property
    def skips(self):
        """The skipped files as `Skip` records."""
        return [Skip(*row) for row in self.skipped[SKIP_COLUMNS].itertuples(index=False)]


def resolve_data_root(data_root):
    """Returns the MURA-v1.1 folder given it or its parent.

    Raises:
        MuraError: when neither `data_root` nor `data_root/MURA-v1.1` looks like MURA.
    """
    root = Path(data_root).expanduser()
    if not root.exists():
        raise MuraError(f"{root}: data root does not exist")
    for candidate in (root, root / "MURA-v1.1"):
        if any((candidate / s).is_dir() for s in SPLITS) or any(
            (candidate / f"{s}_image_paths.csv").is_file() for s in SPLITS
        ):
            return candidate.resolve()
    raise MuraError(
        f"{root}: not a MURA-v1.1 folder (expected train/, valid/ and the four CSVs here or in {root / 'MURA-v1.1'})"
    )


def _read_csv(path, ncols):
    """Reads a headerless MURA CSV; drops a header row if one is present.

    The official files have no header, so `header=None` keeps the first row; a row whose first
    field is not a MURA path is taken for a header only when it is the first row.
    """
    try:
        table = pd.read_csv(path, header=None, dtype=str, keep_default_na=False, skip_blank_lines=True)
    except pd.errors.EmptyDataError:
        return pd.DataFrame(columns=range(ncols))
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise MuraError(f"{path}: unreadable CSV ({exc})") from exc
    if table.shape[1] < ncols:
        raise MuraError(f"{path}: expected {ncols} column(s), found {table.shape[1]}")
    if len(table) and not _PATH_RE.search(table.iloc[0, 0].strip()):
        table = table.iloc[1:]
    return table.reset_index(drop=True)


def _walk_split(root, split):
    """Yields relative paths of every file under `root/split`, sorted for determinism."""
    base = root / split
    if not base.is_dir():
        return []
    found = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        found.extend(f"{rel_dir}/{name}" for name in sorted(filenames))
    return found


def _read_split(root, split, skipped):
    """Returns (image rows, {study: csv label}) for one split, from its CSVs or a walk."""
    images_csv = root / f"{split}_image_paths.csv"
    labels_csv = root / f"{split}_labeled_studies.csv"
    on_disk = _walk_split(root, split)
    rows, labels = [], {}
    if images_csv.is_file() and labels_csv.is_file():
        listed = []
        for entry in _read_csv(images_csv, 1).iloc[:, 0]:
            match = _PATH_RE.search(entry.strip())
            if not match or not match.group("image"):
                skipped.append((entry, f"{images_csv.name}: not a MURA image path"))
                continue
            listed.append(f"{match.group('study')}/{match.group('image')}")
        for entry, value in _read_csv(labels_csv, 2).iloc[:, :2].itertuples(index=False):
            match = _PATH_RE.search(entry.strip())
            if not match or match.group("image") or value.strip() not in ("0", "1"):
                skipped.append((entry, f"{labels_csv.name}: not a 'study path,0|1' row"))
                continue
            labels[match.group("study")] = int(value)
        listed_set = set(listed)
        for rel in on_disk:
            if rel not in listed_set:
                reason = check_image_file(root / rel) or f"not listed in {images_csv.name}"
                skipped.append((str(root / rel), reason))
        seen = set()
        for rel in listed:
            if rel in seen:
                skipped.append((str(root / rel), f"listed twice in {images_csv.name}"))
                continue
            seen.add(rel)
            rows.append(rel)
    else:
        missing = [p.name for p in (images_csv, labels_csv) if not p.is_file()]
        if on_disk:
            warnings.warn(f"{root}: {', '.join(missing)} missing; indexing {split} by walking the folder tree", stacklevel=2)
        rows = on_disk
    return rows, labels


def _decode_problem(path):
    """None when `path` reads fully, else why not (the `--verify` check, by the read path's decoder)."""
    try:
        read_gray(path)
    except ImageReadError as exc:
        return skip_from_error(exc, path).reason
    return None


def _image_row(root, rel, split, labels, use_csv_labels, verify):
    """One listed image checked: (its `INDEX_IMAGE_COLUMNS` row, None), or (None, why it is skipped)."""
    path = root / rel
    match = _PATH_RE.search(rel)
    if not match or not match.group("image"):
        return None, "not in split/XR_PART/patient/study_*/image layout"
    if match.group("part") not in PART_INDEX:
        return None, f"unknown body part folder {match.group('part')}"
    reason = file_problem(path, verify)
    if reason is not None:
        return None, reason
    study = match.group("study")
    suffix_label = int(match.group("suffix") == "positive")
    if use_csv_labels and study not in labels:
        return None, f"study not listed in {split}_labeled_studies.csv"
    if use_csv_labels and labels[study] != suffix_label:
        return None, f"label {labels[study]} in {split}_labeled_studies.csv disagrees with folder suffix"
    return (str(path), split, match.group("part"), match.group("patient"), study, suffix_label), None


def read_mura(data_root, splits=SPLITS, verify=False):
    """Indexes a MURA-v1.1 folder (or its parent) and checks it.

    Uses the official CSVs where present and walks the tree where not. Checks that every listed
    image exists and is a whole PNG, JPEG or DICOM of a usable size (`check_image_file`, the
    decoder's own header rules), that each CSV label agrees with its folder suffix
    and that every study keeps at least one image. Unusable entries go to `skipped`.

    Args:
        data_root: the MURA-v1.1 folder or its parent.
        splits: which splits to read. Defaults to both.
        verify: decode every image fully (slow: minutes for MURA), which also finds corrupt
            bodies between an intact signature and trailer. Defaults to False (first and last
            bytes only).

    Returns:
        A `MuraIndex`.
    """
    root = resolve_data_root(data_root)
    skipped, image_rows = [], []
    for split in splits:
        rels, labels = _read_split(root, split, skipped)
        use_csv_labels = bool(labels) or (root / f"{split}_labeled_studies.csv").is_file()
        bar = Progress(len(rels), f"verify {split}: decoding every image", unit="image", enabled=verify)
        for rel in rels:
            row, reason = _image_row(root, rel, split, labels, use_csv_labels, verify)
            if row is None:
                skipped.append((str(root / rel), reason))
            else:
                image_rows.append(row)
            bar.update()
        bar.close()
        with_images = {r[4] for r in image_rows if r[1] == split}
        for study in sorted(set(labels) - with_images):
            skipped.append((str(root / study), "study has no usable images"))
    return tabulate(root, image_rows, skipped, verify)


def tabulate(root, image_rows, skipped, verify):
    """A `MuraIndex` from checked image rows (`INDEX_IMAGE_COLUMNS` tuples) and (path, reason) skips."""
    images = pd.DataFrame(image_rows, columns=INDEX_IMAGE_COLUMNS)
    images["label"] = images["label"].astype(np.int64)
    studies = (
        images.groupby("study", sort=True)
        .agg(split=("split", "first"), part=("part", "first"), patient=("patient", "first"),
             label=("label", "first"), n_images=("path", "size"))
        .reset_index()
    )[INDEX_STUDY_COLUMNS]
    return MuraIndex(root, images, studies, skip_table(Skip(str(p), r, "index") for p, r in skipped),
                     **({"check": "every image decoded"} if verify else {}))


def file_problem(path, verify=False):
    """Why an image file cannot be used (header check, or a full decode with `verify`); None if usable."""
    return check_image_file(path) or (_decode_problem(path) if verify else None)


def summarize(index):
    """Counts images, studies, patients and normal/abnormal studies per split and part.

    Returns:
        The `data-summary --json` dict: `{"splits": {split: {part: counts}}, "totals": {...},
        "skipped": [{"path", "reason"}]}`.
    """

    def counts(images, studies):
        return {
            "images": int(len(images)),
            "studies": int(len(studies)),
            "patients": int(studies["patient"].nunique()),
            "normal_studies": int((studies["label"] == 0).sum()),
            "abnormal_studies": int((studies["label"] == 1).sum()),
        }

    result = {"splits": {}, "totals": {}}
    for split in SPLITS:
        imgs = index.images[index.images["split"] == split]
        stds = index.studies[index.studies["split"] == split]
        result["splits"][split] = {
            part: counts(imgs[imgs["part"] == part], stds[stds["part"] == part]) for part in PARTS
        }
        result["totals"][split] = counts(imgs, stds)
    result["skipped"] = [{"path": s.path, "reason": s.reason} for s in index.skips]
    result["check"] = index.check
    return result


def format_summary(summary):
    """Renders `summarize` output as a fixed-width text table."""
    head = f"{'split':<6} {'part':<12} {'images':>7} {'studies':>8} {'patients':>9} {'normal':>7} {'abnormal':>9}"
    lines = [head, "-" * len(head)]
    for split, parts in summary["splits"].items():
        for part, c in list(parts.items()) + [("total", summary["totals"][split])]:
            lines.append(
                f"{split:<6} {part:<12} {c['images']:>7} {c['studies']:>8} {c['patients']:>9} "
                f"{c['normal_studies']:>7} {c['abnormal_studies']:>9}"
            )
    lines.append(f"checked: {summary.get('check', HEADER_CHECK)}")
    lines.append(f"skipped: {len(summary['skipped'])} file(s)")
    for entry in summary["skipped"][:20]:
        lines.append(f"  {entry['path']}: {entry['reason']}")
    if len(summary["skipped"]) > 20:
        lines.append(f"  ... {len(summary['skipped']) - 20} more (see --json)")
    return "\n".join(lines)


def holdout_split(studies, fraction=HOLDOUT_FRACTION, seed=0):
    """Marks a patient-grouped, part-and-label-stratified hold-out of the train studies.

    Grouping by patient keeps one patient's studies on one side, so the hold-out never scores
    a model on a patient it trained on.

    Args:
        studies: a study table with `split`, `part`, `patient` and `label`.
        fraction: share of train studies held out. Defaults to `HOLDOUT_FRACTION`.
        seed: shuffling seed. Defaults to 0.

    Returns:
        A copy of the train rows of `studies` with a boolean `holdout` column.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    train = studies[studies["split"] == "train"].reset_index(drop=True).copy()
    n_splits = max(2, int(round(1.0 / fraction)))
    strata = train["part"] + ":" + train["label"].astype(str)
    if train["patient"].nunique() < n_splits:
        raise ValueError(f"need at least {n_splits} train patients for a {fraction:.0%} hold-out")
    sizes = strata.value_counts()
    if sizes.max() < n_splits:  # scikit-learn's own words for this would name its n_splits
        raise ValueError(f"too few train studies for a {fraction:.0%} patient-grouped hold-out: each part needs "
                         f"at least {n_splits} normal and {n_splits} abnormal train studies, and the most any part "
                         f"and label has here is {sizes.max()} ({_stratum_name(sizes.idxmax())}); with make-synthetic, use "
                         f"--studies-per-part {4 * n_splits} or more")
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # Tiny synthetic sets have strata smaller than n_splits; the split stays grouped.
        warnings.filterwarnings("ignore", message="The least populated class in y has only", category=UserWarning)
        _, held = next(splitter.split(train, strata, groups=train["patient"]))
    train["holdout"] = False
    train.loc[held, "holdout"] = True
    return train


def _stratum_name(stratum):
    part, label = stratum.rsplit(":", 1)
    return f"{part} {'abnormal' if label == '1' else 'normal'}"


def is_synthetic(index):
    """Whether the indexed data was made by `make-synthetic` (it leaves `synthetic.json` in the tree)."""
    return (Path(index.root) / "synthetic.json").is_file()


def fingerprint_of(index):
    """A short hash of the study list, labels and image counts: names the data a model saw."""
    import hashlib

    h = hashlib.sha256()
    for row in index.studies[["study", "label", "n_images"]].itertuples(index=False):
        h.update(f"{row.study},{row.label},{row.n_images}\n".encode())
    return h.hexdigest()[:16]
