"""The main job on built-in synthetic data: make data, pretrain, train all, evaluate, report, predict.

Offline and on a CPU. ImageNet weights cannot be downloaded here, so the EfficientNetB0 backbone is
first trained end to end on the synthetic train split (`bonenet.pretrain`) and then used as the
frozen trunk of the last-20-layer recipe; the manifest records that origin. Synthetic radiographs
show that the machinery works end to end. They are not clinical evidence.
"""

import json
import time
from dataclasses import dataclass
from pathlib import Path

from bonenet.evaluate import evaluate_run
from bonenet.inference import BoneNet, predict_paths
from bonenet.mura import format_summary, read_mura, summarize
from bonenet.pretrain import pretrain_backbone
from bonenet.synthetic import make_synthetic
from bonenet.train import TrainConfig, train_all


@dataclass(frozen=True)
class DemoPlan:
    """How big the demo is. The defaults took 13 minutes on 2 CPU cores."""

    studies_per_part: int = 60
    image_size: int = 96
    pretrain_epochs: int = 16
    pretrain_learning_rate: float = 2e-3
    epochs: int = 8
    # The recipe's 1e-4 is for ImageNet features and many steps; a few hundred synthetic images
    # give the new heads only a few dozen steps, so the demo uses 1e-3 and says so in the manifest.
    learning_rate: float = 1e-3
    batch_size: int = 32
    seed: int = 0


QUICK = DemoPlan(studies_per_part=10, image_size=64, pretrain_epochs=2, epochs=1)


def _stage(name, start):
    print(f"\n=== {name} (t+{time.time() - start:.0f}s) ===", flush=True)


def run_demo(out="demo_output", studies_per_part=None, image_size=None, quick=False):
    """Runs the whole chain and prints where each result is.

    Returns:
        A dict of the key figures and paths.
    """
    plan = QUICK if quick else DemoPlan()
    if studies_per_part:
        plan = DemoPlan(**{**plan.__dict__, "studies_per_part": studies_per_part})
    if image_size:
        plan = DemoPlan(**{**plan.__dict__, "image_size": image_size})
    out = Path(out)
    start = time.time()

    _stage("1/6 make-synthetic", start)
    data_root = make_synthetic(out / "data", studies_per_part=plan.studies_per_part, seed=plan.seed)
    index = read_mura(data_root)
    print(format_summary(summarize(index)))

    _stage("2/6 pretrain the EfficientNetB0 backbone on synthetic train data (no ImageNet offline)", start)
    backbone = pretrain_backbone(index, out / "backbone.weights.h5", image_size=plan.image_size,
                                 epochs=plan.pretrain_epochs, learning_rate=plan.pretrain_learning_rate,
                                 batch_size=plan.batch_size, seed=plan.seed, verbose=2)

    _stage("3/6 train-all: router + seven part models, last 20 layers, BatchNorm frozen", start)
    config = TrainConfig(epochs=plan.epochs, batch_size=plan.batch_size, image_size=plan.image_size,
                         weights=str(backbone), learning_rate=plan.learning_rate, seed=plan.seed, patience=4)
    run_dir = out / "saved_models" / "demo"
    _, failures = train_all(index, run_dir, config, verbose=2)

    _stage("4/6 evaluate on the synthetic valid split", start)
    metrics = evaluate_run(data_root, run_dir, out / "eval", n_boot=1000, seed=plan.seed)

    _stage("5/6 report: notebooks to HTML", start)
    from bonenet.report import run_reports

    reports = run_reports(out / "eval", out / "reports")

    _stage("6/6 predict a few valid images with Grad-CAM", start)
    valid = index.images[index.images["split"] == "valid"]
    sample = valid.groupby("part").head(1)["path"].tolist()
    net = BoneNet.load(run_dir)
    predictions = predict_paths(net, sample, cam_dir=out / "cams")
    (out / "predictions.json").write_text(json.dumps(predictions, indent=2))

    overall = metrics["study"].get("overall", {})
    summary = {
        "seconds": round(time.time() - start, 1),
        "router_study_accuracy": metrics["router"]["study_accuracy"],
        "router_image_accuracy": metrics["router"]["image_accuracy"],
        "overall_study_kappa": overall.get("kappa"),
        "overall_study_auroc": overall.get("auroc"),
        "parts_not_trained": sorted(failures),
    }
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\n=== done in {summary['seconds']:.0f}s ===")
    print(f"router study accuracy {summary['router_study_accuracy']:.3f} (images {summary['router_image_accuracy']:.3f})")
    kappa = summary["overall_study_kappa"]
    print(f"overall routed study kappa {'n/a' if kappa is None else f'{kappa:.3f}'} on synthetic valid studies")
    print("Synthetic data shows the machinery works; it is not clinical evidence.")
    for label, path in [("data", data_root), ("backbone", backbone), ("models", run_dir / "manifest.json"),
                        ("metrics", out / "eval" / "metrics.json"), ("plots", out / "eval"),
                        ("reports", reports[0].parent), ("predictions", out / "predictions.json"),
                        ("Grad-CAM overlays", out / "cams"), ("summary", out / "demo_summary.json")]:
        print(f"  {label:<18} {path}")
    return summary
