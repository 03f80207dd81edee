"""A fracture map scored as a detector: its boxes, the FROC points and the average precision at IoU 0.5.

`map_boxes` turns a probability map into boxes, one per connected region above a threshold, scored by the
region's peak. Boxes are [x0, y0, x1, y1] in pixels (x1, y1 exclusive); annotations stay COCO (x, y, w, h).

Two criteria, each the usual one for its figure:
- **FROC** (free-response ROC; sensitivity at k false boxes per image, over every image scored, fractured or
  not): a box finds a fracture when its centre lies within `TOLERANCE_PX` of the annotated box, the pointing
  game's criterion (`bonenet.scoring.localisation`), since fracture boxes are small and drawn loosely.
- **AP@50** (PASCAL VOC's all-point average precision): a box finds a fracture when their IoU reaches 0.5,
  as detectors (YOLO on FracAtlas) report it.
A fracture is found once; a second box on it counts as a false one. Intervals are 95% bootstraps over images.
"""

import cv2
import numpy as np

from bonenet.configs import N_BOOT
from bonenet.scoring.localisation import TOLERANCE_PX


def map_boxes(prob, threshold):
    """Boxes of the connected regions (8-connected) where `prob` ≥ `threshold`: [{"box": [x0, y0, x1, y1],
    "score": the region's peak}], highest score first."""
    prob = np.asarray(prob, np.float32)
    mask = (prob >= threshold).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    out = []
    for k in range(1, n):
        x, y, w, h = (int(v) for v in stats[k, :4])
        out.append({"box": [x, y, x + w, y + h], "score": float(prob[labels == k].max())})
    return sorted(out, key=lambda b: -b["score"])


def _iou(box, coco):
    x0, y0, x1, y1 = box
    gx0, gy0, gx1, gy1 = coco[0], coco[1], coco[0] + coco[2], coco[1] + coco[3]
    inter = max(0.0, min(x1, gx1) - max(x0, gx0)) * max(0.0, min(y1, gy1) - max(y0, gy0))
    union = (x1 - x0) * (y1 - y0) + coco[2] * coco[3] - inter
    return inter / union if union > 0 else 0.0


def _centre_near(box, coco, tolerance=TOLERANCE_PX):
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    dx = max(coco[0] - cx, 0.0, cx - coco[0] - coco[2])
    dy = max(coco[1] - cy, 0.0, cy - coco[1] - coco[3])
    return float(np.hypot(dx, dy)) <= tolerance


def match(detections, truths, criterion="centre"):
    """Marks each detection of one image, highest score first, as finding a fracture not yet found (1) or not (0).

    Args:
        detections: `map_boxes` entries.
        truths: COCO boxes of the image's fractures.
        criterion: "centre" (FROC's) or "iou50" (AP@50's).

    Returns:
        [(score, 1 or 0)] in the detections' order of score.
    """
    hits = (lambda b, t: _iou(b, t) >= 0.5) if criterion == "iou50" else _centre_near
    found = [False] * len(truths)
    out = []
    for det in sorted(detections, key=lambda d: -d["score"]):
        free = [k for k, t in enumerate(truths) if not found[k] and hits(det["box"], t)]
        if free:
            found[free[0]] = True
        out.append((det["score"], int(bool(free))))
    return out


def _curve(matched, n_truths):
    """Cumulative true and false detections down the pooled ranking."""
    pooled = sorted((pair for image in matched for pair in image), key=lambda p: -p[0])
    tp = np.cumsum([p[1] for p in pooled]) if pooled else np.zeros(0)
    fp = np.arange(1, len(pooled) + 1) - tp
    return tp, fp, max(n_truths, 1)


def froc_point(matched, n_truths, false_per_image):
    """Sensitivity at `false_per_image` false boxes per image: the share of fractures found at the lowest
    threshold at which the false boxes number at most that many per image scored."""
    tp, fp, n = _curve(matched, n_truths)
    allowed = fp <= false_per_image * len(matched)
    return float(tp[allowed][-1] / n) if allowed.any() else 0.0


def average_precision(matched, n_truths):
    """PASCAL VOC's all-point average precision of the pooled ranking."""
    tp, fp, n = _curve(matched, n_truths)
    if not len(tp):
        return 0.0
    recall = np.concatenate([[0.0], tp / n])
    precision = np.concatenate([[1.0], tp / np.maximum(tp + fp, 1)])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    return float(np.sum(np.diff(recall) * precision[1:]))


def detector_figures(images, false_per_image=(1, 2), n_boot=N_BOOT, seed=0):
    """FROC points and AP@50 over images, each with its 95% bootstrap interval over images.

    Args:
        images: [(detections, truths)] per image scored (truths empty for an image without fracture).

    Returns:
        {"images", "fractures", "sensitivity_at_<k>fp" (and "_ci95") for each k, "ap50" (and "_ci95")}.
    """
    centre = [match(d, t, "centre") for d, t in images]
    iou = [match(d, t, "iou50") for d, t in images]
    truths = np.asarray([len(t) for _, t in images])
    figures = {f"sensitivity_at_{k}fp": (lambda s, k=k: froc_point([centre[i] for i in s], truths[s].sum(), k))
               for k in false_per_image}
    figures["ap50"] = lambda s: average_precision([iou[i] for i in s], truths[s].sum())
    everyone = np.arange(len(images))
    out = {"images": len(images), "fractures": int(truths.sum())}
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, len(images), len(images)) for _ in range(n_boot)] if len(images) else []
    for name, figure in figures.items():
        out[name] = figure(everyone) if len(images) else None
        values = [figure(s) for s in draws]
        out[f"{name}_ci95"] = [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))] if values else None
    return out
