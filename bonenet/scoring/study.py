"""The study rule, in one place: how a study's images become one part, one score and one decision.

1. The mean of the router's softmax over the study's images picks the part, among the parts the
   run has a model for (a run trained on a subset of the parts covers those).
2. The study's score is the mean p(abnormal) of its images under the *routed* part's model.
3. The study is abnormal when its score reaches the *routed* part's threshold.

Training's threshold tuning, `evaluate`, the `BoneNet` API, `predict` and `serve` all call
`decide_study` (one study) or `aggregate_studies` (a table of image predictions), which applies
`decide_study` to every study, so no caller can drift from the rule. A single image is a study of
one.
"""

import numpy as np
import pandas as pd

from bonenet.configs import DEFAULT_THRESHOLD

# The columns of `evaluate`'s study_predictions.csv and image_predictions.csv, which reports read.
STUDY_PREDICTION_COLUMNS = ["study", "patient", "part_true", "part_pred", "router_confidence", "label", "score", "threshold",
                 "pred"]
# part_pred is the study's routed part, whose model gave `score`; image_part_pred is the image's own
# router argmax.
IMAGE_PREDICTION_COLUMNS = ["path", "study", "patient", "part_true", "part_pred", "image_part_pred", "router_confidence",
                 "label", "score"]


def study_score(scores):
    """A study's score from its images' p(abnormal): their mean (NaN when any image is unscored)."""
    scores = np.asarray(scores, float)
    return float(scores.mean()) if len(scores) else float("nan")


def routable(labels, thresholds):
    """Column indices of the router's parts that the run has a model for (all when it has none)."""
    return [i for i, part in enumerate(labels) if part in thresholds] or list(range(len(labels)))


def route(router_probs, labels, thresholds):
    """Each image's own part: its router argmax among the parts the run covers."""
    columns = routable(labels, thresholds)
    probs = np.asarray(router_probs, float)
    return [labels[columns[i]] for i in probs[:, columns].argmax(axis=1)]


def decide_study(router_probs, part_scores, labels, thresholds):
    """The rule for one study.

    A study whose images' own router votes name two or more parts is flagged (`mixed_parts`):
    its images may not be one study at all (a folder of unrelated images), and its single part
    and score should not be trusted without a look.

    Args:
        router_probs: n×k router softmax of the study's n images.
        part_scores: a callable `part -> n p(abnormal)` (so only the routed part's model runs), or a
            dict {part: n scores}. A part without a model gives None.
        labels: the router's k part names, in column order.
        thresholds: {part: (threshold, source)}; a part missing here has no model.

    Returns:
        {"part", "part_confidence", "p_abnormal", "threshold", "threshold_source", "abnormal",
        "mixed_parts": {part: images voting for it} when the votes disagree else None,
        "images": [per-image {"image_part", "part_confidence", "p_abnormal", "abnormal"}]};
        p_abnormal, threshold and abnormal are None when the routed part has no model.
    """
    probs = np.asarray(router_probs, float)
    mean = probs.mean(axis=0)
    columns = routable(labels, thresholds)
    index = columns[int(mean[columns].argmax())]
    part = labels[index]
    votes = route(probs, labels, thresholds)
    counts = {p: votes.count(p) for p in sorted(set(votes), key=labels.index)}
    scores = part_scores(part) if callable(part_scores) else part_scores.get(part)
    threshold, source = thresholds.get(part, (None, "no model for this part"))
    if scores is None or threshold is None:
        scores = [None] * len(probs)
        score, threshold = None, None
    else:
        scores = [float(s) for s in np.asarray(scores, float)]
        if not all(np.isfinite(scores)):  # a NaN would read as "normal": never decide on one
            raise ValueError(f"the {part} model gave p(abnormal) {scores} for this study's images: not probabilities; "
                             "the run's model file is damaged (retrain it)")
        score = study_score(scores)
    images = [{"image_part": v, "part_confidence": float(p[index]), "p_abnormal": s,
               "abnormal": None if s is None else bool(s >= threshold)}
              for v, p, s in zip(votes, probs, scores, strict=True)]
    return {
        "part": part,
        "part_confidence": float(mean[index]),
        "p_abnormal": score,
        "threshold": threshold,
        "threshold_source": source,
        "abnormal": None if score is None else bool(score >= threshold),
        "mixed_parts": counts if len(counts) > 1 else None,
        "images": images,
    }


def aggregate_studies(images, labels, thresholds, oracle=False):
    """Applies `decide_study` to every study of a table of image predictions.

    Args:
        images: one row per image with `study`, `part_true`, `label`, router columns `p_<part>` and
            per-part model scores `s_<part>` (NaN where not scored).
        labels: the router's part names.
        thresholds: {part: (threshold, source)}.
        oracle: give each study its true part instead of the routed one, which isolates routing
            errors. Defaults to False.

    Returns:
        One row per study: `study`, `patient` (the study when the table has none), `part_true`, `part_pred`, `router_confidence`, `label`, `score`,
        `threshold`, `threshold_source`, `pred` (1, 0, or -1 when unscored).
    """
    rows = []
    for study, group in images.groupby("study", sort=True):
        probs = group[[f"p_{p}" for p in labels]].to_numpy()
        if oracle:  # the true part's column gets all the mass, so the rule routes there
            probs = np.eye(len(labels))[[labels.index(group["part_true"].iloc[0])] * len(group)]

        def scores(part, group=group):
            column = f"s_{part}"
            if column not in group or group[column].isna().any():
                return None
            return group[column].to_numpy()

        decided = decide_study(probs, scores, labels, thresholds)
        rows.append({
            "study": study, "patient": group["patient"].iloc[0] if "patient" in group else study,
            "part_true": group["part_true"].iloc[0], "part_pred": decided["part"],
            "router_confidence": decided["part_confidence"], "label": int(group["label"].iloc[0]),
            "score": np.nan if decided["p_abnormal"] is None else decided["p_abnormal"],
            "threshold": np.nan if decided["threshold"] is None else decided["threshold"],
            "threshold_source": decided["threshold_source"],
            "pred": -1 if decided["abnormal"] is None else int(decided["abnormal"]),
        })
    return pd.DataFrame(rows, columns=["study", "patient", "part_true", "part_pred", "router_confidence", "label", "score",
                                       "threshold", "threshold_source", "pred"])


def untuned_parts(manifest, parts):
    """{part: why its threshold could not be tuned} for the `parts` whose hold-out tuning failed."""
    tuning = {part: manifest.models[part].tuning or {} for part in parts}
    return {part: t.get("reason", "not recorded") for part, t in tuning.items() if t.get("threshold") is None}


def part_thresholds(manifest, parts, mode="tuned"):
    """{part: (threshold, source)} for `parts`, from a run's manifest (`bonenet.run.manifest.RunManifest`).

    With "tuned", each part's threshold tuned on the training hold-out; a part whose tuning was not
    possible keeps the default, and its source says why. With "default", `DEFAULT_THRESHOLD`.
    """
    untuned = untuned_parts(manifest, parts)
    out = {}
    for part in parts:
        if mode == "tuned" and part in untuned:
            out[part] = (DEFAULT_THRESHOLD, f"default {DEFAULT_THRESHOLD}: tuning was not possible ({untuned[part]})")
        elif mode == "tuned":
            out[part] = (float(manifest.models[part].threshold), "tuned on the training hold-out")
        else:
            out[part] = (DEFAULT_THRESHOLD, f"default {DEFAULT_THRESHOLD}")
    return out
