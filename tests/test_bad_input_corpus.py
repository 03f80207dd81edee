"""The bad-input and fault corpus (tests/bad_input_cases.py) through the command line: one line
naming the file and the problem, exit 2 (or 1 for predict's per-input errors), no traceback, no
silent wrong answer, nothing half-written. Cases an older test already reproduces carry the same
`corpus` mark where they live; the run's summary counts them all."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import _tmpfs, kill_cli_when

import run_pipeline

REPO = Path(__file__).resolve().parents[1]


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
@pytest.mark.corpus("T1", "S1")
def test_an_unwritable_output_fails_at_once_in_one_line(command, read_only, synthetic_root, run, index, capsys):
    image = index.images.path.iloc[0]
    args = [a.format(ro=read_only, data=synthetic_root, run=run[0], image=image) for a in command]
    code, err = _run(args, capsys)
    assert code == 2 and len(err) == 1, err
    assert "cannot write here (Read-only file system)" in err[0] and str(read_only) in err[0]


@pytest.mark.corpus("T4")
def test_predict_skips_a_folder_named_like_an_image_and_keeps_the_good_ones(full_run, index, tmp_path, capsys):
    study = tmp_path / "study1"
    (study / "scan.png").mkdir(parents=True)  # a folder with an image's name
    good = study / "image1.png"
    cv2.imwrite(str(good), cv2.imread(index.images.path.iloc[0], cv2.IMREAD_GRAYSCALE))
    out = tmp_path / "p.json"
    code, _ = _run(["predict", study, "--models-dir", full_run, "--json", out], capsys)
    results = json.loads(out.read_text())
    assert code == 0 and [r.get("study", r.get("path")) for r in results] == [str(good), str(study), str(study / "scan.png")]
    assert results[-1]["skipped"] == "empty folder"  # listed, not silent


@pytest.mark.corpus("T5")
def test_preprocess_on_a_folder_names_it(tmp_path, capsys):
    code, err = _run(["preprocess", tmp_path, "--out", tmp_path / "p.png"], capsys)
    assert code == 2 and err == [f"bonenet preprocess: error: {tmp_path}: is a folder, not an image"]


@pytest.mark.corpus("T6")
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


@pytest.mark.corpus("A2")
def test_run_files_are_readable_by_the_group_like_any_file(run):
    for path in Path(run[0]).rglob("*.keras"):
        assert path.stat().st_mode & 0o044, path  # not the 0600 mkstemp would leave


@pytest.mark.corpus("M1")
def test_a_skipped_training_image_is_named(tmp_path, capsys):
    from bonenet.data import prepare_or_flag

    tiny = tmp_path / "tiny.png"
    cv2.imwrite(str(tiny), np.zeros((1, 1), np.uint8))
    _, ok = prepare_or_flag(str(tiny), "equalize", 32)
    assert not ok and f"bonenet: skipping {tiny}: image is too small" in capsys.readouterr().err


@pytest.mark.corpus("M2")
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
    assert code == 0 and quick["check"].startswith("header and trailer") and not quick["skipped"]
    code, _ = _run(["data-summary", "--data-root", root, "--verify", "--json", tmp_path / "full.json"], capsys)
    full = json.loads((tmp_path / "full.json").read_text())
    assert full["check"] == "every image decoded"
    assert [s["path"] for s in full["skipped"]] == [str(root / listed)] and "corrupt" in full["skipped"][0]["reason"]


@pytest.mark.corpus("H14")
def test_a_killed_saves_temporary_file_is_removed_by_the_next_save(tmp_path):
    import os
    import socket
    import tempfile

    from bonenet.store import write_json_atomic

    target = tmp_path / "manifest.json"
    host = socket.gethostname()
    fd, dead = tempfile.mkstemp(prefix=f".manifest.json.{host}.999999999.", dir=tmp_path)
    os.close(fd)
    fd, live = tempfile.mkstemp(prefix=f".manifest.json.{host}.{os.getpid()}.", dir=tmp_path)
    os.close(fd)
    write_json_atomic({"a": 1}, target)
    assert not Path(dead).exists() and Path(live).exists() and json.loads(target.read_text()) == {"a": 1}


@pytest.mark.corpus("M6", "A3")
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


@pytest.mark.corpus("M4")
def test_another_trainable_layers_count_is_refused_naming_the_setting(run, synthetic_root, tmp_path, capsys):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(run[0], run_dir, ignore=shutil.ignore_patterns("checkpoints"))
    code, err = _run(["train-part", "--part", "elbow", "--data-root", synthetic_root, "--models-dir", run_dir,
                      "--image-size", "64", "--weights", "none", "--trainable-layers", "30"], capsys)
    assert code == 2 and len(err) == 1
    assert "trainable_layers: folder has 20, this model 30" in err[0] and str(run_dir) in err[0]


# --- Images of every kind predict meets (H01-H09) and an unreadable one (T4) -------------------------------

def _variants(radiograph, folder):
    """One file per image case, named by its case; returns {case: path}."""
    folder.mkdir()
    good = cv2.imencode(".png", radiograph)[1].tobytes()
    files = {
        "H01": bytes(good[:60]) + bytes(len(good) - 80) + bytes(good[-20:]),  # body zeroed, ends intact
        "H02": b"",
        "H03": good[: len(good) // 3],
        "H04": b"this is not a png",
        "H05": good,  # a macOS resource fork named ._*.png
        "H06": good,
        "H07": cv2.imencode(".png", radiograph.astype(np.uint16) * 257)[1].tobytes(),
        "H08": cv2.imencode(".png", cv2.cvtColor(radiograph, cv2.COLOR_GRAY2BGR))[1].tobytes(),
        "H09": cv2.imencode(".png", cv2.cvtColor(radiograph, cv2.COLOR_GRAY2BGRA))[1].tobytes(),
    }
    paths = {}
    for case, data in files.items():
        paths[case] = folder / (f"._{case}.png" if case == "H05" else f"{case}.png")
        paths[case].write_bytes(data)
    return paths


@pytest.fixture(scope="module")
def radiograph(index):
    return cv2.imread(index.images.path.iloc[0], cv2.IMREAD_GRAYSCALE)


@pytest.fixture(scope="module")
def predicted_variants(full_run, radiograph, tmp_path_factory):
    folder = tmp_path_factory.mktemp("variants")
    paths = _variants(radiograph, folder / "study")
    out = folder / "p.json"
    code = run_pipeline.main(["predict", *map(str, paths.values()), "--models-dir", str(full_run), "--json", str(out)])
    return code, paths, {r["path"]: r for r in json.loads(out.read_text())}


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.corpus(c)) for c in ("H01", "H02", "H03", "H04",
                                                                                        "H05")])
def test_a_broken_or_foreign_file_is_an_error_entry_naming_it(predicted_variants, case):
    code, paths, results = predicted_variants
    entry = results[str(paths[case])]
    assert code == 1 and entry["error"].startswith(f"{paths[case]}: ") and "p_abnormal" not in entry


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.corpus(c, "H06")) for c in ("H07", "H08", "H09")])
def test_16_bit_rgb_and_rgba_give_the_8_bit_grayscale_answer(predicted_variants, case):
    _, paths, results = predicted_variants
    base, other = results[str(paths["H06"])], results[str(paths[case])]
    assert "error" not in base and "error" not in other
    assert other["part"] == base["part"] and other["p_abnormal"] == pytest.approx(base["p_abnormal"], abs=1e-6)


def _as_nobody(args, home):
    """Runs the CLI as user `nobody`, for whom mode 000 means unreadable (root reads everything)."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to run a command as another user")
    env = {**os.environ, "HOME": str(home), "MPLCONFIGDIR": str(home)}
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable]
    # A clone in a private folder (mode 0700, under /root or mktemp -d) is closed to nobody.
    probe = subprocess.run([*nobody, "-c", "import run_pipeline"], capture_output=True, env=env, cwd=home,
                           timeout=120)
    if probe.returncode != 0:
        pytest.skip(f"user nobody cannot read this checkout or its Python ({REPO} is in a private folder)")
    return subprocess.run([*nobody, str(REPO / "run_pipeline.py"), *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=home, timeout=300)


@pytest.fixture
def shared_tmp():
    """A temporary folder user `nobody` can enter (pytest's own are private to root)."""
    where = Path(tempfile.mkdtemp(prefix="bonenet-corpus-"))
    where.chmod(0o777)
    yield where
    shutil.rmtree(where, ignore_errors=True)


@pytest.mark.corpus("T4")
def test_an_unreadable_image_among_good_ones_is_an_error_entry(full_run, radiograph, shared_tmp):
    run = shutil.copytree(full_run, shared_tmp / "run", ignore=shutil.ignore_patterns("checkpoints", "cache"))
    study = shared_tmp / "study"
    study.mkdir()
    cv2.imwrite(str(study / "image1.png"), radiograph)
    cv2.imwrite(str(study / "image2.png"), radiograph)
    (study / "image2.png").chmod(0)
    for path in [run, *run.rglob("*"), study, study / "image1.png"]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    proc = _as_nobody(["predict", study / "image1.png", study / "image2.png", "--models-dir", run, "--json",
                       shared_tmp / "p.json"], shared_tmp)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    results = json.loads((shared_tmp / "p.json").read_text())
    assert [r["path"] for r in results] == [str(study / "image1.png"), str(study / "image2.png")]
    assert "p_abnormal" in results[0] and results[1]["error"] == f"{study / 'image2.png'}: cannot be read " \
                                                                 "(Permission denied)"


@pytest.mark.corpus("T6")
def test_data_summary_names_an_unreadable_listed_image(synthetic_root, shared_tmp):
    root = shutil.copytree(synthetic_root, shared_tmp / "MURA-v1.1")
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    listed = root / Path(root / "valid_image_paths.csv").read_text().splitlines()[0].split("/", 1)[1]
    listed.chmod(0)
    for verify in ([], ["--verify"]):
        proc = _as_nobody(["data-summary", "--data-root", root, *verify, "--json", shared_tmp / "s.json"], shared_tmp)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        summary = json.loads((shared_tmp / "s.json").read_text())
        assert summary["skipped"] == [{"path": str(listed), "reason": "cannot be read (Permission denied)"}]


# --- Full disks (T2) --------------------------------------------------------------------------------------

@pytest.mark.corpus("T2")
def test_evaluate_on_a_full_disk_names_its_output_and_leaves_nothing(full_run, synthetic_root, small_disk, capsys):
    code, err = _run(["evaluate", "--data-root", synthetic_root, "--models-dir", full_run, "--out",
                      small_disk / "eval", "--bootstrap", 20], capsys)
    assert code == 2 and err[-1] == (f"bonenet evaluate: error: {small_disk / 'eval'}: not written (No space left "
                                     "on device); any earlier version is unchanged"), err
    assert list(small_disk.iterdir()) == []


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
        code, err = _run(["train-part", "--part", "wrist", "--data-root", synthetic_root, "--models-dir", run_dir,
                          "--image-size", 64, "--weights", "none", "--epochs", 1, "--cache-dir", tmp_path / "cache"],
                         capsys)
        assert code == 2 and len(err) == 1 and err[0].startswith(f"bonenet train-part: error: {run_dir}: 2.")
        assert "MB free, training XR_WRIST (model files and checkpoints) needs about" in err[0]
        assert (run_dir / "heads" / "wrist.keras").read_bytes() == head
        assert sorted(p.name for p in run_dir.iterdir()) == [".lock", "heads", "manifest.json", "trunk.keras"]
    finally:
        subprocess.run(["umount", str(disk)], check=False)


@pytest.mark.corpus("T2")
def test_a_feature_cache_that_cannot_fit_is_refused_before_it_is_written(run, synthetic_root, small_disk, tmp_path,
                                                                         capsys):
    (small_disk / "fill").write_bytes(bytes(shutil.disk_usage(small_disk).free - 8192))
    code, err = _run(["train-part", "--part", "wrist", "--data-root", synthetic_root, "--models-dir", tmp_path / "r",
                      "--image-size", 64, "--weights", "none", "--epochs", 1, "--cache-dir", small_disk / "cache"],
                     capsys)
    assert code == 2 and len(err) == 1 and f"{small_disk / 'cache'}: 0.0 MB free, the feature cache of" in err[0]
    assert [p.name for p in small_disk.iterdir()] == ["fill"] or not any((small_disk / "cache").iterdir())


# --- Damaged and mismatched models (T3, M5) -----------------------------------------------------------------

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
    code, err = _run(["predict", index.images.path.iloc[0], "--models-dir", run_dir], capsys)
    assert code == 2 and err[-1] == (f"bonenet predict: error: {run_dir / 'heads' / 'wrist.keras'}: not a readable "
                                     f"Keras model file {reason}; retrain it or restore the run")


@pytest.mark.corpus("M5")
def test_a_head_built_for_another_size_is_refused_on_load_naming_it(full_run, index, tmp_path, capsys):
    from bonenet.models import build_part_model, split_model
    from bonenet.store import save_model_atomic

    run_dir = shutil.copytree(full_run, tmp_path / "run", ignore=shutil.ignore_patterns("checkpoints", "cache"))
    _, head96 = split_model(build_part_model("XR_WRIST", image_size=96, weights=None)[0])
    save_model_atomic(head96, run_dir / "heads" / "wrist.keras")
    code, err = _run(["predict", index.images.path.iloc[0], "--models-dir", run_dir], capsys)
    assert code == 2 and len(err) <= 2 and f"{run_dir / 'heads' / 'wrist.keras'}: head takes" in err[-1], err


# --- Killed while writing (S5, M7) ------------------------------------------------------------------------

def _kill_while_writing(args, target, files):
    """Starts `bonenet *args`, SIGKILLs it once its temporary copy of `target` holds `files` files."""
    def ready():
        temps = target.parent.glob(f".{target.name}.*")
        return sum(1 for t in temps for p in t.rglob("*") if p.is_file()) >= files

    kill_cli_when(args, ready, timeout=300)


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.corpus("S5")
@pytest.mark.slow  # about a minute: three evaluations
def test_evaluate_killed_mid_write_leaves_the_earlier_evaluation_and_its_leftovers_go_next_time(
        full_run, synthetic_root, tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["evaluate", "--data-root", synthetic_root, "--models-dir", full_run, "--out", out, "--bootstrap", 20]
    assert _run(args, capsys)[0] == 0
    before = _snapshot(out)
    _kill_while_writing([*args, "--seed", 1], out, files=3)
    assert _snapshot(out) == before  # the earlier evaluation, whole; the half-written one is hidden
    assert _run([*args, "--seed", 1], capsys)[0] == 0
    assert [p.name for p in tmp_path.iterdir()] == ["eval"]  # the killed writer's leftovers removed


@pytest.mark.corpus("S5")
@pytest.mark.slow  # about 40 s: three report runs
def test_report_killed_mid_write_leaves_the_earlier_pages(evaluated, tmp_path, capsys):
    out = tmp_path / "reports"
    args = ["report", "--eval-dir", evaluated[0], "--out", out]
    assert _run(args, capsys)[0] == 0
    before = _snapshot(out)
    _kill_while_writing(args, out, files=1)
    assert _snapshot(out) == before
    assert _run([*args, "--part", "wrist"], capsys)[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reports"]
    assert sorted(p.name for p in out.glob("*.html")) == ["overview.html", "part_wrist.html"]  # --part: that page only


@pytest.fixture(scope="module")
def evaluated(full_run, synthetic_root, tmp_path_factory):
    """An evaluation of a copy of the synthetic data with one corrupt valid image: (folder, console, image)."""
    import contextlib
    import io

    base = tmp_path_factory.mktemp("evaluated")
    root = shutil.copytree(synthetic_root, base / "MURA-v1.1")
    corrupt = root / Path(root / "valid_image_paths.csv").read_text().splitlines()[0].split("/", 1)[1]
    data = bytearray(corrupt.read_bytes())
    data[60:-20] = bytes(len(data) - 80)
    corrupt.write_bytes(bytes(data))
    out, console = base / "eval", io.StringIO()
    with contextlib.redirect_stderr(console):
        assert run_pipeline.main(["evaluate", "--data-root", str(root), "--models-dir", str(full_run),
                                  "--out", str(out), "--bootstrap", "20"]) == 0
    return out, console.getvalue(), corrupt


@pytest.mark.corpus("M3")
def test_evaluate_prints_and_lists_every_skipped_file(evaluated):
    out, console, corrupt = evaluated
    assert str(corrupt) in console
    skipped = pd.read_csv(out / "skipped.csv")
    assert skipped.to_dict("records") == [{"path": str(corrupt), "reason": "could not be decoded"}]


@pytest.mark.corpus("M7")
def test_make_synthetic_killed_over_an_existing_dataset_leaves_it_whole(tmp_path, capsys):
    args = ["make-synthetic", "--out", tmp_path, "--studies-per-part", 6]
    assert _run(args, capsys)[0] == 0
    root = tmp_path / "MURA-v1.1"
    before = _snapshot(root)
    _kill_while_writing([*args, "--seed", 1, "--overwrite"], root, files=5)
    assert _snapshot(root) == before and json.loads((root / "synthetic.json").read_text())["seed"] == 0
    assert _run([*args, "--seed", 1, "--overwrite"], capsys)[0] == 0
    assert json.loads((root / "synthetic.json").read_text())["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["MURA-v1.1"]


# --- Too few studies, a bad metrics.json (M8, M9) -----------------------------------------------------------

@pytest.mark.corpus("M8")
def test_too_few_studies_say_how_many_each_part_and_label_needs(tmp_path, capsys):
    assert _run(["make-synthetic", "--out", tmp_path, "--studies-per-part", 4], capsys)[0] == 0
    code, err = _run(["train-router", "--data-root", tmp_path / "MURA-v1.1", "--models-dir", tmp_path / "run",
                      "--image-size", 64, "--weights", "none"], capsys)
    assert code == 2 and len(err) == 1
    assert "each part needs at least 5 normal and 5 abnormal train studies" in err[0]
    assert "--studies-per-part 20 or more" in err[0] and "n_splits" not in err[0]


@pytest.mark.corpus("M9")
@pytest.mark.parametrize("content,problem", [
    ("{bad", "not valid JSON (Expecting property name"),
    ("[1, 2]", "not the metrics.json of `evaluate` (no study, router section)"),
    ('{"study": {}}', "not the metrics.json of `evaluate` (no router section)"),
])
def test_a_bad_metrics_json_is_named_with_its_problem(tmp_path, capsys, content, problem):
    (tmp_path / "metrics.json").write_text(content)
    code, err = _run(["report", "--eval-dir", tmp_path, "--out", tmp_path / "r"], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith(f"bonenet report: error: {tmp_path / 'metrics.json'}: "
                                                            f"{problem}"), err


@pytest.mark.corpus("M9")
def test_a_missing_or_foreign_prediction_table_is_named(evaluated, tmp_path, capsys):
    evaluated = evaluated[0]
    copy = shutil.copytree(evaluated, tmp_path / "eval")
    (copy / "study_predictions.csv").write_text("a,b\n1,2\n")
    code, err = _run(["report", "--eval-dir", copy, "--out", tmp_path / "r"], capsys)
    assert code == 2 and err == [f"bonenet report: error: {copy / 'study_predictions.csv'}: not `evaluate`'s table "
                                 "(no column study, patient, part_true, part_pred, router_confidence, label, score, "
                                 "threshold, pred)"]
    (copy / "image_predictions.csv").unlink()
    (copy / "study_predictions.csv").write_bytes((evaluated / "study_predictions.csv").read_bytes())
    code, err = _run(["report", "--eval-dir", copy, "--out", tmp_path / "r"], capsys)
    assert code == 2 and err[0].startswith(f"bonenet report: error: {copy / 'image_predictions.csv'}: not found")


# --- Two trainings at once with the same seed (H15) ---------------------------------------------------------

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
    from bonenet.store import load_run_models, read_manifest

    _, trunk, heads = load_run_models(run_dir)  # checks every head's trunk digest against the trunk
    assert set(heads) == {"router", "XR_WRIST"} and set(read_manifest(run_dir)["models"]) == {"router", "XR_WRIST"}


@pytest.mark.slow  # trains twice, as the other interrupt-and-resume tests: about 20 s
@pytest.mark.corpus("R2")
def test_ctrl_c_during_training_is_one_line_and_the_run_resumes(synthetic_root, tmp_path):
    import signal

    run = tmp_path / "run"
    args = ["train-part", "--part", "wrist", "--data-root", synthetic_root, "--models-dir", run, "--weights", "none",
            "--image-size", "32", "--epochs", "30", "--batch-size", "8", "--patience", "30"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen([sys.executable, "run_pipeline.py", *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = run / "checkpoints" / "wrist" / "log.csv"
    deadline = __import__("time").time() + 400
    while __import__("time").time() < deadline and proc.poll() is None and not (
            log.is_file() and len(log.read_text().strip().splitlines()) >= 2):
        __import__("time").sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err and "KeyboardInterrupt" not in err
    assert err.strip().splitlines()[-1] == ("bonenet train-part: interrupted (training keeps its last completed "
                                            "epoch: run the same command with --resume)")
    resumed = subprocess.run([sys.executable, "run_pipeline.py", *map(str, args[:-4]), "--epochs", "2", "--resume"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-2000:]


@pytest.mark.corpus("R3")
@pytest.mark.parametrize("swap", ["router in a part's place", "a part in the router's place", "another part's"])
def test_a_head_swapped_for_another_models_is_refused_naming_the_file(full_run, tmp_path, swap, capsys):
    run = shutil.copytree(full_run, tmp_path / "run")
    source, target = {"router in a part's place": ("router", "elbow"), "a part in the router's place":
                      ("wrist", "router"), "another part's": ("wrist", "elbow")}[swap]
    shutil.copy(run / "heads" / f"{source}.keras", run / "heads" / f"{target}.keras")
    image = next(Path(full_run).parent.glob("*")).joinpath("x")  # any path: loading fails first
    code, err = _run(["predict", image, "--models-dir", run], capsys)
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"bonenet predict: error: {run / 'heads' / (target + '.keras')}: ") and \
        "another model's head" in err[0]


@pytest.mark.corpus("R4")
@pytest.mark.parametrize("orientation,turn", [(3, cv2.ROTATE_180), (6, cv2.ROTATE_90_CLOCKWISE),
                                              (8, cv2.ROTATE_90_COUNTERCLOCKWISE)])
def test_a_jpegs_exif_orientation_is_applied(tmp_path, orientation, turn):
    from PIL import Image

    from bonenet.imageio import load_gray

    stored = np.zeros((60, 100), np.uint8)
    stored[:10, :30] = 255  # a bright corner shows which way up the image is read
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(tmp_path / "photo.jpg", exif=exif, quality=95)
    shown = load_gray(tmp_path / "photo.jpg")
    expected = cv2.rotate(stored, turn)
    assert shown.shape == expected.shape and np.abs(shown.astype(int) - expected).mean() < 3


@pytest.mark.corpus("R6")
def test_a_path_too_long_for_the_file_system_fails_alone(full_run, index, tmp_path, capsys):
    good = index.images[index.images.split == "valid"].path.iloc[0]
    too_long = tmp_path / ("x" * 300 + ".png")
    code, results = 1, None
    out = tmp_path / "p.json"
    code = run_pipeline.main(["predict", str(too_long), good, "--models-dir", str(full_run), "--json", str(out)])
    results = json.loads(out.read_text())
    assert code == 1 and results[0]["path"] == str(too_long) and "File name too long" in results[0]["error"]
    assert "p_abnormal" in results[1]  # the good image beside it is still scored


@pytest.mark.corpus("R7")
def test_a_colour_profile_on_a_grey_png_brings_no_bare_libpng_line(tmp_path, capfd):
    import zlib

    from bonenet.imageio import load_gray

    gray = np.tile(np.arange(64, dtype=np.uint8), (64, 1))
    ok, png = cv2.imencode(".png", gray)
    data = png.tobytes()
    # An sRGB iCCP chunk on a grey image: libpng rejects the profile, and says so on stderr itself.
    profile = b"sRGB\0\0" + zlib.compress(b"\0" * 3000)
    chunk = len(profile).to_bytes(4, "big") + b"iCCP" + profile + zlib.crc32(b"iCCP" + profile).to_bytes(4, "big")
    data = data[:33] + chunk + data[33:]  # after the signature and IHDR
    (tmp_path / "profiled.png").write_bytes(data)
    assert np.array_equal(load_gray(tmp_path / "profiled.png"), gray)
    assert "libpng" not in capfd.readouterr().err


def _predict_peak_mb(folder, run, out):
    """The peak resident memory (MB) of `bonenet predict FOLDER` in a process of its own."""
    import resource

    code = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    proc = subprocess.run([sys.executable, "-c", code, sys.executable, "run_pipeline.py", "predict", str(folder),
                           "--models-dir", str(run), "--json", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert resource  # the child's own ru_maxrss is read in the wrapper
    return int(proc.stdout.strip().splitlines()[-1]) / 1024


@pytest.mark.slow  # writes 5,500 radiographs and predicts them: about three minutes
@pytest.mark.corpus("R9")
def test_predict_streams_a_big_folder_so_its_memory_does_not_grow_with_it(full_run, index, tmp_path):
    gray = cv2.resize(cv2.imread(index.images.path.iloc[0], cv2.IMREAD_GRAYSCALE), (512, 512))
    ok, png = cv2.imencode(".png", gray)
    peaks = {}
    for n in (500, 5000):
        folder = tmp_path / f"flat{n}"
        folder.mkdir()
        for i in range(n):
            (folder / f"image{i:05d}.png").write_bytes(png.tobytes())
        peaks[n] = _predict_peak_mb(folder, full_run, tmp_path / f"p{n}.json")
        results = json.loads((tmp_path / f"p{n}.json").read_text())
        assert len(results) == n + 1 and results[-1]["study"] == str(folder)
    print(f"predict peak memory: {peaks[500]:.0f} MB for 500 images, {peaks[5000]:.0f} MB for 5,000")
    assert peaks[5000] <= 1.5 * peaks[500], peaks


@pytest.mark.corpus("R10")
def test_a_heat_map_killed_mid_write_leaves_the_earlier_one_whole(tmp_path, monkeypatch):
    from bonenet.inference import cam_file_writer

    write = cam_file_writer(tmp_path / "cams")
    first = write("/data/p1/study1/image1.png", np.full((40, 60, 3), 50, np.uint8))["cam"]
    before = Path(first).read_bytes()
    original = Path.write_bytes

    def killed(self, data):
        original(self, data[: len(data) // 2])  # half the PNG is on disk when the kill comes
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_bytes", killed)
    with pytest.raises(KeyboardInterrupt):
        write("/data/p1/study1/image1.png", np.full((40, 60, 3), 200, np.uint8))
    assert Path(first).read_bytes() == before  # the earlier heat map, whole
    assert [p.name for p in (tmp_path / "cams").iterdir()] == [Path(first).name]  # no half-written temporary
