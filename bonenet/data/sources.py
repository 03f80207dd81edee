"""Real radiographs to pretrain a backbone on: a FracAtlas reader and datalists, with the benchmark's held-out
images refused by their content.

A source becomes a table of image paths and binary targets (`PretrainSource`). FracAtlas gives nine per image:
its region flags (hand, leg, hip, shoulder), its view flags (frontal, lateral, oblique), fractured and
hardware. A datalist gives its part (one column per part present) and abnormal. A backbone trained on them
learns what radiographs of bones look like, and where fractures and implants are. A plain folder of images (any
archive) gives none: the contrastive objective learns from it without labels (`bonenet.training.contrastive`).

Held-out discipline: `benchmarks/real_radiographs.py` scores the FracAtlas datalist's seeded, patient-grouped
valid fifth (`bonenet.data.datalist`). A backbone that saw those images would be scored on its own training
images. So
`benchmark_holdout` names them by the sha256 of their bytes, the FracAtlas reader leaves them out, and
`check_no_holdout` refuses any pretraining image with the same bytes, whatever its name or folder.
"""

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bonenet.configs import FRACATLAS_REGIONS
from bonenet.data.datalist import fracatlas_datalist, is_datalist, read_dataset
from bonenet.data.mura import MuraError
from bonenet.data.read import find_images
from bonenet.digests import file_sha256

log = logging.getLogger(__name__)

FRACATLAS_TARGETS = (*FRACATLAS_REGIONS, "frontal", "lateral", "oblique", "fractured", "hardware")
FRACATLAS_LICENCE = "CC BY 4.0, https://creativecommons.org/licenses/by/4.0/"
FRACATLAS_CITATION = ("Abedeen et al., FracAtlas: a dataset for fracture classification, localization and "
                      "segmentation of musculoskeletal radiographs, Scientific Data 10, 521 (2023), "
                      "doi:10.1038/s41597-023-02432-4")


@dataclass(frozen=True)
class PretrainSource:
    """One source of real radiographs: its images and binary targets, and what its provenance must say."""

    name: str
    root: str
    licence: str
    citation: str
    table: pd.DataFrame = field(repr=False)  # `path` plus one float column per target (NaN: not known)
    excluded: int = 0  # images left out because the FracAtlas benchmark holds them out
    left_out: tuple = ()  # (regions, images) left out so that a benchmark on them measures transfer
    left_out_images: int = 0

    def as_dict(self):
        """What the provenance JSON records of the source: its folder or file by name, never the machine's path."""
        return {"name": self.name, "root": Path(self.root).name, "licence": self.licence, "citation": self.citation,
                "images": len(self.table), "excluded_benchmark_holdout": self.excluded,
                "left_out_regions": list(self.left_out), "left_out_images": self.left_out_images,
                "targets": [c for c in self.table.columns if c != "path"]}


def is_fracatlas(path):
    """Whether `path` is a FracAtlas folder (its `dataset.csv` beside `images/`)."""
    path = Path(path)
    return (path / "dataset.csv").is_file() and (path / "images").is_dir()


def benchmark_holdout(fracatlas_root):
    """{sha256: path} of the images the FracAtlas benchmark holds out: the valid split of `fracatlas-datalist`."""
    with tempfile.TemporaryDirectory(prefix="bonenet-holdout-") as tmp:
        csv = Path(tmp) / "fracatlas.csv"
        fracatlas_datalist(fracatlas_root, csv)
        paths = [Path(p).resolve() for p in read_dataset(csv, splits=("valid",)).images["path"]]
        return {file_sha256(p): str(p) for p in paths}


def fracatlas_source(root, held_out, leave_out=()):
    """Every FracAtlas image but those in `held_out` ({sha256: path}) and those of the regions in `leave_out`
    (every film flagged with one of them, whichever else it shows), with its nine targets."""
    root = Path(root).expanduser().resolve()
    table = pd.read_csv(root / "dataset.csv")
    missing = [c for c in ("image_id", *FRACATLAS_TARGETS) if c not in table.columns]
    if missing:
        raise MuraError(f"{root / 'dataset.csv'}: no column {', '.join(missing)} (a FracAtlas dataset.csv has "
                        f"image_id, {', '.join(FRACATLAS_TARGETS)})")
    table = table.assign(path=[str(root / "images" / name) for name in table["image_id"]])
    keep = np.asarray([file_sha256(p) not in held_out for p in table["path"]])
    region = table[list(leave_out)].to_numpy().sum(axis=1) > 0 if leave_out else np.zeros(len(table), bool)
    out = table.loc[keep & ~region, ["path", *FRACATLAS_TARGETS]].astype({c: np.float32 for c in FRACATLAS_TARGETS})
    return PretrainSource("FracAtlas", str(root), FRACATLAS_LICENCE, FRACATLAS_CITATION, out.reset_index(drop=True),
                          int((~keep).sum()), tuple(leave_out), int((keep & region).sum()))


def datalist_source(csv, licence):
    """A datalist's images (both splits), with one target per part present and `abnormal`."""
    table = images_targets(read_dataset(csv).images)
    return PretrainSource(Path(csv).name, str(Path(csv).resolve()), licence, "", table)


def folder_source(root, licence):
    """Every image under `root` (searched as `predict` searches a folder), without labels: paths only."""
    images, skipped = find_images(root)
    if not images:
        raise MuraError(f"{root}: no PNG, JPEG or DICOM images in this folder")
    if skipped:
        log.warning("%s: %d file(s) left out, not images (the first: %s, %s)", root, len(skipped), *skipped[0])
    return PretrainSource(Path(root).name, str(Path(root).resolve()), licence, "",
                          pd.DataFrame({"path": [str(p) for p in images]}))


def check_labelled(sources):
    """Refuses a source without labels (a folder of images) where only labels are learned, naming it."""
    for source in sources:
        if len(source.table.columns) == 1:
            raise ValueError(f"{source.root}: a folder of images gives no labels to learn; pretrain on it with "
                             "--objective contrastive or both")


def images_targets(images, parts=None):
    """A dataset index's images as targets: `path`, one 0/1 column per part (`parts`, by default those present)
    and `abnormal`."""
    parts = sorted(images["part"].unique()) if parts is None else parts
    return pd.DataFrame({"path": images["path"].to_numpy(),
                         **{part: (images["part"] == part).to_numpy(np.float32) for part in parts},
                         "abnormal": images["label"].to_numpy(np.float32)})


def check_no_holdout(sources, held_out):
    """Refuses any pretraining image whose bytes are a benchmark held-out image's, naming both files."""
    for source in sources:
        for path in source.table["path"]:
            digest = file_sha256(path)
            if digest in held_out:
                raise ValueError(f"{path}: this image is held out by the FracAtlas benchmark (the same bytes as "
                                 f"{held_out[digest]}); the benchmark would score a backbone pretrained on it "
                                 "on an image it has seen: remove it from the pretraining data")


def read_sources(specs, licence="stated by the user", leave_out=()):
    """The pretraining sources named on the command line (FracAtlas folders or datalist CSVs), checked.

    Every FracAtlas folder named contributes its benchmark's held-out images; no source may hold one.

    Args:
        specs: paths, each a FracAtlas folder, a datalist CSV or a folder of images (no labels).
        licence: the licence recorded for datalists and folders (FracAtlas carries its own).
        leave_out: FracAtlas regions (`FRACATLAS_REGIONS`) whose films are left out of every FracAtlas source:
            the transfer yardstick pretrains without hands, so that a hand benchmark scores what was never
            trained. Defaults to none.

    Returns:
        [`PretrainSource`], in the order given.
    """
    held_out = {}
    for spec in specs:
        if is_fracatlas(spec):
            held_out.update(benchmark_holdout(spec))
    sources = []
    for spec in specs:
        if is_fracatlas(spec):
            sources.append(fracatlas_source(spec, held_out, leave_out))
        elif is_datalist(spec):
            sources.append(datalist_source(spec, licence))
        elif Path(spec).is_dir():
            sources.append(folder_source(spec, licence))
        else:
            raise ValueError(f"{spec}: neither a FracAtlas folder (dataset.csv and images/), a datalist CSV nor a "
                             "folder of images")
    check_no_holdout(sources, held_out)
    return sources


def targets_table(sources):
    """One table of every source's images: `path` and the union of their targets (NaN where a source lacks one)."""
    return pd.concat([s.table for s in sources], ignore_index=True)
