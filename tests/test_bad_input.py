"""Bad input and faults through the command line: one line naming the file and the problem, exit 2
(or 1 for predict's per-input errors), no traceback, nothing half-written."""

import json
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

import run_pipeline


@pytest.fixture(scope="module")
def read_only(tmp_path_factory):
    """A real read-only mount (tmpfs, ro); skipped where this process may not mount."""
    where = tmp_path_factory.mktemp("ro")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(where)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {proc.stderr.decode().strip()}")
    yield where
    subprocess.run(["umount", str(where)], check=False)


def _run(args, capsys):
    code = run_pipeline.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.err.strip().splitlines()


@pytest.mark.parametrize("command", [
    ["make-synthetic", "--out", "{ro}/data"],
    ["data-summary", "--data-root", "{data}", "--json", "{ro}/summary.json"],
    ["preprocess", "{image}", "--out", "{ro}/panel.png"],
    ["train-part", "--part", "wrist", "--data-root", "{data}", "--models-dir", "{ro}/run"],
    ["evaluate", "--data-root", "{data}", "--models-dir", "{run}", "--out", "{ro}/eval"],
    ["report", "--eval-dir", "{ro}", "--out", "{ro}/reports"],
    ["predict", "{image}", "--models-dir", "{run}", "--json", "{ro}/p.json"],
    ["predict", "{image}", "--models-dir", "{run}", "--cam-dir", "{ro}/cams"],
    ["predict", "{image}", "--models-dir", "{run}", "--csv", "{ro}/p.csv"],
])
def test_an_unwritable_output_fails_at_once_in_one_line(command, read_only, synthetic_root, run, index, capsys):
    image = index.images.path.iloc[0]
    args = [a.format(ro=read_only, data=synthetic_root, run=run[0], image=image) for a in command]
    code, err = _run(args, capsys)
    assert code == 2 and len(err) == 1, err
    assert "cannot write here (Read-only file system)" in err[0] and str(read_only) in err[0]


def test_predict_skips_a_folder_named_like_an_image_and_keeps_the_good_ones(full_run, index, tmp_path, capsys):
    study = tmp_path / "study1"
    (study / "scan.png").mkdir(parents=True)  # a folder with an image's name
    good = study / "image1.png"
    cv2.imwrite(str(good), cv2.imread(index.images.path.iloc[0], cv2.IMREAD_GRAYSCALE))
    out = tmp_path / "p.json"
    code, _ = _run(["predict", study, "--models-dir", full_run, "--json", out], capsys)
    results = json.loads(out.read_text())
    assert code == 0 and [r.get("study", r.get("path")) for r in results] == [str(good), str(study)]


def test_preprocess_on_a_folder_names_it(tmp_path, capsys):
    code, err = _run(["preprocess", tmp_path, "--out", tmp_path / "p.png"], capsys)
    assert code == 2 and err == [f"bonenet preprocess: error: {tmp_path}: is a folder, not an image"]


def test_data_summary_names_a_listed_path_that_is_a_folder(synthetic_root, tmp_path, capsys):
    import shutil

    root = tmp_path / "MURA-v1.1"
    shutil.copytree(synthetic_root, root)
    listed = Path(root / "valid_image_paths.csv").read_text().splitlines()[0].split("/", 1)[1]
    target = root / listed
    target.unlink()
    target.mkdir()
    code, _ = _run(["data-summary", "--data-root", root, "--json", tmp_path / "s.json"], capsys)
    summary = json.loads((tmp_path / "s.json").read_text())
    assert code == 0 and any("a folder, not an image" in str(s) for s in summary["skipped"])


def test_run_files_are_readable_by_the_group_like_any_file(run):
    for path in Path(run[0]).rglob("*.keras"):
        assert path.stat().st_mode & 0o044, path  # not the 0600 mkstemp would leave


def test_a_skipped_training_image_is_named(tmp_path, capsys):
    from bonenet.data import prepare_or_flag

    tiny = tmp_path / "tiny.png"
    cv2.imwrite(str(tiny), np.zeros((1, 1), np.uint8))
    _, ok = prepare_or_flag(str(tiny), "equalize", 32)
    assert not ok and f"bonenet: skipping {tiny}: image is too small" in capsys.readouterr().err


def test_data_summary_verify_decodes_and_finds_a_corrupt_body(synthetic_root, tmp_path, capsys):
    import shutil

    root = tmp_path / "MURA-v1.1"
    shutil.copytree(synthetic_root, root)
    listed = Path(root / "train_image_paths.csv").read_text().splitlines()[0].split("/", 1)[1]
    data = bytearray((root / listed).read_bytes())
    data[60:-20] = bytes(len(data) - 80)  # signature and IEND intact, body zeroed
    (root / listed).write_bytes(bytes(data))
    code, _ = _run(["data-summary", "--data-root", root, "--json", tmp_path / "quick.json"], capsys)
    quick = json.loads((tmp_path / "quick.json").read_text())
    assert code == 0 and quick["check"].startswith("PNG signature") and not quick["skipped"]
    code, _ = _run(["data-summary", "--data-root", root, "--verify", "--json", tmp_path / "full.json"], capsys)
    full = json.loads((tmp_path / "full.json").read_text())
    assert full["check"] == "every image decoded"
    assert [s["path"] for s in full["skipped"]] == [str(root / listed)] and "corrupt" in full["skipped"][0]["reason"]


def test_a_killed_saves_temporary_file_is_removed_by_the_next_save(tmp_path):
    import os
    import socket
    import tempfile

    from bonenet.store import write_json_atomic

    target = tmp_path / "manifest.json"
    host = socket.gethostname()
    fd, dead = tempfile.mkstemp(prefix=f".manifest.{host}.999999999.", suffix=".json", dir=tmp_path)
    os.close(fd)
    fd, live = tempfile.mkstemp(prefix=f".manifest.{host}.{os.getpid()}.", suffix=".json", dir=tmp_path)
    os.close(fd)
    write_json_atomic({"a": 1}, target)
    assert not Path(dead).exists() and Path(live).exists() and json.loads(target.read_text()) == {"a": 1}


@pytest.mark.slow
def test_a_kill_during_the_final_save_resumes_without_retraining(index, tmp_path, monkeypatch):
    from bonenet import train
    from bonenet.configs import TrainConfig

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
    entry, _ = train.train_model("router", index, tmp_path, config, resume=True, verbose=0)
    log = (train.checkpoint_dir(tmp_path, "router") / "log.csv").read_text().splitlines()
    assert len(log) == 1 + 2 and entry["epochs_run"] == 2  # the two epochs once, none again
    assert not backup.exists()  # saved and listed: nothing left to resume


def test_another_trainable_layers_count_is_refused_naming_the_setting(run, synthetic_root, tmp_path, capsys):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(run[0], run_dir, ignore=shutil.ignore_patterns("checkpoints"))
    code, err = _run(["train-part", "--part", "elbow", "--data-root", synthetic_root, "--models-dir", run_dir,
                      "--image-size", "64", "--weights", "none", "--trainable-layers", "30"], capsys)
    assert code == 2 and len(err) == 1
    assert "trainable_layers: folder has 20, this model 30" in err[0] and str(run_dir) in err[0]
