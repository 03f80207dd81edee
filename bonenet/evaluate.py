"""Scoring a run on a split: the routed two-stage pipeline, per image and per study, per part.

Each image is prepared once and goes through the shared trunk once. The router head scores every
image; a study's part is its images' mean router softmax. Each part model then scores the images of the studies routed to it (the pipeline)
and of the studies that truly show it (the oracle, which isolates routing errors).
"""

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf
from sklearn.metrics import confusion_matrix

from bonenet import baselines
from bonenet.data import AUTOTUNE, map_prepare
from bonenet.inference import BoneNet, take
from bonenet.metrics import aggregate_studies, per_group
from bonenet.mura import fingerprint, read_mura

STUDY_COLUMNS = ["study", "part_true", "part_pred", "label", "score", "pred"]
IMAGE_COLUMNS = ["path", "study", "part_true", "part_pred", "router_confidence", "label", "score"]


def prepare_all(paths, recipe, size, batch_size=64):
    """Decodes and prepares every image once, in parallel: (uint8 N×S×S×3, ok mask)."""
    prepare = map_prepare(recipe, size)
    ds = tf.data.Dataset.from_tensor_slices([str(p) for p in paths]).map(prepare, num_parallel_calls=AUTOTUNE)
    images, oks = [], []
    for x, ok in ds.batch(batch_size).prefetch(AUTOTUNE):
        images.append(x.numpy())
        oks.append(ok.numpy())
    return np.concatenate(images), np.concatenate(oks)


def predict_split(net, images):
    """Runs the two-stage pipeline over an image table (from `read_mura`).

    Returns:
        (image table with router probabilities, `part_pred`, `router_confidence`, `score` (routed) and
        `score_oracle`; study table; list of messages about what could not be scored).
    """
    messages = []
    x, ok = prepare_all(images["path"], net.recipe, net.image_size)
    if not ok.all():
        messages.append(f"{int((~ok).sum())} image(s) could not be read and were skipped")
    table = images[ok].reset_index(drop=True).rename(columns={"part": "part_true"})
    features = net.encode(x[ok])
    del x
    probs = net.router_probs(features)
    prob_columns = {p: f"p_{p}" for p in net.labels}
    for i, part in enumerate(net.labels):
        table[prob_columns[part]] = probs[:, i]
    table["part_pred"] = [net.labels[i] for i in probs.argmax(axis=1)]
    table["router_confidence"] = probs.max(axis=1)
    table["score"] = np.nan
    studies = aggregate_studies(table, prob_columns)
    routed = table["study"].map(studies.set_index("study")["part_pred"])
    table["study_part_pred"] = routed
    table["score_oracle"] = np.nan
    for part in net.labels:
        want_routed = (routed == part).to_numpy()
        want_oracle = (table["part_true"] == part).to_numpy()
        need = want_routed | want_oracle
        if not need.any():
            continue
        if part not in net.models:
            messages.append(f"no {part} model in the run: {int(want_routed.sum())} image(s) routed to it and "
                            f"{int(want_oracle.sum())} showing it are unscored")
            continue
        scores = net.abnormal_probs(part, take(features, need))
        full = np.full(len(table), np.nan)
        full[need] = scores
        table.loc[want_routed, "score"] = full[want_routed]
        table.loc[want_oracle, "score_oracle"] = full[want_oracle]
    studies["score"] = table.groupby("study")["score"].mean().reindex(studies["study"]).to_numpy()
    studies["score_oracle"] = table.groupby("study")["score_oracle"].mean().reindex(studies["study"]).to_numpy()
    return table, studies, messages


def _scored(table, column):
    rows = table[np.isfinite(table[column])]
    return rows.assign(score=rows[column])


def evaluate_run(data_root, models_dir, out_dir, split="valid", n_boot=1000, seed=0, plots=True):
    """Evaluates a run on a split and writes metrics.json, the prediction CSVs and the plots.

    Returns:
        The metrics dict written to `out_dir/metrics.json`.
    """
    from bonenet.parts import PARTS

    if split not in ("train", "valid"):
        raise ValueError(f"split must be train or valid, got {split!r}")
    index = read_mura(data_root, splits=(split,))
    images = index.images[index.images["split"] == split]
    if images.empty:
        raise ValueError(f"{index.root}: the {split} split has no usable images")
    net = BoneNet.load(models_dir)
    table, studies, messages = predict_split(net, images)
    absent = [p for p in PARTS if p not in set(studies["part_true"])]
    if absent:
        messages.append(f"the {split} split has no studies of {', '.join(absent)}")

    thresholds = {p: net.threshold(p) for p in net.parts}
    tuned = {p: net.threshold(p, tuned=True) for p in net.parts}
    scored_studies = _scored(studies, "score")
    oracle_studies = _scored(studies, "score_oracle")
    scored_images = _scored(table, "score")
    parts_scored = [p for p in PARTS if p in set(scored_studies["part_true"])]
    parts_oracle = [p for p in PARTS if p in set(oracle_studies["part_true"])]
    boot = {"n_boot": n_boot, "seed": seed}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # single-class parts give NaN by design; listed in messages instead
        metrics = {
            "study": per_group(scored_studies, "part_true", parts_scored, thresholds, **boot),
            "study_tuned": per_group(scored_studies, "part_true", parts_scored, tuned, **boot),
            "image": per_group(scored_images, "part_true", parts_scored, thresholds, **boot),
            "oracle": per_group(oracle_studies, "part_true", parts_oracle, thresholds, **boot),
        }
    metrics["router"] = {
        "image_accuracy": float((table["part_pred"] == table["part_true"]).mean()),
        "study_accuracy": float((studies["part_pred"] == studies["part_true"]).mean()),
        "confusion": confusion_matrix(table["part_true"], table["part_pred"], labels=list(PARTS)).tolist(),
        "study_confusion": confusion_matrix(studies["part_true"], studies["part_pred"], labels=list(PARTS)).tolist(),
        "labels": list(PARTS),
    }
    metrics["baseline"] = {
        "stanford_kappa": baselines.STANFORD_KAPPA, "stanford_source": baselines.STANFORD_SOURCE,
        "patel": baselines.PATEL, "patel_source": baselines.PATEL_SOURCE,
    }
    metrics["thresholds"] = {"default": thresholds, "tuned_on_holdout": tuned}
    metrics["source"] = {
        "data_root": str(index.root), "split": split, "dataset_fingerprint": fingerprint(index),
        "models_dir": str(Path(models_dir).resolve()), "models": {k: v["file"] for k, v in net.manifest["models"].items()},
        "recipe": net.manifest["recipe"]["name"], "image_size": net.image_size, "weights": net.manifest["weights"],
        "skipped_files": len(index.skipped), "parts_scored": parts_scored, "messages": messages,
    }

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    studies["pred"] = [
        int(s >= thresholds.get(p, 0.5)) if np.isfinite(s) else -1
        for s, p in zip(studies["score"], studies["part_pred"], strict=True)
    ]
    studies[STUDY_COLUMNS].to_csv(out / "study_predictions.csv", index=False)
    table[IMAGE_COLUMNS].to_csv(out / "image_predictions.csv", index=False)
    (out / "metrics.json").write_text(json.dumps(_clean(metrics), indent=2))
    if plots:
        from bonenet import plots as bplots

        bplots.write_evaluation_plots(metrics, studies, out)
    for message in messages:
        print(f"bonenet evaluate: {message}", file=sys.stderr)
    return metrics


def _clean(value):
    """NaN is not JSON; write null so every reader can parse the file."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def load_evaluation(eval_dir):
    """Reads an `evaluate` output folder: (metrics dict, study table, image table)."""
    eval_dir = Path(eval_dir)
    path = eval_dir / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; run `evaluate --out {eval_dir}` first")
    return (json.loads(path.read_text()), pd.read_csv(eval_dir / "study_predictions.csv"),
            pd.read_csv(eval_dir / "image_predictions.csv"))
