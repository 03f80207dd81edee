"""The locator benchmark (`benchmarks/fracture_locator.py`) on the attributed FracAtlas fixture."""

import json
from pathlib import Path

import cv2

from benchmarks import fracture_locator
from bonenet.configs import LocatorConfig
from bonenet.training.fit_locator import train_locator

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "fracatlas"


def test_the_benchmark_scores_held_out_films_only_and_draws_the_sheet(tmp_path, capsys):
    weights = tmp_path / "loc.weights.h5"
    provenance = train_locator(weights, FIXTURE, LocatorConfig(image_size=64, epochs=1))
    figures = fracture_locator.main(["--fracatlas", str(FIXTURE), "--locator", str(weights), "--out",
                                     str(tmp_path / "out"), "--bootstrap", "50", "--sheet-images", "7"])
    # The benchmark and the training score the same films with the same locator: the same figures.
    assert figures["all"]["pointing"]["hit"] == provenance["held_out"]["all"]["pointing"]["hit"]
    assert figures["all"]["detector"]["images"] == provenance["images"]["held_out"]["films"]
    written = json.loads((tmp_path / "out" / "fracture_locator.json").read_text())
    assert written["threshold"] == provenance["threshold"] and set(written["held_out"]) == {"all", "hand"}
    printed = capsys.readouterr().out.splitlines()[-2:]  # after the training's epoch lines
    assert printed[0].startswith("all   pointing ") and printed[1].startswith("hand  pointing ")
    assert "AP@50" in printed[0] and "found at 1 false box/film" in printed[0]
    sheet = cv2.imread(str(tmp_path / "out" / "contact_sheet.png"))
    assert sheet.shape[1] == 6 * 256 and sheet.shape[0] % 256 == 0
