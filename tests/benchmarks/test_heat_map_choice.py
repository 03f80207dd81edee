import json
from pathlib import Path

import pytest

from benchmarks import heat_map_choice, real_radiographs

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "fracatlas"


def test_every_layer_is_tried_with_each_method_and_with_the_foreground():
    names = [name for name, *_ in heat_map_choice.candidates(["a", "b"])]
    assert names == ["gradcam a", "gradcam a fg", "hirescam a", "hirescam a fg", "gradcam b", "gradcam b fg",
                     "hirescam b", "hirescam b fg"]


def test_the_table_puts_the_best_candidate_first():
    def game(hit):
        return {"hit": hit, "hit_ci95": [hit - 0.1, hit + 0.1], "random": 0.05, "centre": 0.1,
                "centre_ci95": [0.0, 0.2], "energy": 0.1, "energy_ci95": [0.05, 0.15]}

    lines = heat_map_choice.table({"gradcam x": game(0.1), "hirescam y": game(0.3)}).splitlines()
    assert lines[2].startswith("| hirescam y | 0.300 [0.20, 0.40] | 0.050 |") and lines[3].startswith("| gradcam x")


@pytest.mark.slow  # trains the toy benchmark first: about a minute
def test_the_candidates_are_scored_on_the_train_fold_of_a_benchmark_folder(tmp_path, capsys):
    real_radiographs.main(["--fracatlas", str(FIXTURES), "--out", str(tmp_path), "--weights", "none",
                           "--image-size", "32", "--epochs", "1", "--batch-size", "8", "--bootstrap", "20"])
    games = heat_map_choice.main(["--bench", str(tmp_path), "--fracatlas", str(FIXTURES), "--layers", "block3b_add",
                                  "--bootstrap", "20"])
    assert set(games) == {"gradcam block3b_add", "gradcam block3b_add fg", "hirescam block3b_add",
                          "hirescam block3b_add fg"}
    saved = json.loads((tmp_path / "heat_map_choice_train.json").read_text())
    assert saved["split"] == "train" and saved["images"] == games["gradcam block3b_add"]["images"] > 0
    assert "| candidate |" in capsys.readouterr().out
