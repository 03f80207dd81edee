import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from benchmarks import hardware_sheet

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "fracatlas"


def test_the_sheet_shows_the_held_out_hardware_films_first_with_what_predict_called_them(tmp_path, monkeypatch,
                                                                                          capsys):
    import run_pipeline

    bench = tmp_path / "row"
    bench.mkdir()
    assert run_pipeline.main(["fracatlas-datalist", "--fracatlas", str(FIXTURES), "--out", str(bench / "fracatlas.csv")]) == 0
    capsys.readouterr()
    from bonenet.data.datalist import read_dataset

    valid = set(read_dataset(bench / "fracatlas.csv").images.query("split == 'valid'")["path"])
    # One held-out normal film flagged as showing hardware, so the sheet must put it first.
    flags = pd.read_csv(FIXTURES / "dataset.csv").set_index("image_id")
    plated = next(Path(p).name for p in sorted(valid) if flags.loc[Path(p).name, "fractured"] == 0)
    flags.loc[plated, "hardware"] = 1
    (tmp_path / "fa").mkdir()
    flags.reset_index().to_csv(tmp_path / "fa" / "dataset.csv", index=False)
    films = hardware_sheet.held_out_films(bench / "fracatlas.csv", tmp_path / "fa", fractured=2)
    assert set(films["path"]) <= valid  # held-out films only
    names = [Path(p).name for p in films["path"]]
    hardware = [n for n in names if flags.loc[n, "hardware"] == 1]
    assert names[0] == plated and names[:len(hardware)] == hardware and len(names) - len(hardware) == 2
    assert all(flags.loc[n, "fractured"] == 1 for n in names[len(hardware):])
    calls = []

    def fake_predict(paths, run, folder, explain):  # what `bonenet predict --json` writes, one entry per image
        calls.append(explain)
        Path(folder).mkdir(parents=True)
        entries = []
        for i, path in enumerate(paths):
            cam = Path(folder) / f"{i}.png"
            cv2.imwrite(str(cam), np.full((40, 30, 3), 50 * i % 255, np.uint8))
            entries.append({"path": path, "part": "XR_HAND", "p_abnormal": 0.7, "threshold": 0.5, "abnormal": True,
                            "boxes": [], "cam": str(cam)})
        return entries

    monkeypatch.setattr(hardware_sheet, "predict", fake_predict)
    out = tmp_path / "sheet.png"
    hardware_sheet.main(["--bench", str(bench), "--fracatlas", str(tmp_path / "fa"), "--out", str(out), "--fractured",
                         "2"])
    assert calls == ["locator", "gradcam"]  # the default heat map and where the part model looked
    sheet = cv2.imread(str(out))
    assert sheet.shape[1] == 4 * hardware_sheet.TILE and sheet.shape[0] == -(-len(films) // 2) * hardware_sheet.TILE
    facts = json.loads(out.with_suffix(".json").read_text())
    assert [f["image"] for f in facts] == names and all(f["abnormal"] for f in facts)
    assert len(capsys.readouterr().out.splitlines()) == len(films)
