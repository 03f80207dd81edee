"""The main job on built-in synthetic data: make data, train all, evaluate, report, predict.

Offline and on a CPU. ImageNet weights cannot be downloaded here, so the demo's frozen trunk is
the backbone the package ships: EfficientNetB0 pretrained on synthetic radiographs from another
seed (`bonenet.training.pretrain`), never ImageNet; the manifest records that origin. Synthetic
radiographs show that the machinery works end to end. They are not clinical evidence.
"""

import dataclasses
import json
import logging
import time
from pathlib import Path

from bonenet.configs import QUICK_PLAN, DemoPlan, EvaluateConfig, TrainConfig
from bonenet.evaluation.baselines import STANFORD_KAPPA
from bonenet.files import write_text_whole
from bonenet.parts import PARTS, short_name
from bonenet.scoring.metrics import figure_text, interval_text

log = logging.getLogger(__name__)


def _stage(name, start):
    log.info(f"\n=== {name} (t+{time.time() - start:.0f}s) ===")


def summary_table(metrics):
    """Per part: studies, kappa [95% CI], AUROC and Stanford's kappa (of `metrics["study"]`)."""
    lines = [f"{'part':<9} {'studies':>7} {'kappa':>6} {'95% CI':>16} {'AUROC':>6} {'Stanford':>9}"]
    for part in [*PARTS, "overall"]:
        m = metrics["study"].get(part)
        if m is None:
            continue
        name = "overall" if part == "overall" else short_name(part)
        stanford = STANFORD_KAPPA.get(part)
        lines.append(f"{name:<9} {m['n']:>7} {figure_text(m['kappa']):>6} {interval_text(m['kappa_ci95']):>16} "
                     f"{figure_text(m['auroc']):>6} {figure_text(stanford):>9}")
    return "\n".join(lines)


def train_config(plan, backbone):
    """The `TrainConfig` the demo trains with: the plan's size and schedule on `backbone`."""
    return TrainConfig(epochs=plan.epochs, batch_size=plan.batch_size, image_size=plan.image_size,
                       weights=str(backbone), learning_rate=plan.learning_rate, seed=plan.seed, patience=4)


def _predict_sample(net, index, out):
    """Predicts one valid study per part, with heat maps; writes predictions.json."""
    from bonenet.inference.inputs import predict_paths

    valid = index.images[index.images["split"] == "valid"]
    sample = [str(Path(path).parent) for path in valid.groupby("part").head(1)["path"]]  # study folders
    predictions = predict_paths(net, sample, cam_dir=out / "cams")
    write_text_whole(out / "predictions.json", json.dumps(predictions, indent=2))


def _summary(plan, shipped, metrics, failures, reports):
    """The demo's summary, but for its seconds: the plan, the backbone (`shipped`: file and provenance),
    the router's and the parts' figures, and what was left out."""
    router, (backbone, provenance) = metrics["router"], shipped
    return {
        "plan": dataclasses.asdict(plan),
        "backbone": {"file": backbone.name, "sha256": provenance["sha256"], "origin": provenance["origin"]},
        "router_study_accuracy": router["study_accuracy"],
        "router_image_accuracy": router["image_accuracy"],
        "study": {part: {k: m[k] for k in ("n", "kappa", "kappa_ci95", "auroc", "sensitivity", "specificity")}
                  for part, m in metrics["study"].items()},
        "stanford_kappa": STANFORD_KAPPA,
        "parts_not_trained": sorted(failures),
        "skipped": metrics["source"]["skipped"],
        "messages": metrics["source"]["messages"],
        "open_first": str(next(p for p in reports if p.name == "overview.html")),
    }


def run_demo(out="demo_output", quick=False, **overrides):
    """Runs the whole chain on synthetic data; stages are logged as they start.

    Args:
        out: folder for everything the demo writes. Defaults to "demo_output".
        quick: the smoke plan (`QUICK_PLAN`) instead of `DemoPlan()`. Defaults to False.
        **overrides: `DemoPlan` fields to change.

    Returns:
        The summary dict written to `out/demo_summary.json` (`closing_text` puts it in words).
    """
    from bonenet.data.mura import format_summary, read_mura, summarize
    from bonenet.data.synthetic import synthetic_dataset
    from bonenet.evaluation.evaluate import evaluate_run
    from bonenet.evaluation.report import run_reports
    from bonenet.inference.predictor import BoneNet
    from bonenet.models.backbones import shipped_backbone
    from bonenet.training.train import train_all

    plan = dataclasses.replace(QUICK_PLAN if quick else DemoPlan(), **overrides)
    out, start = Path(out), time.time()
    backbone, provenance = shipped_backbone()

    _stage("1/5 make-synthetic", start)
    data_root = synthetic_dataset(out / "data", plan.studies_per_part, plan.seed, plan.valid_studies_per_part)
    index = read_mura(data_root)
    log.info(format_summary(summarize(index)))

    _stage("2/5 train-all: router + seven part heads on the shipped synthetic-pretrained trunk", start)
    log.info(f"backbone: {backbone.name} ({provenance['origin']}; seed {provenance['config']['seed']}, "
             f"{provenance['steps']} steps)")
    run_dir = out / "saved_models" / "demo"
    _, failures = train_all(index, run_dir, train_config(plan, backbone))

    _stage("3/5 evaluate on the synthetic valid split", start)
    net = BoneNet.load(run_dir)  # once, for evaluate and predict
    # The smoke run renders no part pages, so it draws no heat-map galleries for them either.
    metrics = evaluate_run(data_root, run_dir, out / "eval", EvaluateConfig(seed=plan.seed, gallery=0 if quick else 3),
                           net=net)

    _stage("4/5 report: notebooks to HTML", start)
    # The smoke run renders the overview only; the per-part pages cost a notebook kernel each.
    reports = run_reports(out / "eval", out / "reports", parts=[] if quick else None)

    _stage("5/5 predict one valid study per part, with heat maps (the fracture locator)", start)
    _predict_sample(net, index, out)
    summary = {"seconds": round(time.time() - start, 1),
               **_summary(plan, (backbone, provenance), metrics, failures, reports)}
    write_text_whole(out / "demo_summary.json", json.dumps(summary, indent=2))
    return summary


def closing_text(summary, out):
    """The demo's last words: where each result is, the per-part table and what to open first."""
    out = Path(out)
    lines = [f"\n=== done in {summary['seconds']:.0f}s ==="]
    for label, path in [("models", out / "saved_models" / "demo" / "manifest.json"),
                        ("metrics", out / "eval" / "metrics.json"), ("predictions", out / "predictions.json"),
                        ("heat maps", out / "cams"), ("summary", out / "demo_summary.json")]:
        lines.append(f"  {label:<18} {path}")
    lines += ["\nSynthetic valid studies, routed pipeline (synthetic data: the machinery works; not clinical evidence).",
              "Stanford: DenseNet-169 ensemble on the real MURA test set, for scale only.",
              summary_table(summary),
              f"router study accuracy {summary['router_study_accuracy']:.3f} "
              f"(images {summary['router_image_accuracy']:.3f})",
              f"open first: {summary['open_first']}"]
    return "\n".join(lines)
