import json
from pathlib import Path

import pytest

from benchmarks import real_radiographs

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "fracatlas"


def test_mask_of_boxes_covers_exactly_the_boxes():
    mask = real_radiographs.box_mask([(2, 3, 4, 5), (4, 4, 1, 1)], (20, 10))
    assert mask.sum() == 20 and mask[3:8, 2:6].all()


@pytest.mark.slow  # trains the router and two parts on 40 real radiographs: about 40 s
def test_the_real_radiograph_benchmark_runs_at_a_toy_size(tmp_path, capsys):
    result = real_radiographs.main(["--fracatlas", str(FIXTURES), "--out", str(tmp_path), "--weights", "none",
                                    "--image-size", "32", "--epochs", "1", "--batch-size", "8", "--bootstrap", "20"])
    assert result == json.loads((tmp_path / "real_radiographs.json").read_text())
    assert set(result["parts"]) == {"XR_HAND", "XR_SHOULDER"}
    assert sum(m["n"] for m in result["parts"].values()) == result["data"]["valid_studies"]
    assert all(len(m["auroc_ci95"]) == 2 and len(m["kappa_ci95"]) == 2 for m in result["parts"].values())
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for part, m in result["parts"].items():  # the evaluation's own figures, not computed again
        assert m["auroc_ci95"] == metrics["study"][part]["auroc_ci95"]
        assert m["ece_after"] == metrics["calibration"][part]["ece_after"]
    assert 0 <= result["router_study_accuracy"] <= 1
    game = result["pointing_game"]
    assert game["called_abnormal"] <= game["fractured"] and game["hits"] <= game["called_abnormal"]
    assert game["random_share"] is None or 0 < game["random_share"] < 1
    out = capsys.readouterr().out
    assert "router study accuracy" in out and "pointing game" in out
