"""Does the ROI crop ever cut anatomy? The check over real radiographs (FracAtlas, CC BY 4.0).

    python benchmarks/roi_check.py [--fracatlas ../shared/data/fracatlas] [--out roi.json] [--sheet roi.png]

The criterion, stated in the README: a box **cuts anatomy** when either
- more than 0.5% of the image's anatomy pixels lie outside it, where anatomy is the Otsu foreground of
  the 5×5-blurred image (the usual tissue/film split, computed here independently of `roi_box`'s own
  mask and area rules), or
- an annotated fracture box (FracAtlas' COCO boxes, drawn by radiologists) is not wholly inside it.

It prints and writes, over every image: the images cut by each rule, the fracture boxes cut, and the
mean share of the image's area the box keeps (how much film the crop removes). `--sheet` draws a
contact sheet of boxes on the hand images (ROI box in green, fracture boxes in red) to look at.
"""

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bonenet.data.decode import load_gray
from bonenet.data.fractures import fracatlas_boxes
from bonenet.preprocessing.filters import roi_box

CUT_SHARE = 0.005


def anatomy_mask(gray):
    """The Otsu foreground of the 5×5-blurred image: the reference the ROI is judged against."""
    blurred = cv2.GaussianBlur(gray, (5, 5), 0)
    _, mask = cv2.threshold(blurred, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return mask.astype(bool)


def share_outside(mask, box):
    """The share of `mask`'s pixels outside `box` (top, bottom, left, right)."""
    top, bottom, left, right = box
    total = int(mask.sum())
    if total == 0:
        return 0.0
    return 1.0 - int(mask[top:bottom, left:right].sum()) / total


def box_inside(xywh, box):
    """Whether a COCO box (x, y, w, h) lies wholly inside an ROI box (to the pixel)."""
    x, y, w, h = xywh
    top, bottom, left, right = box
    return x >= left - 0.5 and y >= top - 0.5 and x + w <= right + 0.5 and y + h <= bottom + 0.5


def check(paths, boxes):
    """Per image: the box, the anatomy share outside it and the fracture boxes it cuts."""
    rows = []
    for path in paths:
        gray = load_gray(path)
        box = roi_box(gray)
        frac = boxes.get(Path(path).name, [])
        top, bottom, left, right = box
        rows.append({"image": Path(path).name, "box": list(box),
                     "outside": share_outside(anatomy_mask(gray), box),
                     "fractures": len(frac), "fractures_cut": sum(not box_inside(b, box) for b in frac),
                     "kept_area": (bottom - top) * (right - left) / gray.size})
    return rows


def summarize(rows):
    """The figures: images cut by either rule, fracture boxes cut, mean area kept."""
    cut_anatomy = [r["image"] for r in rows if r["outside"] > CUT_SHARE]
    cut_fracture = [r["image"] for r in rows if r["fractures_cut"]]
    return {
        "images": len(rows),
        "criterion": f"more than {CUT_SHARE:.1%} of the Otsu foreground outside the box, or a fracture box not "
                     "wholly inside",
        "images_cut": len(set(cut_anatomy) | set(cut_fracture)),
        "images_cut_by_anatomy_share": len(cut_anatomy),
        "fracture_boxes": sum(r["fractures"] for r in rows),
        "fracture_boxes_cut": sum(r["fractures_cut"] for r in rows),
        "largest_share_outside": max((r["outside"] for r in rows), default=0.0),
        "mean_area_kept": float(np.mean([r["kept_area"] for r in rows])) if rows else 0.0,
        "cut": sorted(set(cut_anatomy) | set(cut_fracture)),
    }


def contact_sheet(paths, rows, boxes, out, tile=192, columns=10):
    """Draws each image with its ROI box (green) and fracture boxes (red), cut ones framed in red."""
    tiles = []
    for path, row in zip(paths, rows, strict=True):
        gray = load_gray(path)
        image = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
        top, bottom, left, right = row["box"]
        cv2.rectangle(image, (left, top), (right - 1, bottom - 1), (0, 200, 0), 3)
        for x, y, w, h in boxes.get(row["image"], []):
            cv2.rectangle(image, (int(x), int(y)), (int(x + w), int(y + h)), (0, 0, 255), 2)
        scale = tile / max(image.shape[:2])
        image = cv2.resize(image, (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale))))
        canvas = np.full((tile, tile, 3), 40, np.uint8)
        canvas[:image.shape[0], :image.shape[1]] = image
        if row["outside"] > CUT_SHARE or row["fractures_cut"]:
            cv2.rectangle(canvas, (0, 0), (tile - 1, tile - 1), (0, 0, 255), 4)
        tiles.append(canvas)
    while len(tiles) % columns:
        tiles.append(np.zeros((tile, tile, 3), np.uint8))
    sheet = np.vstack([np.hstack(tiles[i:i + columns]) for i in range(0, len(tiles), columns)])
    cv2.imwrite(str(out), sheet)


def main(argv=None):
    """Runs the check over a FracAtlas folder and prints the summary as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fracatlas", default=str(Path(__file__).resolve().parents[2] / "shared/data/fracatlas"))
    parser.add_argument("--limit", type=int, help="check only the first N images (sorted by name)")
    parser.add_argument("--out", help="write the summary and the per-image rows as JSON here")
    parser.add_argument("--sheet", help="write a contact sheet of the hand images' boxes here (PNG)")
    parser.add_argument("--sheet-images", type=int, default=100, help="hand images on the sheet (default 100)")
    args = parser.parse_args(argv)
    root = Path(args.fracatlas)
    paths = sorted((root / "images").glob("*.jpg"))[:args.limit]
    boxes = fracatlas_boxes(root)
    rows = check(paths, boxes)
    summary = summarize(rows)
    print(json.dumps({k: v for k, v in summary.items() if k != "cut"}, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps({**summary, "rows": rows}, indent=1))
    if args.sheet:
        import pandas as pd

        table = pd.read_csv(root / "dataset.csv")
        hands = set(table.loc[table["hand"] == 1, "image_id"])
        cut = set(summary["cut"])
        # Cut images first, then the tightest boxes: where a cut would be, if the criterion missed one.
        chosen = sorted((i for i, p in enumerate(paths) if p.name in hands),
                        key=lambda i: (paths[i].name not in cut, rows[i]["kept_area"]))
        chosen = chosen[:args.sheet_images]
        contact_sheet([paths[i] for i in chosen], [rows[i] for i in chosen], boxes, args.sheet)


if __name__ == "__main__":
    main()
