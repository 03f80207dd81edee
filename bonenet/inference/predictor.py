"""The `BoneNet` predictor: the shared trunk once per image, then the router head and the routed part's head."""

from pathlib import Path

import cv2
import numpy as np

from bonenet.configs import HEAT_MAP, PREDICT_BATCH, THRESHOLD_MODES, TTA_CHOICES
from bonenet.data.decode import ImageReadError
from bonenet.data.read import group_inputs, read_gray, read_prepared, skip_from_error
from bonenet.inference import gradcam
from bonenet.models.efficientnet import set_xla, trunk_batch_size, use_xla
from bonenet.models.ensemble import ensemble_head
from bonenet.parts import short_name
from bonenet.preprocessing.recipes import Recipe
from bonenet.run import provenance
from bonenet.run.manifest import ManifestError
from bonenet.run.store import load_run_models
from bonenet.scoring.calibration import apply_temperature
from bonenet.scoring.localisation import heat_map_note
from bonenet.scoring.study import decide_study, part_thresholds, untuned_parts


class BoneNet:
    """A loaded run: trunk, router and part heads, and the recipe they were trained with.

    Use `BoneNet.load(models_dir)`; then `predict_image(path or array)` or `predict_study(paths)`.
    The trunk runs once per image (once per view with test-time augmentation) and both the router
    head and the routed part's head read its outputs. A model trained as an ensemble is the mean of
    its members' probabilities (`bonenet.models.ensemble.ensemble_head`), as one Keras model. Studies are
    decided by `bonenet.scoring.study.decide_study`.

    Args:
        members: {key: [head models]}, one per ensemble member (`bonenet.run.store.load_run_models`).
        threshold: "tuned" decides with each part's threshold tuned on the training hold-out where
            the run has one (and says so where it has none); "default" uses 0.5. Defaults to "tuned".
        pad_batches: pad every prediction batch to its full size, so that XLA compiles each model
            once rather than once per study size; the padding rows are dropped and cannot change
            the others (BatchNorm runs in inference mode). Defaults to whether XLA is in use.
        tta: test-time augmentation, "none" or "flip": every probability is the mean over the image
            and its horizontal mirror (`tta_views`), at twice the trunk's time. Defaults to "none".
    """

    def __init__(self, manifest, members, trunk, run_dir=None, threshold="tuned", pad_batches=None, tta="none"):
        if "router" not in members:
            raise ManifestError(f"{run_dir}: the run has no router model; train it with train-router")
        if threshold not in THRESHOLD_MODES:
            raise ValueError(f"threshold must be one of {', '.join(THRESHOLD_MODES)}, got {threshold!r}")
        if tta not in TTA_CHOICES:
            raise ValueError(f"tta must be one of {', '.join(TTA_CHOICES)}, got {tta!r}")
        self.manifest = manifest
        self.members = members
        self.models = {key: ensemble_head(heads) for key, heads in members.items()}
        self.trunk = trunk
        self.tta = tta
        self.run_dir = Path(run_dir) if run_dir else None
        self.recipe = Recipe.from_dict(manifest["recipe"])
        self.image_size = int(manifest["image_size"])
        self.labels = list(manifest["models"]["router"]["labels"])
        self.parts = [p for p in self.labels if p in self.models]
        self.threshold_mode = threshold
        self.thresholds = self.part_thresholds(threshold)
        set_xla(trunk, *self.models.values())
        self.pad_batches = use_xla() if pad_batches is None else bool(pad_batches)

    @classmethod
    def load(cls, models_dir, threshold="tuned", tta="none"):
        """Loads the trunk and every model listed in `models_dir/manifest.json` (safe mode)."""
        manifest, trunk, members = load_run_models(models_dir)
        return cls(manifest, members, trunk, models_dir, threshold=threshold, tta=tta)

    def with_tta(self, tta):
        """This run's models under another test-time augmentation (no reload)."""
        if tta == self.tta:
            return self
        return BoneNet(self.manifest, self.members, self.trunk, self.run_dir, self.threshold_mode, self.pad_batches,
                       tta)

    @property
    def backbone_origin(self):
        """Where the run's trunk weights came from, in words (the manifest's description, else its kind)."""
        return provenance.backbone_origin(self.manifest.get("weights"))

    @property
    def caveat(self):
        """One short line that travels with every output of a run that never learned from a real
        radiograph (`bonenet.run.provenance.caveat`); None otherwise.

        It goes into each `predict` JSON and CSV row, the `/api/predict` answer and the heat map's
        caption band, so that a result passed on never just says "ABNORMAL".
        """
        return provenance.caveat(self.manifest)

    def backbone_warning(self):
        """A sentence for users when the run's trunk is not ImageNet-pretrained, else None
        (`bonenet.run.provenance.backbone_warning`); predict and serve say it once."""
        return provenance.backbone_warning(self.manifest["weights"])

    def tta_note(self):
        """A sentence on what test-time augmentation costs, when it is on; None otherwise."""
        if self.tta == "none":
            return None
        return (f"test-time augmentation {self.tta}: each image is scored as the mean over it and its mirror, so "
                "the trunk runs twice per image (about twice the time); the temperatures were fitted on single "
                "views")

    def untuned_parts(self):
        """{part: why its threshold could not be tuned} for the parts whose hold-out tuning failed."""
        return untuned_parts(self.manifest, self.parts)

    def part_thresholds(self, mode="tuned"):
        """{part: (threshold, source)} for every part with a model (`bonenet.scoring.study.part_thresholds`)."""
        return part_thresholds(self.manifest, self.parts, mode)

    def temperature(self, key):
        """The temperature fitted for model `key` on the training hold-out, or None (not calibrated)."""
        return self.manifest["models"].get(key, {}).get("calibration", {}).get("temperature")

    def calibration_note(self, key):
        """How `key`'s probabilities are calibrated, in words, for every output that carries them."""
        calibration = self.manifest["models"].get(key, {}).get("calibration")
        if calibration is None:
            return "not calibrated: the run predates calibration"
        if calibration.get("temperature") is None:
            return f"not calibrated: {calibration['reason']}"
        return f"temperature {calibration['temperature']:.3g}, fitted on {calibration.get('fitted_on', 'the training hold-out')}"

    def prepare(self, image, name=None):
        """A path, an upload's bytes (named `name`) or a uint8 H×W array → the uint8 S×S×3 model input
        (`bonenet.data.read.read_prepared`, with the run's recipe and size)."""
        return read_prepared(image, self.recipe, self.image_size, name)

    def _predict(self, model, x, batch=PREDICT_BATCH):
        # predict_on_batch reuses one traced function per model and batch shape; `predict` would
        # build a dataset and an iterator for every study.
        out = []
        for start in range(0, len(x), batch):
            chunk = x[start:start + batch]
            n = len(chunk)
            if self.pad_batches and n < batch:
                chunk = np.concatenate([chunk, np.zeros((batch - n, *chunk.shape[1:]), chunk.dtype)])
            out.append(np.asarray(model.predict_on_batch(chunk))[:n])
        return np.concatenate(out)

    def encode(self, batch):
        """Prepared inputs (N×S×S×3) → the trunk's output for each test-time view, N×V×…, which every head reads."""
        views = tta_views(np.asarray(batch, np.float32), self.tta)
        flat = self._predict(self.trunk, views.reshape(-1, *views.shape[2:]),
                             trunk_batch_size(self.image_size, PREDICT_BATCH))
        return flat.reshape(*views.shape[:2], *flat.shape[1:])

    def _heads(self, model, features):
        """A head's probabilities for `encode`d inputs: the mean over each image's views."""
        flat = self._predict(model, features.reshape(-1, *features.shape[2:]))
        return flat.reshape(*features.shape[:2], -1).mean(axis=1)

    def router_probs(self, features, calibrated=True):
        """Router softmax (n×7) for `encode`d inputs, calibrated with the router's temperature where it has one."""
        probs = self._heads(self.models["router"], features)
        return self.calibrate("router", probs) if calibrated else probs

    def abnormal_probs(self, part, features, calibrated=True):
        """p(abnormal) (n,) from `part`'s model for `encode`d inputs, calibrated where the run has a temperature."""
        if part not in self.models:
            raise ManifestError(f"the run has no {part} model; train it with train-part --part {part}")
        probs = self._heads(self.models[part], features)[:, 1]
        return self.calibrate(part, probs) if calibrated else probs

    def calibrate(self, key, probs):
        """Model `key`'s probabilities (router n×7, a part's p(abnormal) (n,)) through its temperature, if any."""
        return apply_temperature(probs, self.temperature(key))

    def cam(self, part, gray):
        """The heat map of `part`'s abnormal class for one image, mapped onto its original H×W grayscale.

        Computed on the image as prepared (without test-time views), through the trunk and every member
        of the part's model (`bonenet.inference.gradcam.heat_maps`: the ensemble's own score), at the layer, by the
        method and kept to the foreground as `bonenet.configs.HEAT_MAP` says.

        Returns:
            (float32 H×W map in [0, 1], box [x0, y0, x1, y1] or None).
        """
        cam = self.cams(part, gray, [HEAT_MAP["layer"]], [HEAT_MAP["method"]])[HEAT_MAP["layer"], HEAT_MAP["method"]]
        cam = gradcam.keep_foreground(cam, gray) if HEAT_MAP["foreground"] else cam
        return cam, gradcam.cam_box(cam)

    def cams(self, part, gray, layers, methods):
        """Heat maps of `part`'s abnormal class for one image at each layer by each method, on its original
        H×W grayscale: {(layer, method): map} (the benchmark's candidates; `cam` draws the chosen one)."""
        maps = gradcam.heat_maps(self.trunk, self.members[part], self.prepare(gray)[None], layers, methods)
        layout = self.recipe.layout(gray, self.image_size)
        return {key: gradcam.to_original(m[0], layout, gray.shape) for key, m in maps.items()}

    def image_scores(self, features, parts):
        """{part: (uncalibrated, calibrated) p(abnormal)} of `encode`d inputs under each of `parts`' models:
        with `router_probs`, the one place where heads' outputs become scores."""
        out = {}
        for part in parts:
            raw = self.abnormal_probs(part, features, calibrated=False)
            out[part] = raw, self.calibrate(part, raw)
        return out

    def output_fields(self, part):
        """The fields every result routed to `part` carries: its threshold and where it came from, its
        calibration, and the run's caveat."""
        threshold, source = self.thresholds.get(part, (None, "no model for this part"))
        return {"threshold": threshold, "threshold_source": source, "calibrated": self.temperature(part) is not None,
                "calibration": self.calibration_note(part), "tta": self.tta,
                "members": len(self.members.get(part, ())), "caveat": self.caveat}

    def score(self, features, router_probs=None):
        """One study's `encode`d images → (per-image results, the study's result), every field filled.

        The one scoring step of `predict`, `serve`, the Python API and the benchmarks: the router
        picks the part by the study rule (`bonenet.scoring.study.decide_study`) and only that part's model
        runs. `evaluate` scores every part, for its oracle, through the same `image_scores`.

        Args:
            features: the trunk's outputs for the study's images.
            router_probs: their router softmax when already computed. Defaults to None.

        Returns:
            ([{"part", "image_part", "part_confidence", "p_abnormal", "abnormal", threshold, calibration and
            caveat fields}], {"part", "part_confidence", "p_abnormal", "abnormal", "mixed_parts", the same fields}).
        """
        probs = self.router_probs(features) if router_probs is None else router_probs
        scores = lambda part: self.image_scores(features, [part])[part][1] if part in self.models else None  # noqa: E731
        study = decide_study(probs, scores, self.labels, self.thresholds)
        fields = self.output_fields(study["part"])
        study.update(fields)
        images = [{"part": study["part"], **image, **fields} for image in study.pop("images")]
        return images, study

    def heat_map_note(self, part):
        """What `part`'s heat maps may claim, in one short line (`bonenet.scoring.localisation.heat_map_note`)."""
        return heat_map_note(self.manifest, part)

    def heat_map(self, part, gray, result, header=()):
        """The one heat map every output draws: Grad-CAM of `part`'s model on one image, over the image.

        A normal image gets a faint map and no box (its hottest region is not a finding). The caption
        holds `header` lines, the run's caveat, then the routed part and the decision, last, in its colour.

        Args:
            gray: the original uint8 image.
            result: the image's result: "part_confidence", "p_abnormal", "threshold", "abnormal", and
                "whose" naming the p(abnormal) where a reader could take it for another.

        Returns:
            (overlay BGR image, box [x0, y0, x1, y1] or None, caption lines).
        """
        cam, box = self.cam(part, gray)
        abnormal = bool(result["abnormal"])
        box = box if abnormal else None
        lines = [*header, *([self.caveat] if self.caveat else []), self.heat_map_note(part),
                 *gradcam.caption(short_name(part), result["part_confidence"], result["p_abnormal"],
                                  result["threshold"], abnormal, result.get("whose", ""))]
        return gradcam.overlay(gray, cam, abnormal, box, lines), box, lines

    def predict_image(self, image):
        """Predicts one image (path or uint8 H×W array) as a study of one."""
        return self.score(self.encode(self.prepare(image)[None]))[1]

    def predict_study(self, images):
        """Predicts a study from its images (paths or arrays).

        Returns:
            The study's result (`score`), with its per-image results under "images".
        """
        if not images:
            raise ValueError("a study needs at least one image")
        entries, study = self.score(self.encode(np.stack([self.prepare(im) for im in images])))
        return {**study, "images": entries}


def tta_views(batch, tta):
    """The test-time views of prepared images N×S×S×3, as N×V×S×S×3: "none" the image alone, "flip" the image
    and its horizontal mirror (a radiograph of the other side, which MURA holds too; no resampling, so no
    detail is lost)."""
    if tta == "none":
        return batch[:, None]
    return np.stack([batch, batch[:, :, ::-1]], axis=1)


def encode_images(net, images):
    """The trunk's outputs and the router's softmax of images, PREDICT_BATCH at a time.

    Only these small arrays are kept, never the decoded or prepared images, so memory does not grow
    with a folder of thousands of images beyond its trunk outputs.

    Args:
        images: [(name, source)], a source being a path, an upload's bytes or a uint8 H×W array,
            read when its batch comes (`BoneNet.prepare`).

    Returns:
        (indices of the images read, their trunk outputs, their router softmax, {index: `Skip`}).
    """
    kept, features, probs, skips = [], [], [], {}
    for start in range(0, len(images), PREDICT_BATCH):
        prepared = []
        for i, (name, source) in enumerate(images[start:start + PREDICT_BATCH], start):
            try:
                prepared.append(net.prepare(source, name))
                kept.append(i)
            except ImageReadError as exc:
                skips[i] = skip_from_error(exc, name)
        if prepared:
            encoded = net.encode(np.stack(prepared))
            features.append(encoded)
            probs.append(net.router_probs(encoded))
    if not kept:
        return kept, None, None, skips
    return kept, np.concatenate(features), np.concatenate(probs), skips


def predict_images(net, images, render_cam=None):
    """Scores images as one study, the step shared by `predict` and `serve`.

    Images are read, prepared and encoded a batch at a time (`encode_images`), then scored by
    `BoneNet.score`; heat maps read an image given as a path again when its turn comes.

    Args:
        net: a loaded `BoneNet`.
        images: [(name, source)], a source being a path, an upload's bytes or a uint8 H×W gray array,
            in the order the entries come back.
        render_cam: None for no heat maps, or `f(name, overlay BGR image) -> dict` of fields to add
            to that image's entry (a file path, a data URL). Defaults to None.

    Returns:
        (per-image entries `path` and `BoneNet.score`'s fields[, cam_box, cam_caption, render_cam's], and
        `path, error` for an image that could not be read, in input order; the study's result, with
        `mixed_parts` when the images' router votes disagree, or None when no image could be read).
    """
    kept, features, probs, skips = encode_images(net, images)
    if not kept:
        return [error_entry(skip) for _, skip in sorted(skips.items())], None
    results, study = net.score(features, probs)
    by_index = {i: error_entry(skip) for i, skip in skips.items()}
    for i, result in zip(kept, results, strict=True):
        name, source = images[i]
        entry = {"path": str(name), **result}
        if render_cam is not None and result["p_abnormal"] is not None:
            image, box, lines = net.heat_map(study["part"], read_gray(source, name), result)
            entry.update({"cam_box": box, "cam_caption": " | ".join(lines), "heat_map_note": net.heat_map_note(study["part"])})
            entry.update(render_cam(name, image))
        by_index[i] = entry
    return [by_index[i] for i in sorted(by_index)], study


def error_entry(skip):
    """An image that could not be read, as a result entry: `path`, and `error`, one line naming it."""
    return {"path": skip.path, "error": str(skip)}


CSV_COLUMNS = ["path", "study", "part", "part_confidence", "p_abnormal", "threshold", "abnormal", "threshold_source",
               "calibrated", "calibration", "tta", "members", "image_part", "mixed_parts", "caveat", "cam", "error",
               "skipped"]


def results_table(results):
    """`predict_paths` results as a table for `predict --csv`: one row per image, study or error.

    A study row's `path` is its folder; image rows carry their study's folder in `study`.
    """
    import pandas as pd

    study_of = {image: r["study"] for r in results if "study" in r for image in r["images"]}
    rows = [{**r, "path": r.get("study", r.get("path")), "study": r.get("study", study_of.get(r.get("path"))),
             "mixed_parts": mixed_parts_text(r.get("mixed_parts"))} for r in results]
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
        threshold, threshold_source, abnormal[, cam, cam_box, cam_caption]`, per study `study,
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


__all__ = ["BoneNet", "cam_file_writer", "tta_views", "predict_images", "predict_paths",
           "results_table"]
