"""The `BoneNet` predictor: router, then the routed part's model, with the run's own recipe."""

from pathlib import Path

import cv2
import numpy as np

from bonenet.imageio import ImageReadError, load_gray
from bonenet.store import ManifestError, load_run_models, read_manifest
from preprocessing.filters import check_image
from preprocessing.recipes import Recipe

IMAGE_SUFFIXES = (".png",)


class BoneNet:
    """A loaded run: the router and the part models it lists, and the recipe they were trained with.

    Use `BoneNet.load(models_dir)`; then `predict_image(path or array)` or `predict_study(paths)`.
    """

    def __init__(self, manifest, models, run_dir=None):
        if "router" not in models:
            raise ManifestError(f"{run_dir}: the run has no router model; train it with train-router")
        self.manifest = manifest
        self.models = models
        self.run_dir = Path(run_dir) if run_dir else None
        self.recipe = Recipe.from_dict(manifest["recipe"])
        self.image_size = int(manifest["image_size"])
        self.labels = list(manifest["models"]["router"]["labels"])
        self.parts = [p for p in self.labels if p in models]

    @classmethod
    def load(cls, models_dir):
        """Loads every model listed in `models_dir/manifest.json` (safe mode)."""
        manifest, models = load_run_models(models_dir)
        return cls(manifest, models, models_dir)

    def threshold(self, part, tuned=False):
        """The decision threshold for `part`: 0.5, or the one tuned on the training hold-out."""
        entry = self.manifest["models"][part]
        return float(entry.get("tuned_threshold", entry["threshold"]) if tuned else entry["threshold"])

    def prepare(self, image):
        """A path or a uint8 H×W array → the uint8 S×S×3 model input, via the run's recipe."""
        if isinstance(image, (str, Path)):
            image = load_gray(image)
        return self.recipe.apply(check_image(image), self.image_size)

    def router_probs(self, batch):
        """Router softmax (n×7) for a batch of prepared inputs."""
        return np.asarray(self.models["router"].predict(np.asarray(batch, np.float32), verbose=0, batch_size=32))

    def abnormal_probs(self, part, batch):
        """p(abnormal) (n,) from `part`'s model for a batch of prepared inputs."""
        if part not in self.models:
            raise ManifestError(f"the run has no {part} model; train it with train-part --part {part}")
        probs = self.models[part].predict(np.asarray(batch, np.float32), verbose=0, batch_size=32)
        return np.asarray(probs)[:, 1]

    def _decide(self, part, router_probs, p_abnormal):
        return {
            "part": part,
            "part_confidence": float(router_probs[self.labels.index(part)]),
            "p_abnormal": None if p_abnormal is None else float(p_abnormal),
            "abnormal": None if p_abnormal is None else bool(p_abnormal >= self.threshold(part)),
        }

    def predict_image(self, image):
        """Predicts one image (path or uint8 H×W array): part, confidence, p(abnormal), decision."""
        x = self.prepare(image)[None]
        probs = self.router_probs(x)[0]
        part = self.labels[int(probs.argmax())]
        p = self.abnormal_probs(part, x)[0] if part in self.models else None
        return self._decide(part, probs, p)

    def predict_study(self, images):
        """Predicts a study from its images: the mean router softmax picks the part, whose model's
        mean p(abnormal) over the images is the study's score.

        Returns:
            {"part", "part_confidence", "p_abnormal", "abnormal", "images": [per-image results]}.
        """
        if not images:
            raise ValueError("a study needs at least one image")
        x = np.stack([self.prepare(im) for im in images])
        probs = self.router_probs(x)
        part = self.labels[int(probs.mean(axis=0).argmax())]
        scores = self.abnormal_probs(part, x) if part in self.models else None
        result = self._decide(part, probs.mean(axis=0), None if scores is None else scores.mean())
        result["images"] = [
            {**self._decide(self.labels[int(pr.argmax())], pr, None if scores is None else s), "routed_part": part}
            for pr, s in zip(probs, scores if scores is not None else [None] * len(probs), strict=True)
        ]
        return result


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

    def image_entry(path, gray, x, probs, part, p):
        entry = {"path": str(path), **net._decide(part, probs, p)}
        if cam_dir is not None and part in net.models:
            cam = gradcam.grad_cam(net.models[part], x[None])[0]
            cam = gradcam.to_original(cam, net.recipe.layout(gray, net.image_size), gray.shape)
            box = gradcam.cam_box(cam)
            label = f"{part[3:].lower()} p(abnormal)={p:.2f}"
            out = Path(cam_dir) / _cam_name(path)
            out.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(out), gradcam.overlay(gray, cam, box, label))
            entry.update({"cam": str(out), "cam_box": box})
        return entry

    for path in singles:
        gray, x = load(path)
        if gray is None:
            continue
        probs = net.router_probs(x[None])[0]
        part = net.labels[int(probs.argmax())]
        p = float(net.abnormal_probs(part, x[None])[0]) if part in net.models else None
        results.append(image_entry(path, gray, x, probs, part, p))
    for folder, images in sorted(studies.items()):
        loaded = [(path, *load(path)) for path in images]
        loaded = [item for item in loaded if item[1] is not None]
        if not loaded:
            results.append({"path": str(folder), "error": "no readable images in this folder"})
            continue
        x = np.stack([item[2] for item in loaded])
        probs = net.router_probs(x)
        part = net.labels[int(probs.mean(axis=0).argmax())]
        scores = net.abnormal_probs(part, x) if part in net.models else [None] * len(loaded)
        entries = [image_entry(path, gray, xi, pr, part, None if s is None else float(s))
                   for (path, gray, xi), pr, s in zip(loaded, probs, scores, strict=True)]
        results.extend(entries)
        mean = None if scores[0] is None else float(np.mean(scores))
        results.append({"study": str(folder), "images": [e["path"] for e in entries],
                        **net._decide(part, probs.mean(axis=0), mean)})
    return results


__all__ = ["BoneNet", "find_images", "group_inputs", "predict_paths", "read_manifest"]
