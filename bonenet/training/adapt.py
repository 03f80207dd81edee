"""Trunk adaptation: before the router and the part heads train, the whole EfficientNetB0 learns from every
training image of the user's collection at once (abnormal, and which part it shows), and is then frozen.

Each part model sees only its own part's images (1,825 forearm images in MURA), and with a frozen trunk the
features learn nothing from the user's radiographs. Adapting the trunk on all parts together lets a plate seen on
a humerus help the forearm. It is the multi-target fit that pretrains the radiograph backbone
(`bonenet.training.pretrain.fit_targets`) on the run's fit images: the train split less the patient-grouped
hold-out that every model of the run keeps (`bonenet.training.job`), so no image that selects, tunes or scores a
model ever trains the trunk. The adapted weights are written into the run folder (`adapted_trunk.weights.h5`, its
provenance beside it) and become the run's backbone: the router and the part heads then train on its frozen cache
as on any other (`bonenet.training.train`). It runs once per run folder; later models reuse it.
"""

import json
import logging
import shlex
import shutil
import sys
import time
from pathlib import Path

from bonenet import runtime
from bonenet.configs import PretrainConfig
from bonenet.data.sources import images_targets
from bonenet.digests import file_sha256, file_stamps
from bonenet.files import json_safe, write_text_whole
from bonenet.models.backbones import provenance_path
from bonenet.models.efficientnet import resolve_weights
from bonenet.preprocessing.augment import AugmentConfig
from bonenet.training.distribute import get_strategy
from bonenet.training.pretrain import (
    Start,
    fit_targets,
    machine_facts,
    portable_command,
    save_float16_weights,
    target_aurocs,
)
from bonenet.training.schedule import schedule_text, sizes_text

log = logging.getLogger(__name__)

ADAPTED = "adapted_trunk.weights.h5"
BACKUP = "adapt-backup"


def adaptation_settings(config, origin, fit_images):
    """Everything the adapted trunk depends on: where it started, the fit images (by path, size and time) and the
    training settings. Recorded in its provenance and compared when a later model of the run reuses it."""
    return {"init": {k: origin.get(k) for k in ("kind", "sha256")}, "images": file_stamps(fit_images["path"]),
            **{k: getattr(config, k) for k in ("image_size", "recipe", "adapt_epochs", "adapt_learning_rate",
                                               "batch_size", "seed", "holdout_fraction", "augment", "max_rotation")},
            # only when on, so that a trunk adapted before progressive resizing existed still matches
            **({"adapt_early_size": config.adapt_early_size} if config.adapt_early_size else {})}


def adapted_trunk(fit_images, monitor_images, run_dir, config, start, resume=False):
    """The run's adapted trunk: adapted now, or the one the run folder already holds, when it was made from the
    same start, images and settings.

    Args:
        fit_images: the images the run's models train on (`path`, `part`, `label`).
        monitor_images: the run's hold-out images, on which each target's AUROC is recorded.
        run_dir: the run folder; the trunk goes to `<run_dir>/adapted_trunk.weights.h5`.
        config: the run's `TrainConfig` (`adapt_epochs` > 0).
        start: (weights, origin) of the backbone to adapt, from `resolve_weights`.
        resume: continue an adaptation killed part-way from its last completed epoch. Defaults to False.

    Returns:
        (weights path, origin dict), as `resolve_weights` gives for any backbone file.

    Raises:
        ValueError: the folder's adapted trunk was made otherwise, an interrupted adaptation is there without
            `resume`, or the strategy is multiworker.
    """
    out = Path(run_dir) / ADAPTED
    wanted = json_safe(adaptation_settings(config, start[1], fit_images))
    if out.is_file() and provenance_path(out).is_file():
        recorded = json.loads(provenance_path(out).read_text()).get("adaptation", {})
        differ = sorted(k for k in wanted.keys() | recorded.keys() if recorded.get(k) != wanted.get(k))
        if differ:
            raise ValueError(f"{out}: this run's trunk was adapted with other {', '.join(differ)}; use a new "
                             "--models-dir (or the same settings and images)")
        return resolve_weights(str(out))
    backup = Path(run_dir) / BACKUP
    if backup.exists() and not resume:
        raise ValueError(f"{backup}: an interrupted trunk adaptation is there; pass --resume to continue it, or "
                         "delete it")
    if config.strategy == "multiworker":
        raise ValueError("trunk adaptation runs on one machine: adapt with --strategy auto, then train the workers "
                         f"with --weights {out}")
    _adapt(fit_images, monitor_images, out, config, (start, wanted))
    shutil.rmtree(backup, ignore_errors=True)
    return resolve_weights(str(out))


def _adapt(fit_images, monitor_images, out, config, begin):
    (weights, origin), wanted = begin
    clock = time.time()
    parts = sorted(fit_images["part"].unique())
    train, monitor = images_targets(fit_images, parts), images_targets(monitor_images, parts)
    targets = [c for c in train.columns if c != "path"]
    plan = PretrainConfig(seed=config.seed, image_size=config.image_size, epochs=config.adapt_epochs,
                          batch_size=config.batch_size, learning_rate=config.adapt_learning_rate, warmup_epochs=1,
                          recipe=config.recipe, early_size=config.adapt_early_size, precision=config.precision)
    log.info(f"trunk adaptation: every layer on {len(train):,} training images ({', '.join(targets)}), "
             f"{plan.epochs} epochs at {plan.image_size} px{sizes_text(plan)}")
    runtime.start(config.precision)
    augment = AugmentConfig(max_rotation=config.max_rotation) if config.augment else None
    with get_strategy(config.strategy).scope():
        model, base, steps = fit_targets(train, targets, plan, Start(weights, out.parent / BACKUP, augment,
                                                                    config.cache_dir or "memory"))
    save_float16_weights(base, out)
    base.load_weights(out)  # the monitor scores what the run uses: the float16 weights, reloaded
    write_text_whole(provenance_path(out), json.dumps(json_safe({
        **_described(origin, len(train)),
        "command": portable_command(shlex.join(["bonenet", *sys.argv[1:]])),
        "adaptation": wanted, "objective": f"every target at once, one sigmoid each: {', '.join(targets)}",
        "fit_images": len(train), "monitor_images": len(monitor), "steps": steps, "schedule": schedule_text(plan),
        "monitor_auroc": target_aurocs(model, monitor, targets, plan) if len(monitor) else {},
        "storage": "float16", "sha256": file_sha256(out), "seconds": round(time.time() - clock), **machine_facts(),
    }), indent=2) + "\n")


def _described(origin, images):
    """The adapted trunk's origin in words; from ImageNet it stays an ImageNet backbone, otherwise it carries its
    start's caveat (`bonenet.run.provenance`) with the adaptation added."""
    how = f"adapted by bonenet on {images:,} training images of this run's collection (every layer)"
    described = {"origin": f"EfficientNetB0 from {origin.get('description', origin.get('kind'))}, {how}"}
    if origin.get("kind") == "imagenet":
        return {**described, "kind": "imagenet"}
    start = origin.get("summary") or f"from {origin.get('description', 'random initialisation')}, not ImageNet"
    return {**described, "summary": f"{start}; then {how}"}
