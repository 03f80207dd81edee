"""The one heat map every output draws (`predict --cam-dir`, `serve`, the report's galleries), with its boxes
and caption.

Two maps, chosen by the run's `BoneNet.explain`:
- `locator` (the default): the fracture locator's probability map (`bonenet.models.locator`), learned from
  FracAtlas' outlined fractures, and its boxes: every connected region at or above its threshold, in the
  original image's pixels. It says where a fracture is likely, whatever the part model decided; a
  normal-called image gets boxes only where the locator finds a region, and its caption says so.
- `gradcam`: Grad-CAM of the routed part's model (`part_cam`), the explanation of the decision, labelled as
  such; its box (the hottest region) is drawn for an abnormal call only.
"""

import functools

from bonenet.configs import HEAT_MAP
from bonenet.inference import gradcam
from bonenet.models.locator import Locator
from bonenet.parts import short_name
from bonenet.preprocessing.recipes import to_original
from bonenet.run import provenance
from bonenet.scoring.detection import map_boxes
from bonenet.scoring.localisation import heat_map_note

EXPLAIN_CHOICES = ("locator", "gradcam")
GRADCAM_LABEL = "Grad-CAM of the part model: where its decision looked, not a fracture finder"


@functools.cache
def shipped_locator():
    """The shipped fracture locator, loaded once per process (`Locator.load`)."""
    return Locator.load()


def locator_of(net):
    """The locator `net` draws: its own (`BoneNet.locator`), or the shipped one."""
    return net.locator or shipped_locator()


def part_cams(net, part, gray, layers, methods, prepared=None):
    """Heat maps of `part`'s abnormal class for one image at each layer by each method, on its original
    H×W grayscale: {(layer, method): map} (the benchmark's candidates; `part_cam` draws the chosen one).

    Computed on the image as prepared for scoring (`prepared`, the S×S×3 input `net.prepare(gray)` gives,
    reused when the caller has it), without test-time views, through the trunk and every member of the
    part's model (`bonenet.inference.gradcam.heat_maps`: the ensemble's own score).
    """
    x = net.prepare(gray) if prepared is None else prepared
    maps = gradcam.heat_maps(net.trunk, net.members[part], x[None], layers, methods)
    layout = net.recipe.layout(gray, net.image_size)
    return {key: to_original(m[0], layout, gray.shape) for key, m in maps.items()}


def part_cam(net, part, gray, prepared=None):
    """The Grad-CAM of `part`'s abnormal class for one image (`part_cams`), at the layer, by the method and
    kept to the foreground as `bonenet.configs.HEAT_MAP` says.

    Returns:
        (float32 H×W map in [0, 1], box [x0, y0, x1, y1] or None).
    """
    chosen = HEAT_MAP["layer"], HEAT_MAP["method"]
    cam = part_cams(net, part, gray, [chosen[0]], [chosen[1]], prepared)[chosen]
    cam = gradcam.keep_foreground(cam, gray) if HEAT_MAP["foreground"] else cam
    return cam, gradcam.cam_box(cam)


def fracture_map(gray, locator=None):
    """The locator's map of one image and its boxes: (float32 H×W probabilities, [{"box": [x0, y0, x1, y1],
    "score"}] in the image's pixels, highest first). `locator` defaults to the shipped one."""
    locator = locator or shipped_locator()
    prob = locator.maps([gray])[0]
    return prob, map_boxes(prob, locator.threshold)


def map_note(net, part):
    """What `net`'s heat maps of `part` are and may claim, in one line: the locator's measured hit rate, or
    Grad-CAM's note (`bonenet.scoring.localisation.heat_map_note`). Each entry's `heat_map_note`."""
    if net.explain == "gradcam":
        return f"Grad-CAM: {heat_map_note(net.manifest, part)}"
    return locator_of(net).note()


def heat_map(net, part, gray, result, header=(), prepared=None):
    """The heat map of one image as every output draws it, boxed and captioned (see the module's doc).

    The caption holds `header` lines, the run's caveat, what the map is and what it may claim, then the
    routed part and the decision, last, in its colour.

    Args:
        gray: the original uint8 image.
        result: the image's result: "part_confidence", "p_abnormal", "threshold", "abnormal", and
            "whose" naming the p(abnormal) where a reader could take it for another.
        prepared: the image as prepared for scoring, when the caller kept it (Grad-CAM reuses it).

    Returns:
        (overlay BGR image, boxes [{"box": [x0, y0, x1, y1], "score"}] in the image's pixels, caption lines).
    """
    abnormal = bool(result["abnormal"])
    if net.explain == "gradcam":
        cam, box = part_cam(net, part, gray, prepared)
        boxes = [{"box": box, "score": None}] if abnormal and box is not None else []
        claim = [GRADCAM_LABEL, heat_map_note(net.manifest, part)]
    else:
        locator = locator_of(net)
        cam, boxes = fracture_map(gray, locator)
        claim = [locator.note(), _boxes_line(boxes, abnormal, locator.threshold)]
    caveat = provenance.caveat(net.manifest)
    lines = [*header, *([caveat] if caveat else []), *claim,
             *gradcam.caption(short_name(part), result["part_confidence"], result["p_abnormal"],
                              result["threshold"], abnormal, result.get("whose", ""))]
    top = "max" if net.explain == "gradcam" else "p=1"  # Grad-CAM has no unit; the locator's map is a probability
    return gradcam.overlay(gray, cam, abnormal, [b["box"] for b in boxes], lines, top), boxes, lines


def _boxes_line(boxes, abnormal, threshold):
    if not boxes:
        return f"no region reaches the locator's threshold p(fracture) {threshold:.2f}: no box"
    found = f"{len(boxes)} region(s) at p(fracture) >= {threshold:.2f}, peak {boxes[0]['score']:.2f}"
    return found if abnormal else f"{found}, although the image was called normal"
