"""The `BoneNet` predictor: router, then the routed part's model, with the run's own recipe."""

from pathlib import Path

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


__all__ = ["BoneNet", "find_images", "read_manifest"]
