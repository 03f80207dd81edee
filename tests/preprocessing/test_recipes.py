import json

import numpy as np
import pytest

from bonenet.data.decode import load_gray
from bonenet.preprocessing.recipes import DEFAULT_RECIPE, RECIPES, Recipe, get_recipe


@pytest.fixture(scope="module")
def radiograph(synthetic_root):
    path = next(iter(sorted((synthetic_root / "train" / "XR_HAND").rglob("*.png"))))
    return load_gray(path)


@pytest.mark.parametrize("name", ["none", "equalize", "sharpen", "edges", "full"])
def test_named_recipes_make_a_square_three_channel_uint8_input(name, radiograph):
    out = get_recipe(name).apply(radiograph, 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8


def test_none_recipe_is_gray_times_three(radiograph):
    out = get_recipe("none").apply(radiograph, 64)
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 0], out[..., 2])


def test_full_recipe_channels_differ(radiograph):
    out = get_recipe("full").apply(radiograph, 64)
    assert not np.array_equal(out[..., 0], out[..., 2])


@pytest.mark.parametrize("name", list(RECIPES))
def test_recipe_round_trips_through_json_to_identical_output(name, radiograph, tmp_path):
    recipe = get_recipe(name)
    path = tmp_path / "recipe.json"
    path.write_text(recipe.to_json())
    again = get_recipe(str(path))
    assert again == recipe and again.to_json() == recipe.to_json()
    assert np.array_equal(again.apply(radiograph, 48), recipe.apply(radiograph, 48))


def test_custom_recipe_from_json_file(tmp_path, radiograph):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"name": "mine", "roi": False, "channels": [[{"op": "canny", "sigma": 0.2}], [], [{"op": "sharpen", "strength": 3.0}]]}))
    recipe = get_recipe(str(path))
    assert recipe.name == "mine" and recipe.apply(radiograph, 40).shape == (40, 40, 3)


@pytest.mark.parametrize(
    "data,message",
    [
        ({"name": "x", "channels": [[{"op": "blur"}], [], []]}, "unknown recipe op 'blur'"),
        ({"name": "x", "channels": [[{"op": "sharpen", "amount": 2}], [], []]}, "bad parameters"),
        ({"name": "x", "channels": [[], []]}, "3 channels"),
        ({"name": "x", "channels": [[], [], []], "colour": 1}, "unknown recipe keys"),
    ],
)
def test_malformed_recipes_are_refused(data, message):
    with pytest.raises(ValueError, match=message):
        Recipe.from_dict(data)


def test_unknown_name_and_missing_file_are_refused(tmp_path):
    with pytest.raises(ValueError, match="expected one of none, equalize"):
        get_recipe("fancy")
    with pytest.raises(ValueError, match="does not exist"):
        get_recipe(str(tmp_path / "nope.json"))
    assert get_recipe() is RECIPES[DEFAULT_RECIPE]
