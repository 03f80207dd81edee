"""Whether heat maps point at findings: the pointing game on annotated boxes, and what a run may say of its maps.

The pointing game (Zhang et al., 2016, "Top-down neural attention by excitation backprop") counts a hit
when a map's maximum falls within `TOLERANCE_PX` of an annotated box. Beside it stand what needs no model:
a uniformly random point (the share of the image within the tolerance of a box) and the image's centre.
The energy pointing game (Wang et al., 2020, Score-CAM) is the share of a map's sum inside the boxes.
Every share comes with a 95% bootstrap interval over images (`bonenet.scoring.metrics.bootstrap_interval`).

A run's heat maps are "not validated for localisation" until a measurement recorded in its manifest
(`pointing_record`, written by `benchmarks/real_radiographs.py`) shows hits above the random point's
rate, with the interval's lower end above it.
"""

import cv2
import numpy as np

from bonenet.configs import N_BOOT
from bonenet.scoring.metrics import bootstrap_interval

# The usual tolerance, in pixels of the image as annotated (FracAtlas' distributed images, about 450 px).
TOLERANCE_PX = 15
NOT_VALIDATED = "heat map not validated for localisation"


def box_mask(boxes, shape):
    """The union of COCO boxes (x, y, w, h) as a boolean mask of `shape`."""
    mask = np.zeros(shape, bool)
    for x, y, w, h in boxes:
        mask[int(np.floor(y)):int(np.ceil(y + h)), int(np.floor(x)):int(np.ceil(x + w))] = True
    return mask


def near_boxes(boxes, shape, tolerance=TOLERANCE_PX):
    """The pixels within `tolerance` (Euclidean) of a box, as a boolean mask."""
    inside = box_mask(boxes, shape)
    if tolerance <= 0 or not inside.any():
        return inside
    distance = cv2.distanceTransform(np.uint8(~inside), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return distance <= tolerance


def image_pointing(cam, boxes, tolerance=TOLERANCE_PX):
    """One image's pointing-game terms: {"hit", "random", "centre", "energy"}.

    Args:
        cam: float H×W heat map on the annotated image (0 where it gives no evidence).
        boxes: the image's COCO boxes, in its pixels.
        tolerance: pixels around a box that still count. Defaults to `TOLERANCE_PX`.

    Returns:
        hit: 1.0 when the map's maximum lies within the tolerance of a box (0 for an all-zero map);
        random: the share of the image within the tolerance, a uniform random point's chance;
        centre: 1.0 when the image's centre does; energy: the map's share inside the boxes (0 for an
        all-zero map).
    """
    cam = np.asarray(cam, np.float32)
    near = near_boxes(boxes, cam.shape, tolerance)
    total = float(cam.sum())
    y, x = np.unravel_index(int(np.argmax(cam)), cam.shape)
    h, w = cam.shape
    return {"hit": float(total > 0 and near[y, x]), "random": float(near.mean()),
            "centre": float(near[h // 2, w // 2]),
            "energy": float(cam[box_mask(boxes, cam.shape)].sum() / total) if total > 0 else 0.0}


def pointing_game(rows, n_boot=N_BOOT, seed=0):
    """The pointing game over images: each term's mean with its 95% bootstrap interval over images.

    Args:
        rows: `image_pointing` dicts, one per image.

    Returns:
        {"images": n, and per term ("hit", "random", "centre", "energy") its mean and "<term>_ci95"}.
    """
    out = {"images": len(rows)}
    for term in ("hit", "random", "centre", "energy"):
        values = np.asarray([r[term] for r in rows], float)
        out[term] = float(values.mean()) if len(values) else None
        per_image = np.stack([values, np.ones_like(values)], axis=1)
        out[f"{term}_ci95"] = bootstrap_interval(per_image, lambda s: s[:, 0] / s[:, 1], n_boot, seed)
    return out


def above_chance(game):
    """Whether a pointing game's hits beat a random point: the hit interval's lower end above the random rate."""
    return bool(game and game.get("hit") is not None and game["hit_ci95"][0] > game["random"])


def pointing_record(game, source):
    """What a run's manifest records of a measured pointing game (section `localisation`, one entry per part;
    written with `bonenet.run.manifest.record_section`): the game, where it was measured, the tolerance."""
    return {**game, "source": source, "tolerance_px": TOLERANCE_PX}


def heat_map_note(manifest, part):
    """What a run's heat maps for `part` may claim, in one short line for captions, the page and the reports."""
    game = manifest.localisation.get(part)
    if not above_chance(game):
        return NOT_VALIDATED
    return (f"heat map points at the annotated fracture in {100 * game['hit']:.0f}% of {game['source']} cases "
            f"({game['images']} images; a random point {100 * game['random']:.0f}%, the image's centre "
            f"{100 * game['centre']:.0f}%)")
