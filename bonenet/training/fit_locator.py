"""Training the fracture locator (`bonenet train-locator`) on FracAtlas' outlined fractures, and scoring it.

The locator (`bonenet.models.locator`) is a dense head on a frozen trunk, so the trunk runs once per image
(and once per mirror image) and its taps are cached in the work folder; the head then trains for a few
minutes on the cache. Every FracAtlas film teaches: a fractured one where its outlines are, a
non-fractured one that a fracture is nowhere.

Held-out discipline: the FracAtlas benchmark's held-out films (`bonenet.data.sources.benchmark_holdout`,
by the sha256 of their bytes) are left out, as they are from the radiograph backbone the trunk comes from,
so the figures the locator records on them score what neither ever saw. A seeded tenth of the rest (the
monitor fold) is held back from the head to choose the threshold at which a region becomes a box.

A killed training resumes (`--resume`): the cache is written whole, the head's epochs are backed up.
"""

import json
import shlex
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import cv2
import keras
import numpy as np
import pandas as pd

from bonenet.configs import N_BOOT, LocatorConfig
from bonenet.data.decode import load_gray
from bonenet.data.fractures import fracture_mask, read_annotations
from bonenet.data.sources import FRACATLAS_CITATION, FRACATLAS_LICENCE, benchmark_holdout, is_fracatlas
from bonenet.digests import file_sha256, files_digest
from bonenet.files import file_written_whole, json_safe, write_text_whole
from bonenet.models.backbones import provenance_path, radiograph_backbone
from bonenet.models.locator import STRIDE, Locator, build_head, build_locator, build_trunk, locator_input
from bonenet.progress import Progress, keras_verbosity
from bonenet.scoring.detection import detector_figures, froc_point, map_boxes, match
from bonenet.scoring.localisation import image_pointing, pointing_game
from bonenet.training.checkpoints import WholeBackup
from bonenet.training.pretrain import machine_facts, portable_command, save_float16_weights

MONITOR_FRACTION = 0.1
THRESHOLDS = np.round(np.arange(0.05, 0.96, 0.05), 2)


def locator_table(root):
    """FracAtlas' films for the locator: `path`, `name`, `fractured`, `hand`, and `split` (train, monitor,
    or held_out: the benchmark's held-out films, by their bytes)."""
    root = Path(root).expanduser().resolve()
    if not is_fracatlas(root):
        raise ValueError(f"{root}: not a FracAtlas folder (dataset.csv and images/)")
    table = pd.read_csv(root / "dataset.csv")
    held = benchmark_holdout(root)
    out = pd.DataFrame({"path": [str(root / "images" / n) for n in table["image_id"]], "name": table["image_id"],
                        "fractured": table["fractured"].astype(int), "hand": table["hand"].astype(int)})
    out["split"] = np.where([file_sha256(p) in held for p in out["path"]], "held_out", "train")
    train = np.flatnonzero(out["split"] == "train")
    monitor = np.random.default_rng(0).permutation(train)[: int(round(MONITOR_FRACTION * len(train)))]
    out.loc[monitor, "split"] = "monitor"
    return out


def grid_target(annotation, gray_shape, layout, image_size):
    """The locator's target for one film: the share of each STRIDE×STRIDE cell of its input that fracture
    covers (0 everywhere for a film without fracture), float32 (S/8)×(S/8)."""
    grid = image_size // STRIDE
    if not annotation:
        return np.zeros((grid, grid), np.float32)
    mask = fracture_mask(annotation, gray_shape)
    top, bottom, left, right = layout["box"]
    (rh, rw), (oy, ox) = layout["resized"], layout["offset"]
    placed = np.zeros((image_size, image_size), np.float32)
    placed[oy:oy + rh, ox:ox + rw] = cv2.resize(mask[top:bottom, left:right], (rw, rh), interpolation=cv2.INTER_AREA)
    return cv2.resize(placed, (grid, grid), interpolation=cv2.INTER_AREA)


def compute_taps(trunk, rows, annotations, image_size, mirror=True):
    """The frozen trunk's taps and the targets of `rows` (and of their mirror images): ([float16 arrays],
    float32 targets), mirror images after the originals. Each film is read once for both."""
    n, views = len(rows), 1 + bool(mirror)
    taps, targets = None, np.zeros((views * n, image_size // STRIDE, image_size // STRIDE), np.float32)
    with Progress(views * n, "train-locator: the trunk's taps") as progress:
        for start in range(0, n, 16):
            chunk = rows.iloc[start:start + 16]
            inputs, slots = [], []
            for k, (path, name) in enumerate(zip(chunk["path"], chunk["name"], strict=True), start):
                gray, note = load_gray(path), annotations.get(name)
                for view in range(views):
                    if view:
                        gray, note = gray[:, ::-1].copy(), note and _mirrored(note, gray.shape[1])
                    x, layout = locator_input(gray, image_size)
                    inputs.append(x)
                    slots.append(view * n + k)
                    targets[view * n + k] = grid_target(note, gray.shape, layout, image_size)
            out = trunk.predict_on_batch(np.stack(inputs))
            if taps is None:
                taps = [np.zeros((views * n, *o.shape[1:]), np.float16) for o in out]
            for tap, o in zip(taps, out, strict=True):
                tap[slots] = o
            progress.update(len(inputs))
    return taps, targets


def _mirrored(annotation, width):
    polygons = [[width - v if i % 2 == 0 else v for i, v in enumerate(p)] for p in annotation["polygons"]]
    boxes = [[width - x - w, y, w, h] for x, y, w, h in annotation["boxes"]]
    return {"polygons": polygons, "boxes": boxes}


class _Taps(keras.utils.PyDataset):
    """Batches of cached taps and targets, shuffled each epoch by a seeded generator."""

    def __init__(self, taps, targets, batch_size, seed):
        super().__init__()
        self.taps, self.targets, self.batch_size = taps, targets, batch_size
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(targets))

    def __len__(self):
        return int(np.ceil(len(self.targets) / self.batch_size))

    def __getitem__(self, k):
        rows = np.sort(self.order[k * self.batch_size:(k + 1) * self.batch_size])
        return tuple(t[rows].astype(np.float32) for t in self.taps), self.targets[rows]

    def on_epoch_end(self):
        self.order = self.rng.permutation(len(self.targets))


def grid_loss(positive_weight):
    """Binary cross-entropy of the grid's logits against cell coverage, a fracture cell weighing
    `positive_weight` times a clear one (fractures cover about 1% of a film)."""

    def loss(target, logit):
        weight = 1.0 + (positive_weight - 1.0) * keras.ops.cast(target > 0, "float32")
        soft = keras.ops.clip(target * 4.0, 0.0, 1.0)  # a cell a quarter covered is wholly fracture
        return keras.ops.mean(weight * keras.ops.binary_crossentropy(soft, logit, from_logits=True))

    return loss


def fit_head(taps, targets, config, backup):
    """Trains the dense head on cached taps (resumable from `backup`); returns the head."""
    keras.utils.set_random_seed(config.seed)
    head = build_head([t.shape[1:] for t in taps], config.seed)
    head.compile(keras.optimizers.Adam(config.learning_rate), grid_loss(config.positive_weight), jit_compile=False)
    head.fit(_Taps(taps, targets, config.batch_size, config.seed), epochs=config.epochs,
             verbose=keras_verbosity("auto"), callbacks=[WholeBackup(str(backup))])
    return head


def assemble_locator(head, trunk_weights, config):
    """The whole locator (`build_locator`) with `trunk_weights` and a head trained by `fit_head`."""
    model = build_locator(config.image_size, trunk_weights, config.seed)
    model.get_layer("locator_head").set_weights(head.get_weights())
    return model


def choose_cuts(locator, rows, annotations):
    """The locator's two cuts, chosen on `rows` (the monitor fold): the box threshold with the best F1 of
    fractures found (FROC's criterion), and the candidate floor with the most fractures found at 1 false box
    per film. Returns {"threshold", "f1", "floor", "sensitivity_at_1fp"} (the last two on the monitor fold)."""
    maps = locator.maps([load_gray(p) for p in rows["path"]])
    truths = [annotations.get(n, {}).get("boxes", []) for n in rows["name"]]
    n_truths = sum(len(b) for b in truths)
    best = {"threshold": 0.5, "f1": -1.0, "floor": 0.5, "sensitivity_at_1fp": -1.0}
    for t in THRESHOLDS:
        matched = [match(map_boxes(m, t), b) for m, b in zip(maps, truths, strict=True)]
        found = sum(hit for image in matched for _, hit in image)
        f1 = 2 * found / max(sum(len(image) for image in matched) + n_truths, 1)
        if f1 > best["f1"]:
            best.update(threshold=float(t), f1=f1)
        sensitivity = froc_point(matched, n_truths, 1)
        if sensitivity > best["sensitivity_at_1fp"]:
            best.update(floor=float(t), sensitivity_at_1fp=sensitivity)
    return best


def held_out_figures(locator, rows, annotations, n_boot=N_BOOT):
    """The locator scored on `rows` (films it never saw), all of them and the hands alone: per group, the
    pointing game on the fractured films with outlines (`bonenet.scoring.localisation`, with the random
    point's and the centre's rates), the detector's figures on every film (`detector_figures` of the
    candidate boxes at the locator's floor: FROC at 1 and 2 false boxes per image, AP@50), each with its 95%
    interval over images, and the operating point of the boxes outputs draw (at its threshold).

    Returns:
        ({"all": {"pointing", "detector", "drawn"}, "hand": {...}}, per-film maps in `rows`' order).
    """
    maps = locator.maps([load_gray(p) for p in rows["path"]])
    truths = [annotations.get(n, {}).get("boxes", []) for n in rows["name"]]
    out = {}
    for group, keep in (("all", np.ones(len(rows), bool)), ("hand", rows["hand"].to_numpy() == 1)):
        pointing = [image_pointing(m, b) for m, b, k in zip(maps, truths, keep, strict=True) if k and b]
        kept = [(m, b) for m, b, k in zip(maps, truths, keep, strict=True) if k]
        candidates = [(map_boxes(m, locator.floor), b) for m, b in kept]
        drawn = [match(map_boxes(m, locator.threshold), b) for m, b in kept]
        found = sum(hit for image in drawn for _, hit in image)
        boxes = sum(len(image) for image in drawn)
        out[group] = {"pointing": pointing_game(pointing, n_boot),
                      "detector": detector_figures(candidates, n_boot=n_boot),
                      "drawn": {"threshold": locator.threshold, "fractures_found": found,
                                "fractures": sum(len(b) for _, b in kept),
                                "false_boxes_per_film": (boxes - found) / max(len(kept), 1)}}
    return out, maps


def drawn_text(drawn):
    """The drawn boxes' operating point in words: "boxes drawn at p(fracture) >= 0.85 find 29 of 83 fractures,
    with 0.12 false boxes per film"."""
    return (f"boxes drawn at p(fracture) >= {drawn['threshold']:.2f} find {drawn['fractures_found']} of "
            f"{drawn['fractures']} fractures, with {drawn['false_boxes_per_film']:.2f} false boxes per film")


def train_locator(out, fracatlas, config=LocatorConfig(), resume=False, command=None):
    """Trains the fracture locator on FracAtlas and writes it with its provenance.

    Args:
        out: the `.weights.h5` file to write; `<stem>.json` beside it records the command, the sources and
            licence, the seed, the threshold, the held-out figures and the sha256.
        fracatlas: the FracAtlas folder (dataset.csv, images/, fracture_annotations_coco.json).
        config: a `LocatorConfig`. Defaults to `LocatorConfig()`, which made the shipped file.
        resume: continue a killed training from its cache and last completed epoch. Defaults to False.

    Returns:
        The provenance dict.
    """
    out, start = Path(out), time.time()
    if not out.name.endswith(".weights.h5"):
        raise ValueError(f"{out}: a locator file must end in .weights.h5")
    work = out.parent / f"{out.name.removesuffix('.weights.h5')}-work"
    if work.exists() and not resume:
        raise ValueError(f"{work}: an interrupted train-locator is there; pass --resume to continue it, or delete it")
    table, annotations = locator_table(fracatlas), read_annotations(Path(fracatlas).expanduser())
    trunk_file, trunk_provenance = radiograph_backbone()
    trunk = build_trunk(config.image_size, str(trunk_file))
    train = table[table["split"] == "train"]
    taps, targets = _cached_taps(work / f"taps-{config.image_size}.npz", trunk, train, annotations, config)
    head = fit_head(taps, targets, config, work / "backup")
    del taps, targets
    model = assemble_locator(head, str(trunk_file), config)
    save_float16_weights(model, out)
    model.load_weights(str(out))  # score what ships: the float16 weights, reloaded
    cuts = choose_cuts(Locator(model), table[table["split"] == "monitor"], annotations)
    locator = Locator(model, threshold=cuts["threshold"], floor=cuts["floor"])
    figures, _ = held_out_figures(locator, table[table["split"] == "held_out"], annotations)
    counts = table.groupby("split")["fractured"].agg(["size", "sum"])
    provenance = {
        "origin": "BoneNet's fracture locator: a dense head on the shipped radiograph backbone's frozen trunk, "
                  "trained on FracAtlas' fracture outlines (CC BY 4.0)",
        "command": portable_command(command or shlex.join(["bonenet", *sys.argv[1:]])),
        "config": asdict(config), "trunk": f"{trunk_file.name} (sha256 {trunk_provenance['sha256'][:12]}…), frozen",
        "sources": [{"name": "FracAtlas", "root": Path(fracatlas).name, "licence": FRACATLAS_LICENCE,
                     "citation": FRACATLAS_CITATION, "annotations": "fracture_annotations_coco.json"}],
        "images": {split: {"films": int(row["size"]), "fractured": int(row["sum"])} for split, row in counts.iterrows()},
        "held_out_rule": "the FracAtlas benchmark's held-out films (bonenet.data.sources.benchmark_holdout, by "
                         "their bytes), never seen by the trunk or the head",
        "data_sha256": files_digest(table.loc[table["split"] != "held_out", "path"]),
        "threshold": cuts["threshold"], "threshold_rule": f"the boxes outputs draw: best F1 of fractures found on "
                                                          f"the monitor fold ({cuts['f1']:.3f})",
        "candidate_floor": cuts["floor"], "candidate_floor_rule": "the candidates scored as a detector (FROC, AP): "
        f"most fractures found at 1 false box per film on the monitor fold ({cuts['sensitivity_at_1fp']:.3f})",
        "held_out": figures, "storage": "float16", "sha256": file_sha256(out),
        "seconds": round(time.time() - start), **machine_facts(),
    }
    write_text_whole(provenance_path(out), json.dumps(json_safe(provenance), indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return provenance


def _cached_taps(path, trunk, rows, annotations, config):
    """`compute_taps` of `rows`, read from `path` when a resumed training wrote it, else computed and written."""
    if path.is_file():
        with np.load(path) as cached:
            return [cached[f"tap{k}"] for k in range(len(trunk.outputs))], cached["targets"]
    taps, targets = compute_taps(trunk, rows, annotations, config.image_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_written_whole(path, ".npz") as tmp:
        np.savez(tmp, targets=targets, **{f"tap{k}": t for k, t in enumerate(taps)})
    return taps, targets
