"""The `BoneNet` predictor: the shared trunk once per image, then the router head and the routed part's head."""

from pathlib import Path

import numpy as np

from bonenet.configs import PREDICT_BATCH, THRESHOLD_MODES, TTA_CHOICES
from bonenet.data.read import read_prepared
from bonenet.inference.notes import calibration_note
from bonenet.models.efficientnet import set_xla, trunk_batch_size, use_xla
from bonenet.models.ensemble import ensemble_head
from bonenet.preprocessing.recipes import Recipe
from bonenet.run import provenance
from bonenet.run.manifest import ManifestError
from bonenet.run.store import load_run_models
from bonenet.scoring.calibration import apply_temperature
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
        tta: test-time augmentation, "none" or "flip": every probability is the mean over the image
            and its horizontal mirror (`tta_views`), at twice the trunk's time. Defaults to "none".
    """

    # `pad_batches`: pad every prediction batch to its full size, so that XLA compiles each model once rather
    # than once per study size; the padding rows are dropped and cannot change the others (BatchNorm runs in
    # inference mode). On where XLA is in use.

    def __init__(self, manifest, members, trunk, run_dir=None, threshold="tuned", tta="none"):
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
        self.recipe = Recipe.from_dict(manifest.recipe)
        self.image_size = manifest.image_size
        self.labels = list(manifest.models["router"].labels)
        self.parts = [p for p in self.labels if p in self.models]
        self.threshold_mode = threshold
        self.thresholds = self.part_thresholds(threshold)
        set_xla(trunk, *self.models.values())
        self.pad_batches = use_xla()

    # What its heat maps draw (`bonenet.inference.heatmap`): "locator", the fracture locator's map (`locator`, a
    # `bonenet.models.locator.Locator`; None: the shipped one), or "gradcam", the part model's explanation.
    explain = "locator"
    locator = None

    @classmethod
    def load(cls, models_dir, threshold="tuned", tta="none", explain="locator"):
        """Loads the trunk and every model listed in `models_dir/manifest.json` (safe mode); its heat maps
        draw `explain` ("locator" or "gradcam")."""
        if explain not in ("locator", "gradcam"):
            raise ValueError(f"explain must be locator or gradcam, got {explain!r}")
        manifest, trunk, members = load_run_models(models_dir)
        net = cls(manifest, members, trunk, models_dir, threshold=threshold, tta=tta)
        net.explain = explain
        return net

    def with_tta(self, tta, explain=None):
        """This run's models under another test-time augmentation, and drawing `explain`'s heat maps when
        given (no reload; `self` when nothing changes)."""
        explain = explain or self.explain
        if tta == self.tta and explain == self.explain:
            return self
        other = BoneNet(self.manifest, self.members, self.trunk, self.run_dir, self.threshold_mode, tta)
        other.pad_batches, other.explain, other.locator = self.pad_batches, explain, self.locator
        return other

    def untuned_parts(self):
        """{part: why its threshold could not be tuned} for the parts whose hold-out tuning failed."""
        return untuned_parts(self.manifest, self.parts)

    def part_thresholds(self, mode="tuned"):
        """{part: (threshold, source)} for every part with a model (`bonenet.scoring.study.part_thresholds`)."""
        return part_thresholds(self.manifest, self.parts, mode)

    def temperature(self, key):
        """The temperature fitted for model `key` on the training hold-out, or None (not calibrated)."""
        return self.manifest.models[key].temperature if key in self.manifest.models else None

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
                "calibration": calibration_note(self.manifest, part), "tta": self.tta,
                "members": len(self.members.get(part, ())), "caveat": provenance.caveat(self.manifest)}

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


__all__ = ["BoneNet", "tta_views"]
