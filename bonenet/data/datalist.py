"""Any labelled collection, not only the MURA tree: datalist CSVs, and FracAtlas turned into one.

A datalist is a CSV with a header row and the columns

    path,patient,study,part,label[,split]

- `path`: the image (PNG, JPEG or DICOM, told by its bytes); relative paths resolve against the
  CSV's folder.
- `patient`, `study`: identifiers. A study is one patient's study: rows with the same patient and
  study are one study, whose images must agree on part, label and split.
- `part`: `wrist` or `XR_WRIST`, any case.
- `label`: 1 or `abnormal`, 0 or `normal`.
- `split` (optional): `train` or `valid`. Without it, `valid` (the role MURA's official valid
  split plays, the split `evaluate` scores) is a patient-grouped share of `DATALIST_VALID_FRACTION` of the
  studies, stratified by part and label, drawn with the fixed seed `VALID_SEED`, so that every
  command sees the same split.

`read_dataset` takes a MURA-v1.1 folder (or its parent) or a datalist, and returns the same checked
`MuraIndex` either way; every command that takes `--data-root` reads through it.
"""

import logging
import os
from pathlib import Path

import pandas as pd

from bonenet.configs import DATALIST_VALID_FRACTION
from bonenet.data.mura import SPLITS, MuraError, file_problem, holdout_split, read_mura, tabulate
from bonenet.parts import parse_part

DATALIST_COLUMNS = ("path", "patient", "study", "part", "label")
VALID_SEED = 0
log = logging.getLogger(__name__)
_LABELS = {"0": 0, "1": 1, "normal": 0, "abnormal": 1, "negative": 0, "positive": 1}


def is_datalist(data_root):
    """Whether `data_root` names a datalist CSV rather than a MURA folder."""
    return Path(data_root).suffix.lower() == ".csv"


def read_dataset(data_root, splits=SPLITS, verify=False):
    """Indexes and checks a MURA-v1.1 folder (or its parent) or a datalist CSV.

    Args:
        data_root: the folder or the CSV.
        splits: which splits to keep. Defaults to both.
        verify: decode every image fully. Defaults to False (headers and trailers only).

    Returns:
        A `MuraIndex`; unusable files, rows and studies are listed in its `skipped` table.
    """
    if is_datalist(data_root):
        return read_datalist(data_root, splits, verify)
    return read_mura(data_root, splits, verify)


def _read_table(csv_path):
    if not csv_path.is_file():
        raise MuraError(f"{csv_path}: datalist does not exist")
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except UnicodeDecodeError as exc:
        raise MuraError(f"{csv_path}: line {_undecodable_line(csv_path)} is not UTF-8 text ({exc.reason}); save the "
                        "datalist as UTF-8") from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise MuraError(f"{csv_path}: unreadable datalist CSV ({str(exc).strip().splitlines()[0]})") from exc
    table.columns = [c.strip().lower() for c in table.columns]
    missing = [c for c in DATALIST_COLUMNS if c not in table.columns]
    if missing:
        raise MuraError(f"{csv_path}: datalist lacks column(s) {', '.join(missing)}; it needs "
                        f"{','.join(DATALIST_COLUMNS)}[,split] with a header row")
    return table


def _undecodable_line(csv_path):
    """The number of the first line of a file that is not UTF-8."""
    for number, line in enumerate(Path(csv_path).read_bytes().splitlines(), 1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            return number
    return None


def split_leaks(rows):
    """The patients with studies in both splits, sorted: a model scored on patients it trained on."""
    splits = {}
    for _, split, _, patient, _, _ in rows:
        splits.setdefault(patient, set()).add(split)
    return sorted(patient for patient, found in splits.items() if len(found) > 1)


def _row(csv_path, number, row, has_split):
    """One datalist row as (path, split, part, patient, study, label), or (path, reason) to skip."""
    where = f"{csv_path.name} row {number}"
    raw = row["path"].strip()
    if not raw:
        return (f"{csv_path}:{number}", f"{where}: empty path")
    path = Path(raw).expanduser()
    path = str(path if path.is_absolute() else csv_path.parent / path)
    try:
        part = parse_part(row["part"])
    except ValueError:
        return (path, f"{where}: unknown part {row['part']!r}")
    label = _LABELS.get(row["label"].strip().lower())
    if label is None:
        return (path, f"{where}: label {row['label']!r} is not 0/1 or normal/abnormal")
    split = row["split"].strip().lower() if has_split else "train"
    if split not in SPLITS:
        return (path, f"{where}: split {row['split']!r} is not train or valid")
    patient, study = row["patient"].strip(), row["study"].strip()
    if not patient or not study:
        return (path, f"{where}: empty patient or study")
    # The study key names the patient too, so two patients' "study1" never merge.
    return (path, split, part, patient, f"{patient}/{study}", label)


def read_datalist(csv_path, splits=SPLITS, verify=False):
    """Indexes and checks a datalist CSV (see the module docstring for its columns).

    Every image is checked as a MURA image is (`bonenet.data.mura.file_problem`); a row with a bad
    value, a path listed twice, and every image of a study whose rows disagree on part, label or
    split are skipped with their reason. Nothing is relabelled.

    Returns:
        A `MuraIndex` whose `root` is the CSV.
    """
    csv_path = Path(csv_path).expanduser().resolve()
    table = _read_table(csv_path)
    has_split = "split" in table.columns
    rows, skipped, seen = [], [], {}
    for number, row in enumerate(table.to_dict("records"), start=2):  # line 1 is the header
        parsed = _row(csv_path, number, row, has_split)
        if len(parsed) == 2:
            skipped.append(parsed)
        elif parsed[0] in seen:
            first, label = seen[parsed[0]]
            if label != parsed[5]:  # which label is right, BoneNet cannot know: never guess
                raise MuraError(f"{csv_path}: lines {first} and {number} list {parsed[0]} with labels {label} and "
                                f"{parsed[5]}; keep the one that is right")
            skipped.append((parsed[0], f"listed twice in {csv_path.name} (lines {first} and {number})"))
        else:
            seen[parsed[0]] = (number, parsed[5])
            rows.append(parsed)
    if not rows:
        raise MuraError(f"{csv_path}: the datalist has no usable rows ({len(table)} row(s) under its header)")
    rows = _consistent_studies(rows, skipped)
    if not has_split:
        rows = _assign_valid(rows, csv_path)
    leaks = split_leaks(rows)
    if leaks:
        log.warning(f"{csv_path}: {len(leaks)} patient(s) have studies in both train and valid (for example "
                    f"{leaks[0]}): a model is then scored on patients it trained on, which flatters every figure")
    kept = []
    for row in rows:
        if row[1] not in splits:
            continue
        reason = file_problem(row[0], verify)
        if reason is None:
            kept.append(row)
        else:
            skipped.append((row[0], reason))
    return tabulate(csv_path, kept, skipped, verify)


def _consistent_studies(rows, skipped):
    """Drops (and lists) every image of a study whose rows disagree on split, part or label."""
    values = {}
    for _, split, part, _, study, label in rows:
        values.setdefault(study, set()).add((split, part, label))
    bad = {study for study, found in values.items() if len(found) > 1}
    for row in rows:
        if row[4] in bad:
            skipped.append((row[0], f"study {row[4]}: its images disagree on split, part or label"))
    return [row for row in rows if row[4] not in bad]


def _assign_valid(rows, csv_path):
    """Marks a patient-grouped, part-and-label-stratified share of the studies as `valid`."""
    studies = pd.DataFrame([(study, "train", part, patient, label) for _, _, part, patient, study, label in rows],
                           columns=["study", "split", "part", "patient", "label"]).drop_duplicates("study")
    if studies.empty:
        return rows
    try:
        held = holdout_split(studies, DATALIST_VALID_FRACTION, VALID_SEED)
    except ValueError as exc:
        raise MuraError(f"{csv_path}: no split column, and {exc}; add a split column (train/valid)") from exc
    valid = set(held.loc[held["holdout"], "study"])
    return [(p, "valid" if study in valid else "train", part, patient, study, label)
            for p, _, part, patient, study, label in rows]


def fracatlas_datalist(fracatlas_root, out_csv):
    """Writes a datalist of FracAtlas' hand and shoulder radiographs (CC BY 4.0).

    Takes the images flagged with exactly one region among hand, leg, hip and shoulder, where that
    region is hand (→ XR_HAND) or shoulder (→ XR_SHOULDER). Abnormal is fractured or hardware, as
    MURA's "abnormal" includes implants. FracAtlas publishes no patient identifiers, so each image
    is its own study and its own patient: a patient's other images may fall on the other side of a
    split, which flatters any figure computed on it. No split column: `read_datalist` draws one.

    Args:
        fracatlas_root: the folder holding `dataset.csv` and `images/`.
        out_csv: the datalist to write; paths in it are relative to its folder.

    Returns:
        The datalist as a DataFrame.
    """
    from bonenet.files import file_written_whole

    root = Path(fracatlas_root).expanduser().resolve()
    source = root / "dataset.csv"
    if not source.is_file():
        raise MuraError(f"{source}: FracAtlas table does not exist (expected dataset.csv and images/ in {root})")
    table = pd.read_csv(source)
    missing = [c for c in ("image_id", "hand", "leg", "hip", "shoulder", "fractured", "hardware") if c not in table]
    if missing:
        raise MuraError(f"{source}: no column {', '.join(missing)} (FracAtlas' dataset.csv has image_id, the region "
                        "flags hand, leg, hip and shoulder, fractured and hardware)")
    regions = table[["hand", "leg", "hip", "shoulder"]].sum(axis=1)
    chosen = table[(regions == 1) & ((table["hand"] == 1) | (table["shoulder"] == 1))]
    out_csv = Path(out_csv).expanduser().resolve()
    stems = chosen["image_id"].str.rsplit(".", n=1).str[0]
    datalist = pd.DataFrame({
        "path": [os.path.relpath(root / "images" / name, out_csv.parent) for name in chosen["image_id"]],
        "patient": stems.to_numpy(),
        "study": stems.to_numpy(),
        "part": ["XR_HAND" if hand else "XR_SHOULDER" for hand in chosen["hand"]],
        "label": ((chosen["fractured"] == 1) | (chosen["hardware"] == 1)).astype(int).to_numpy(),
    })
    with file_written_whole(out_csv) as tmp:
        datalist.to_csv(tmp, index=False)
    return datalist
