
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import _tmpfs, epoch_logged, kill_cli_when, problems, run_cli

import run_pipeline
from bonenet.configs import EvaluateConfig, TrainConfig
from bonenet.data.pipeline import Feed, Preparation, make_dataset, router_examples
from bonenet.inference.predictor import BoneNet
from bonenet.preprocessing.recipes import get_recipe
from bonenet.run import store
from bonenet.run.manifest import ManifestError, model_filename, read_manifest
from bonenet.training import train
from bonenet.training.train import train_model

REPO = Path(__file__).resolve().parents[3]


def test_training_writes_models_and_manifest(run):
    run_dir, _ = run
    manifest = read_manifest(run_dir)
    assert set(manifest.models) == {"router", "XR_WRIST"}
    assert manifest.format_version == 3
    assert manifest.trunk["file"] == "trunk.keras" and (run_dir / "trunk.keras").is_file()
    assert manifest.trunk["output"] == "block6c_add"
    assert (run_dir / "heads" / "router.keras").is_file() and (run_dir / "heads" / "wrist.keras").is_file()
    assert {m.input for m in manifest.models.values()} == {"trunk"}
    assert not list(run_dir.glob("parts")) and not (run_dir / "router.keras").exists()  # no full copies
    # The router and the wrist head trained on one cache of trunk outputs, computed once.
    assert len(list((run_dir / "cache").glob("features-*"))) == 1
    # Heads are stored without optimizer state: 1.37M trainable plus block6d's 0.34M frozen weights
    # (6.9 MB), not with Adam's two moments per trainable weight (+11 MB).
    assert (run_dir / "heads" / "wrist.keras").stat().st_size < 8e6
    assert manifest.image_size == 64 and manifest.recipe["name"] == "equalize"
    assert manifest.weights["kind"] == "none"
    assert manifest.trainable_layers["count"] == 20 and len(manifest.trainable_layers["trainable"]) == 15
    wrist = manifest.models["XR_WRIST"]
    assert wrist.labels == ["normal", "abnormal"] and wrist.config["learning_rate"] == 1e-4
    assert {"loss", "accuracy", "auc"} <= set(wrist.holdout)
    assert len(pd.read_csv(run_dir / wrist.log)) == 1
    assert (run_dir / "checkpoints" / "wrist" / "tensorboard").is_dir()


def test_reloaded_trunk_and_heads_predict_like_the_trained_models(run, index):
    run_dir, trained = run
    _, trunk, heads = store.load_run_models(run_dir)
    images = index.images[index.images.part == "XR_WRIST"].head(8)
    batch = next(iter(make_dataset(*router_examples(images), 7, Preparation(get_recipe("equalize"), 64), Feed(8))))[0]
    features = trunk.predict(batch, verbose=0)
    for key, model in trained.items():
        np.testing.assert_allclose(heads[key][0].predict(features, verbose=0), model.predict(batch, verbose=0),
                                   atol=1e-6)


def test_models_of_one_run_share_the_trunk_even_with_random_weights(run):
    from bonenet.models.efficientnet import split_model

    _, trained = run
    router_trunk, _ = split_model(trained["router"])
    wrist_trunk, _ = split_model(trained["XR_WRIST"])
    for a, b in zip(router_trunk.weights, wrist_trunk.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_a_models_folder_from_another_recipe_is_refused(run, index):
    run_dir, _ = run
    before = (run_dir / "manifest.json").read_text()
    other = TrainConfig(epochs=1, batch_size=16, image_size=64, weights="none", recipe="full")
    with pytest.raises(ManifestError, match="other settings.*recipe"):
        train_model("hand", index, run_dir, other, verbose=0)
    assert (run_dir / "manifest.json").read_text() == before


@pytest.mark.slow  # two trainings from the command line: about 15 s
def test_cli_train_part_accepts_short_and_canonical_names(synthetic_root, tmp_path):
    code = run_pipeline.main(["train-part", "--part", "XR_ELBOW", "--data-root", str(synthetic_root),
                              "--models-dir", str(tmp_path), "--epochs", "1", "--image-size", "64",
                              "--weights", "none", "--batch-size", "16", "--no-augment"])
    assert code == 0 and (tmp_path / "heads" / "elbow.keras").is_file()
    with pytest.raises(SystemExit) as info:  # argparse refuses it before anything is loaded
        run_pipeline.main(["train-part", "--part", "knee", "--data-root", str(synthetic_root),
                           "--models-dir", str(tmp_path), "--weights", "none"])
    assert info.value.code == 2


MIRRORED = """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import numpy as np, keras
from bonenet.models.efficientnet import build_router, compile_model
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    model, _ = build_router(image_size=32)
    compile_model(model, jit_compile=False)
before = model.get_layer("predictions").kernel.numpy().copy()
rng = np.random.default_rng(0)
x = rng.uniform(0, 255, (32, 32, 32, 3)).astype("float32")
y = keras.utils.to_categorical(rng.integers(0, 7, 32), 7)
ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
history = model.fit(ds, epochs=1, verbose=0)
after = model.get_layer("predictions").kernel.numpy()
print("REPLICAS", strategy.num_replicas_in_sync, "STEPS_OK", np.isfinite(history.history["loss"][0]),
      "MOVED", not np.allclose(before, after))
"""


def test_training_steps_under_mirrored_strategy_on_two_logical_cpus():
    proc = subprocess.run([sys.executable, "-c", MIRRORED], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert "REPLICAS 2 STEPS_OK True MOVED True" in proc.stdout, proc.stderr[-3000:]


@pytest.mark.slow  # a training killed and resumed in subprocesses: about a minute
@pytest.mark.corpus("H13", "A3")
def test_sigkilled_training_resumes_from_the_last_completed_epoch(synthetic_root, tmp_path):
    cmd = [sys.executable, "run_pipeline.py", "train-router", "--data-root", str(synthetic_root),
           "--models-dir", str(tmp_path), "--epochs", "6", "--image-size", "64", "--weights", "none",
           "--batch-size", "8", "--patience", "10"]
    log = tmp_path / "checkpoints" / "router" / "log.csv"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    kill_cli_when(cmd[2:], epoch_logged(log))
    killed_after = len(pd.read_csv(log))
    assert 1 <= killed_after < 6
    assert not (tmp_path / "heads" / "router.keras").exists()

    resumed = subprocess.run(cmd + ["--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from epoch {killed_after}" in resumed.stdout
    epochs = pd.read_csv(log)["epoch"].tolist()
    assert epochs == list(range(len(epochs))) and len(epochs) == 6  # no epoch run twice, none from zero again
    assert read_manifest(tmp_path).models["router"].epochs_run == 6  # the whole run, not the resumed part


def test_train_all_resume_keeps_models_that_had_finished(run, index, tmp_path, caplog):
    import logging

    from bonenet.training.train import train_all

    caplog.set_level(logging.INFO, logger="bonenet")  # what the console shows, whichever test ran before
    run_dir = Path(shutil.copytree(run[0], tmp_path / "run"))
    before = {p: p.read_bytes() for p in run_dir.rglob("*.keras")}
    config = TrainConfig(epochs=1, batch_size=16, image_size=64, weights="none", seed=0)
    entries, failures = train_all(index, run_dir, config, resume=True, verbose=0, parts=["XR_WRIST"])
    assert not failures and set(entries) == {"router", "XR_WRIST"}
    assert entries == read_manifest(run_dir).models
    assert {p: p.read_bytes() for p in run_dir.rglob("*.keras")} == before
    out = caplog.text
    assert "router 1/2" in out and "XR_WRIST 2/2" in out and "already trained in this run, kept" in out


@pytest.mark.slow  # about 25 s; the default run trains full mode in test_reading and in the one-step test below
def test_full_mode_fits_on_live_augmented_images_into_the_same_layout(run, index, tmp_path):
    run_dir = Path(shutil.copytree(run[0], tmp_path / "run"))
    trunk_before = (run_dir / "trunk.keras").read_bytes()
    config = TrainConfig(epochs=1, batch_size=16, image_size=64, weights="none", seed=0, mode="full")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        entry, model = train_model("elbow", index, run_dir, config, verbose=0)
    # Live datasets learn their length at their end; Keras' warning about it is expected, not shown.
    assert not [w for w in caught if "ran out of data" in str(w.message)]
    assert entry.file == "heads/elbow.keras" and entry.config["mode"] == "full"
    assert (run_dir / "trunk.keras").read_bytes() == trunk_before  # the run's trunk is shared, not rewritten
    _, trunk, heads = store.load_run_models(run_dir, ["elbow"])
    images = index.images[index.images.part == "XR_ELBOW"].head(4)
    batch = next(iter(make_dataset(*router_examples(images), 7, Preparation(get_recipe("equalize"), 64), Feed(4))))[0]
    np.testing.assert_allclose(heads["XR_ELBOW"][0].predict(trunk.predict(batch, verbose=0), verbose=0),
                               model.predict(batch, verbose=0), atol=1e-5)


def test_one_step_in_full_and_cached_mode_updates_the_weights_alike():
    """Both modes train the same function: the frozen trunk runs in inference mode in full mode too."""
    import keras

    from bonenet.models.efficientnet import build_part_model, join_model, split_model

    model, _ = build_part_model("XR_WRIST", image_size=64)
    trunk, head = split_model(model)
    # The head's own dropout draws differ between two calls, so it is off here; the trunk's eight
    # stochastic-depth dropout layers keep their rates and must not run in either mode.
    for layer in head.layers:
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0
    assert len([layer for layer in trunk.layers if isinstance(layer, keras.layers.Dropout)]) == 8
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (8, 64, 64, 3)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, 2, 8), 2)
    start = [w.numpy() for w in head.weights]
    # Plain SGD, whose update is proportional to the gradient: Adam's first step moves every weight
    # by about lr × sign(gradient), which turns rounding noise in near-zero gradients into
    # differences of order lr and would compare the optimiser, not the function trained.
    def compiled(m):
        m.compile(keras.optimizers.SGD(0.1), keras.losses.CategoricalCrossentropy(), jit_compile=False)
        return m

    full = compiled(join_model(trunk, head))
    full.train_on_batch(x, y)
    after_full = [w.numpy() for w in head.trainable_weights]
    for w, value in zip(head.weights, start, strict=True):
        w.assign(value)
    cached = compiled(head)
    cached.train_on_batch(trunk.predict(x, verbose=0), y)
    moved = 0
    for a, b, w in zip(after_full, [w.numpy() for w in head.trainable_weights], head.trainable_weights, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, err_msg=w.path)
        moved += not np.allclose(a, start[[v.path for v in head.weights].index(w.path)])
    assert moved


def test_train_part_help_lists_every_training_flag_once_with_trainconfigs_defaults(capsys):
    import dataclasses

    with pytest.raises(SystemExit):
        run_pipeline.main(["train-part", "--help"])
    options = capsys.readouterr().out.split("options:")[1]
    text = " ".join(options.split())
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + ("no-" if field.default is True else "") + field.name.replace("_", "-")
        assert len(re.findall(rf"^  {re.escape(flag)}(?=[ \n])", options, re.MULTILINE)) == 1, flag
        if not isinstance(field.default, bool) and field.default is not None:
            after = re.split(rf"{re.escape(flag)}(?= )", text, maxsplit=1)[1]
            assert f"(default {field.default})" in after.split(" --")[0], flag


@pytest.mark.corpus("A4")
@pytest.mark.slow
def test_train_all_resume_retrains_a_kept_head_that_no_longer_loads(run, index, tmp_path, caplog):
    from bonenet.training.train import train_all

    caplog.set_level(logging.WARNING, logger="bonenet")  # the record itself, whichever console a test set up before

    run_dir = Path(shutil.copytree(run[0], tmp_path / "run"))
    head = run_dir / model_filename("XR_WRIST")
    head.write_bytes(head.read_bytes()[:1000])  # a truncated head
    config = TrainConfig(epochs=1, batch_size=16, image_size=64, weights="none", seed=0)
    entries, failures = train_all(index, run_dir, config, resume=True, verbose=0, parts=["XR_WRIST"])
    assert not failures and any(m.startswith("XR_WRIST: ") and m.endswith("training it again")
                                for m in caplog.messages)
    assert store.load_model(head) is not None


@pytest.mark.slow  # two trainings compared bit for bit: about a minute
def test_a_rerun_into_the_same_folder_repeats_the_first_run_exactly(index, tmp_path):
    """The same command twice into one folder, the second time with the trunk and the feature cache
    already there, gives the same models and the same study predictions, to the bit."""
    from bonenet.evaluation.evaluate import evaluate_run
    from bonenet.training.train import train_all

    config = TrainConfig(epochs=2, batch_size=16, image_size=32, weights="none", seed=5, views=1)
    outputs = []
    for attempt in range(2):
        entries, failures = train_all(index, tmp_path / "run", config, verbose=0, parts=["XR_WRIST"])
        assert not failures and set(entries) == {"router", "XR_WRIST"}
        evaluate_run(index.root, tmp_path / "run", tmp_path / f"eval{attempt}",
                     EvaluateConfig(bootstrap=10, plots=False, gallery=0))
        outputs.append((tmp_path / f"eval{attempt}" / "study_predictions.csv").read_bytes())
        if attempt == 0:
            assert len(list((tmp_path / "run" / "cache").glob("features-*"))) == 1
    assert outputs[0] == outputs[1]


@pytest.mark.slow  # a minute and a half: two whole EfficientNetB0s trained, evaluated and read
def test_trainable_layers_all_fine_tunes_the_whole_network_in_full_mode_and_evaluates_and_predicts(synthetic_root,
                                                                                                   tmp_path, capsys):
    run = tmp_path / "run"
    common = ["--data-root", synthetic_root, "--models-dir", run, "--weights", "none", "--image-size", "32",
              "--epochs", "1", "--batch-size", "16", "--trainable-layers", "all", "--train-batchnorm"]
    assert run_pipeline.main(["train-router", *common]) == 0
    assert run_pipeline.main(["train-part", "--part", "wrist", *common]) == 0
    err = capsys.readouterr().err
    assert "adapt the trunk on this collection first" not in err  # said only for a frozen trunk
    assert "--trainable-layers all: the whole network fine-tunes in full mode" in err
    manifest = read_manifest(run)
    assert manifest.trainable_layers["count"] == 234 and manifest.trunk["output"].startswith("normalization")
    trainable = manifest.trainable_layers["trainable"]
    assert "stem_conv" in trainable and "stem_bn" in trainable and "top_bn" in trainable  # BatchNorm adapts too
    assert manifest.models["XR_WRIST"].config["mode"] == "full"
    assert not (run / "cache").exists()  # no trunk-feature cache: the trunk is only the input scaling
    assert run_pipeline.main(["evaluate", "--data-root", synthetic_root, "--models-dir", run, "--out",
                              tmp_path / "eval", "--bootstrap", "10"]) == 0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["study"]["XR_WRIST"]["n"] > 0
    image = next((synthetic_root / "valid" / "XR_WRIST").rglob("*.png"))
    assert run_pipeline.main(["predict", image, "--models-dir", run, "--json", tmp_path / "p.json"]) == 0
    assert 0 <= json.loads((tmp_path / "p.json").read_text())[0]["p_abnormal"] <= 1


@pytest.mark.slow  # a training from the command line: about 15 s
def test_the_last_20_default_on_a_backbone_not_imagenet_pretrained_says_to_adapt_the_trunk(synthetic_root, tmp_path,
                                                                                            capsys):
    code = run_pipeline.main(["train-part", "--part", "wrist", "--data-root", synthetic_root, "--models-dir",
                              tmp_path / "run", "--weights", "none", "--image-size", "32", "--epochs", "1",
                              "--trainable-layers", "20", "--batch-size", "16"])
    assert code == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "adapt the trunk on this collection" in line]
    assert len(notes) == 1 and "not ImageNet-pretrained (random initialisation)" in notes[0]
    assert "--weights radiograph --adapt-epochs 8 --image-size 128" in notes[0]


@pytest.mark.corpus("S4")
@pytest.mark.slow
def test_two_trainings_with_different_seeds_into_one_empty_folder_leave_one_trunk(index, tmp_path, monkeypatch):
    run_dir = tmp_path / "both"
    late = TrainConfig(epochs=1, batch_size=16, image_size=64, weights="none", seed=1)
    build = train._build

    def other_training_finishes_meanwhile(job, seed, first=None):
        # The late training builds while the folder is still empty, so it builds its own trunk…
        built = build(job, seed, first)
        assert built[0].run_trunk is None
        monkeypatch.setattr(train, "_build", build)
        # …and the first finishes meanwhile, writing its trunk with seed 0.
        train.train_model("router", index, run_dir, TrainConfig(epochs=1, batch_size=16, image_size=64,
                                                                weights="none", seed=0), verbose=0)
        return built

    monkeypatch.setattr(train, "_build", other_training_finishes_meanwhile)
    with pytest.raises(ValueError, match=r"trunk\.keras: another training wrote this run's trunk"):
        train.train_model("wrist", index, run_dir, late, verbose=0)
    manifest = read_manifest(run_dir)
    assert list(manifest.models) == ["router"]  # the late head was not listed
    net = BoneNet.load(run_dir)  # and the run is consistent: one trunk, every listed head trained on it
    assert net.manifest.models["router"].trunk_sha256 == manifest.trunk["sha256_weights"]


@pytest.mark.corpus("M6", "A3")
@pytest.mark.slow
def test_a_kill_during_the_final_save_resumes_without_retraining(index, tmp_path, monkeypatch):
    from bonenet.configs import TrainConfig
    from bonenet.training import train

    config = TrainConfig(epochs=2, batch_size=16, image_size=64, weights="none", seed=0)
    real_save = train.save_model_atomic

    def killed(model, path):
        raise KeyboardInterrupt("killed during the save")  # stands in for SIGKILL at this point

    monkeypatch.setattr(train, "save_model_atomic", killed)
    with pytest.raises(KeyboardInterrupt):
        train.train_model("router", index, tmp_path, config, verbose=0)
    backup = train.checkpoint_dir(tmp_path, "router") / "backup"
    assert backup.is_dir()  # Keras' backup survives the end of training until the model is saved
    monkeypatch.setattr(train, "save_model_atomic", real_save)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        entry, _ = train.train_model("router", index, tmp_path, config, resume=True, verbose=0)
    assert not [w for w in caught if "Skipping variable loading" in str(w.message)]  # the best file loads whole
    log = (train.checkpoint_dir(tmp_path, "router") / "log.csv").read_text().splitlines()
    assert len(log) == 1 + 2 and entry.epochs_run == 2  # the two epochs once, none again
    assert not backup.exists()  # saved and listed: nothing left to resume


@pytest.mark.corpus("M4")
def test_another_trainable_layers_count_is_refused_naming_the_setting(run, synthetic_root, tmp_path, capsys):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(run[0], run_dir, ignore=shutil.ignore_patterns("checkpoints"))
    code, err = run_cli(["train-part", "--part", "elbow", "--data-root", synthetic_root, "--models-dir", run_dir,
                      "--image-size", "64", "--weights", "none", "--trainable-layers", "30"], capsys)
    assert code == 2 and len(err) == 1
    assert "trainable_layers: folder has 20, this model 30" in err[0] and str(run_dir) in err[0]


@pytest.mark.corpus("T2")
def test_training_into_a_nearly_full_disk_is_refused_before_it_starts_and_keeps_the_old_head(run, synthetic_root,
                                                                                                tmp_path, capsys):
    disk = tmp_path / "disk"
    disk.mkdir()
    _tmpfs(disk, "size=40m")
    try:
        run_dir = shutil.copytree(run[0], disk / "run", ignore=shutil.ignore_patterns("checkpoints", "cache"))
        head = (run_dir / "heads" / "wrist.keras").read_bytes()
        (disk / "fill").write_bytes(bytes(shutil.disk_usage(disk).free - 2_000_000))
        code, err = run_cli(["train-part", "--part", "wrist", "--data-root", synthetic_root, "--models-dir", run_dir,
                          "--image-size", 64, "--weights", "none", "--epochs", 1, "--cache-dir", tmp_path / "cache"],
                         capsys)
        err = problems(err)
        assert code == 2 and len(err) == 1 and err[0].startswith(f"bonenet train-part: error: {run_dir}: 2.")
        assert "MB free, training XR_WRIST (model files and checkpoints) needs about" in err[0]
        assert (run_dir / "heads" / "wrist.keras").read_bytes() == head
        assert sorted(p.name for p in run_dir.iterdir()) == [".lock", "MODEL_CARD.md", "heads", "manifest.json",
                                                             "model_card.json", "trunk.keras"]
    finally:
        subprocess.run(["umount", str(disk)], check=False)


@pytest.mark.corpus("H15")
@pytest.mark.slow
def test_two_trainings_started_together_with_the_same_seed_make_one_consistent_run(synthetic_root, tmp_path):
    run_dir = tmp_path / "run"
    common = ["--data-root", synthetic_root, "--models-dir", run_dir, "--image-size", 64, "--weights", "none",
              "--epochs", 1, "--batch-size", 16, "--seed", 0]
    procs = [subprocess.Popen([sys.executable, "run_pipeline.py", *map(str, command + common)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for command in (["train-router"], ["train-part", "--part", "wrist"])]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0 and "Traceback" not in err, err[-3000:]
    from bonenet.run.manifest import read_manifest
    from bonenet.run.store import load_run_models

    _, trunk, heads = load_run_models(run_dir)  # checks every head's trunk digest against the trunk
    assert set(heads) == {"router", "XR_WRIST"} and set(read_manifest(run_dir).models) == {"router", "XR_WRIST"}


@pytest.mark.slow  # trains twice, as the other interrupt-and-resume tests: about 20 s
@pytest.mark.corpus("R2")
def test_ctrl_c_during_training_is_one_line_and_the_run_resumes(synthetic_root, tmp_path):
    import signal
    import time

    run = tmp_path / "run"
    # Far more epochs than the interrupt waits for: a cached head's epoch takes milliseconds on a fast CPU, and
    # a run that ends before the signal arrives exits 0.
    settings = ["train-part", "--part", "wrist", "--data-root", synthetic_root, "--models-dir", run, "--weights",
                "none", "--image-size", "32", "--batch-size", "8", "--patience", "5000"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen([sys.executable, "run_pipeline.py", *map(str, settings), "--epochs", "5000"], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = run / "checkpoints" / "wrist" / "log.csv"
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None and not (
            log.is_file() and len(log.read_text().strip().splitlines()) >= 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err and "KeyboardInterrupt" not in err, err[-2000:]
    assert err.strip().splitlines()[-1] == ("bonenet train-part: interrupted (training keeps its last completed "
                                            "epoch: run the same command with --resume)")
    # The same settings with the epochs already done: the run resumes and stops at once.
    done = len(log.read_text().strip().splitlines()) - 1
    resumed = subprocess.run([sys.executable, "run_pipeline.py", *map(str, settings), "--epochs", str(done),
                              "--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-2000:]


def test_each_model_is_calibrated_on_its_hold_out_or_says_why_not(run, index):
    from bonenet.scoring.calibration import fit_temperature
    from bonenet.training.holdout import calibrate_on_holdout
    from bonenet.training.job import prepare_job

    manifest = read_manifest(run[0])
    router = manifest.models["router"]
    assert router.calibration["method"] == "temperature" and router.calibration["unit"] == "images"
    assert router.calibration["n"] == router.dataset["holdout_images"]  # every hold-out image was read
    cal = router.calibration  # kept only when the hold-out is big enough and it lowers the cross-validated NLL
    if "cv_nll_after" in cal:  # a hold-out big enough to decide on: the cross-validated NLL decides
        assert (cal["temperature"] is not None) == (cal["cv_nll_after"] < cal["cv_nll_before"]), cal
        assert cal["temperature"] is not None or "did not lower the cross-validated hold-out NLL" in cal["reason"]
    else:
        assert cal["temperature"] is None and "a temperature needs two classes" in cal["reason"], cal
    wrist = manifest.models["XR_WRIST"].calibration  # the session's wrist hold-out: 2 studies of one class
    assert wrist["temperature"] is None and "a temperature needs two classes and at least 10" in wrist["reason"]
    # A part model is fitted on its hold-out studies' mean p(abnormal), the number the study rule decides on.
    job = prepare_job("wrist", index, run[0], TrainConfig(image_size=64, weights="none", holdout_fraction=0.5))
    ex = job.examples
    probs = np.random.default_rng(0).random((len(ex.val_paths), 2))
    fitted = calibrate_on_holdout(probs, ex.val_paths, ex)
    rows = ex.val_images.set_index("path").loc[ex.val_paths]
    studies = rows["study"].to_numpy()
    assert fitted == fit_temperature(probs[:, 1], ex.val_labels, groups=studies, clusters=rows["patient"].to_numpy())
    assert f"has {len(set(studies))} studies" in fitted.get("reason", f"has {fitted.get('n')} studies")
