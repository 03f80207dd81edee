"""What a run calls held-out abnormal FracAtlas films with hardware, and where its maps point: a contact sheet.

    python benchmarks/hardware_sheet.py --bench OUT/ROW --fracatlas ../shared/data/fracatlas --out sheet.png
        [--fractured 9]

`--bench` is a row folder of `benchmarks/real_radiographs.py` (its `fracatlas.csv` datalist and `run/`). The
films are the datalist's held-out (valid) ones that FracAtlas flags as showing hardware, then, to fill the sheet,
the first `--fractured` held-out fractured films without hardware. Each is scored by `bonenet predict` as a user
would run it, twice: with the default heat map (the fracture locator) and with `--explain gradcam` (where the part
model looked). Each tile pair is captioned by `predict` itself: part, p(abnormal), threshold and decision. It
writes the sheet and `<sheet>.json` (per film: hardware, fractured, part, p_abnormal, threshold, abnormal, boxes).
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TILE = 360


def held_out_films(datalist, fracatlas, fractured):
    """The datalist's held-out films with hardware, then up to `fractured` fractured ones without: a table with
    `path`, `hardware`, `fractured`."""
    from bonenet.data.datalist import read_dataset

    images = read_dataset(datalist).images
    valid = images[images["split"] == "valid"].assign(image_id=lambda t: t["path"].map(lambda p: Path(p).name))
    flags = pd.read_csv(Path(fracatlas) / "dataset.csv")[["image_id", "hardware", "fractured"]]
    valid = valid.merge(flags, on="image_id")
    hardware = valid[valid["hardware"] == 1]
    others = valid[(valid["hardware"] == 0) & (valid["fractured"] == 1)].head(fractured)
    return pd.concat([hardware, others])[["path", "hardware", "fractured"]].reset_index(drop=True)


def predict(paths, run, folder, explain):
    """`bonenet predict` on `paths` (each its own study) with heat maps into `folder`: its JSON results."""
    out = Path(folder) / "results.json"
    subprocess.run([sys.executable, str(REPO / "run_pipeline.py"), "predict", *paths, "--models-dir", str(run),
                    "--cam-dir", str(folder), "--json", str(out), "--explain", explain], check=True,
                   capture_output=True, text=True)
    return json.loads(out.read_text())


def tile(path):
    """One heat-map PNG, letterboxed to a square tile."""
    image = cv2.imread(str(path))
    scale = TILE / max(image.shape[:2])
    image = cv2.resize(image, (round(image.shape[1] * scale), round(image.shape[0] * scale)))
    canvas = np.zeros((TILE, TILE, 3), np.uint8)
    canvas[:image.shape[0], :image.shape[1]] = image
    return canvas


def image_entries(results):
    """{image path: its entry} from `predict`'s JSON (its per-image entries)."""
    return {entry["path"]: entry for entry in results if "p_abnormal" in entry}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bench", required=True, help="a real_radiographs.py row folder (fracatlas.csv, run/)")
    p.add_argument("--fracatlas", required=True, help="FracAtlas folder (dataset.csv, images/)")
    p.add_argument("--out", required=True, help="contact sheet PNG to write")
    p.add_argument("--fractured", type=int, default=9, help="fractured films without hardware to add (default 9)")
    args = p.parse_args(argv)
    films = held_out_films(Path(args.bench) / "fracatlas.csv", args.fracatlas, args.fractured)
    rows, facts = [], []
    with tempfile.TemporaryDirectory() as tmp:
        maps = {explain: predict(films["path"].tolist(), Path(args.bench) / "run", Path(tmp) / explain, explain)
                for explain in ("locator", "gradcam")}
        located, looked = image_entries(maps["locator"]), image_entries(maps["gradcam"])
        for film in films.itertuples():
            entry = located[film.path]
            rows.append(np.hstack([tile(entry["cam"]), tile(looked[film.path]["cam"])]))
            facts.append({"image": Path(film.path).name, "hardware": int(film.hardware),
                          "fractured": int(film.fractured),
                          **{k: entry.get(k) for k in ("part", "p_abnormal", "threshold", "abnormal", "boxes")}})
    pairs = [np.hstack(rows[i:i + 2]) if i + 1 < len(rows) else np.hstack([rows[i], np.zeros_like(rows[i])])
             for i in range(0, len(rows), 2)]
    cv2.imwrite(args.out, np.vstack(pairs))
    Path(args.out).with_suffix(".json").write_text(json.dumps(facts, indent=2) + "\n")
    for f in facts:
        print(f"{f['image']}: hardware {f['hardware']}, fractured {f['fractured']}; {f['part']} p {f['p_abnormal']:.2f} "
              f"at {f['threshold']:.2f}: {'abnormal' if f['abnormal'] else 'normal'}; {len(f['boxes'] or [])} box(es)")


if __name__ == "__main__":
    main()
