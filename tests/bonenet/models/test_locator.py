"""The fracture locator's model (`bonenet.models.locator`) and the shipped file."""

import numpy as np
import pytest

from bonenet.models import locator as loc
from bonenet.models.backbones import provenance_path


def test_the_locator_gives_one_logit_per_8x8_pixels_and_its_trunk_stays_frozen():
    model = loc.build_locator(64)
    assert model.output.shape[1:] == (8, 8)
    trunk = model.get_layer("locator_trunk")
    assert not trunk.trainable and [t.shape[1] for t in trunk.outputs] == [8, 4, 4]
    assert model.get_layer("locator_head").trainable_weights


def test_the_locator_reads_the_whole_film_letterboxed():
    gray = np.zeros((100, 50), np.uint8)
    gray[:, :5] = 255  # bright at the film's edge: a crop to the anatomy would cut it
    x, layout = loc.locator_input(gray, 64)
    assert x.shape == (64, 64, 3) and x.dtype == np.float32
    assert layout["box"] == (0, 100, 0, 50) and layout["resized"] == (64, 32) and layout["offset"] == (0, 16)
    assert x[:, 16:18].mean() > 200  # the bright edge is in the input


def test_a_locator_maps_back_onto_the_original_film_and_cuts_boxes_at_its_threshold():
    model = loc.build_locator(64)
    locator = loc.Locator(model, threshold=0.3)
    gray = np.random.default_rng(0).integers(0, 255, (90, 120), dtype=np.uint8)
    (prob,) = locator.maps([gray])
    assert prob.shape == (90, 120) and prob.dtype == np.float32
    assert 0 <= prob.min() and prob.max() < 0.2  # an untrained head starts near its 2% prior
    assert locator.threshold == 0.3 and "not validated" in locator.note()


def test_a_locator_file_needs_its_provenance(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such locator file"):
        loc.Locator.load(tmp_path / "x.weights.h5")
    (tmp_path / "x.weights.h5").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="x.json: a locator's provenance JSON"):
        loc.Locator.load(tmp_path / "x.weights.h5")


def test_the_shipped_locator_matches_its_provenance_and_says_what_it_measured():
    path, provenance = loc.shipped_locator()
    assert path == loc.SHIPPED_LOCATOR and provenance_path(path).is_file()
    for key in ("command", "sources", "config", "threshold", "held_out", "sha256", "images"):
        assert key in provenance, key
    assert provenance["sources"][0]["licence"].startswith("CC BY 4.0")
    assert provenance["sources"][0]["root"] == "fracatlas" and "--out fracture_locator_320.weights.h5" in provenance["command"]
    note = loc.Locator.load().note()
    game = provenance["held_out"]["all"]["pointing"]
    assert f"{100 * game['hit']:.0f}% of {game['images']} held-out FracAtlas films" in note
    assert (loc.ASSETS / "fracture_locator_320.NOTICE.md").is_file()



def test_the_locator_computes_in_float32_under_a_mixed_policy():
    from bonenet.runtime import precision_scope

    gray = np.random.default_rng(1).integers(0, 255, (70, 90), dtype=np.uint8)
    plain = loc.build_locator(64, seed=3)
    with precision_scope("mixed_bfloat16"):
        mixed = loc.build_locator(64, seed=3)
    assert {layer.dtype_policy.name for layer in mixed.get_layer("locator_trunk").layers} == {"float32"}
    mixed.set_weights(plain.get_weights())
    np.testing.assert_array_equal(loc.Locator(mixed).maps([gray])[0], loc.Locator(plain).maps([gray])[0])
