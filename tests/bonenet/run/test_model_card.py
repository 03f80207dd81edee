"""The model card every run carries: MODEL_CARD.md and model_card.json, from the manifest and the metrics."""

import json

from bonenet.configs import EvaluateConfig
from bonenet.parts import PARTS
from bonenet.run.manifest import read_manifest
from bonenet.run.model_card import CARD_FILE, CARD_JSON, card_facts, render_card
from bonenet.scoring.study import part_thresholds


def test_training_writes_a_card_whose_fields_are_the_manifests(run):
    run_dir = run[0]
    manifest = read_manifest(run_dir)
    card = json.loads((run_dir / CARD_JSON).read_text())
    # Nothing but the manifest (another test may have evaluated the session's run: its figures are checked below).
    written = {k: v for k, v in card.items() if k != "evaluation"}
    assert written == {k: v for k, v in card_facts(manifest, run_dir=run_dir).items() if k != "evaluation"}
    router = manifest.models["router"].dataset
    assert card["data"] == {"fingerprint": router["fingerprint"], "synthetic": True, "train_images": router["train_images"],
                            "holdout_images": router["holdout_images"], "holdout_studies": router["holdout_studies"],
                            "unread_images": 0}
    assert card["backbone"] == {"kind": "none", "origin": "random initialisation"}
    assert card["recipe"]["name"] == manifest.recipe["name"] and card["image_size"] == manifest.image_size == 64
    assert card["trainable_layers"] == manifest.trainable_layers["count"] == 20
    thresholds = part_thresholds(manifest, ["XR_WRIST"])
    assert (card["models"]["XR_WRIST"]["threshold"], card["models"]["XR_WRIST"]["threshold_source"]) == thresholds["XR_WRIST"]
    for key, entry in manifest.models.items():
        assert card["models"][key]["calibration"] == entry.calibration
    assert card["not_for_clinical_use"] == "Research software: not for clinical use."
    limits = " ".join(card["limits"])
    assert "not ImageNet-pretrained" in limits and "synthetic" in limits and "No model for elbow, finger" in limits
    text = (run_dir / CARD_FILE).read_text()
    assert text == render_card(card) and "**Research software: not for clinical use.**" in text
    assert "Not evaluated yet" in render_card(card_facts(manifest, run_dir=run_dir))


def test_evaluate_updates_the_runs_card_and_puts_a_copy_beside_its_figures(evaluated, full_run):
    eval_dir, _, _ = evaluated
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    card = json.loads((full_run / CARD_JSON).read_text())
    evaluation = card["evaluation"]
    assert evaluation["split"] == "valid" and evaluation["dataset_fingerprint"] == metrics["source"]["dataset_fingerprint"]
    for part in [*PARTS, "overall"]:
        figures, tuned = evaluation["parts"][part], metrics["study_tuned"][part]
        assert [figures[k] for k in ("kappa", "kappa_ci95", "auroc", "auroc_ci95", "n")] == \
            [tuned[k] for k in ("kappa", "kappa_ci95", "auroc", "auroc_ci95", "n")]
        assert figures["ece_after"] == metrics["calibration"][part]["ece_after"]
    assert "| XR_WRIST |" in (full_run / CARD_FILE).read_text().split("## Evaluated")[1]
    copy = json.loads((eval_dir / CARD_JSON).read_text())  # the copy beside the figures: this evaluation's
    assert copy["evaluation"]["evaluated"] == metrics["source"]["evaluated"]  # its time, not the card's write
    assert (eval_dir / CARD_FILE).read_text() == render_card(copy)


def test_evaluate_builds_one_card_and_writes_it_twice(full_run, synthetic_root, tmp_path, monkeypatch):
    import shutil

    from bonenet.evaluation import evaluate
    from bonenet.run import model_card

    run = shutil.copytree(full_run, tmp_path / "run")
    built = []
    monkeypatch.setattr(evaluate, "run_card", lambda *a: built.append(model_card.run_card(*a)) or built[-1])
    evaluate.evaluate_run(synthetic_root, run, tmp_path / "eval", EvaluateConfig(bootstrap=20, plots=False, gallery=0))
    assert len(built) == 1  # one card, one timestamp
    for folder in (run, tmp_path / "eval"):
        assert json.loads((folder / CARD_JSON).read_text()) == built[0]

