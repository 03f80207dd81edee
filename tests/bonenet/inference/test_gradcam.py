"""Grad-CAM (`bonenet.inference.gradcam`): maps of the abnormal class, mapped back onto the original image."""

import numpy as np

from bonenet.data.decode import load_gray
from bonenet.inference import gradcam
from bonenet.preprocessing.recipes import to_original


def test_grad_cam_is_non_negative_image_sized_and_maps_back(net, wrist_study):
    gray = load_gray(wrist_study[0])
    x = net.prepare(gray)[None]
    # The two classes' log-odds are each other's negatives, so one of them has positive evidence somewhere.
    cams = [gradcam.grad_cam(net.trunk, net.members["XR_WRIST"], x, class_index=c) for c in (0, 1)]
    cam = max(cams, key=lambda m: m.max())
    assert cam.shape == (1, net.image_size, net.image_size) and cam.dtype == np.float32
    assert cam.min() >= 0 and cam.max() == 1  # scaled to its own maximum
    full = to_original(cam[0], net.recipe.layout(gray, net.image_size), gray.shape)
    assert full.shape == gray.shape and full.min() >= 0 and full.max() > 0
    x0, y0, x1, y1 = gradcam.cam_box(full)
    assert 0 <= x0 < x1 <= gray.shape[1] and 0 <= y0 < y1 <= gray.shape[0]


def test_cam_box_is_the_largest_region_above_twenty_percent():
    cam = np.zeros((50, 60), np.float32)
    cam[10:20, 5:15] = 1.0  # largest region
    cam[40:43, 50:53] = 0.9  # smaller one
    cam[30, 30] = 0.1  # below 20% of the peak
    assert gradcam.cam_box(cam) == [5, 10, 15, 20]
    assert gradcam.cam_box(np.zeros((5, 5))) is None


def test_the_layers_are_found_by_name_whatever_else_the_model_ends_with(net, wrist_study):
    """A head whose last layer is not its classifier explains the same: Grad-CAM reads the classifier by name,
    never `model.output` (here the classes' order reversed, which would explain the other class)."""
    import keras

    head = net.members["XR_WRIST"][0]
    x = net.prepare(wrist_study[0])[None]
    reversed_classes = keras.layers.Lambda(lambda t: keras.ops.flip(t, axis=-1), name="after")
    wrapped = keras.Model(head.inputs[0], reversed_classes(head.outputs[0]), name="wrapped")
    np.testing.assert_allclose(gradcam.grad_cam(net.trunk, [wrapped], x), gradcam.grad_cam(net.trunk, [head], x),
                               atol=1e-6)


def test_the_foreground_keeps_the_anatomy_and_drops_the_film():
    gray = np.full((200, 100), 10, np.uint8)
    gray[50:150, 30:70] = 200  # a bone on dark film
    keep = gradcam.foreground(gray)
    assert keep[50:150, 30:70].all() and not keep[:20].any() and not keep[:, :15].any()


    cam = np.ones((200, 100), np.float32)
    kept = gradcam.keep_foreground(cam, gray)
    assert kept.max() == 1 and kept[:20].max() == 0 and kept[100, 50] == 1


def test_overlay_and_caption_say_the_decision():
    gray = np.full((40, 60), 100, np.uint8)
    cam = np.zeros((40, 60), np.float32)
    cam[10:20, 10:30] = 1.0
    lines = gradcam.caption("wrist", 0.9, 0.7, 0.5, True)
    assert any("ABNORMAL" in line.upper() for line in lines) and any("0.70" in line for line in lines)
    drawn = gradcam.overlay(gray, cam, True, [[10, 10, 30, 20]], lines)
    plain = gradcam.overlay(gray, np.zeros_like(cam), False)
    # Beside the radiograph: a 4-pixel gap, the colour bar (12 px at this width) and its 40-pixel margin.
    assert plain.shape == (40, 60 + 4 + 12 + 40, 3) and drawn.shape[1] == plain.shape[1]
    assert drawn.shape[0] > 40 and drawn.dtype == np.uint8  # the caption band sits above the radiograph
    np.testing.assert_array_equal(plain[:, :60], np.full((40, 60, 3), 100, np.uint8))  # no heat: the plain image
    assert not np.array_equal(drawn[-40:, :60], plain[:, :60])  # the heat and the box change it


def _lesion_model(layer_name):
    """A trunk whose layer `layer_name` (8×8) is the image's brightness, and a head whose abnormal logit is
    that layer's mean: a model that calls an image abnormal for a bright spot, and for nothing else."""
    import keras

    image = keras.Input((32, 32, 3))
    pooled = keras.layers.AveragePooling2D(4)(image)
    seen = keras.layers.Conv2D(1, 1, use_bias=False, kernel_initializer=keras.initializers.Constant(1 / 765),
                               name=layer_name)(pooled)
    trunk = keras.Model(image, seen, name="trunk")
    features = keras.Input((8, 8, 1))
    dense = keras.layers.Dense(2, activation="softmax", name="predictions",
                               kernel_initializer=keras.initializers.Constant([[-4.0, 4.0]]))
    head = keras.Model(features, dense(keras.layers.GlobalAveragePooling2D()(features)), name="part_xr_wrist_head")
    return trunk, head


def test_the_chosen_heat_map_puts_its_maximum_on_a_known_lesion():
    """The heat map every output draws (`HEAT_MAP`: its layer, its method, kept to the foreground or not) on a
    radiograph whose only finding is a bright square inside a bone: the maximum lies on it. A uniform map, or
    one kept to the foreground only, would put it at the bone's first pixel, far from the lesion."""
    from bonenet.configs import HEAT_MAP

    trunk, head = _lesion_model(HEAT_MAP["layer"])
    gray = np.zeros((32, 32), np.uint8)
    gray[2:30, 2:30] = 120  # the bone, on black film
    gray[16:24, 14:22] = 255  # the lesion
    image = np.repeat(gray[None, ..., None].astype(np.float32), 3, axis=-1)
    for heads in ([head], [head, head]):  # one model, and an ensemble of it
        cam = gradcam.grad_cam(trunk, heads, image, layer_name=HEAT_MAP["layer"], method=HEAT_MAP["method"])[0]
        cam = gradcam.keep_foreground(cam, gray) if HEAT_MAP["foreground"] else cam
        y, x = np.unravel_index(np.argmax(cam), cam.shape)
        assert 16 <= y < 24 and 14 <= x < 22, (y, x)
    uniform = gradcam.keep_foreground(np.ones((32, 32), np.float32), gray)
    y, x = np.unravel_index(np.argmax(uniform), uniform.shape)
    assert not (16 <= y < 24 and 14 <= x < 22)  # what the assertion above tells apart
