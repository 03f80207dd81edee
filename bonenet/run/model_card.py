"""A model card per run: what the models are, what they learned from, how well they did and where they stop.

`write_model_card(run_dir)` writes `MODEL_CARD.md` and its machine-readable twin `model_card.json` from the
run's manifest; given `evaluate`'s metrics it adds the evaluated split's figures. Training writes it after
every model it records, `evaluate` updates it (and puts a copy beside its figures for the report), and
`serve` links to it from its health answer. Reads files only: no TensorFlow.
"""

import datetime
import json
from pathlib import Path

from bonenet.files import json_safe, write_text_whole
from bonenet.parts import PARTS, short_name
from bonenet.run import provenance
from bonenet.scoring.metrics import figure_text, with_interval
from bonenet.scoring.study import part_thresholds

CARD_FILE = "MODEL_CARD.md"
CARD_JSON = "model_card.json"
NOT_FOR_CLINICAL_USE = "Research software: not for clinical use."
INTENDED_USE = ("Research on detecting abnormal upper-extremity radiographs (MURA's seven body parts: elbow, "
                "finger, forearm, hand, humerus, shoulder, wrist), per study, by radiology-AI engineers and ML "
                "researchers. Not a medical device, and not for diagnosis, triage or any decision about a patient.")


def _limits(manifest, facts):
    """The known limits, in plain words, from what the run is."""
    limits = []
    reasons = provenance.unproven(manifest.weights, facts["data"]["synthetic"])
    if provenance.BACKBONE in reasons:
        limits.append(f"The backbone is not ImageNet-pretrained ({facts['backbone']['origin']}): the models have "
                      "not learned from real radiographs through it, and their answers on real studies mean little.")
    if provenance.RADIOGRAPH in reasons:
        limits.append(f"The backbone was {manifest.weights.get('summary', 'pretrained on open real radiographs')}: "
                      "it has seen real radiographs, but far fewer images than ImageNet. Its in-collection FracAtlas "
                      "figures are not transfer; BENCHMARKS.md's transfer yardstick measures what such a backbone "
                      "carries to a body region it never saw.")
    if provenance.DATA in reasons:
        limits.append("The training data is synthetic (`make-synthetic`): every figure here shows the machinery "
                      "works, not how it does on real radiographs.")
    limits += [
        "Trained and checked only on the data named here; a new hospital, scanner, population or body part "
        "outside MURA's seven can change every figure. Evaluate on your own studies before trusting it.",
        "A study's part comes from the router; a study sent to the wrong part is scored by the wrong model.",
        "Thresholds and temperatures were fitted on the training hold-out; they may not transfer to a population "
        "with another prevalence of abnormality.",
        "MURA labels are per study (normal or abnormal), not per finding. The heat map is the fracture locator's, "
        "learned from FracAtlas' outlined fractures and measured on held-out FracAtlas films only (its caption "
        "gives the hit rate): it marks likely fractures, not every abnormality MURA counts; with --explain "
        "gradcam it shows where the part model looked, not a localised finding.",
    ]
    untrained = [short_name(p) for p in PARTS if p not in manifest.models]
    if untrained:
        limits.append(f"No model for {', '.join(untrained)}: studies routed there are not scored.")
    return limits


def _data(manifest):
    """What the run learned from, from the router's entry (every model shares one split)."""
    entries = manifest.models
    first = entries.get("router") or next(iter(entries.values()))
    dataset = first.dataset
    unread = {s["path"] for e in entries.values() for s in e.dataset.get("unread", [])}
    return {"fingerprint": dataset.get("fingerprint"), "synthetic": provenance.trained_on_synthetic(manifest),
            "train_images": dataset.get("train_images"), "holdout_images": dataset.get("holdout_images"),
            "holdout_studies": dataset.get("holdout_studies"), "unread_images": len(unread)}


def _evaluation(metrics):
    """The evaluated split's figures per part, at the tuned thresholds `predict` uses, with their CIs."""
    if metrics is None:
        return None
    source = metrics.get("source", {})
    keep = ("kappa", "kappa_ci95", "auroc", "auroc_ci95", "sensitivity", "specificity", "n")
    calibration = metrics.get("calibration", {})
    return {"split": source.get("split"), "data_root": source.get("data_root"),
            "dataset_fingerprint": source.get("dataset_fingerprint"), "synthetic": source.get("synthetic"),
            # When the figures were made: the evaluation's own time, so every copy of a card says the same.
            "evaluated": source.get("evaluated") or datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"),
            "parts": {part: {**{k: m.get(k) for k in keep},
                             **{k: calibration.get(part, {}).get(k) for k in ("ece_before", "ece_before_ci95",
                                                                             "ece_after", "ece_after_ci95")}}
                      for part, m in metrics.get("study_tuned", {}).items()}}


def card_facts(manifest, metrics=None, run_dir=None):
    """The model card as a dict (`model_card.json`), from a run's manifest and, once evaluated, its metrics."""
    parts = [p for p in PARTS if p in manifest.models]
    thresholds = part_thresholds(manifest, parts)
    weights = manifest.weights
    models = {}
    for key, entry in manifest.models.items():
        models[key] = {"file": entry.file, "labels": list(entry.labels), "epochs_run": entry.epochs_run,
                       "holdout": entry.holdout, "calibration": entry.calibration,
                       "members": [{k: m.get(k) for k in ("file", "seed", "epochs_run", "holdout")}
                                   for m in entry.members]}
        if key in thresholds:
            models[key].update(threshold=thresholds[key][0], threshold_source=thresholds[key][1])
    facts = {
        "card_version": 1,
        "model": {"name": "BoneNet", "bonenet_version": manifest.bonenet_version,
                  "run": str(Path(run_dir).resolve()) if run_dir else None,
                  "format_version": manifest.format_version, "updated": manifest.updated},
        "intended_use": INTENDED_USE,
        "not_for_clinical_use": NOT_FOR_CLINICAL_USE,
        "data": _data(manifest),
        "backbone": {"kind": weights.get("kind"), "origin": provenance.backbone_origin(weights),
                     **({"sha256": weights["sha256"]} if "sha256" in weights else {})},
        "recipe": {"name": manifest.recipe["name"], "description": manifest.recipe.get("description")},
        "image_size": manifest.image_size,
        "trainable_layers": manifest.trainable_layers.get("count"),
        "study_rule": "the mean router softmax over a study's images picks the part; the study's p(abnormal) is "
                      "the mean of its images' under that part's model; abnormal when it reaches the part's threshold",
        "models": models,
        "evaluation": _evaluation(metrics),
    }
    facts["limits"] = _limits(manifest, facts)
    return facts


def render_card(facts):
    """`MODEL_CARD.md` from `card_facts`."""
    data, model = facts["data"], facts["model"]
    lines = [f"# Model card: BoneNet run `{Path(model['run']).name if model['run'] else 'unnamed'}`", "",
             f"**{facts['not_for_clinical_use']}**", "",
             "## Intended use", "", facts["intended_use"], "",
             "## Data", "",
             f"- {'**Synthetic**' if data['synthetic'] else 'Real'} training data, path fingerprint "
             f"`{data['fingerprint']}`: {data['train_images']} fit and {data['holdout_images']} hold-out images "
             f"(router; {data['holdout_studies']} hold-out studies); {data['unread_images']} image(s) could not be read.",
             "", "## Model", "",
             f"- BoneNet {model['bonenet_version']}, run format {model['format_version']}, updated {model['updated']}.",
             f"- Backbone: EfficientNetB0, {facts['backbone']['origin']} ({facts['backbone']['kind']}).",
             f"- Recipe `{facts['recipe']['name']}` ({facts['recipe']['description']}), {facts['image_size']} px, "
             f"last {facts['trainable_layers']} layers fine-tuned.",
             f"- Study rule: {facts['study_rule']}.", "",
             "## Per model (training hold-out)", "",
             "| model | threshold | calibration | hold-out accuracy | hold-out AUC |", "|---|---|---|---|---|"]
    for key, m in facts["models"].items():
        cal = m["calibration"]
        cal_text = (f"temperature {cal['temperature']:.3g}" if cal.get("temperature") is not None
                    else f"none ({cal['reason']})")
        threshold = f"{m['threshold']:.3f} ({m['threshold_source']})" if "threshold" in m else "—"
        holdout = m.get("holdout") or {}
        lines.append(f"| {key} | {threshold} | {cal_text} | {figure_text(holdout.get('accuracy'))} | {figure_text(holdout.get('auc'))} |")
        if len(m.get("members", [])) > 1:  # the ensemble's figures are the members' mean's; each member's beside
            lines += [f"| {key} member {i} (seed {member['seed']}) | — | — | {figure_text(member['holdout'].get('accuracy'))} | "
                      f"{figure_text(member['holdout'].get('auc'))} |" for i, member in enumerate(m["members"], 1)]
    evaluation = facts["evaluation"]
    lines += ["", "## Evaluated", ""]
    if evaluation is None:
        lines.append("Not evaluated yet: run `bonenet evaluate --models-dir RUN --data-root DATA --out DIR`.")
    else:
        lines += [f"Split `{evaluation['split']}` of `{evaluation['data_root']}` (fingerprint "
                  f"`{evaluation['dataset_fingerprint']}`{', synthetic' if evaluation['synthetic'] else ''}), "
                  f"evaluated {evaluation['evaluated']}; study level, tuned thresholds, 95% cluster-bootstrap CIs.", "",
                  "| part | studies | kappa | AUROC | ECE before → after calibration |", "|---|---|---|---|---|"]
        for part, m in evaluation["parts"].items():
            lines.append(f"| {part} | {m['n']} | {with_interval(m['kappa'], m['kappa_ci95'])} | "
                         f"{with_interval(m['auroc'], m['auroc_ci95'])} | {figure_text(m['ece_before'])} → "
                         f"{with_interval(m['ece_after'], m['ece_after_ci95'])} |")
    lines += ["", "## Known limits", "", *(f"- {text}" for text in facts["limits"]), ""]
    return "\n".join(lines)


def run_card(run_dir, metrics=None):
    """The card's facts for the run in `run_dir` (`card_facts` of its manifest), JSON-ready."""
    from bonenet.run.manifest import read_manifest

    return json_safe(card_facts(read_manifest(run_dir), metrics, run_dir))


def write_card(facts, folder):
    """Writes `MODEL_CARD.md` and `model_card.json` of `facts` into `folder` (each file whole or not at all)."""
    write_text_whole(Path(folder) / CARD_JSON, json.dumps(facts, indent=2))
    write_text_whole(Path(folder) / CARD_FILE, render_card(facts))


def write_model_card(run_dir, metrics=None):
    """Writes the run's model card into `run_dir`, with `evaluate`'s figures when given.

    Returns:
        The card's facts.
    """
    facts = run_card(run_dir, metrics)
    write_card(facts, run_dir)
    return facts
