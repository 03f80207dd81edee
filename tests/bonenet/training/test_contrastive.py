"""Self-supervised pretraining (`bonenet.training.contrastive`): SimCLR views on labelled and unlabelled films."""

import json

import cv2
import numpy as np
import pytest

import run_pipeline
from bonenet.digests import file_sha256
from bonenet.models.backbones import provenance_path
from bonenet.models.efficientnet import resolve_weights


def _archive(folder, n=12):
    """A folder of unlabelled films (a hospital archive's stand-in), one sub-folder deep."""
    (folder / "2024").mkdir(parents=True)
    rng = np.random.default_rng(5)
    for i in range(n):
        film = cv2.GaussianBlur(rng.integers(0, 255, (64, 48), np.uint8), (7, 7), 0)
        cv2.imwrite(str(folder / "2024" / f"film{i}.png"), film)
    return folder


@pytest.mark.slow  # a pretraining of both objectives at a toy size: about 45 s
def test_both_objectives_learn_from_labelled_and_unlabelled_films_and_record_it(toy_fracatlas, tmp_path, capsys,
                                                                              autograph_rewrites):
    archive = _archive(tmp_path / "archive")
    out = tmp_path / "views.weights.h5"
    code = run_pipeline.main(["pretrain-backbone", "--out", str(out), "--real", str(toy_fracatlas), str(archive),
                              "--objective", "both", "--init", "none", "--epochs", "1", "--image-size", "32",
                              "--batch-size", "8", "--warmup-epochs", "0"])
    assert code == 0 and out.is_file()
    assert autograph_rewrites == []  # the views' functions are traced as written (`as_written`)
    provenance = json.loads(provenance_path(out).read_text())
    fracatlas, folder = provenance["sources"]
    assert folder == {**folder, "name": "archive", "root": "archive", "images": 12, "targets": []}
    assert provenance["images"] == fracatlas["images"] + 12 == provenance["train_images"] + provenance["monitor_images"]
    assert provenance["objective"].startswith("SimCLR contrastive views (NT-Xent, temperature 0.2")
    assert "and every binary target at once" in provenance["objective"]
    assert 0 <= provenance["monitor_views_found"] <= 1 and "fractured" in provenance["monitor_auroc"]
    assert provenance["sha256"] == file_sha256(out) and str(tmp_path) not in provenance_path(out).read_text()
    assert "views finding their partner" in capsys.readouterr().out
    _, origin = resolve_weights(str(out))  # loads as a backbone, with its caveat
    assert origin["kind"] == "radiograph" and "archive" in origin["summary"]


def test_a_folder_of_images_is_refused_where_only_labels_are_learned(toy_fracatlas, tmp_path, capsys):
    archive = _archive(tmp_path / "archive", n=2)
    out = tmp_path / "labels.weights.h5"
    code = run_pipeline.main(["pretrain-backbone", "--out", str(out), "--real", str(toy_fracatlas), str(archive),
                              "--init", "none", "--epochs", "1", "--image-size", "32"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not out.exists()
    assert err[-1].endswith("archive: a folder of images gives no labels to learn; pretrain on it with --objective "
                            "contrastive or both")


def test_a_region_left_out_is_said_of_fracatlas_only_not_of_a_folder_beside_it(toy_fracatlas, tmp_path):
    from bonenet.data.sources import read_sources
    from bonenet.training.pretrain import _described

    archive = _archive(tmp_path / "archive", n=2)
    described = _described(read_sources([toy_fracatlas, archive], leave_out=("hand",)))
    assert described == "FracAtlas without hand films, CC BY 4.0, archive, stated by the user"
