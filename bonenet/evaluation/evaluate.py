"""Scoring a run on a split: the routed two-stage pipeline, per image and per study, per part.

Images stream through in batches: each is read and prepared once (`bonenet.data.read`) and goes
through the shared trunk once, and the router head and every part head score it; the ones that
cannot be read are returned as `Skip`s with their reasons. Studies are then decided by `bonenet.scoring.study`: by
their routed part (the pipeline), and by their true part (the oracle, which isolates routing
errors).
"""

import datetime
import json
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix

from bonenet.configs import DEFAULT_THRESHOLD, EvaluateConfig
from bonenet.data.datalist import read_dataset
from bonenet.data.mura import fingerprint_of, is_synthetic
from bonenet.data.read import SkipLog, read_gray, skip_table
from bonenet.evaluation import baselines
from bonenet.files import folder_written_whole, json_safe
from bonenet.inference.heatmap import heat_map, map_note
from bonenet.inference.inputs import prepared_batches
from bonenet.inference.notes import calibration_note
from bonenet.inference.predictor import BoneNet
from bonenet.parts import PARTS, short_name
from bonenet.progress import Progress
from bonenet.run.model_card import run_card, write_card
from bonenet.scoring.calibration import N_BINS, ece, ece_ci
from bonenet.scoring.metrics import AUROC_UNDEFINED, KAPPA_UNDEFINED, per_group
from bonenet.scoring.study import IMAGE_PREDICTION_COLUMNS, STUDY_PREDICTION_COLUMNS, aggregate_studies, route

log = logging.getLogger(__name__)


def predict_split(net, images, progress=True):
    """Runs the trunk, the router and every part model over an image table (from `read_dataset`).

    Each image goes through the trunk once; every part head scores it (`s_<part>`), so the routed
    and the oracle study scores are both a selection, and nothing but the table is kept.

    Returns:
        (image table with router probabilities `p_<part>`, part scores `s_<part>` (calibrated where the
        run is) and `u_<part>` (uncalibrated), the `Skip`s of the images that could not be read).
    """
    rows, skips = [], []
    paths = images["path"].tolist()
    bar = Progress(len(paths), "evaluate: trunk, router and part models over the split", enabled=progress)
    for batch in prepared_batches(net, [(path, path) for path in paths]):
        skips.extend(batch.skips.values())
        if batch.kept:
            features = net.encode(batch.prepared)
            scored = images.iloc[batch.kept].copy()
            probs = net.router_probs(features)
            scores = net.image_scores(features, net.parts)
            for i, part in enumerate(net.labels):
                scored[f"p_{part}"] = probs[:, i]
                scored[f"u_{part}"], scored[f"s_{part}"] = scores.get(part, (np.nan, np.nan))
            rows.append(scored)
        bar.update(len(batch.kept) + len(batch.skips))
    bar.close()
    table = pd.concat(rows, ignore_index=True) if rows else images.iloc[:0].copy()
    return table.rename(columns={"part": "part_true"}), skips


def _image_rows(table, studies, labels, thresholds):
    """Per-image predictions under the study's routed part (the model that scored them)."""
    routed = table["study"].map(studies.set_index("study")["part_pred"]).to_numpy()
    probs = table[[f"p_{p}" for p in labels]].to_numpy()
    out = table.assign(part_pred=routed, image_part_pred=route(probs, labels, thresholds),
                       router_confidence=np.nan, score=np.nan, threshold=np.nan)
    for part in labels:
        mine = routed == part
        out.loc[mine, "router_confidence"] = table.loc[mine, f"p_{part}"]
        out.loc[mine, "score"] = table.loc[mine, f"s_{part}"]
        out.loc[mine, "threshold"] = thresholds.get(part, (np.nan, ""))[0]
    return out


def write_gallery(net, studies, image_rows, out_dir, per_kind=3):
    """Heat maps (`bonenet.inference.heatmap.heat_map`: the fracture locator's, or Grad-CAM with `explain
    gradcam`) of each part's most confident true positives, false negatives and false positives.

    `studies` are decided as `predict` decides them (the run's tuned thresholds where it has them),
    so that a study is never normal in the report and abnormal from `predict`. Per study, the view with the highest p(abnormal) is shown, drawn as `predict` draws it, with the study's own score and
    truth on top. Written here because the report's kernels do not load models.

    Returns:
        The `gallery.csv` table: part, part_pred, kind, rank, study, path, study_score, image_score,
        heat_map_note, boxes (JSON [[x0, y0, x1, y1]] in the image's pixels), threshold (the routed part's, as
        `predict` decides), file.
    """
    folder = Path(out_dir) / "gallery"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    scored = studies[np.isfinite(studies["score"]) & (studies["pred"] >= 0)]
    bar = Progress(len(PARTS), "evaluate: heat-map galleries", unit="part")
    for part in PARTS:
        mine = scored[scored["part_true"] == part]
        picks = {"tp": mine[(mine.pred == 1) & (mine.label == 1)].sort_values("score", ascending=False),
                 "fn": mine[(mine.pred == 0) & (mine.label == 1)].sort_values("score"),
                 "fp": mine[(mine.pred == 1) & (mine.label == 0)].sort_values("score", ascending=False)}
        for kind, chosen in picks.items():
            for rank, study in enumerate(chosen.head(per_kind).itertuples(), 1):
                views = image_rows[(image_rows["study"] == study.study) & np.isfinite(image_rows["score"])]
                view = views.loc[views["score"].idxmax()]
                gray = read_gray(view["path"])
                result = {"part_confidence": float(view["router_confidence"]), "p_abnormal": float(view["score"]),
                          "threshold": float(study.threshold), "abnormal": bool(view["score"] >= study.threshold),
                          "whose": "this view "}
                name = "/".join(str(study.study).split("/")[-2:])  # patient/study
                header = [f"{kind.upper()} {name}: study p(abnormal) {study.score:.2f} (mean of {len(views)} "
                          f"views), truth {'abnormal' if study.label else 'normal'}"]
                image, boxes, _ = heat_map(net, study.part_pred, gray, result, header)
                file = folder / f"{short_name(part)}_{kind}_{rank}.png"
                if not cv2.imwrite(str(file), image):
                    raise OSError(f"{file}: could not write the heat map")
                rows.append({"part": part, "part_pred": study.part_pred, "kind": kind, "rank": rank,
                             "study": study.study, "path": view["path"],
                             "study_score": study.score, "image_score": float(view["score"]),
                             "heat_map_note": map_note(net, study.part_pred),
                             "boxes": json.dumps([b["box"] for b in boxes]),
                             "threshold": study.threshold, "file": f"gallery/{file.name}"})
        bar.update()
    bar.close()
    table = pd.DataFrame(rows, columns=["part", "part_pred", "kind", "rank", "study", "path", "study_score", "image_score",
                                        "heat_map_note", "boxes", "threshold", "file"])
    table.to_csv(Path(out_dir) / "gallery.csv", index=False)
    return table


def _split_to_score(index, net, split, models_dir):
    """The split's images of the parts the run covers, and one message per part the data or the run lacks."""
    images = index.images[index.images["split"] == split]
    if images.empty:
        raise ValueError(f"{index.root}: the {split} split has no usable images")
    present = set(images["part"])
    messages = [f"the {split} split has no studies of {p}" for p in PARTS if p not in present]
    uncovered = [p for p in PARTS if p in present and p not in net.parts]
    for part in uncovered:
        n = images.loc[images["part"] == part, "study"].nunique()
        messages.append(f"no model in the run for {part}: its {n} {split} studies are not scored")
    images = images[~images["part"].isin(uncovered)]
    if images.empty:
        raise ValueError(f"{models_dir}: the run covers {', '.join(net.parts) or 'no part'}, and the {split} split "
                         f"has none of them")
    return images, messages


def _scored(table):
    return table[np.isfinite(table["score"])]


def _part_metrics(studies, studies_tuned, oracle, image_rows, n_boot, seed):
    """Per-part (and overall) metrics of the routed studies, at default and tuned thresholds, of the
    images, and of the oracle (true-part) studies; and the parts whose kappa or AUROC is undefined."""
    parts_scored = [p for p in PARTS if p in set(_scored(studies)["part_true"])]
    boot = {"n_boot": n_boot, "seed": seed}
    with warnings.catch_warnings():
        # A part with one class gives NaN kappa/AUROC by design (see bonenet.scoring.metrics); sklearn's
        # warning would repeat for every bootstrap table, so it is reported once, as `undefined`.
        warnings.filterwarnings("ignore", message=re.escape(KAPPA_UNDEFINED))
        warnings.filterwarnings("ignore", message=re.escape(AUROC_UNDEFINED))
        metrics = {
            "study": per_group(_scored(studies), "part_true", parts_scored, **boot),
            "study_tuned": per_group(_scored(studies_tuned), "part_true", parts_scored, **boot),
            "image": per_group(_scored(image_rows), "part_true", parts_scored, **boot),
            "oracle": per_group(_scored(oracle), "part_true",
                                [p for p in PARTS if p in set(_scored(oracle)["part_true"])], **boot),
        }
    undefined = [p for p, m in metrics["study"].items() if not np.isfinite(m["kappa"]) or not np.isfinite(m["auroc"])]
    return metrics, parts_scored, undefined


def uncalibrated_scores(table, studies, net):
    """Each study's score (under its routed part, as in `studies`) from the part models' uncalibrated
    p(abnormal) `u_<part>`: what calibration is measured against."""
    raw = table.assign(**{f"s_{p}": table[f"u_{p}"] for p in net.labels if f"u_{p}" in table})
    before = aggregate_studies(raw, net.labels, net.part_thresholds("default"))
    return studies["study"].map(before.set_index("study")["score"])


def _calibration_metrics(studies, net, n_boot, seed):
    """Per part (routed studies, by true part) and overall: ECE with a cluster-bootstrap CI, before and after
    calibration, and the temperature that made the difference."""
    rows = _scored(studies)
    out = {}
    for part in [*[p for p in PARTS if p in set(rows["part_true"])], "overall"]:
        mine = rows if part == "overall" else rows[rows["part_true"] == part]
        groups = mine["patient"].to_numpy()
        entry = {"n": int(len(mine)), "bins": N_BINS}
        for when, column in (("before", "score_uncalibrated"), ("after", "score")):
            entry[f"ece_{when}"] = ece(mine["label"], mine[column])
            entry[f"ece_{when}_ci95"] = ece_ci(mine["label"], mine[column], groups, n_boot=n_boot, seed=seed)
        if part != "overall":
            entry.update(calibrated=net.temperature(part) is not None, temperature=net.temperature(part),
                         calibration=calibration_note(net.manifest, part))
        out[part] = entry
    return out


def _undefined_message(part, studies, split):
    """One line saying why a part's kappa or AUROC is NaN: its studies of the split are of one class."""
    rows = _scored(studies)[lambda t: t["part_true"] == part]
    classes = sorted(set(rows["label"]))
    which = "AUROC and kappa are" if len(set(rows["pred"])) < 2 else "AUROC is"
    kind = {0: "normal", 1: "abnormal"}[classes[0]] if len(classes) == 1 else "of both classes"
    return f"{part}: {which} undefined (left blank): its {len(rows)} {split} studies are all {kind}"


def _calibration_warnings(calibration, split):
    """One line per part whose calibration made its ECE on the evaluated split worse."""
    out = []
    for part, entry in calibration.items():
        if entry.get("calibrated") and entry["ece_after"] > entry["ece_before"]:
            out.append(f"warning: {part}: calibration made the {split} ECE worse ({entry['ece_before']:.3f} → "
                       f"{entry['ece_after']:.3f}, temperature {entry['temperature']:.3g}); its probabilities are "
                       "better read uncalibrated")
    return out


def _router_metrics(studies, image_rows):
    return {
        "image_accuracy": float((image_rows["image_part_pred"] == image_rows["part_true"]).mean()),
        "study_accuracy": float((studies["part_pred"] == studies["part_true"]).mean()),
        "confusion": confusion_matrix(image_rows["part_true"], image_rows["image_part_pred"], labels=list(PARTS)).tolist(),
        "study_confusion": confusion_matrix(studies["part_true"], studies["part_pred"], labels=list(PARTS)).tolist(),
        "labels": list(PARTS),
    }


def _source(index, net, models_dir, split, studies):
    """Where the figures come from: data, run, recipe, backbone (the caller adds what was left out and why)."""
    return {
        "evaluated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "data_root": str(index.root), "split": split, "dataset_fingerprint": fingerprint_of(index),
        "synthetic": is_synthetic(index),
        "models_dir": str(Path(models_dir).resolve()), "models": {k: v.file for k, v in net.manifest.models.items()},
        "recipe": net.manifest.recipe["name"], "image_size": net.image_size, "weights": net.manifest.weights,
        "tta": net.tta, "members": {key: len(heads) for key, heads in net.members.items()},
        "bootstrap": "cluster bootstrap over patients" if "patient" in studies else "over studies",
    }


@dataclass(frozen=True)
class _Scored:
    """What an evaluation found: its metrics, the study tables at the default and the tuned thresholds, the
    image rows, and every file left out."""

    metrics: dict
    studies: pd.DataFrame
    studies_tuned: pd.DataFrame
    image_rows: pd.DataFrame
    skips: list


def _write_outputs(out_dir, scored, net, config, card):
    """Writes the evaluation folder whole or not at all (`bonenet.files`)."""
    metrics, studies, image_rows, skips = scored.metrics, scored.studies, scored.image_rows, scored.skips
    with folder_written_whole(out_dir, "metrics.json", force=None) as out:
        # score_uncalibrated: the study's score before its part model's temperature (`bonenet.scoring.calibration`).
        studies[[*STUDY_PREDICTION_COLUMNS, "score_uncalibrated"]].to_csv(out / "study_predictions.csv", index=False)
        image_rows[IMAGE_PREDICTION_COLUMNS].to_csv(out / "image_predictions.csv", index=False)
        (out / "metrics.json").write_text(json.dumps(json_safe(metrics), indent=2))
        # Every file left out, by the reader (headers, labels) or the read path (full decode), with why.
        skip_table(skips).to_csv(out / "skipped.csv", index=False)
        if config.plots:
            from bonenet.evaluation import plots as bplots

            bplots.write_evaluation_plots(metrics, studies, out)
        if config.gallery:
            write_gallery(net, scored.studies_tuned, image_rows, out, config.gallery)
        write_card(card, out)  # beside the figures, for the report's pages


def evaluate_run(data_root, models_dir, out_dir, config=EvaluateConfig(), net=None):
    """Evaluates a run on a split and writes metrics.json, the prediction CSVs, skipped.csv and the plots.

    The output folder is written whole or not at all (`bonenet.files`). `config` (an `EvaluateConfig`)
    says which split, the bootstrap's resamples and seed, the gallery's heat maps per part and kind
    (`write_gallery`), the test-time augmentation and whether to draw the plots. `net` is the run already
    loaded as a `BoneNet` with the default threshold mode, to save loading it again. Defaults to None.

    Returns:
        The metrics dict written to `out_dir/metrics.json`; `source.skipped` lists every file left
        out (path, reason, stage) and `source.messages` what else the figures lack.
    """
    split, n_boot, seed = config.split, config.bootstrap, config.seed
    index = read_dataset(data_root, splits=(split,))
    net = (net or BoneNet.load(models_dir)).with_tta(config.tta, config.explain)
    images, messages = _split_to_score(index, net, split, models_dir)
    table, unread = predict_split(net, images)
    skips = list(SkipLog([*index.skips, *unread]))
    default, tuned = net.part_thresholds("default"), net.part_thresholds("tuned")
    untuned = net.untuned_parts()
    messages += [f"{part}: {tuned[part][1]}; study_tuned uses {DEFAULT_THRESHOLD} for it" for part in untuned]

    studies = aggregate_studies(table, net.labels, default)
    studies["score_uncalibrated"] = uncalibrated_scores(table, studies, net)
    studies_tuned = aggregate_studies(table, net.labels, tuned)
    oracle = aggregate_studies(table, net.labels, default, oracle=True)
    image_rows = _image_rows(table, studies, net.labels, default)
    metrics, parts_scored, undefined = _part_metrics(studies, studies_tuned, oracle, image_rows, n_boot, seed)
    messages += [_undefined_message(part, studies, split) for part in undefined]
    if n_boot == 0:
        messages.append("no confidence intervals (--bootstrap 0): every *_ci95 is left empty")
    metrics["router"] = _router_metrics(studies, image_rows)
    metrics["calibration"] = _calibration_metrics(studies, net, n_boot, seed)
    messages += _calibration_warnings(metrics["calibration"], split)
    metrics["baseline"] = {"stanford_kappa": baselines.STANFORD_KAPPA, "stanford_source": baselines.STANFORD_SOURCE,
                           "patel": baselines.PATEL, "patel_source": baselines.PATEL_SOURCE}
    metrics["thresholds"] = {
        "default": {p: t for p, (t, _) in default.items()},
        "tuned_on_holdout": {p: t for p, (t, _) in tuned.items() if p not in untuned},
        "tuning": {p: source for p, (_, source) in tuned.items()},
    }
    metrics["source"] = {**_source(index, net, models_dir, split, studies), "skipped": [s.as_dict() for s in skips],
                         "parts_scored": parts_scored, "messages": messages}
    card = run_card(models_dir, metrics)  # one card, one timestamp, in both places
    _write_outputs(out_dir, _Scored(metrics, studies, studies_tuned, image_rows, skips), net, config, card)
    try:
        write_card(card, models_dir)
    except OSError as exc:  # a read-only run folder, say: the evaluation's copy stands
        log.warning(f"{models_dir}: could not update the run's model card ({exc.strerror or exc}); "
                    f"it is in {out_dir}")
    return metrics

