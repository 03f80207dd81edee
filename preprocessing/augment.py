"""Clinically safe, seeded training augmentations for model inputs (uint8 S×S or S×S×3).

Only what a radiograph could plausibly look like after a different positioning or exposure:
a horizontal flip (left and right limbs), a small rotation, a mild crop, exposure jitter, a little
blur or sharpening. Nothing that invents or hides anatomy (no cutout, no elastic warps).
"""

from dataclasses import asdict, dataclass

import cv2
import numpy as np

from bonenet.preprocessing.filters import check_image, laplacian_sharpen

MAX_ROTATION_LIMIT = 30.0


@dataclass(frozen=True)
class AugmentConfig:
    """Bounds for training augmentation.

    Attributes:
        flip: allow horizontal flips. Defaults to True.
        max_rotation: largest rotation in degrees, at most 30. Defaults to 15.
        min_crop_scale: smallest random crop side, as a share of the image. Defaults to 0.85.
        brightness: largest exposure shift, as a share of 255. Defaults to 0.1.
        contrast: largest relative contrast change. Defaults to 0.15.
        blur_prob: chance of a light Gaussian blur (sigma 0.3-1.0). Defaults to 0.2.
        sharpen_prob: chance of Laplacian sharpening (strength 0.3-1.0). Defaults to 0.2.
    """

    flip: bool = True
    max_rotation: float = 15.0
    min_crop_scale: float = 0.85
    brightness: float = 0.1
    contrast: float = 0.15
    blur_prob: float = 0.2
    sharpen_prob: float = 0.2

    def __post_init__(self):
        if not 0 <= self.max_rotation <= MAX_ROTATION_LIMIT:
            raise ValueError(f"max_rotation must be within 0-{MAX_ROTATION_LIMIT:g} degrees, got {self.max_rotation}")
        if not 0.5 <= self.min_crop_scale <= 1.0:
            raise ValueError(f"min_crop_scale must be within 0.5-1, got {self.min_crop_scale}")
        for name in ("brightness", "contrast", "blur_prob", "sharpen_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be within 0-1, got {getattr(self, name)}")

    def to_dict(self):
        """Returns the config as JSON-ready data."""
        return asdict(self)


def sample_params(rng, config=AugmentConfig()):
    """Draws one set of augmentation parameters within `config`'s bounds."""
    scale = rng.uniform(config.min_crop_scale, 1.0)
    return {
        "flip": bool(config.flip and rng.random() < 0.5),
        "angle": float(rng.uniform(-config.max_rotation, config.max_rotation)),
        "crop_scale": float(scale),
        "crop_offset": (float(rng.random()), float(rng.random())),
        "brightness": float(rng.uniform(-config.brightness, config.brightness) * 255.0),
        "contrast": float(1.0 + rng.uniform(-config.contrast, config.contrast)),
        "blur_sigma": float(rng.uniform(0.3, 1.0)) if rng.random() < config.blur_prob else 0.0,
        "sharpen": float(rng.uniform(0.3, 1.0)) if rng.random() < config.sharpen_prob else 0.0,
    }


def rotate(image, angle):
    """Rotates about the centre by `angle` degrees, filling with black like the padding."""
    h, w = image.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, 1.0)
    return cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)


def apply_params(image, params):
    """Applies drawn parameters to a uint8 image; same shape and dtype out."""
    image = check_image(image, channels=(None, 3))
    h, w = image.shape[:2]
    out = image[:, ::-1] if params["flip"] else image
    out = rotate(np.ascontiguousarray(out), params["angle"])
    ch, cw = max(1, int(round(h * params["crop_scale"]))), max(1, int(round(w * params["crop_scale"])))
    y0 = int(params["crop_offset"][0] * (h - ch))
    x0 = int(params["crop_offset"][1] * (w - cw))
    out = cv2.resize(out[y0 : y0 + ch, x0 : x0 + cw], (w, h), interpolation=cv2.INTER_LINEAR)
    if params["blur_sigma"] > 0:
        out = cv2.GaussianBlur(out, (0, 0), params["blur_sigma"])
    if params["sharpen"] > 0:
        planes = [out] if out.ndim == 2 else [out[..., c] for c in range(out.shape[2])]
        planes = [laplacian_sharpen(np.ascontiguousarray(p), params["sharpen"]) for p in planes]
        out = planes[0] if out.ndim == 2 else np.dstack(planes)
    mean = float(out.mean())
    out = (out.astype(np.float32) - mean) * params["contrast"] + mean + params["brightness"]
    return np.clip(np.round(out), 0, 255).astype(np.uint8).reshape(image.shape)


def augment(image, rng, config=AugmentConfig()):
    """Draws parameters from `rng` and applies them; the one-call form used in training."""
    return apply_params(image, sample_params(rng, config))
