"""Recipes: named, JSON-serialisable compositions of filters that make a model's input.

A recipe turns a uint8 H×W radiograph into a uint8 S×S×3 array:

1. optionally crop to the anatomy (`roi_crop`),
2. resize so the longest side is S,
3. fill each of the three channels by its own chain of filters,
4. pad to S×S with black.

Filters run before padding so that edge detectors never see the artificial border. The recipe is
saved with every model, so inference always prepares input exactly as training did.
"""

import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from bonenet.preprocessing import filters

OPS = {
    "equalize": filters.equalize_hist,
    "clahe": filters.equalize_clahe,
    "sharpen": filters.laplacian_sharpen,
    "sobel": filters.sobel_edges,
    "prewitt": filters.prewitt_edges,
    "roberts": filters.roberts_edges,
    "canny": filters.canny_edges,
}


def _check_step(step):
    if not isinstance(step, dict) or "op" not in step:
        raise ValueError(f"a recipe step must be a dict with an 'op' key, got {step!r}")
    op = step["op"]
    if op not in OPS:
        raise ValueError(f"unknown recipe op {op!r}; expected one of {', '.join(sorted(OPS))}")
    params = {k: v for k, v in step.items() if k != "op"}
    try:
        inspect.signature(OPS[op]).bind(np.zeros((1, 1), np.uint8), **params)
    except TypeError as exc:
        raise ValueError(f"bad parameters for recipe op {op!r}: {exc}") from exc
    return {"op": op, **params}


@dataclass(frozen=True)
class Recipe:
    """A preprocessing recipe.

    Attributes:
        name: a short name, recorded in manifests.
        roi: crop to the anatomy first. Defaults to True.
        channels: three chains of steps, `{"op": NAME, **params}`, one per output channel; an
            empty chain is the plain gray image.
        description: one line for humans.
    """

    name: str
    roi: bool = True
    channels: tuple = field(default=((), (), ()))
    description: str = ""

    def __post_init__(self):
        if len(self.channels) != 3:
            raise ValueError(f"recipe {self.name!r} must define 3 channels, got {len(self.channels)}")
        chains = tuple(tuple(_freeze(_check_step(dict(s))) for s in chain) for chain in self.channels)
        object.__setattr__(self, "channels", chains)

    def to_dict(self):
        """Returns the recipe as plain JSON-ready data."""
        return {
            "name": self.name,
            "roi": self.roi,
            "channels": [[dict(step) for step in chain] for chain in self.channels],
            "description": self.description,
        }

    def to_json(self):
        """Returns the recipe as a JSON string (stable key order)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data):
        """Builds a recipe from `to_dict` output, checking every op and parameter."""
        unknown = set(data) - {"name", "roi", "channels", "description"}
        if unknown:
            raise ValueError(f"unknown recipe keys: {', '.join(sorted(unknown))}")
        if "name" not in data or "channels" not in data:
            raise ValueError("a recipe needs 'name' and 'channels'")
        return cls(
            name=str(data["name"]),
            roi=bool(data.get("roi", True)),
            channels=tuple(tuple(chain) for chain in data["channels"]),
            description=str(data.get("description", "")),
        )

    def layout(self, image, size):
        """Where the model input's pixels come from: the crop box in the original image, and where
        the resized crop sits inside the size×size input. Lets a heat map be drawn on the original.

        Returns:
            {"box": (top, bottom, left, right), "resized": (h, w), "offset": (top, left), "size": size}.
        """
        image = filters.check_image(image)
        h, w = image.shape
        box = filters.roi_box(image) if self.roi else (0, h, 0, w)
        ch, cw = box[1] - box[0], box[3] - box[2]
        scale = int(size) / max(ch, cw)
        rh, rw = max(1, int(round(ch * scale))), max(1, int(round(cw * scale)))
        return {"box": box, "resized": (rh, rw), "offset": ((int(size) - rh) // 2, (int(size) - rw) // 2),
                "size": int(size)}

    def apply(self, image, size):
        """Turns a uint8 H×W image into the uint8 size×size×3 model input."""
        image = filters.check_image(image)
        if self.roi:
            image = filters.roi_crop(image)
        image = filters.resize_longest(image, int(size))
        planes = []
        for chain in self.channels:
            plane = image
            for step in chain:
                params = dict(step)
                plane = OPS[params.pop("op")](plane, **params)
            planes.append(plane)
        return filters.pad_square(np.dstack(planes), int(size))


def to_original(cam, layout, shape):
    """Maps an S×S map on a model input back onto the original H×W image, by the input's `Recipe.layout`;
    zero outside the crop."""
    top, bottom, left, right = layout["box"]
    (rh, rw), (oy, ox) = layout["resized"], layout["offset"]
    inner = cam[oy : oy + rh, ox : ox + rw]
    out = np.zeros(shape, np.float32)
    out[top:bottom, left:right] = cv2.resize(inner, (right - left, bottom - top), interpolation=cv2.INTER_LINEAR)
    return out


def _freeze(step):
    """Stores a step as sorted (key, value) pairs, so recipes are hashable and comparable."""
    return tuple(sorted(step.items()))


RECIPES = {
    r.name: r
    for r in (
        Recipe("none", roi=False, description="plain grayscale copied to three channels"),
        Recipe(
            "equalize",
            channels=([{"op": "clahe"}],) * 3,
            description="ROI crop, CLAHE, copied to three channels (ImageNet-like input)",
        ),
        Recipe(
            "sharpen",
            channels=([{"op": "clahe"}, {"op": "sharpen", "strength": 1.5}],) * 3,
            description="ROI crop, CLAHE, Laplacian sharpening ×1.5, copied to three channels",
        ),
        Recipe(
            "edges",
            channels=([{"op": "clahe"}], [{"op": "clahe"}, {"op": "sobel"}], [{"op": "canny"}]),
            description="ROI crop; channels: CLAHE, Sobel of CLAHE, Canny",
        ),
        Recipe(
            "full",
            channels=(
                [{"op": "clahe"}],
                [{"op": "clahe"}, {"op": "sharpen", "strength": 1.5}],
                [{"op": "clahe"}, {"op": "sobel"}],
            ),
            description="ROI crop; channels: CLAHE, CLAHE + Laplacian ×1.5, Sobel magnitude of CLAHE",
        ),
    )
}
DEFAULT_RECIPE = "equalize"


def get_recipe(name_or_path=DEFAULT_RECIPE):
    """Returns a named recipe, a `Recipe` as is, or one loaded from a JSON file.

    Raises:
        ValueError: for an unknown name or a malformed file, naming the choices or the problem.
    """
    if isinstance(name_or_path, Recipe):
        return name_or_path
    if isinstance(name_or_path, dict):
        return Recipe.from_dict(name_or_path)
    key = str(name_or_path)
    if key in RECIPES:
        return RECIPES[key]
    path = Path(key)
    if path.suffix == ".json" or path.exists():
        if not path.is_file():
            raise ValueError(f"{path}: recipe file does not exist")
        try:  # JSONDecodeError and UnicodeDecodeError are ValueErrors too: the first clause that matches answers
            return Recipe.from_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from exc
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc
    raise ValueError(f"unknown recipe {key!r}; expected one of {', '.join(RECIPES)} or a .json file")
