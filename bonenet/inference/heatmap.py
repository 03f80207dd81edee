"""The one heat map every output draws: Grad-CAM of the routed part's model on one image, mapped onto the
original image, with its box and caption (`predict --cam-dir`, `serve`, the report's galleries)."""

from bonenet.configs import HEAT_MAP
from bonenet.inference import gradcam
from bonenet.parts import short_name
from bonenet.run import provenance
from bonenet.scoring.localisation import heat_map_note


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
    return {key: gradcam.to_original(m[0], layout, gray.shape) for key, m in maps.items()}


def part_cam(net, part, gray, prepared=None):
    """The heat map of `part`'s abnormal class for one image (`part_cams`), at the layer, by the method and
    kept to the foreground as `bonenet.configs.HEAT_MAP` says.

    Returns:
        (float32 H×W map in [0, 1], box [x0, y0, x1, y1] or None).
    """
    chosen = HEAT_MAP["layer"], HEAT_MAP["method"]
    cam = part_cams(net, part, gray, [chosen[0]], [chosen[1]], prepared)[chosen]
    cam = gradcam.keep_foreground(cam, gray) if HEAT_MAP["foreground"] else cam
    return cam, gradcam.cam_box(cam)


def heat_map(net, part, gray, result, header=(), prepared=None):
    """The heat map of one image as every output draws it: `part_cam` over the image, boxed and captioned.

    A normal image gets a faint map and no box (its hottest region is not a finding). The caption
    holds `header` lines, the run's caveat, what the map may claim, then the routed part and the decision,
    last, in its colour.

    Args:
        gray: the original uint8 image.
        result: the image's result: "part_confidence", "p_abnormal", "threshold", "abnormal", and
            "whose" naming the p(abnormal) where a reader could take it for another.
        prepared: the image as prepared for scoring, when the caller kept it.

    Returns:
        (overlay BGR image, box [x0, y0, x1, y1] or None, caption lines).
    """
    cam, box = part_cam(net, part, gray, prepared)
    abnormal = bool(result["abnormal"])
    box = box if abnormal else None
    caveat = provenance.caveat(net.manifest)
    lines = [*header, *([caveat] if caveat else []), heat_map_note(net.manifest, part),
             *gradcam.caption(short_name(part), result["part_confidence"], result["p_abnormal"],
                              result["threshold"], abnormal, result.get("whose", ""))]
    return gradcam.overlay(gray, cam, abnormal, box, lines), box, lines
