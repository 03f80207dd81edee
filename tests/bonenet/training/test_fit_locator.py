"""Training the fracture locator (`bonenet.training.fit_locator`): a small one learns where a synthetic lesion is,
and `train-locator` on the attributed FracAtlas fixture keeps the benchmark's held-out films out."""

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from bonenet.configs import LocatorConfig
from bonenet.data.sources import benchmark_holdout
from bonenet.digests import file_sha256
from bonenet.models.backbones import SHIPPED_BACKBONE
from bonenet.models.locator import Locator, build_trunk
from bonenet.scoring.localisation import image_pointing
from bonenet.training import fit_locator as training

FIXTURE = Path(__file__).parents[2] / "fixtures" / "fracatlas"
SIZE, LESION = 96, 6


def _films(folder, n, seed, lesion_share=0.75):
    """Films of smooth bands and noise, most with one bright square lesion away from the edges: (rows,
    annotations as FracAtlas gives them)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    x = np.arange(SIZE)[None, :]
    rows, notes = [], {}
    for k in range(n):
        film = 70 + 35 * np.sin(x / rng.uniform(8, 20) + rng.uniform(0, 6)) + rng.normal(0, 8, (SIZE, SIZE))
        name = f"film{seed}_{k}.png"
        if rng.random() < lesion_share:
            cy, cx = (int(v) for v in rng.integers(24, SIZE - 24, 2))
            film[cy - LESION // 2:cy + LESION // 2, cx - LESION // 2:cx + LESION // 2] = 235
            x0, y0 = cx - LESION // 2, cy - LESION // 2
            notes[name] = {"boxes": [[x0, y0, LESION, LESION]],
                           "polygons": [[x0, y0, x0 + LESION, y0, x0 + LESION, y0 + LESION, x0, y0 + LESION]]}
        cv2.imwrite(str(folder / name), np.uint8(np.clip(film, 0, 255)))
        rows.append({"path": str(folder / name), "name": name})
    return pd.DataFrame(rows), notes


def _pointing_rate(maps, rows, notes):
    """The share of lesion films whose map peaks on the lesion (the pointing game's criterion)."""
    hits = [image_pointing(m, notes[n]["boxes"])["hit"] for m, n in zip(maps, rows["name"], strict=True) if n in notes]
    return float(np.mean(hits))


def test_a_small_locator_puts_its_peak_on_a_synthetic_lesion_and_a_uniform_map_does_not(tmp_path):
    config = LocatorConfig(image_size=64, epochs=12, batch_size=16, learning_rate=3e-3)
    train, notes = _films(tmp_path / "train", 80, seed=1)
    trunk = build_trunk(config.image_size, str(SHIPPED_BACKBONE))
    taps, targets = training.compute_taps(trunk, train, notes, config.image_size)
    assert len(targets) == 2 * len(train) and targets.shape[1:] == (8, 8)
    assert targets[: len(train)].sum() == pytest.approx(targets[len(train):].sum(), rel=0.05)  # mirrors keep lesions
    head = training.fit_head(taps, targets, config, tmp_path / "backup")
    locator = Locator(training.assemble_locator(head, str(SHIPPED_BACKBONE), config))
    test, test_notes = _films(tmp_path / "test", 24, seed=2, lesion_share=1.0)
    maps = locator.maps([cv2.imread(p, cv2.IMREAD_GRAYSCALE) for p in test["path"]])
    assert maps[0].shape == (SIZE, SIZE)
    assert _pointing_rate(maps, test, test_notes) >= 0.8
    assert _pointing_rate([np.ones((SIZE, SIZE), np.float32)] * len(test), test, test_notes) < 0.8


def test_train_locator_on_the_fixture_records_what_a_user_must_know_and_never_trains_on_held_out_films(tmp_path):
    out = tmp_path / "loc.weights.h5"
    config = LocatorConfig(image_size=64, epochs=1)
    provenance = training.train_locator(out, FIXTURE, config, command=f"bonenet train-locator --fracatlas {FIXTURE} "
                                                                           f"--out {out} --image-size 64 --epochs 1")
    written = json.loads(out.with_name("loc.json").read_text())
    assert written == json.loads(json.dumps(provenance))
    assert str(tmp_path) not in json.dumps(written) and str(FIXTURE.parent) not in json.dumps(written)
    assert written["sha256"] == file_sha256(out) and written["sources"][0]["licence"].startswith("CC BY 4.0")
    assert 0 < written["threshold"] < 1 and written["config"]["image_size"] == 64
    for group in ("all", "hand"):
        assert {"hit", "hit_ci95", "centre", "random"} <= set(written["held_out"][group]["pointing"])
        assert {"sensitivity_at_1fp", "sensitivity_at_2fp", "ap50"} <= set(written["held_out"][group]["detector"])
    table = training.locator_table(FIXTURE)
    held = set(benchmark_holdout(FIXTURE))
    assert {file_sha256(p) in held for p in table.loc[table["split"] != "held_out", "path"]} == {False}
    assert written["images"]["held_out"]["films"] == len(held)
    assert not (tmp_path / "loc-work").exists()  # the cache goes once the file is written
    locator = Locator.load(out)
    assert locator.threshold == written["threshold"] and "held-out FracAtlas films" in locator.note()


def test_an_interrupted_training_is_refused_without_resume_and_resumed_from_its_cache(tmp_path, monkeypatch):
    out = tmp_path / "loc.weights.h5"
    config = LocatorConfig(image_size=64, epochs=1)
    work = tmp_path / "loc-work"
    work.mkdir()
    with pytest.raises(ValueError, match="loc-work: an interrupted train-locator is there; pass --resume"):
        training.train_locator(out, FIXTURE, config)
    calls = []
    real = training.compute_taps
    monkeypatch.setattr(training, "compute_taps", lambda *a, **k: calls.append(1) or real(*a, **k))
    with pytest.raises(KeyboardInterrupt):  # killed after the cache is written, before the head trains
        monkeypatch.setattr(training, "fit_head", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
        training.train_locator(out, FIXTURE, config, resume=True)
    assert (work / "taps-64.npz").is_file() and not out.exists()
    monkeypatch.undo()
    monkeypatch.setattr(training, "compute_taps", lambda *a, **k: pytest.fail("the cached taps are read back"))
    training.train_locator(out, FIXTURE, config, resume=True)
    assert calls == [1] and out.is_file()
