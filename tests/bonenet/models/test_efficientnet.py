import subprocess
import sys

import keras
import numpy as np
import pytest

from bonenet.models import efficientnet as models
from bonenet.models.efficientnet import (
    Tuning,
    WeightsUnavailableError,
    build_base,
    build_part_model,
    build_router,
    compile_model,
    freeze_last,
    resolve_weights,
    trunk_batch_size,
)

# The last 20 layers of EfficientNetB0, less its 5 BatchNormalization layers.
EXPECTED_TRAINABLE = [
    "block6d_project_conv", "block6d_drop", "block6d_add", "block7a_expand_conv", "block7a_expand_activation",
    "block7a_dwconv", "block7a_activation", "block7a_se_squeeze", "block7a_se_reshape", "block7a_se_reduce",
    "block7a_se_expand", "block7a_se_excite", "block7a_project_conv", "top_conv", "top_activation",
]
SIZE = 32


@pytest.fixture(scope="module")
def router():
    model, trainable = build_router(image_size=SIZE, weights=None)
    return compile_model(model, jit_compile=False), trainable


def test_exactly_the_last_twenty_layers_train_and_batchnorm_is_frozen(router):
    model, trainable = router
    assert trainable == EXPECTED_TRAINABLE
    base_layers = [layer for layer in model.layers if layer.name not in ("avg_pool", "head_dropout", "predictions")]
    assert [layer.name for layer in base_layers if layer.trainable and not isinstance(layer, keras.layers.InputLayer)] \
        == EXPECTED_TRAINABLE
    assert all(not layer.trainable for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization))
    assert model.get_layer("predictions").trainable and model.get_layer("predictions").dtype_policy.name == "float32"
    assert model.output_shape == (None, 7)


def test_a_training_step_moves_trainable_weights_but_not_batchnorm_statistics(router):
    model, _ = router
    bn_stats = {w.path: w.numpy().copy() for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)
                for w in layer.weights}
    frozen = {w.path: w.numpy().copy() for w in model.non_trainable_weights}
    trainable = {w.path: w.numpy().copy() for w in model.trainable_weights}
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (8, SIZE, SIZE, 3)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, 7, 8), 7)
    model.train_on_batch(x, y)
    assert any("moving_mean" in p for p in bn_stats) and any("moving_variance" in p for p in bn_stats)
    for w in model.non_trainable_weights:
        np.testing.assert_array_equal(w.numpy(), frozen[w.path], err_msg=w.path)
    for path, before in bn_stats.items():
        after = next(w for w in model.weights if w.path == path).numpy()
        np.testing.assert_array_equal(after, before, err_msg=path)
    moved = [w.path for w in model.trainable_weights if not np.array_equal(w.numpy(), trainable[w.path])]
    assert any("top_conv" in p for p in moved) and any("predictions" in p for p in moved)


def test_part_model_has_two_classes_and_zero_trainable_layers_leaves_only_the_head():
    model, trainable = build_part_model("XR_WRIST", image_size=SIZE, tuning=Tuning(trainable_layers=0))
    assert model.output_shape == (None, 2) and trainable == []
    assert {w.path.split("/")[0] for w in model.trainable_weights} == {"predictions"}


def test_bad_trainable_layers_is_refused():
    base = build_base(SIZE)
    with pytest.raises(ValueError, match="trainable_layers must be within"):
        freeze_last(base, 10_000)


def test_weights_path_loads_a_saved_backbone(tmp_path):
    base = build_base(SIZE)
    base.get_layer("top_conv").kernel.assign(np.full(base.get_layer("top_conv").kernel.shape, 0.123, "float32"))
    path = tmp_path / "backbone.weights.h5"
    base.save_weights(path)
    (tmp_path / "backbone.json").write_text('{"origin": "pretrained on synthetic data (NOT ImageNet)"}')
    weights, origin = resolve_weights(str(path))
    assert origin["kind"] == "file" and len(origin["sha256"]) == 64
    assert origin["description"] == "pretrained on synthetic data (NOT ImageNet)"
    loaded = build_base(SIZE, weights)
    np.testing.assert_array_equal(loaded.get_layer("top_conv").kernel.numpy(), 0.123 * np.ones_like(
        loaded.get_layer("top_conv").kernel.numpy()))


def test_missing_weights_file_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights file does not exist"):
        resolve_weights(str(tmp_path / "nope.weights.h5"))


def test_imagenet_offline_names_the_cache_file_and_alternatives(monkeypatch, tmp_path):
    monkeypatch.setattr(models, "KERAS_CACHE", tmp_path)
    monkeypatch.setattr(models, "_imagenet_reachable", lambda: False)
    with pytest.raises(WeightsUnavailableError) as info:
        resolve_weights("imagenet")
    message = str(info.value)
    assert str(tmp_path / "efficientnetb0_notop.h5") in message
    assert "--weights radiograph --adapt-epochs 8 --image-size 128" in message  # what to train with offline
    assert "--weights PATH" in message and "--weights none" in message and "\n" not in message


def test_imagenet_offline_cli_fails_with_one_line_naming_the_fix(tmp_path, synthetic_root):
    if models._imagenet_reachable():
        pytest.skip("this machine can reach the ImageNet weights host")
    proc = subprocess.run(  # the timeout guards against a hang; no speed is asserted
        [sys.executable, "run_pipeline.py", "train-router", "--data-root", str(synthetic_root),
         "--models-dir", str(tmp_path / "run"), "--weights", "imagenet"],
        capture_output=True, text=True, env={"KERAS_HOME": str(tmp_path / "keras"), "PATH": "/usr/bin:/bin"},
        timeout=600,
    )
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("bonenet")]
    assert len(lines) == 1 and "efficientnetb0_notop.h5" in lines[0] and "--weights none" in lines[0]


def test_split_model_cuts_at_the_block_boundary_and_recomposes_exactly():
    from bonenet.models.efficientnet import join_model, split_model, trunk_cut

    model, trainable = build_router(image_size=64)
    first, end = trunk_cut(model)
    assert end == "block6c_add"  # the cut of the last 20 falls inside block6d
    trunk, head = split_model(model)
    assert trunk.output.shape[1:] == (2, 2, 192) and len(trunk.outputs) == 1
    assert not trunk.trainable_weights  # everything before the last 20 layers is frozen
    assert {w.path for w in head.trainable_weights} == {w.path for w in model.trainable_weights}
    # The head holds the frozen rest of block6d, then exactly the trainable layers.
    in_head = [layer.name for layer in head.layers if layer.name.startswith(("block6d", "block7a", "top"))]
    assert in_head[:5] == ["block6d_expand_conv", "block6d_expand_bn", "block6d_expand_activation",
                           "block6d_dwconv", "block6d_bn"]
    assert not head.get_layer("block6d_expand_conv").trainable and trainable == EXPECTED_TRAINABLE
    x = np.random.default_rng(0).uniform(0, 255, (3, 64, 64, 3)).astype("float32")
    expected = model.predict(x, verbose=0)
    np.testing.assert_array_equal(head.predict(trunk.predict(x, verbose=0), verbose=0), expected)
    np.testing.assert_array_equal(join_model(trunk, head).predict(x, verbose=0), expected)
    # A cut on a block's first layer keeps the whole previous block; none leaves pooling + softmax.
    assert trunk_cut(model, trainable_layers=16)[1] == "block6d_add"
    assert trunk_cut(model, trainable_layers=0)[1] == "top_activation"
    from bonenet.configs import MAX_TRAINABLE_LAYERS

    first, last = trunk_cut(model, trainable_layers=MAX_TRAINABLE_LAYERS)  # the parser's bound still cuts
    assert first == 2 and last.startswith("normalization")  # Keras numbers the name in a busy process
    with pytest.raises(ValueError, match="no frozen trunk"):
        trunk_cut(model, trainable_layers=236)
    with pytest.raises(ValueError, match="trainable_layers must be within"):
        trunk_cut(model, trainable_layers=10_000)


def test_no_private_keras_internals_in_the_package():
    from pathlib import Path

    source = "".join(p.read_text() for p in Path(models.__file__).parents[1].rglob("*.py"))
    assert "_inbound_nodes" not in source and "_keras_history" not in source


@pytest.mark.parametrize("gpus", [0, 1])
def test_the_trunk_runs_a_few_images_per_call_on_a_cpu_and_the_whole_batch_on_a_gpu(gpus, monkeypatch):
    from bonenet import runtime

    runtime.start()
    monkeypatch.setitem(runtime._STATE, "gpus", gpus)  # whatever this host has
    if gpus:
        assert trunk_batch_size(224) == 32 and trunk_batch_size(512, 8) == 8
    else:  # a CPU-sized budget of pixels per call: 4 images at 224 px, never more than asked, at least one
        assert trunk_batch_size(224) == 4
        assert trunk_batch_size(64) == 32 and trunk_batch_size(64, 8) == 8
        assert trunk_batch_size(512) == 1
