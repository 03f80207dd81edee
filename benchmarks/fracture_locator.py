"""The fracture locator scored as a detector on FracAtlas films it never saw, with a contact sheet to look at.

    python benchmarks/fracture_locator.py --out locator_bench [--locator FILE] [--fracatlas DIR]

The films are the FracAtlas benchmark's held-out fifth (`bonenet.data.sources.benchmark_holdout`, by their
bytes), which neither the locator nor the radiograph backbone its trunk comes from was trained on. Over
them, all together and the hands alone (`bonenet.training.fit_locator.held_out_figures`):

- the **pointing game** on the fractured films with outlines: the share whose map peaks within 15 px of
  an annotated fracture box, beside a uniformly random point's rate and the image's centre's;
- **FROC points**: the share of fractures found at 1 and 2 false boxes per film (a box finds a fracture
  when its centre lies within 15 px of the fracture's box), over every held-out film, fractured or not;
- **AP@50**, the detectors' figure (a box finds a fracture at IoU ≥ 0.5), over the same films.

Every figure has its 95% bootstrap interval over films. It prints a table and writes
`<out>/fracture_locator.json` and `<out>/contact_sheet.png`: held-out fractured films first, then every held-out
film with hardware (implants, MURA's easiest abnormality, which the locator was never taught), each with the
locator's map, its boxes (amber) and the annotated fractures (green).
"""

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_FRACATLAS = Path(__file__).resolve().parents[2] / "shared" / "data" / "fracatlas"
ANNOTATED = (0, 200, 0)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fracatlas", default=str(DEFAULT_FRACATLAS), help="FracAtlas folder")
    p.add_argument("--locator", help="a locator .weights.h5 with its JSON (default: the shipped one)")
    p.add_argument("--out", required=True, help="folder for fracture_locator.json and contact_sheet.png")
    p.add_argument("--sheet-images", type=int, default=30, help="films on the contact sheet (default 30)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default 1000)")
    return p.parse_args(argv)


def table(figures):
    """The figures as a few printed lines, one per group."""
    from bonenet.scoring.metrics import figure_text, with_interval
    from bonenet.training.fit_locator import drawn_text

    lines = []
    for group, f in figures.items():
        game, found = f["pointing"], f["detector"]
        lines.append(f"{group:<5} pointing {with_interval(game['hit'], game['hit_ci95'])} of {game['images']} "
                     f"fractured films (centre {with_interval(game['centre'], game['centre_ci95'])}, random point "
                     f"{figure_text(game['random'])}); of {found['fractures']} fractures on {found['images']} films: "
                     f"found at 1 false box/film {with_interval(found['sensitivity_at_1fp'], found['sensitivity_at_1fp_ci95'])}"
                     f", at 2 {with_interval(found['sensitivity_at_2fp'], found['sensitivity_at_2fp_ci95'])}; "
                     f"AP@50 {with_interval(found['ap50'], found['ap50_ci95'])}; {drawn_text(f['drawn'])}")
    return "\n".join(lines)


def tile(gray, prob, boxes, truths, size=256):
    """One film for the sheet: the locator's map and boxes over it (as `predict` draws them), the annotated
    fractures in green, scaled to `size`."""
    from bonenet.inference.gradcam import overlay

    image = overlay(gray, prob, True, [b["box"] for b in boxes])[:, :gray.shape[1]]
    for x, y, w, h in truths:
        cv2.rectangle(image, (int(x), int(y)), (int(x + w), int(y + h)), ANNOTATED, 2)
    scale = size / max(image.shape[:2])
    image = cv2.resize(image, (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale))))
    canvas = np.full((size, size, 3), 30, np.uint8)
    canvas[:image.shape[0], :image.shape[1]] = image
    return canvas


def contact_sheet(tiles, out, columns=6):
    """Tiles in rows of `columns`, written as one PNG."""
    tiles = list(tiles) or [np.zeros((256, 256, 3), np.uint8)]
    while len(tiles) % columns:
        tiles.append(np.zeros_like(tiles[0]))
    sheet = np.vstack([np.hstack(tiles[i:i + columns]) for i in range(0, len(tiles), columns)])
    if not cv2.imwrite(str(out), sheet):
        raise OSError(f"{out}: could not write the contact sheet")


def main(argv=None):
    """Scores the locator on the held-out films; prints the table, writes the JSON and the sheet."""
    args = parse_args(argv)
    from bonenet import runtime

    runtime.start()
    import pandas as pd

    from bonenet.data.decode import load_gray
    from bonenet.data.fractures import read_annotations
    from bonenet.models.locator import Locator
    from bonenet.scoring.detection import map_boxes
    from bonenet.training.fit_locator import held_out_figures, locator_table

    locator = Locator.load(args.locator)
    table_ = locator_table(args.fracatlas)
    notes = read_annotations(Path(args.fracatlas))
    held = table_[table_["split"] == "held_out"].reset_index(drop=True)
    figures, maps = held_out_figures(locator, held, notes, args.bootstrap)
    print(table(figures))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fracture_locator.json").write_text(json.dumps(
        {"locator": locator.provenance.get("sha256"), "threshold": locator.threshold, "candidate_floor": locator.floor,
         "held_out": figures}, indent=2))
    hardware = set(pd.read_csv(Path(args.fracatlas) / "dataset.csv").query("hardware == 1")["image_id"])
    with_hardware = [i for i in range(len(held)) if held["name"][i] in hardware]
    fractured = [i for i in range(len(held)) if held["name"][i] in notes and i not in with_hardware]
    chosen = fractured[:max(args.sheet_images - len(with_hardware), 0)] + with_hardware
    contact_sheet((tile(load_gray(held["path"][i]), maps[i], map_boxes(maps[i], locator.threshold),
                        notes.get(held["name"][i], {}).get("boxes", [])) for i in chosen), out / "contact_sheet.png")
    return figures


if __name__ == "__main__":
    main()
