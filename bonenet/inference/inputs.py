"""From inputs to results: image files, study folders, uploads and arrays grouped into studies, read, prepared
and encoded a batch at a time, scored by `BoneNet.score`, and drawn as heat maps (`predict`, `serve`)."""

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from bonenet.configs import PREDICT_BATCH
from bonenet.data.decode import ImageReadError
from bonenet.data.read import Skip, group_inputs, read_gray, skip_from_error
from bonenet.inference.heatmap import heat_map, map_note


@dataclass(frozen=True)
class Batch:
    """One batch of `prepared_batches`: the indices of the images read and their prepared inputs (uint8
    N×S×S×3), {index: `Skip`} of those that could not be, and {index: (original gray, prepared input)} of those
    kept for heat maps."""

    kept: list
    prepared: np.ndarray
    skips: dict
    inputs: dict


def _read_and_prepare(net, name, source):
    """(gray, prepared) of one input, or the `Skip` that says why it could not be read."""
    try:
        gray = read_gray(source, name)
        return gray, net.prepare(gray, name)
    except ImageReadError as exc:
        return skip_from_error(exc, name)


def prepared_batches(net, images, keep=0):
    """The one read → prepare path of `predict`, `serve` and `evaluate`: yields a `Batch` per PREDICT_BATCH
    images, in input order, reading and preparing each batch's images on a pool of threads (the decoders and
    OpenCV release the GIL), one batch ahead of the caller.

    Args:
        net: a loaded `BoneNet` (its recipe and input size).
        images: [(name, source)], a source being a path, an upload's bytes or a uint8 H×W array, read when its
            batch comes (`bonenet.data.read.read_gray`, then `BoneNet.prepare`).
        keep: how many images, from the first, to keep as read and prepared for their heat maps; the others
            are dropped once encoded, so memory does not grow with a folder of thousands. Defaults to 0.
    """
    kept_so_far = 0
    starts = range(0, len(images), PREDICT_BATCH)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        def submit(start):  # Executor.map submits at once: the batch is read while the caller works
            return pool.map(lambda item: _read_and_prepare(net, *item), images[start:start + PREDICT_BATCH])

        pending = submit(0) if len(images) else None
        for start in starts:
            outcomes = list(pending)
            # One batch ahead: the next batch is read and prepared while this one is encoded and scored, so
            # at most two batches are in memory.
            pending = submit(start + PREDICT_BATCH) if start + PREDICT_BATCH < len(images) else None
            kept, prepared, skips, inputs = [], [], {}, {}
            for i, outcome in enumerate(outcomes, start):
                if isinstance(outcome, Skip):
                    skips[i] = outcome
                    continue
                kept.append(i)
                prepared.append(outcome[1])
                if kept_so_far < keep:
                    inputs[i], kept_so_far = outcome, kept_so_far + 1
            yield Batch(kept, np.stack(prepared) if prepared else None, skips, inputs)


@dataclass(frozen=True)
class Encoded:
    """Images read, prepared and encoded: the indices of those read, their trunk outputs and router softmax,
    {index: `Skip`} for the others, and {index: (original gray, prepared input)} of those kept for heat maps."""

    kept: list
    features: np.ndarray
    probs: np.ndarray
    skips: dict
    inputs: dict


def encode_images(net, images, keep=0):
    """The trunk's outputs and the router's softmax of images, read and prepared by `prepared_batches` (which
    see for `images` and `keep`); only these small arrays are kept for every image.

    Returns:
        An `Encoded`.
    """
    kept, features, probs, skips, inputs = [], [], [], {}, {}
    for batch in prepared_batches(net, images, keep):
        kept += batch.kept
        skips.update(batch.skips)
        inputs.update(batch.inputs)
        if batch.kept:
            encoded = net.encode(batch.prepared)
            features.append(encoded)
            probs.append(net.router_probs(encoded))
    if not kept:
        return Encoded(kept, None, None, skips, inputs)
    return Encoded(kept, np.concatenate(features), np.concatenate(probs), skips, inputs)


def predict_images(net, images, render_cam=None):
    """Scores images as one study, the step shared by `predict` and `serve`.

    Images are read, prepared and encoded a batch at a time (`encode_images`), then scored by
    `BoneNet.score`. A heat map draws on the image as read and prepared for scoring; in a study of more than
    PREDICT_BATCH images, the images after those are read again when their turn comes, so memory stays bounded.

    Args:
        net: a loaded `BoneNet`.
        images: [(name, source)], a source being a path, an upload's bytes or a uint8 H×W gray array,
            in the order the entries come back.
        render_cam: None for no heat maps, or `f(name, overlay BGR image) -> dict` of fields to add
            to that image's entry (a file path, a data URL). Defaults to None.

    Returns:
        (per-image entries `path` and `BoneNet.score`'s fields[, heat_map, boxes, cam_caption, heat_map_note,
        render_cam's], and
        `path, error` for an image that could not be read, in input order; the study's result, with
        `mixed_parts` when the images' router votes disagree, or None when no image could be read).
    """
    encoded = encode_images(net, images, keep=PREDICT_BATCH if render_cam is not None else 0)
    if not encoded.kept:
        return [error_entry(skip) for _, skip in sorted(encoded.skips.items())], None
    results, study = net.score(encoded.features, encoded.probs)
    by_index = {i: error_entry(skip) for i, skip in encoded.skips.items()}
    for i, result in zip(encoded.kept, results, strict=True):
        name, source = images[i]
        entry = {"path": str(name), **result}
        if render_cam is not None and result["p_abnormal"] is not None:
            gray, prepared = encoded.inputs.get(i) or (read_gray(source, name), None)
            image, boxes, lines = heat_map(net, study["part"], gray, result, prepared=prepared)
            entry.update({"heat_map": net.explain, "boxes": boxes, "cam_caption": " | ".join(lines),
                          "heat_map_note": map_note(net, study["part"])})
            entry.update(render_cam(name, image))
        by_index[i] = entry
    return [by_index[i] for i in sorted(by_index)], study


def error_entry(skip):
    """An image that could not be read, as a result entry: `path`, and `error`, one line naming it."""
    return {"path": skip.path, "error": str(skip)}


CSV_COLUMNS = ["path", "study", "part", "part_confidence", "p_abnormal", "threshold", "abnormal", "threshold_source",
               "calibrated", "calibration", "tta", "members", "image_part", "mixed_parts", "caveat", "cam", "heat_map",
               "boxes", "error", "skipped"]


def results_table(results):
    """`predict_paths` results as a table for `predict --csv`: one row per image, study or error.

    A study row's `path` is its folder; image rows carry their study's folder in `study`, and with heat maps
    their boxes as JSON ([[x0, y0, x1, y1]], in the image's pixels).
    """
    import pandas as pd

    study_of = {image: r["study"] for r in results if "study" in r for image in r["images"]}
    rows = [{**r, "path": r.get("study", r.get("path")), "study": r.get("study", study_of.get(r.get("path"))),
             "mixed_parts": mixed_parts_text(r.get("mixed_parts")),
             "boxes": json.dumps([b["box"] for b in r["boxes"]]) if "boxes" in r else None} for r in results]
    return pd.DataFrame(rows).reindex(columns=CSV_COLUMNS)


def mixed_parts_text(counts):
    """"XR_HAND×3 XR_WRIST×2" for a study whose images disagree about the part; "" otherwise."""
    return " ".join(f"{part}×{n}" for part, n in counts.items()) if counts else ""


def _cam_name(path):
    parts = Path(path).resolve().parts[-4:]
    return "__".join(Path(p).stem if i == 3 else p for i, p in enumerate(parts)) + "_cam.png"


def cam_file_writer(cam_dir):
    """A `predict_images` `render_cam` that writes each overlay as a PNG in `cam_dir`."""

    from bonenet.files import file_written_whole

    def write(name, image):
        out = Path(cam_dir) / _cam_name(name)
        ok, png = cv2.imencode(".png", image)
        if not ok:
            raise OSError(f"{out}: could not encode the Grad-CAM overlay")
        with file_written_whole(out) as tmp:  # a killed predict leaves no half-written heat map
            tmp.write_bytes(png.tobytes())
        return {"cam": str(out)}

    return write


def predict_paths(net, paths, cam_dir=None, per_image=False):
    """Predicts images and study folders, in input order; unreadable inputs become error entries.

    Images become studies by `group_inputs`' rule: each single image is scored as a study of one,
    the images directly in a folder as one study, or every image alone with `per_image`. PNG, JPEG
    and DICOM files are read (`bonenet.data.decode.load_gray`).

    Args:
        net: a loaded `BoneNet`.
        paths: image files, study folders or folders of studies.
        cam_dir: write a Grad-CAM overlay per image here. Defaults to None (no CAMs).
        per_image: score every image on its own, whatever folder holds it. Defaults to False.

    Returns:
        A list of dicts as in `predict --json`: per image `path, part, part_confidence, p_abnormal,
        threshold, threshold_source, abnormal[, cam, heat_map, boxes, cam_caption, heat_map_note]`, per study `study,
        images, ...`, `path, error` for failures, and `path, skipped` for what a folder holds besides
        images (not a failure).
    """
    render = cam_file_writer(cam_dir) if cam_dir is not None else None
    results = []
    for kind, path, files in group_inputs(paths, per_image):
        if kind in ("error", "skip"):
            results.append({"path": str(path), "error" if kind == "error" else "skipped": files})
            continue
        # Paths, not pixels: a folder of thousands of images is read a batch at a time.
        entries, study = predict_images(net, [(file, file) for file in files], render)
        results.extend(entries)
        if study is None:
            if kind == "study":
                results.append({"path": str(path), "error": "no readable images in this folder"})
            continue
        if kind == "study":
            results.append({"study": str(path), "images": [e["path"] for e in entries if "error" not in e], **study})
    return results


__all__ = ["Batch", "Encoded", "prepared_batches", "cam_file_writer", "encode_images", "error_entry", "predict_images", "predict_paths", "results_table"]
