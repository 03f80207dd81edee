"""FracAtlas' fracture annotations: the COCO boxes and polygons of each fractured image, and the masks they draw.

FracAtlas (`../shared/data/fracatlas/`, CC BY 4.0) publishes `fracture_annotations_coco.json` beside its
images: one COCO annotation per fracture, with its box (x, y, w, h) and its outline as polygons, in the
pixels of the image as distributed. The fracture locator learns from the masks and is scored on the boxes.
"""

import json
from pathlib import Path

import cv2
import numpy as np

from bonenet.data.mura import MuraError

ANNOTATIONS = "fracture_annotations_coco.json"


def read_annotations(root):
    """Every annotated image's fractures: {file name: {"boxes": [[x, y, w, h], ...], "polygons": [[x0, y0, x1,
    y1, ...], ...]}}, from `<root>/fracture_annotations_coco.json`.

    Raises:
        MuraError: the file is missing or is not COCO JSON, naming the file and the problem.
    """
    path = Path(root) / ANNOTATIONS
    try:
        coco = json.loads(path.read_text())
        names = {image["id"]: image["file_name"] for image in coco["images"]}
        out = {}
        for note in coco["annotations"]:
            entry = out.setdefault(names[note["image_id"]], {"boxes": [], "polygons": []})
            entry["boxes"].append([float(v) for v in note["bbox"]])
            entry["polygons"].extend(note.get("segmentation") or [])
    except FileNotFoundError:
        raise MuraError(f"{path}: no such file (FracAtlas publishes its fracture outlines in {ANNOTATIONS})") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise MuraError(f"{path}: not COCO annotations ({type(e).__name__}: {e})") from None
    return out


def fracatlas_boxes(root):
    """{image file name: [COCO boxes (x, y, w, h)]} of FracAtlas' annotated fractures (`read_annotations`)."""
    return {name: note["boxes"] for name, note in read_annotations(root).items()}


def fracture_mask(annotation, shape):
    """The fractures of one image as a float32 0/1 mask of `shape`: their polygons filled, or their boxes where
    an annotation has no outline."""
    mask = np.zeros(shape, np.uint8)
    for polygon in annotation.get("polygons", []):
        points = np.round(np.asarray(polygon, np.float64).reshape(-1, 2)).astype(np.int32)
        cv2.fillPoly(mask, [points], 1)
    if not annotation.get("polygons"):
        for x, y, w, h in annotation.get("boxes", []):
            mask[int(y):int(np.ceil(y + h)), int(x):int(np.ceil(x + w))] = 1
    return mask.astype(np.float32)
