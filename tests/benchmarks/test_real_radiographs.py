import json
from pathlib import Path

import pytest

from benchmarks import real_radiographs

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "fracatlas"


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
    for part, game in result["pointing_game"].items():  # every part with fracture boxes, recorded in the run
        assert game["called_abnormal"] <= game["images"] and 0 <= game["hit"] <= 1 and 0 < game["random"] < 1
        assert len(game["hit_ci95"]) == len(game["energy_ci95"]) == 2
        assert json.loads((tmp_path / "run" / "manifest.json").read_text())["localisation"][part]["images"] == \
            game["images"]
    out = capsys.readouterr().out
    assert "router study accuracy" in out and "pointing game" in out


def test_the_comparison_table_has_a_row_per_backbone_and_mode():
    def result(weights, layers, auroc):
        return {"config": {"weights": weights, "trainable_layers": layers, "image_size": 96, "epochs": 10},
                "parts": {"XR_HAND": {"auroc": auroc, "auroc_ci95": [auroc - 0.1, auroc + 0.1], "kappa": 0.2,
                                      "kappa_ci95": [0.1, 0.3]}},
                "router_study_accuracy": 0.95, "seconds": {"train_all": 60, "evaluate": 20}}

    text = real_radiographs.comparison_table({"shipped-20": result("shipped", 20, 0.61),
                                              "radiograph-all": result("radiograph", "all", 0.8)})
    lines = text.splitlines()
    assert lines[0].startswith("| backbone |") and len(lines) == 4
    assert lines[2] == "| shipped | 20, 96, 10 | 0.610 [0.51, 0.71] | 0.200 [0.10, 0.30] | 0.950 | 80 |"
    assert lines[3].startswith("| radiograph | all, 96, 10 | 0.800 [0.70, 0.90]")
    adapted = result("radiograph", 20, 0.81)
    adapted["config"]["adapt_epochs"] = 8
    assert "| radiograph | adapt 8 + 20, 96, 10 | 0.810" in real_radiographs.comparison_table({"r-adapt": adapted})


@pytest.mark.slow  # two backbones trained and scored at a toy size: about a minute and a half
def test_compare_runs_each_backbone_once_and_resumes(tmp_path, capsys):
    args = ["--fracatlas", str(FIXTURES), "--out", str(tmp_path), "--compare", "none,shipped", "--modes", "20",
            "--image-size", "32", "--epochs", "1", "--batch-size", "8", "--bootstrap", "20"]
    rows = real_radiographs.main(args)
    assert set(rows) == {"none-20", "shipped-20"} and json.loads((tmp_path / "transfer.json").read_text()) == rows
    stamp = (tmp_path / "none-20" / "real_radiographs.json").stat().st_mtime_ns
    assert real_radiographs.main(args) == rows  # finished rows are read back, not run again
    assert (tmp_path / "none-20" / "real_radiographs.json").stat().st_mtime_ns == stamp
    assert "| none | 20, 32, 1 |" in capsys.readouterr().out
    # A later call into the same folder keeps the summary's other rows, and never reuses a row run otherwise.
    assert set(real_radiographs.main([*args[:5], "none", *args[6:]])) == {"none-20"}
    assert json.loads((tmp_path / "transfer.json").read_text()) == rows
    with pytest.raises(SystemExit, match=r"none-20/real_radiographs.json: this row was run with image_size 32 "
                                         r"\(asked: 48\); give another --out"):
        real_radiographs.main([*args[:5], "none", "--modes", "20", "--image-size", "48", *args[10:]])
    games = real_radiographs.main(["--fracatlas", str(FIXTURES), "--out", str(tmp_path), "--heat-maps-only",
                                   "--bootstrap", "20"])  # every row's heat maps scored again, as they are now
    assert set(games) == {"none-20", "shipped-20"}
    assert json.loads((tmp_path / "none-20" / "pointing_game.json").read_text()) == games["none-20"]


def test_the_variants_table_has_a_row_per_size_members_and_tta():
    def result(size, members, tta, auroc):
        game = {"hit": 0.2, "hit_ci95": [0.1, 0.3], "random": 0.05}
        return {"config": {"image_size": size, "ensemble": members, "tta": tta},
                "parts": {"XR_HAND": {"auroc": auroc, "auroc_ci95": [auroc - 0.1, auroc + 0.1], "kappa": 0.2,
                                      "kappa_ci95": [0.1, 0.3]}},
                "router_study_accuracy": 0.95, "pointing_game": {"XR_HAND": game},
                "seconds": {"train_all": 60, "evaluate": 20}}

    lines = real_radiographs.variants_table({"96px-k1-none": result(96, 1, "none", 0.8),
                                             "96px-k5-flip": result(96, 5, "flip", 0.85)}).splitlines()
    assert lines[0].startswith("| px | members | TTA |") and len(lines) == 4
    assert lines[3] == ("| 96 | 5 | flip | 0.850 [0.75, 0.95] | 0.200 [0.10, 0.30] | — — | 0.950 | 0.200 [0.10, 0.30] "
                        "(0.050) | 80 |")


@pytest.mark.slow  # one model and a 2-member ensemble at a toy size, each scored twice: about two minutes
def test_variants_train_each_size_once_and_score_it_with_and_without_tta(tmp_path, capsys):
    args = ["--fracatlas", str(FIXTURES), "--out", str(tmp_path), "--weights", "none", "--variants", "32",
            "--members", "2", "--epochs", "1", "--batch-size", "8", "--bootstrap", "20"]
    rows = real_radiographs.main(args)
    assert list(rows) == ["32px-k1-none", "32px-k1-flip", "32px-k2-none", "32px-k2-flip"]
    assert [rows[k]["config"]["tta"] for k in rows] == ["none", "flip", "none", "flip"]
    metrics = json.loads((tmp_path / "32px-k2" / "eval-flip" / "metrics.json").read_text())
    assert metrics["source"]["tta"] == "flip" and metrics["source"]["members"]["XR_HAND"] == 2
    assert rows["32px-k2-none"]["members_holdout_auc"]["XR_HAND"] and len(list(tmp_path.glob("cache-32/*"))) == 1
    assert "| 32 | 2 | flip |" in capsys.readouterr().out


def test_a_backbone_file_given_by_its_path_gets_its_row_under_out():
    assert real_radiographs.row_name("/data/weights/nohand_96.weights.h5") == "nohand_96"
    assert real_radiographs.row_name("radiograph") == "radiograph"


def test_a_backbone_that_cannot_be_found_is_one_line_naming_it(tmp_path):
    with pytest.raises(SystemExit, match=r"^real_radiographs: .*synthetic: weights file does not exist"):
        real_radiographs.main(["--fracatlas", str(FIXTURES), "--out", str(tmp_path), "--compare", "synthetic",
                               "--modes", "20", "--image-size", "32", "--epochs", "1", "--bootstrap", "20"])
