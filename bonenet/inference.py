"""The `BoneNet` predictor: the shared trunk once per image, then the router head and the routed part's head."""

from pathlib import Path

import cv2
import numpy as np

from bonenet.imageio import ImageReadError, load_gray
from bonenet.models import set_xla
from bonenet.store import ManifestError, load_run_models, read_manifest
from preprocessing.filters import check_image
from preprocessing.recipes import Recipe

IMAGE_SUFFIXES = (".png",)
BATCH = 32


def take(features, index):
    """Rows `index` (mask or indices) of every array in a feature list."""
    return [f[index] for f in features]


class BoneNet:
    """A loaded run: trunk, router and part heads, and the recipe they were trained with.

    Use `BoneNet.load(models_dir)`; then `predict_image(path or array)` or `predict_study(paths)`.
    The trunk runs once per image and both the router head and the routed part's head read its
    outputs. A folder of full models (format version 1) has no trunk; its models read the images.
    """

    def __init__(self, manifest, models, trunk=None, run_dir=None):
        if "router" not in models:
            raise ManifestError(f"{run_dir}: the run has no router model; train it with train-router")
        self.manifest = manifest
        self.models = models
        self.trunk = trunk
        self.run_dir = Path(run_dir) if run_dir else None
        self.recipe = Recipe.from_dict(manifest["recipe"])
        self.image_size = int(manifest["image_size"])
        self.labels = list(manifest["models"]["router"]["labels"])
        self.parts = [p for p in self.labels if p in models]
        set_xla(*models.values(), *([trunk] if trunk is not None else []))

    @classmethod
    def load(cls, models_dir):
        """Loads the trunk and every model listed in `models_dir/manifest.json` (safe mode)."""
        manifest, trunk, models = load_run_models(models_dir)
        return cls(manifest, models, trunk, models_dir)

    def threshold(self, part, tuned=False):
        """The decision threshold for `part`: 0.5, or the one tuned on the training hold-out."""
        entry = self.manifest["models"][part]
        return float(entry.get("tuned_threshold", entry["threshold"]) if tuned else entry["threshold"])

    def prepare(self, image):
        """A path or a uint8 H×W array → the uint8 S×S×3 model input, via the run's recipe."""
        if isinstance(image, (str, Path)):
            image = load_gray(image)
        return self.recipe.apply(check_image(image), self.image_size)

    def encode(self, batch):
        """Prepared inputs (N×S×S×3) → what the heads read: the trunk's outputs, as a list of arrays.

        For a folder of full models the "features" are the images themselves.
        """
        x = np.asarray(batch, np.float32)
        if self.trunk is None:
            return [x]
        out = self.trunk.predict(x, verbose=0, batch_size=BATCH)
        return [np.asarray(o) for o in (out if isinstance(out, (list, tuple)) else [out])]

    @staticmethod
    def _feed(features):
        return features[0] if len(features) == 1 else list(features)

    def router_probs(self, features):
        """Router softmax (n×7) for `encode`d inputs."""
        return np.asarray(self.models["router"].predict(self._feed(features), verbose=0, batch_size=BATCH))

    def abnormal_probs(self, part, features):
        """p(abnormal) (n,) from `part`'s model for `encode`d inputs."""
        if part not in self.models:
            raise ManifestError(f"the run has no {part} model; train it with train-part --part {part}")
        return np.asarray(self.models[part].predict(self._feed(features), verbose=0, batch_size=BATCH))[:, 1]

    def cam(self, part, features, gray):
        """Grad-CAM of `part`'s abnormal class for one image, mapped onto its original H×W grayscale.

        Args:
            part: the part model to explain.
            features: that image's `encode`d inputs (batch of one).
            gray: the original uint8 image.

        Returns:
            (float32 H×W map in [0, 1], box [x0, y0, x1, y1] or None).
        """
        from bonenet import gradcam

        size = (self.image_size, self.image_size)
        cam = gradcam.grad_cam(self.models[part], self._feed(features), size=size)[0]
        cam = gradcam.to_original(cam, self.recipe.layout(gray, self.image_size), gray.shape)
        return cam, gradcam.cam_box(cam)

    def _decide(self, part, router_probs, p_abnormal):
        return {
            "part": part,
            "part_confidence": float(router_probs[self.labels.index(part)]),
            "p_abnormal": None if p_abnormal is None else float(p_abnormal),
            "abnormal": None if p_abnormal is None else bool(p_abnormal >= self.threshold(part)),
        }

    def score_study(self, x):
        """The two-stage pipeline on one study's prepared inputs.

        The mean router softmax picks the part; that part's head scores each image; the study's
        score is their mean. A single image is a study of one.

        Returns:
            (study result, per-image results, encoded features).
        """
        features = self.encode(x)
        probs = self.router_probs(features)
        mean = probs.mean(axis=0)
        part = self.labels[int(mean.argmax())]
        scores = self.abnormal_probs(part, features) if part in self.models else [None] * len(probs)
        images = [self._decide(part, pr, s) for pr, s in zip(probs, scores, strict=True)]
        study = self._decide(part, mean, None if scores[0] is None else float(np.mean(scores)))
        return study, images, features

    def predict_image(self, image):
        """Predicts one image (path or uint8 H×W array): part, confidence, p(abnormal), decision."""
        return self.score_study(self.prepare(image)[None])[0]

    def predict_study(self, images):
        """Predicts a study from its images (paths or arrays).

        Returns:
            {"part", "part_confidence", "p_abnormal", "abnormal", "images": [per-image results]}.
        """
        if not images:
            raise ValueError("a study needs at least one image")
        study, per_image, _ = self.score_study(np.stack([self.prepare(im) for im in images]))
        return {**study, "images": per_image}


def find_images(path):
    """Lists the PNGs a user pointed at: a file, a study folder or any folder (recursively).

    Resource forks (`._*`) are left out. Raises ImageReadError for a path that does not exist.
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: does not exist")
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("._"))


def group_inputs(paths):
    """Turns user inputs into (single images, {study folder: its images}).

    A file is a single image; a folder's PNGs are grouped by the folder that holds them, each
    group being one study (a MURA study folder, or any folder of views).
    """
    singles, studies = [], {}
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for image in find_images(path):
                studies.setdefault(image.parent, []).append(image)
        else:
            singles.append(path)
    return singles, studies


def _cam_name(path):
    parts = Path(path).resolve().parts[-4:]
    return "__".join(p.replace(".png", "") for p in parts) + "_cam.png"


def predict_paths(net, paths, cam_dir=None):
    """Predicts images and study folders; unreadable files become error entries, the rest go on.

    Each single image is scored as a study of one; the images of a folder as one study.

    Args:
        net: a loaded `BoneNet`.
        paths: image files, study folders or folders of studies.
        cam_dir: write a Grad-CAM overlay per image here. Defaults to None (no CAMs).

    Returns:
        A list of dicts as in `predict --json`: per image `path, part, part_confidence, p_abnormal,
        abnormal[, cam, cam_box]`, per study `study, images, ...`, and `path, error` for failures.
    """
    from bonenet import gradcam

    singles, studies = group_inputs(paths)
    results = []

    def load(path):
        try:
            gray = load_gray(path)
            return gray, net.prepare(gray)
        except (ImageReadError, ValueError) as exc:
            results.append({"path": str(path), "error": str(exc)})
            return None, None

    def score(items):
        """items: [(path, gray, x)] → per-image entries (with CAMs) and the study's result."""
        study, per_image, features = net.score_study(np.stack([x for _, _, x in items]))
        entries = []
        for i, ((path, gray, _), result) in enumerate(zip(items, per_image, strict=True)):
            entry = {"path": str(path), **result}
            if cam_dir is not None and result["p_abnormal"] is not None:
                cam, box = net.cam(result["part"], take(features, slice(i, i + 1)), gray)
                label = f"{result['part'][3:].lower()} p(abnormal)={result['p_abnormal']:.2f}"
                out = Path(cam_dir) / _cam_name(path)
                out.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(out), gradcam.overlay(gray, cam, box, label))
                entry.update({"cam": str(out), "cam_box": box})
            entries.append(entry)
        return entries, study

    for path in singles:
        gray, x = load(path)
        if gray is not None:
            results.extend(score([(path, gray, x)])[0])
    for folder, images in sorted(studies.items()):
        loaded = [(path, *load(path)) for path in images]
        loaded = [item for item in loaded if item[1] is not None]
        if not loaded:
            results.append({"path": str(folder), "error": "no readable images in this folder"})
            continue
        entries, study = score(loaded)
        results.extend(entries)
        results.append({"study": str(folder), "images": [e["path"] for e in entries], **study})
    return results


__all__ = ["BoneNet", "find_images", "group_inputs", "predict_paths", "read_manifest"]
