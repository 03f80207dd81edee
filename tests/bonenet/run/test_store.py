"""A run's models on disk (`bonenet.run.store`): atomic saves, and checked loading: a replaced trunk, a head
trained on another trunk, a swapped, damaged or missing head is refused, naming the file."""

import json
import shutil
from pathlib import Path

import pytest
from conftest import edit_manifest as _edit
from conftest import run_cli

from bonenet.inference.notes import calibration_note
from bonenet.inference.predictor import BoneNet
from bonenet.run import store
from bonenet.run.manifest import ManifestError


@pytest.mark.corpus("S3")
def test_a_replaced_trunk_is_refused_naming_the_file(copy):
    _edit(copy, lambda m: m["trunk"].update(sha256_weights="0" * 64))
    with pytest.raises(ManifestError, match=r"trunk\.keras: its weights are not the trunk the manifest records"):
        BoneNet.load(copy)


@pytest.mark.corpus("S3")
def test_a_head_trained_on_another_trunk_is_refused(copy):
    _edit(copy, lambda m: m["models"]["XR_WRIST"].update(trunk_sha256="1" * 64))
    with pytest.raises(ManifestError, match=r"wrist\.keras: trained on another trunk"):
        BoneNet.load(copy)


@pytest.mark.corpus("S3")
def test_an_ensemble_member_swapped_or_missing_is_refused_naming_the_file(ensemble_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(ensemble_run[0], run_dir, ignore=shutil.ignore_patterns("checkpoints"))
    second, third = run_dir / "heads" / "wrist.m2.keras", run_dir / "heads" / "wrist.m3.keras"
    second.write_bytes(third.read_bytes())  # the same role and shape: only the weights tell them apart
    with pytest.raises(ManifestError, match=r"wrist\.m2\.keras: its weights are not member 2 of the XR_WRIST"):
        BoneNet.load(run_dir)
    second.unlink()
    with pytest.raises(ManifestError, match=r"wrist\.m2\.keras: model file listed in the manifest is missing"):
        BoneNet.load(run_dir)
    shutil.copy(run_dir / "heads" / "router.keras", second)  # another model's head in a member's place
    with pytest.raises(ManifestError, match=r"wrist\.m2\.keras: gives 7 outputs"):
        BoneNet.load(run_dir)


def test_a_crashed_save_leaves_the_previous_model_loadable(run, tmp_path, monkeypatch):
    run_dir, trained = run
    target = tmp_path / "router.keras"
    store.save_model_atomic(trained["router"], target)
    before = target.read_bytes()
    model = trained["router"]

    def crash(self, path, *args, **kwargs):
        Path(path).write_bytes(b"half a zip file")
        raise OSError("disk full")

    monkeypatch.setattr(type(model), "save", crash)
    with pytest.raises(OSError, match="disk full"):
        store.save_model_atomic(model, target)
    monkeypatch.undo()
    assert target.read_bytes() == before
    assert store.load_model(target).output_shape == (None, 7)
    assert [p.name for p in tmp_path.iterdir()] == ["router.keras"]  # no temporary file left behind


@pytest.mark.parametrize("damage", ["flipped bytes", "truncated"])
def test_a_damaged_head_is_refused_with_its_path(run, tmp_path, damage):
    head = Path(shutil.copy(run[0] / "heads" / "wrist.keras", tmp_path / "wrist.keras"))
    data = bytearray(head.read_bytes())
    if damage == "flipped bytes":
        for i in range(len(data) // 2, len(data) // 2 + 64):
            data[i] ^= 0xFF
    else:
        data = data[: len(data) // 3]
    head.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match=f"{head}: not a readable Keras model file"):
        store.load_model(head)


@pytest.mark.corpus("A2")
def test_run_files_are_readable_by_the_group_like_any_file(run):
    for path in Path(run[0]).rglob("*.keras"):
        assert path.stat().st_mode & 0o044, path  # not the 0600 mkstemp would leave


@pytest.mark.corpus("H14")
def test_a_killed_saves_temporary_file_is_removed_by_the_next_save(tmp_path):
    import os
    import socket
    import tempfile

    from bonenet.run.manifest import write_json_atomic

    target = tmp_path / "manifest.json"
    host = socket.gethostname()
    fd, dead = tempfile.mkstemp(prefix=f".manifest.json.{host}.999999999.", dir=tmp_path)
    os.close(fd)
    fd, live = tempfile.mkstemp(prefix=f".manifest.json.{host}.{os.getpid()}.", dir=tmp_path)
    os.close(fd)
    write_json_atomic({"a": 1}, target)
    assert not Path(dead).exists() and Path(live).exists() and json.loads(target.read_text()) == {"a": 1}


def _damaged_run(full_run, tmp_path, damage):
    run_dir = shutil.copytree(full_run, tmp_path / "run", ignore=shutil.ignore_patterns("checkpoints", "cache"))
    damage(run_dir / "heads" / "wrist.keras")
    return run_dir


def _bad_crc(path):
    data = bytearray(path.read_bytes())
    at = data.find(b"HDF") + 5000  # inside the stored weights: the zip's directory stays intact
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncated(path):
    path.write_bytes(path.read_bytes()[:20000])


@pytest.mark.corpus("T3")
@pytest.mark.parametrize("damage,reason", [(_bad_crc, "(Bad CRC-32 for file 'model.weights.h5')"),
                                           (_truncated, "(not a complete .keras zip archive: truncated or damaged, "
                                                        "20,000 bytes)")])
def test_a_damaged_head_is_refused_naming_it(full_run, index, tmp_path, capsys, damage, reason):
    run_dir = _damaged_run(full_run, tmp_path, damage)
    code, err = run_cli(["predict", index.images.path.iloc[0], "--models-dir", run_dir], capsys)
    assert code == 2 and err[-1] == (f"bonenet predict: error: {run_dir / 'heads' / 'wrist.keras'}: not a readable "
                                     f"Keras model file {reason}; retrain it or restore the run")


@pytest.mark.corpus("M5")
def test_a_head_built_for_another_size_is_refused_on_load_naming_it(full_run, index, tmp_path, capsys):
    from bonenet.models.efficientnet import build_part_model, split_model
    from bonenet.run.store import save_model_atomic

    run_dir = shutil.copytree(full_run, tmp_path / "run", ignore=shutil.ignore_patterns("checkpoints", "cache"))
    _, head96 = split_model(build_part_model("XR_WRIST", image_size=96, weights=None)[0])
    save_model_atomic(head96, run_dir / "heads" / "wrist.keras")
    code, err = run_cli(["predict", index.images.path.iloc[0], "--models-dir", run_dir], capsys)
    assert code == 2 and len(err) <= 2 and f"{run_dir / 'heads' / 'wrist.keras'}: head takes" in err[-1], err


@pytest.mark.corpus("R3")
@pytest.mark.parametrize("swap", ["router in a part's place", "a part in the router's place", "another part's"])
def test_a_head_swapped_for_another_models_is_refused_naming_the_file(full_run, tmp_path, swap, capsys):
    run = shutil.copytree(full_run, tmp_path / "run")
    source, target = {"router in a part's place": ("router", "elbow"), "a part in the router's place":
                      ("wrist", "router"), "another part's": ("wrist", "elbow")}[swap]
    shutil.copy(run / "heads" / f"{source}.keras", run / "heads" / f"{target}.keras")
    image = next(Path(full_run).parent.glob("*")).joinpath("x")  # any path: loading fails first
    code, err = run_cli(["predict", image, "--models-dir", run], capsys)
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"bonenet predict: error: {run / 'heads' / (target + '.keras')}: ") and \
        "another model's head" in err[0]


@pytest.mark.corpus("V2")
def test_a_calibration_without_fitted_on_still_says_what_it_is(copy):
    _edit(copy, lambda m: m["models"]["XR_WRIST"].update(calibration={"method": "temperature", "temperature": 1.7}))
    net = BoneNet.load(copy)
    assert calibration_note(net.manifest, "XR_WRIST") == "temperature 1.7, fitted on the training hold-out"


def test_a_nan_score_is_never_decided(net):
    from bonenet.scoring.study import decide_study

    with pytest.raises(ValueError, match="gave p\\(abnormal\\) \\[nan\\].*not probabilities"):
        decide_study([[0.0] * 6 + [1.0]], {"XR_WRIST": [float("nan")]}, net.labels, net.thresholds)
