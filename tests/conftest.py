"""Shared fixtures: one tiny synthetic MURA tree per test session."""

import json
import os

# Keep TensorFlow quiet and on the CPU threads we have; set before anything imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from bonenet.configs import SyntheticConfig
from bonenet.data.synthetic import make_synthetic


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """A read-only synthetic MURA-v1.1 folder with 8 train studies per part."""
    config = SyntheticConfig(studies_per_part=8, seed=3)
    return make_synthetic(tmp_path_factory.mktemp("synthetic"), config, progress=False)


@pytest.fixture(scope="session")
def index(synthetic_root):
    """The checked index of the session's synthetic tree."""
    from bonenet.data.mura import read_mura

    return read_mura(synthetic_root)


@pytest.fixture(scope="session")
def run(index, tmp_path_factory):
    """One run folder with a router and a wrist model, each trained for one epoch at 64 px."""
    from bonenet.training.train import TrainConfig, train_model

    config = TrainConfig(epochs=1, batch_size=16, image_size=64, weights="none", seed=0)
    run_dir = tmp_path_factory.mktemp("run")
    _, router = train_model("router", index, run_dir, config, verbose=0)
    _, wrist = train_model("wrist", index, run_dir, config, verbose=0)
    return run_dir, {"router": router, "XR_WRIST": wrist}


@pytest.fixture(scope="session")
def ensemble_run(run, index, tmp_path_factory):
    """The session run, copied, with its wrist model trained again as a 3-member ensemble (cached mode, on the
    run's trunk and feature cache)."""
    from bonenet.training.train import TrainConfig, train_model

    run_dir = tmp_path_factory.mktemp("ensemble") / "run"
    shutil.copytree(run[0], run_dir, ignore=shutil.ignore_patterns("checkpoints"))
    config = TrainConfig(epochs=1, batch_size=16, image_size=64, weights="none", seed=0, ensemble=3)
    entry, _ = train_model("wrist", index, run_dir, config, verbose=0)
    return run_dir, entry


@pytest.fixture(scope="session")
def ensemble_net(ensemble_run):
    """The ensemble run loaded as a `BoneNet`."""
    from bonenet.inference.predictor import BoneNet

    return BoneNet.load(ensemble_run[0])


@pytest.fixture(scope="session")
def net(run):
    """The session run (router and wrist) loaded as a `BoneNet`."""
    from bonenet.inference.predictor import BoneNet

    return BoneNet.load(run[0])


@pytest.fixture(scope="session")
def wrist_study(index):
    """The paths of the valid wrist study with the most images."""
    studies = index.images[(index.images.part == "XR_WRIST") & (index.images.split == "valid")]
    return sorted(studies.groupby("study").path.apply(list).values, key=len)[-1]


@pytest.fixture(scope="session")
def full_run(run, tmp_path_factory):
    """The session run with the wrist model standing in for every part, so every study gets scored.

    Evaluation is what is under test here, not model quality; training seven models would only cost time.
    """
    import keras

    from bonenet.parts import PARTS
    from bonenet.run import manifest as run_manifest
    from bonenet.run import store

    run_dir = tmp_path_factory.mktemp("full_run")
    shutil.copytree(run[0], run_dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns("checkpoints"))
    manifest = run_manifest.read_manifest(run_dir)
    shared = {k: getattr(manifest, k) for k in run_manifest.SHARED_KEYS}
    wrist = store.load_model(run_dir / "heads" / "wrist.keras")
    for part in PARTS:
        if part != "XR_WRIST":
            # The wrist head's layers under the part's own name: loading checks that a head is its part's.
            stand_in = keras.Model(wrist.input, wrist.output, name=f"part_{part.lower()}_head")
            store.save_model_atomic(stand_in, run_dir / run_manifest.model_filename(part))
            entry = manifest.models["XR_WRIST"].to_json()
            run_manifest.record_model(run_dir, part, shared, {**entry, "file": run_manifest.model_filename(part),
                                                       "members": [{**entry["members"][0],
                                                                    "file": run_manifest.model_filename(part)}],
                                                       "tuning": {"threshold": 0.4, "studies": 3}})
    return run_dir


def _write_dicom(path, pixels, photometric="MONOCHROME2", frames=1, study=None):
    """Writes `pixels` (uint8 or uint16 H×W) as a DICOM Part 10 file, as a modality would.

    `study`: (StudyInstanceUID, SeriesInstanceUID) to give it, with a patient and general study module, as
    a PACS would hold it. Defaults to None: no study attributes.
    """
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    if study is not None:
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Patient", "BN-0001", "19700101", "F"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20261126", "101500", "1", "ACC-1"
        ds.ReferringPhysicianName, ds.SeriesNumber, ds.InstanceNumber = "", 1, 1
    pixels = np.asarray(pixels)
    if frames > 1:
        pixels = np.stack([pixels] * frames)
    bits = 8 if pixels.dtype == np.uint8 else 16
    ds.set_pixel_data(pixels, photometric, bits if bits == 8 else 12)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="session")
def write_dicom():
    """`write_dicom(path, pixels, photometric="MONOCHROME2", frames=1, study=None)`: a DICOM file made by pydicom."""
    return _write_dicom


@pytest.fixture(scope="session")
def browser():
    """Debian's headless chromium through Selenium; skips where chromium or its driver is missing."""
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and chromedriver):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1600"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    yield driver
    driver.quit()


@pytest.fixture
def screenshot(tmp_path):
    """`screenshot(driver, name)`: a full-page PNG in tmp_path, copied to $BONENET_SCREENSHOTS when set."""
    from pathlib import Path

    def take(driver, name):
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1280, min(max(height + 40, 600), 8000))
        path = tmp_path / name
        driver.save_screenshot(str(path))
        keep = os.environ.get("BONENET_SCREENSHOTS")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(keep) / name)
        return path

    return take


def _tmpfs(where, options):
    """Mounts a real tmpfs at `where` (root only); skips the test where this process may not mount."""
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    return where


@pytest.fixture(scope="module")
def read_only(tmp_path_factory):
    """A real read-only mount (tmpfs, ro)."""
    where = _tmpfs(tmp_path_factory.mktemp("ro"), "size=1m,ro")
    yield where
    subprocess.run(["umount", str(where)], check=False)


@pytest.fixture
def small_disk(tmp_path):
    """A real 256 KiB tmpfs that fills up: writes past it fail with ENOSPC, as on a full disk."""
    (tmp_path / "small").mkdir()
    where = _tmpfs(tmp_path / "small", "size=256k")
    yield where
    subprocess.run(["umount", str(where)], check=False)


def pytest_configure(config):
    config.addinivalue_line("markers", "corpus(*ids): reproduces bad-input cases of tests/bad_input_cases.py")


def pytest_collection_modifyitems(items):
    """Modules with slow tests first: two workers (`-n 2 --dist loadfile`) then end on small modules together,
    instead of one long module left running alone at the end."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)  # stable: the usual order within each group


_CORPUS = {}


def pytest_runtest_logreport(report):
    """Records each corpus test's outcome: a case passes when every one of its tests passed."""
    ids = getattr(report, "corpus", None)
    if ids and (report.when == "call" or report.outcome != "passed"):
        for case in ids:
            _CORPUS.setdefault(case, []).append(report.outcome)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    outcome.get_result().corpus = [case for m in item.iter_markers("corpus") for case in m.args]


def pytest_terminal_summary(terminalreporter):
    from bad_input_cases import CASES

    if not _CORPUS:
        return
    tried = {c: o for c, o in _CORPUS.items() if any(x != "skipped" for x in o)}
    passed = [c for c, o in tried.items() if all(x == "passed" for x in o if x != "skipped")]
    failed = sorted(set(tried) - set(passed))
    untried = sorted(set(CASES) - set(tried))
    terminalreporter.write_line(f"bad-input corpus: {len(tried)} of {len(CASES)} cases tried, {len(passed)} passed"
                                + (f"; failed: {', '.join(failed)}" if failed else "")
                                + (f"; not tried here (deselected or skipped): {', '.join(untried)}" if untried else ""))


REPO = Path(__file__).resolve().parents[1]


def kill_cli_when(args, ready, timeout=400):
    """Starts `bonenet *args` and SIGKILLs it as soon as `ready()` holds, as kill -9 would; returns its pid."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen([sys.executable, "run_pipeline.py", *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.01)
    assert proc.poll() is None, "the command ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc.pid


def epoch_logged(log):
    """A `ready` for `kill_cli_when`: the training's CSV log shows one finished epoch (header + a row)."""
    return lambda: log.is_file() and len(log.read_text().strip().splitlines()) >= 2


@pytest.fixture
def copy(run, tmp_path):
    """A copy of the session's run, to edit or damage."""
    run_dir = tmp_path / "run"
    shutil.copytree(run[0], run_dir, ignore=shutil.ignore_patterns("checkpoints"))
    return run_dir


def edit_manifest(run_dir, change):
    """Rewrites a run's manifest.json with `change(manifest)` applied, as a hand edit would."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    change(manifest)
    (run_dir / "manifest.json").write_text(json.dumps(manifest))


def run_exported(fmt, artifact, x):
    """Runs an exported artifact (savedmodel, onnx or litert) on prepared images `x`: its outputs by name."""
    if fmt == "savedmodel":
        import tensorflow as tf

        loaded = tf.saved_model.load(str(artifact))
        return {k: v.numpy() for k, v in loaded.serve(x).items()}
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(artifact), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == ["image"]  # nothing else to feed
        return dict(zip([o.name for o in session.get_outputs()], session.run(None, {"image": x}), strict=True))
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(str(artifact)).get_signature_runner()(image=x)


def run_cli(args, capsys):
    """Runs the CLI in this process: (exit status, its standard error lines)."""
    import run_pipeline

    code = run_pipeline.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.err.strip().splitlines()


def problems(err):
    """The standard error lines that are not a command's remark: its errors, and any stray line (a traceback's
    included); a training's notes on the backbone ("bonenet train-…: the backbone is not …") are remarks."""
    return [line for line in err if ": error: " in line or not line.startswith("bonenet ")]


def as_nobody(args, home):
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


def kill_while_writing(args, target, files):
    """Starts `bonenet *args`, SIGKILLs it once its temporary copy of `target` holds `files` files."""
    def ready():
        temps = target.parent.glob(f".{target.name}.*")
        return sum(1 for t in temps for p in t.rglob("*") if p.is_file()) >= files

    kill_cli_when(args, ready, timeout=300)


def snapshot(folder):
    """{relative path: bytes} of every file under `folder`."""
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="session")
def evaluated(full_run, synthetic_root, tmp_path_factory):
    """An evaluation of a copy of the synthetic data with one corrupt valid image: (folder, console, image)."""
    import contextlib
    import io

    import run_pipeline

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


def make_toy_fracatlas(folder, per_stratum=10, legs=6, seed=0):
    """A FracAtlas-shaped folder (dataset.csv and images/IMG*.jpg) of synthetic radiographs: hand and shoulder
    images, normal and fractured, `per_stratum` each (enough for the datalist's seeded valid fifth), and `legs`
    leg images, which the benchmark never uses."""
    import cv2
    import numpy as np
    import pandas as pd

    from bonenet.data.synthetic import draw_radiograph

    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    rows = []
    kinds = [(r, f) for r in ("hand", "shoulder") for f in (0, 1) for _ in range(per_stratum)]
    kinds += [("leg", 0)] * legs
    for i, (region, fractured) in enumerate(kinds):
        part = {"hand": "XR_HAND", "shoulder": "XR_SHOULDER", "leg": "XR_FOREARM"}[region]
        image = draw_radiograph(part, [("fracture", 0)] if fractured else [], rng, size=96)
        name = f"IMG{i:07d}.jpg"
        cv2.imwrite(str(folder / "images" / name), image)
        rows.append({"image_id": name, "hand": int(region == "hand"), "leg": int(region == "leg"), "hip": 0,
                     "shoulder": int(region == "shoulder"), "mixed": 0, "hardware": 0, "multiscan": 0,
                     "fractured": fractured, "fracture_count": fractured, "frontal": int(i % 2 == 0),
                     "lateral": int(i % 2 == 1), "oblique": 0})
    pd.DataFrame(rows).to_csv(folder / "dataset.csv", index=False)
    return folder


@pytest.fixture(scope="session")
def toy_fracatlas(tmp_path_factory):
    """`make_toy_fracatlas` once per session."""
    return make_toy_fracatlas(tmp_path_factory.mktemp("toy_fracatlas"))


@pytest.fixture
def autograph_rewrites(monkeypatch):
    """The qualified names of BoneNet's own functions that AutoGraph rewrites while the test runs. BoneNet hands
    tf.data and tf.function its functions to trace as written (`bonenet.data.pipeline.as_written`); TensorFlow's
    and Keras' own conversions are theirs to make, so they are not listed."""
    import inspect

    from tensorflow.python.autograph.impl import api

    rewritten, convert = [], api._convert_actual

    def recording(f, ctx):
        if (getattr(inspect.unwrap(f), "__module__", None) or "").startswith("bonenet"):  # None: built elsewhere
            rewritten.append(f.__qualname__)
        return convert(f, ctx)

    monkeypatch.setattr(api, "_convert_actual", recording)
    return rewritten
