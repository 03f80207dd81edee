"""Procedurally drawn, MURA-shaped radiographs for tests and the offline demo.

Each part has its own anatomy drawn from bone "segments" (capsules with a bright cortex and a
darker medulla). Abnormal studies carry a finding on one bone: a fracture line with a cortical
step, a plate with screws, or a lytic lesion. L/R markers are bright in both classes, so no
single intensity threshold separates normal from abnormal.

This is test data, not clinical evidence.
"""

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from bonenet.configs import SYNTHETIC_VALID_RATIO, SyntheticConfig
from bonenet.files import folder_written_whole
from bonenet.parts import PARTS
from bonenet.progress import Progress

# Bump when a change to the drawing changes the pixels a seed gives: the shipped backbone's
# provenance names the version its data came from.
GENERATOR_VERSION = 1
FINDINGS = ("fracture", "hardware", "lesion")
ABNORMAL_RATE = 0.4
RGB_RATE = 0.08
# MURA-v1.1's own counts (the design document; Rajpurkar et al. 2017, Table 1): per part, studies as
# (normal, abnormal) and images, for train and valid. 36,808 train and 3,197 valid images in all.
MURA_STUDIES = {
    "train": {"XR_ELBOW": (1094, 660), "XR_FINGER": (1280, 655), "XR_FOREARM": (590, 287), "XR_HAND": (1497, 521),
              "XR_HUMERUS": (321, 271), "XR_SHOULDER": (1364, 1457), "XR_WRIST": (2134, 1326)},
    "valid": {"XR_ELBOW": (92, 66), "XR_FINGER": (92, 83), "XR_FOREARM": (69, 64), "XR_HAND": (101, 66),
              "XR_HUMERUS": (68, 67), "XR_SHOULDER": (99, 95), "XR_WRIST": (140, 97)},
}
MURA_IMAGES = {
    "train": {"XR_ELBOW": 4931, "XR_FINGER": 5106, "XR_FOREARM": 1825, "XR_HAND": 5543, "XR_HUMERUS": 1272,
              "XR_SHOULDER": 8379, "XR_WRIST": 9752},
    "valid": {"XR_ELBOW": 465, "XR_FINGER": 461, "XR_FOREARM": 301, "XR_HAND": 460, "XR_HUMERUS": 288,
              "XR_SHOULDER": 563, "XR_WRIST": 659},
}
# At a small scale every part keeps enough studies of each label for a patient-grouped 20% hold-out.
MIN_SCALED_STUDIES = {"train": 6, "valid": 2}


def _seg(p0, p1, width, head=0.0):
    return {"p0": np.asarray(p0, np.float32), "p1": np.asarray(p1, np.float32), "w": float(width), "head": head}


def _finger(rng):
    x = 0.5 + rng.uniform(-0.05, 0.05)
    lengths = np.array([0.34, 0.22, 0.16]) * rng.uniform(0.9, 1.1)
    segs, y = [], 0.95
    for i, length in enumerate(lengths):
        segs.append(_seg((x, y), (x + rng.uniform(-0.02, 0.02), y - length), 0.085 - 0.012 * i))
        y -= length + 0.035
    return segs


def _hand(rng):
    segs = [_seg((0.38 + 0.08 * i, 0.92), (0.40 + 0.07 * i, 0.86), 0.07) for i in range(4)]  # carpal row
    for i in range(5):
        angle = math.radians(-60 + 30 * i + rng.uniform(-4, 4)) if i == 0 else math.radians(-18 + 11 * i)
        base = np.array([0.30 + 0.1 * i, 0.82])
        direction = np.array([math.sin(angle), -math.cos(angle)])
        meta = 0.26 if i else 0.18
        segs.append(_seg(base, base + direction * meta, 0.05))
        tip = base + direction * (meta + 0.025)
        for length in (0.14, 0.09, 0.06)[: 2 if i == 0 else 3]:
            segs.append(_seg(tip, tip + direction * length, 0.04))
            tip = tip + direction * (length + 0.022)
    return segs


def _wrist(rng):
    segs = [_seg((0.40, 1.05), (0.42, 0.62), 0.17, head=0.05), _seg((0.66, 1.05), (0.65, 0.66), 0.09)]
    for row, y in enumerate((0.53, 0.43)):
        for k in range(4):
            cx = 0.35 + 0.1 * k + rng.uniform(-0.015, 0.015) + 0.02 * row
            segs.append(_seg((cx, y), (cx + 0.01, y - 0.04), 0.075))
    for k in range(4):
        segs.append(_seg((0.34 + 0.1 * k, 0.33), (0.33 + 0.11 * k, 0.0), 0.06))
    return segs


def _forearm(rng):
    sep = rng.uniform(0.14, 0.2)
    return [
        _seg((0.5 - sep, 1.02), (0.5 - sep + 0.03, -0.02), 0.09, head=0.03),
        _seg((0.5 + sep, 1.02), (0.5 + sep - 0.02, -0.02), 0.075, head=0.02),
    ]


def _elbow(rng):
    bend = math.radians(rng.uniform(25, 70))
    joint = np.array([0.5, 0.5])
    up = joint + np.array([0.0, -0.6])
    d = np.array([math.sin(bend), math.cos(bend)])
    n = np.array([d[1], -d[0]])
    return [
        _seg(up, joint, 0.16, head=0.1),
        _seg(joint + d * 0.06 + n * 0.06, joint + d * 0.65 + n * 0.08, 0.08, head=0.04),
        _seg(joint + d * 0.03 - n * 0.05, joint + d * 0.65 - n * 0.06, 0.09, head=0.06),
    ]


def _humerus(rng):
    return [_seg((0.5, 0.22), (0.52 + rng.uniform(-0.03, 0.03), 1.05), 0.13, head=0.17)]


def _shoulder(rng):
    head = np.array([0.52, 0.45]) + rng.uniform(-0.03, 0.03, 2)
    return [
        _seg(head, (0.62, 1.05), 0.14, head=0.17),
        _seg((0.28, 0.3), (0.24, 0.62), 0.08, head=0.0),  # glenoid rim / scapular neck
        _seg((0.24, 0.62), (0.08, 0.95), 0.16),  # scapular body
        _seg((0.0, 0.14), (0.9, 0.2), 0.07),  # clavicle
    ]


ANATOMY = {
    "XR_ELBOW": _elbow,
    "XR_FINGER": _finger,
    "XR_FOREARM": _forearm,
    "XR_HAND": _hand,
    "XR_HUMERUS": _humerus,
    "XR_SHOULDER": _shoulder,
    "XR_WRIST": _wrist,
}


def _px(point, size):
    return tuple(int(round(v * size)) for v in point)


def _draw_bone(canvas, seg, size, rng):
    p0, p1 = _px(seg["p0"], size), _px(seg["p1"], size)
    w = max(2, int(seg["w"] * size))
    cortex = rng.uniform(0.72, 0.85)
    cv2.line(canvas, p0, p1, cortex, w, cv2.LINE_AA)
    cv2.line(canvas, p0, p1, cortex * 0.78, max(1, int(w * 0.55)), cv2.LINE_AA)
    if seg["head"] > 0:
        r = int(seg["head"] * size / 2)
        cv2.circle(canvas, p0, r, cortex, -1, cv2.LINE_AA)
        cv2.circle(canvas, p0, max(1, int(r * 0.8)), cortex * 0.8, -1, cv2.LINE_AA)


def _draw_finding(canvas, seg, size, kind, rng):
    p0, p1 = seg["p0"] * size, seg["p1"] * size
    t = rng.uniform(0.3, 0.7)
    c = p0 + (p1 - p0) * t
    d = (p1 - p0) / (np.linalg.norm(p1 - p0) + 1e-6)
    n = np.array([-d[1], d[0]])
    w = seg["w"] * size
    if kind == "fracture":
        # A thin dark line across the shaft plus a small step of the cortex on one side.
        a = c + n * w * 0.65 + d * rng.uniform(-0.3, 0.3) * w
        b = c - n * w * 0.65
        cv2.line(canvas, tuple(map(int, a)), tuple(map(int, b)), 0.15, max(2, int(w * 0.14)), cv2.LINE_AA)
        step = c + n * w * 0.5 + d * w * 0.12
        cv2.circle(canvas, tuple(map(int, step)), max(2, int(w * 0.2)), 0.2, -1, cv2.LINE_AA)
    elif kind == "hardware":
        half = d * w * rng.uniform(1.2, 2.0)
        a, b = c - half + n * w * 0.55, c + half + n * w * 0.55
        cv2.line(canvas, tuple(map(int, a)), tuple(map(int, b)), 0.97, max(3, int(w * 0.22)), cv2.LINE_AA)
        for k in np.linspace(0.1, 0.9, 3):
            s = a + (b - a) * k
            cv2.line(canvas, tuple(map(int, s)), tuple(map(int, s - n * w * 0.9)), 0.95, max(2, int(w * 0.1)))
    else:
        axes = (max(3, int(w * rng.uniform(0.25, 0.35))), max(3, int(w * rng.uniform(0.35, 0.5))))
        angle = math.degrees(math.atan2(d[1], d[0]))
        cv2.ellipse(canvas, tuple(map(int, c)), axes, angle, 0, 360, 0.3, -1, cv2.LINE_AA)


def draw_radiograph(part, abnormal_findings, rng, size=None):
    """Draws one synthetic radiograph.

    Args:
        part: canonical part name.
        abnormal_findings: list of (finding kind, bone index) to draw; empty for a normal view.
        rng: a `numpy.random.Generator`.
        size: longest side in pixels. Defaults to a random 320-512.

    Returns:
        A uint8 H×W array.
    """
    side = size or int(rng.integers(320, 513))
    segs = ANATOMY[part](rng)
    # Findings draw from their own stream, so a view's pose is the same with or without them.
    finding_rng = np.random.default_rng(rng.integers(2**63))
    canvas = np.full((side, side), 0.06, np.float32)
    tissue = np.zeros_like(canvas)
    for seg in segs:
        width = max(3, int((seg["w"] * 2.6 + 0.06) * side))
        cv2.line(tissue, _px(seg["p0"], side), _px(seg["p1"], side), 1.0, width)
    tissue = cv2.GaussianBlur(tissue, (0, 0), side * 0.03)
    canvas += 0.28 * np.clip(tissue * 1.5, 0, 1)
    for seg in segs:
        _draw_bone(canvas, seg, side, rng)
    for kind, bone in abnormal_findings:
        _draw_finding(canvas, segs[bone % len(segs)], side, kind, finding_rng)

    # Pose: rotation and zoom as a technologist would vary them.
    angle, zoom = rng.uniform(-20, 20), rng.uniform(0.85, 1.15)
    shift = rng.uniform(-0.06, 0.06, 2) * side
    m = cv2.getRotationMatrix2D((side / 2, side / 2), angle, zoom)
    m[:, 2] += shift
    canvas = cv2.warpAffine(canvas, m, (side, side), flags=cv2.INTER_LINEAR, borderValue=0.06)

    # Markers in both classes, in a random corner.
    letter = "L" if rng.random() < 0.5 else "R"
    corner = rng.integers(0, 4)
    org = (int(side * (0.06 if corner % 2 == 0 else 0.84)), int(side * (0.12 if corner < 2 else 0.94)))
    # OpenCV only draws text on uint8 images.
    mark = np.zeros((side, side), np.uint8)
    cv2.putText(mark, letter, org, cv2.FONT_HERSHEY_SIMPLEX, side / 320, 250, max(2, side // 120))
    canvas = np.maximum(canvas, mark.astype(np.float32) / 255.0)

    # Exposure, blur and quantum noise.
    canvas = cv2.GaussianBlur(canvas, (0, 0), rng.uniform(0.6, 1.4))
    canvas = np.clip(canvas, 0, 1) ** rng.uniform(0.8, 1.25) * rng.uniform(0.85, 1.1)
    canvas += rng.normal(0, rng.uniform(0.01, 0.035), canvas.shape).astype(np.float32)

    # Variable aspect: crop one side, as real films are rarely square.
    aspect = rng.uniform(0.65, 1.0)
    if rng.random() < 0.5:
        h = int(side * aspect)
        y0 = (side - h) // 2
        canvas = canvas[y0 : y0 + h]
    else:
        w = int(side * aspect)
        x0 = (side - w) // 2
        canvas = canvas[:, x0 : x0 + w]
    return np.clip(canvas * 255, 0, 255).astype(np.uint8)


def _study_findings(n_views, n_bones, rng):
    """Findings per view: one or two per study, visible in most views but not all."""
    kinds = rng.choice(FINDINGS, size=1 + int(rng.random() < 0.25), replace=False)
    plan = [(str(k), int(rng.integers(0, n_bones))) for k in kinds]
    visible = rng.random(n_views) < 0.85
    visible[rng.integers(0, n_views)] = True
    return [plan if v else [] for v in visible]


def mura_plan(scale=1.0):
    """MURA's per-part study, label and image counts times `scale`: {split: {part: [(label, views)]}}.

    Each part keeps MURA's normal and abnormal study counts (at least `MIN_SCALED_STUDIES` of each) and
    its images per study, spread as evenly as whole views allow, so that the part's image count is
    MURA's times `scale` (or the minimum's share of it).
    """
    plan = {}
    for split, parts in MURA_STUDIES.items():
        plan[split] = {}
        for part, (normal, abnormal) in parts.items():
            studies = [max(MIN_SCALED_STUDIES[split], round(n * scale)) for n in (normal, abnormal)]
            per_study = MURA_IMAGES[split][part] / (normal + abnormal)
            images = max(sum(studies), round(per_study * sum(studies)))
            base, extra = divmod(images, sum(studies))
            labels = [0] * studies[0] + [1] * studies[1]
            plan[split][part] = [(label, base + (i < extra)) for i, label in enumerate(labels)]
    return plan


def make_synthetic(out, config=SyntheticConfig(), overwrite=False, progress=True):
    """Writes a synthetic dataset in the exact MURA-v1.1 layout, with its four headerless CSVs.

    The dataset is written into a temporary folder beside the target and renamed when complete, so
    a killed run never leaves a `MURA-v1.1` that mixes two seeds. `MURA-v1.1/synthetic.json`
    records how it was made.

    Args:
        out: folder to create `MURA-v1.1/` in.
        config: a `SyntheticConfig`: train studies per part; valid studies per part (by default a quarter of
            the train studies, at least 4); the seed (the same seed, the same bytes); or `mura_scale`, MURA's
            own per-part study, label and image counts times this scale (`mura_plan`; 1 is MURA's 36,808 train
            and 3,197 valid images) instead of the studies per part.
        overwrite: replace an existing `out/MURA-v1.1`; otherwise one is refused. Defaults to False.
        progress: show a progress bar. Defaults to True.

    Returns:
        The path of the written `MURA-v1.1` folder.
    """
    studies_per_part, seed = config.studies_per_part, config.seed
    valid_studies_per_part, mura_scale = config.valid_studies_per_part, config.mura_scale
    if studies_per_part < 2:
        raise ValueError(f"studies_per_part must be at least 2, got {studies_per_part}")
    if valid_studies_per_part is None:
        valid_studies_per_part = max(4, int(math.ceil(studies_per_part * SYNTHETIC_VALID_RATIO)))
    if valid_studies_per_part < 1:
        raise ValueError(f"valid_studies_per_part must be at least 1, got {valid_studies_per_part}")
    root = Path(out) / "MURA-v1.1"
    if root.exists() and not overwrite:
        raise ValueError(f"{root}: already exists; pass --overwrite to replace it")
    plan = mura_plan(mura_scale) if mura_scale is not None else None
    with folder_written_whole(root, "synthetic.json", force=None) as tmp:
        _write_dataset(tmp, studies_per_part, valid_studies_per_part, seed, progress, plan)
        made = ({"seed": seed, "mura_scale": mura_scale} if plan else
                {"seed": seed, "studies_per_part": studies_per_part, "valid_studies_per_part": valid_studies_per_part})
        made["generator_version"] = GENERATOR_VERSION
        (tmp / "synthetic.json").write_text(json.dumps(made, indent=2) + "\n")
    return root


def _jobs(studies_per_part, valid_studies_per_part, plan):
    """(split, part_no, part, patient_no, study_no, planned (label, views) or None) for every study;
    some patients get two studies."""
    counts = {"train": studies_per_part, "valid": valid_studies_per_part}
    jobs, patient_no = [], 0
    for split in ("train", "valid"):
        for part_no, part in enumerate(PARTS):
            planned = plan[split][part] if plan else [None] * counts[split]
            k = 0
            while k < len(planned):
                patient_no += 1
                for study_no in range(1, 1 + min(len(planned) - k, 1 + int((patient_no * 7919) % 5 == 0))):
                    jobs.append((split, part_no, part, patient_no, study_no, planned[k]))
                    k += 1
    return jobs


def _write_dataset(tmp, studies_per_part, valid_studies_per_part, seed, progress, plan=None):
    jobs = _jobs(studies_per_part, valid_studies_per_part, plan)
    image_rows = {"train": [], "valid": []}
    study_rows = {"train": [], "valid": []}
    bar = Progress(len(jobs), f"make-synthetic: drawing {len(jobs):,} studies", unit="study", enabled=progress)
    for split, part_no, part, patient_no, study_no, planned in jobs:
        # One generator per study, so a study's pixels don't depend on how many came before.
        rng = np.random.default_rng([seed, patient_no, study_no, part_no])
        label = int(rng.random() < ABNORMAL_RATE)
        n_views = int(rng.choice([1, 2, 3, 4], p=[0.15, 0.45, 0.3, 0.1]))
        if planned is not None:
            label, n_views = planned
        n_bones = len(ANATOMY[part](np.random.default_rng(0)))
        findings = _study_findings(n_views, n_bones, rng) if label else [[]] * n_views
        rel_study = f"{split}/{part}/patient{patient_no:05d}/study{study_no}_{'positive' if label else 'negative'}/"
        folder = tmp / rel_study
        folder.mkdir(parents=True, exist_ok=True)
        for view in range(n_views):
            image = draw_radiograph(part, findings[view], rng)
            if rng.random() < RGB_RATE:
                image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
            if not cv2.imwrite(str(folder / f"image{view + 1}.png"), image):
                raise OSError(f"{folder / f'image{view + 1}.png'}: could not write the image")
            image_rows[split].append(f"MURA-v1.1/{rel_study}image{view + 1}.png")
        study_rows[split].append((f"MURA-v1.1/{rel_study}", label))
        bar.update()
    bar.close()
    for split in ("train", "valid"):
        pd.DataFrame(image_rows[split]).to_csv(tmp / f"{split}_image_paths.csv", header=False, index=False)
        pd.DataFrame(study_rows[split]).to_csv(tmp / f"{split}_labeled_studies.csv", header=False, index=False)


def synthetic_dataset(out, studies_per_part=40, seed=0, valid_studies_per_part=None, progress=True):
    """`out/MURA-v1.1` as `make_synthetic` makes it: reused when its `synthetic.json` matches, else remade."""
    root = Path(out) / "MURA-v1.1"
    if valid_studies_per_part is None:
        valid_studies_per_part = max(4, int(math.ceil(studies_per_part * SYNTHETIC_VALID_RATIO)))
    wanted = {"seed": seed, "studies_per_part": studies_per_part, "valid_studies_per_part": valid_studies_per_part,
              "generator_version": GENERATOR_VERSION}
    try:
        if json.loads((root / "synthetic.json").read_text()) == wanted:
            return root
    except (OSError, ValueError):
        pass
    config = SyntheticConfig(studies_per_part, valid_studies_per_part, seed)
    return make_synthetic(out, config, overwrite=True, progress=progress)
