"""Backbone pretraining: on synthetic radiographs (how the demo's shipped backbone is made), or on open real
radiographs (how the shipped radiograph backbone is made, `pretrain_on_real`).

The last-20-layer recipe needs a trunk whose frozen layers already compute useful features; a
randomly initialised trunk gives features that no head can use. A real user gets them from
ImageNet. Offline, BoneNet brings its own: EfficientNetB0 trained end to end (all layers,
BatchNorm learning) on a joint part × normal/abnormal task over a synthetic dataset whose seed is
disjoint from the demo's, so the demo never evaluates on data the backbone saw.

`pretrain-backbone` with the defaults of `PretrainConfig` made the file the package ships
(`bonenet.models.backbones.SHIPPED_BACKBONE`); its provenance JSON beside it records the command, seed, data digest,
steps, hold-out accuracy and sha256. It is never a default for real training.

On real radiographs (`--real FRACATLAS_DIR` or a datalist), EfficientNetB0 learns every binary target the
sources give (FracAtlas: region, view, fractured, hardware; `bonenet.data.sources`) at once, one sigmoid
each, starting from `--init` (the synthetic backbone by default); the FracAtlas benchmark's held-out images
are refused by construction. `--objective contrastive` learns without labels instead (SimCLR views,
`bonenet.training.contrastive`), so folders of unlabelled films serve as sources; `both` learns the two at once.
"""

import datetime
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import keras
import numpy as np

from bonenet import runtime
from bonenet.configs import PretrainConfig
from bonenet.data import pipeline as bdata
from bonenet.data.mura import fingerprint_of, read_mura
from bonenet.data.synthetic import GENERATOR_VERSION, synthetic_dataset
from bonenet.digests import file_sha256, files_digest, folder_digest
from bonenet.files import file_written_whole, json_safe, temp_prefix, write_text_whole
from bonenet.models.backbones import ORIGIN, RADIOGRAPH_ORIGIN, SHIPPED_BACKBONE, provenance_path, shipped_backbone
from bonenet.models.efficientnet import build_base
from bonenet.parts import PART_INDEX, PARTS
from bonenet.preprocessing.augment import AugmentConfig
from bonenet.preprocessing.recipes import get_recipe
from bonenet.progress import keras_verbosity
from bonenet.training.contrastive import VIEWS_TEXT, fit_views, views_found
from bonenet.training.losses import masked_binary_crossentropy
from bonenet.training.schedule import fit_on_schedule, input_side, known_targets, schedule_text, sizes_text


def portable_command(command):
    """`command` with each absolute path given by its file or folder name, so that a provenance file records
    what was run and never the layout of the machine it ran on (relative paths are kept as typed)."""
    return shlex.join(Path(arg).name if Path(arg).is_absolute() else arg for arg in shlex.split(command))


def _preparation(config, augment=None):
    """The images' `Preparation` under a `PretrainConfig`: its recipe and size, seeded by its seed."""
    return bdata.Preparation(get_recipe(config.recipe), config.image_size, augment=augment, seed=config.seed)


def joint_labels(images):
    """One label per image: 2 × part index + study label (14 classes)."""
    return images["part"].map(PART_INDEX).to_numpy() * 2 + images["label"].to_numpy()


def build_pretrain_model(image_size, seed=0, outputs=2 * len(PARTS), activation="softmax", init=None):
    """EfficientNetB0 (every layer training) + pooling + a dense output layer.

    Args:
        outputs: output units: 14 (part × normal/abnormal, softmax) on synthetic data, one sigmoid per
            target on real radiographs. Defaults to 14.
        activation: "softmax" or "sigmoid". Defaults to "softmax".
        init: a backbone `.weights.h5` to start from, or "imagenet"; None starts from random weights. Defaults to
            None.

    Returns:
        (model, base), built under the process's training precision (`bonenet.runtime.start`).
    """
    keras.utils.set_random_seed(seed)
    with runtime.precision_scope(runtime.start()["precision"]):
        base = build_base(image_size, weights=None if init is None else str(init))
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(base.output)
        x = keras.layers.Dropout(0.2, name="head_dropout")(x)
        name = "joint" if activation == "softmax" else "targets"
        out = keras.layers.Dense(outputs, activation=activation, dtype="float32", name=name)(x)
        return keras.Model(base.input, out, name="pretrain"), base


def save_float16_weights(model, path):
    """Saves `model`'s weights as a Keras `.weights.h5` whose float arrays are stored as float16.

    Keras casts on load, so the file loads into a float32 model with `load_weights`; it is half
    the size of a float32 file. Written under a temporary name and renamed, so a killed save
    leaves any earlier file intact.
    """
    path = Path(path)
    with file_written_whole(path, ".weights.h5") as half, \
            tempfile.TemporaryDirectory(prefix=temp_prefix(path), dir=path.parent) as scratch:
        full = Path(scratch) / "full.weights.h5"
        model.save_weights(str(full))
        with h5py.File(full, "r") as src, h5py.File(half, "w", track_order=True) as dst:
            dst.attrs.update(src.attrs)

            def copy(name, obj):
                if isinstance(obj, h5py.Group):
                    dst.require_group(name).attrs.update(obj.attrs)
                else:
                    value = obj[()]
                    if np.issubdtype(np.asarray(value).dtype, np.floating):
                        value = np.asarray(value, np.float16)
                    dst.create_dataset(name, data=value, track_times=False)

            src.visititems(copy)
    return path


def holdout_accuracy(model, images, config):
    """Joint, part and normal/abnormal accuracy of the pretraining model on held-out images."""
    labels = joint_labels(images)
    ds = bdata.make_dataset(images["path"].tolist(), labels, 2 * len(PARTS), _preparation(config),
                            bdata.Feed(config.batch_size))
    with bdata.length_found_at_the_end():
        pred = np.argmax(model.predict(ds, verbose=0), axis=1)
    return {
        "joint": float(np.mean(pred == labels)),
        "part": float(np.mean(pred // 2 == labels // 2)),
        "abnormal": float(np.mean(pred % 2 == labels % 2)),
        "images": len(labels),
    }


def pretrain_backbone(out, config=PretrainConfig(), data_dir=None, resume=False, verbose=None, command=None):
    """Makes the synthetic dataset, trains EfficientNetB0 on it end to end, saves the base's weights.

    The synthetic train split trains; its valid split is the hold-out whose accuracy is recorded,
    measured with the float16 weights as written.

    Args:
        out: the `.weights.h5` file to write; `<stem>.json` beside it records the provenance.
        config: a `PretrainConfig`. Defaults to `PretrainConfig()`.
        data_dir: where the synthetic dataset goes. Defaults to `<out stem>-data` beside `out`.
        resume: continue a killed run from its last completed epoch. Defaults to False.
        verbose: Keras verbosity. Defaults to a progress bar on a terminal, one line per epoch otherwise.
        command: the command line to record. Defaults to `bonenet` and this process's arguments.

    Returns:
        The provenance dict (also written beside `out`).
    """
    out = _weights_out(out)
    stem = out.name.removesuffix(".weights.h5")
    data_dir = Path(data_dir) if data_dir else out.parent / f"{stem}-data"
    backup = out.parent / f"{stem}-backup"
    if not resume and backup.exists():
        raise ValueError(f"{backup}: an interrupted pretraining is there; pass --resume to continue it, or delete it")
    runtime.start(config.precision)  # before the first model: one precision per process
    verbose = keras_verbosity("auto" if verbose is None else verbose)
    start = time.time()
    root = synthetic_dataset(data_dir, config.studies_per_part, config.seed)
    index = read_mura(root)
    train = index.images[index.images.split == "train"]
    holdout = index.images[index.images.split == "valid"]
    model, base, steps = _fit(train, config, backup, verbose)
    save_float16_weights(base, out)
    # Score what ships: the float16 weights, reloaded, under the trained head.
    base.load_weights(out)
    provenance = {
        "origin": f"EfficientNetB0 pretrained end to end by bonenet pretrain-backbone on {ORIGIN}",
        "command": portable_command(command or shlex.join(["bonenet", *sys.argv[1:]])),
        "config": asdict(config),
        "generator_version": GENERATOR_VERSION,
        "dataset_fingerprint": fingerprint_of(index),
        "data_sha256": folder_digest(root),
        "train_images": len(train),
        "holdout_images": len(holdout),
        "steps": steps,
        "schedule": f"Adam, linear warm-up {config.warmup_epochs} epochs to {config.learning_rate}, then cosine "
                    "decay to 0; label smoothing 0.05; balanced class weights; AugmentConfig() augmentation"
                    f"{sizes_text(config)}",
        "holdout_accuracy": holdout_accuracy(model, holdout, config),
        "storage": "float16",
        "sha256": file_sha256(out),
        "seconds": round(time.time() - start),
        **machine_facts(),
    }
    write_text_whole(provenance_path(out), json.dumps(provenance, indent=2) + "\n")
    shutil.rmtree(backup, ignore_errors=True)
    return provenance


def _fit(train, config, backup, verbose):
    """Trains the pretraining model on the train images (resumable from `backup`); returns
    (model, its EfficientNetB0 base, steps taken)."""
    labels = joint_labels(train)
    ds = bdata.make_dataset(train["path"].tolist(), labels, 2 * len(PARTS), _preparation(config, AugmentConfig()),
                            bdata.Feed(config.batch_size, training=True))
    model, base = build_pretrain_model(input_side(config), config.seed)
    steps = fit_on_schedule(model, ds, len(train), config, backup, verbose=verbose, metrics=["accuracy"],
                            class_weight=bdata.class_weights(labels, 2 * len(PARTS)),
                            loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.05))
    return model, base, steps


def machine_facts():
    """Where and with what a shipped file was made: machine, precision, date, versions (for its provenance)."""
    return {"machine": f"{platform.machine()} {os.cpu_count()} CPU(s), {platform.system()}",
            "precision": runtime.start()["precision"],
            "date": datetime.date.today().isoformat(),
            "versions": {"keras": keras.__version__, "tensorflow": _tf_version(), "python": platform.python_version()}}


def _tf_version():
    import tensorflow as tf
    return tf.__version__


# Real radiographs -------------------------------------------------------------------------------------------
MONITOR_FRACTION = 0.1  # a seeded share of the pretraining images, held back to score the targets


def target_aurocs(model, table, targets, config):
    """Per target: the pretraining model's AUROC on held-back images (NaN where they hold one class)."""
    from sklearn.metrics import roc_auc_score

    ds = bdata.make_dataset(table["path"].tolist(), np.zeros((len(table), len(targets)), np.float32), None,
                            _preparation(config), bdata.Feed(config.batch_size))
    with bdata.length_found_at_the_end():
        pred = model.predict(ds, verbose=0)
    out = {}
    for i, target in enumerate(targets):
        truth = table[target].to_numpy()
        known = ~np.isnan(truth)
        both = len(np.unique(truth[known])) == 2
        out[target] = float(roc_auc_score(truth[known], pred[known, i])) if both else float("nan")
    return out


@dataclass(frozen=True)
class Start:
    """What a multi-target fit starts from and where it backs up: `init` (None, "imagenet" or a weights file),
    `backup` (the folder `BackupAndRestore` resumes from), `augment` (an `AugmentConfig`, or None) and `cache`
    (where prepared images are kept between epochs: None, "memory" or a folder)."""

    init: object
    backup: Path
    augment: object = field(default_factory=AugmentConfig)
    cache: object = None


def fit_targets(train, targets, config, start):
    """Trains EfficientNetB0 end to end (BatchNorm learning) on every binary target of `train` at once, one sigmoid
    each, masked where a row lacks a target (NaN); resumable from `start.backup`.

    Used by `pretrain_on_real` and by the trunk adaptation of a run (`bonenet.training.adapt`).

    Args:
        train: a table of `path` and one float column per target (NaN: not known).
        targets: the target columns, in output order.
        config: a `PretrainConfig` (size, recipe, epochs, batch, rate, warm-up, seed).
        start: a `Start`.

    Returns:
        (model, its EfficientNetB0 base, steps taken).
    """
    # The model first: it seeds TensorFlow, and the dataset's shuffle and augmentation draw from that seed too.
    model, base = build_pretrain_model(input_side(config), config.seed, len(targets), "sigmoid", start.init)
    ds = bdata.make_dataset(train["path"].tolist(), known_targets(train, targets), None,
                            _preparation(config, start.augment),
                            bdata.Feed(config.batch_size, training=True, cache=start.cache))
    steps = fit_on_schedule(model, ds, len(train), config, start.backup, loss=masked_binary_crossentropy)
    return model, base, steps


def _split_monitor(table, seed):
    """(train rows, monitoring rows): a seeded `MONITOR_FRACTION` of the images is held back."""
    order = np.random.default_rng(seed).permutation(len(table))
    cut = max(1, int(round(MONITOR_FRACTION * len(table))))
    return table.iloc[np.sort(order[cut:])], table.iloc[np.sort(order[:cut])]


def _init_weights(init):
    """The backbone file pretraining starts from: `synthetic` (the shipped one), `none`, or a path."""
    if init in (None, "none"):
        return None, "random initialisation"
    if init == "synthetic":
        path, provenance = shipped_backbone()
        return path, f"the shipped synthetic backbone ({SHIPPED_BACKBONE.name}, sha256 {provenance['sha256'][:12]}…)"
    path = Path(init).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: backbone to start from does not exist (expected synthetic, none or a file)")
    return path, f"{path.name} (sha256 {file_sha256(path)[:12]}…)"


def pretrain_on_real(out, specs, config=PretrainConfig(), init="synthetic", resume=False, command=None):
    """Trains EfficientNetB0 on open real radiographs, every target at once, and saves the base's weights.

    Args:
        out: the `.weights.h5` file to write; `<stem>.json` beside it records the provenance.
        specs: the sources: FracAtlas folders or datalist CSVs (`bonenet.data.sources.read_sources`).
        config: a `PretrainConfig` (its synthetic-data fields are unused). Defaults to `PretrainConfig()`.
        init: what to start from: "synthetic" (the shipped synthetic backbone), "none" or a weights file.
        resume: continue a killed run from its last completed epoch. Defaults to False.

    Returns:
        The provenance dict (also written beside `out`).
    """
    from bonenet.data.sources import check_labelled, read_sources, targets_table

    out, start = _weights_out(out), time.time()
    runtime.start(config.precision)  # before the first model: one precision per process
    backup = out.parent / f"{out.name.removesuffix('.weights.h5')}-backup"
    if not resume and backup.exists():
        raise ValueError(f"{backup}: an interrupted pretraining is there; pass --resume to continue it, or delete it")
    sources = read_sources(specs, leave_out=config.regions_left_out)
    table = targets_table(sources)
    # A region left out is a constant 0 here: a target that teaches nothing and has no AUROC.
    targets = [] if config.objective == "contrastive" else [
        c for c in table.columns if c != "path" and c not in config.regions_left_out]
    train, monitor = _split_monitor(table, config.seed)
    init_path, init_text = _init_weights(init)
    if config.objective == "targets":
        check_labelled(sources)
        model, base, steps = fit_targets(train, targets, config, Start(init_path, backup))
    else:
        built = build_pretrain_model(input_side(config), config.seed, max(len(targets), 1), "sigmoid", init_path)
        model, base, steps = fit_views(built, train, targets, config, Start(init_path, backup))
    save_float16_weights(base, out)
    base.load_weights(out)  # score what ships: the float16 weights, reloaded, under the trained head
    described = _described(sources)
    provenance = {
        "origin": f"EfficientNetB0 pretrained by bonenet pretrain-backbone on {len(table):,} {RADIOGRAPH_ORIGIN} "
                  f"({described})",
        # The caveat every output of a run on this backbone carries (`bonenet.run.provenance`).
        "summary": f"pretrained on {len(table):,} open real radiographs ({described}), not ImageNet",
        "command": portable_command(command or shlex.join(["bonenet", *sys.argv[1:]])),
        "config": asdict(config), "init": init_text, "objective": objective_text(config.objective, targets),
        "sources": [s.as_dict() for s in sources], "images": len(table), "train_images": len(train),
        "monitor_images": len(monitor), "data_sha256": files_digest(table["path"]),
        "steps": steps, "schedule": schedule_text(config), **monitor_figures(model, monitor, targets, config), "storage": "float16",
        "sha256": file_sha256(out), "seconds": round(time.time() - start), **machine_facts(),
    }
    write_text_whole(provenance_path(out), json.dumps(json_safe(provenance), indent=2) + "\n")
    shutil.rmtree(backup, ignore_errors=True)
    return provenance


def objective_text(objective, targets):
    """What the backbone learned, in words, for its provenance."""
    labelled = f"every binary target at once, one sigmoid each (masked binary cross-entropy): {', '.join(targets)}"
    return {"targets": labelled, "contrastive": VIEWS_TEXT, "both": f"{VIEWS_TEXT}, and {labelled}"}[objective]


def monitor_figures(model, monitor, targets, config):
    """The provenance's figures on the held-back images: each target's AUROC, and with views, the share of views
    that find their partner (`contrastive.views_found`)."""
    if not isinstance(model.output, dict):
        return {"monitor_auroc": target_aurocs(model, monitor, targets, config)}
    figures = {"monitor_views_found": views_found(model, monitor, config)}
    if targets:
        scorer = keras.Model(model.input, model.output["targets"])
        figures["monitor_auroc"] = target_aurocs(scorer, monitor, targets, config)
    return figures


def _described(sources):
    """The sources in a few words, for the backbone's origin and caveat: "FracAtlas without hand films, CC BY 4.0"
    (a region is left out of FracAtlas sources only)."""
    def one(source):
        without = f" without {', '.join(source.left_out)} films" if source.left_out else ""
        return f"{source.name}{without}, {source.licence.split(',')[0]}"

    return ", ".join(one(s) for s in sources)


def _weights_out(out):
    out = Path(out)
    if not out.name.endswith(".weights.h5"):
        raise ValueError(f"{out}: backbone weights file must end in .weights.h5")
    return out
