"""The paths GPU users take, as far as a CPU can run them: device set-up once per process, mixed
precision (bfloat16 runs on CPUs), MirroredStrategy over logical CPUs, two multi-worker workers on
127.0.0.1, Grad-CAM on logits, and prediction batches padded for XLA."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import epoch_logged, kill_cli_when

REPO = Path(__file__).resolve().parents[3]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def _python(script, timeout=600, env=None, **format_args):
    proc = subprocess.run([sys.executable, "-c", script.format(**format_args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=env or ENV)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


def _cli(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "run_pipeline.py", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=env or ENV)


ONCE = """
import keras, numpy as np
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
model.predict(np.zeros((1, 4)), verbose=0)  # TensorFlow is initialised: devices can no longer change
calls = []
from bonenet import runtime
decide = runtime.auto_precision
runtime.auto_precision = lambda *args: (calls.append(args), decide(*args))[1]
from bonenet.configs import TrainConfig
from bonenet.data.mura import read_mura
from bonenet.training.train import train_all
config = TrainConfig(epochs=1, batch_size=16, image_size=64, weights="none")
entries, failures = train_all(read_mura({root!r}), {run!r}, config, verbose=0, parts=["XR_WRIST", "XR_ELBOW"])
print("TRAINED", sorted(entries), "FAILED", sorted(failures), "SETUPS", len(calls))
"""


@pytest.mark.slow  # train-all of three models in a fresh process: about 25 s
def test_train_all_runs_after_tensorflow_started_and_sets_devices_up_once(synthetic_root, tmp_path):
    out = _python(ONCE, root=str(synthetic_root), run=str(tmp_path / "run"))
    assert "TRAINED ['XR_ELBOW', 'XR_WRIST', 'router'] FAILED [] SETUPS 1" in out


BF16_COMPARE = """
import json, numpy as np, keras
from bonenet.inference.predictor import BoneNet
net = BoneNet.load({run!r})
layers = [l for m in (net.trunk, *net.models.values()) for l in m.layers]
policies = sorted({{l.dtype_policy.name for l in layers}})
x = np.stack([net.prepare(p) for p in {paths!r}])
f32 = net.encode(x)
float32 = {{"router": net.router_probs(f32).tolist(), "wrist": net.abnormal_probs("XR_WRIST", f32).tolist()}}
# The same weights computing in bfloat16.
keras.mixed_precision.set_global_policy("mixed_bfloat16")
from bonenet.models.efficientnet import build_part_model, build_router, copy_weights, split_model
out = {{}}
for key, build in (("router", lambda: build_router(image_size=64)), ("wrist", lambda: build_part_model("XR_WRIST", image_size=64))):
    trunk, head = split_model(build()[0])
    copy_weights(net.trunk, trunk)
    copy_weights(net.models["router" if key == "router" else "XR_WRIST"], head)
    probs = np.asarray(head.predict(trunk.predict(x, verbose=0), verbose=0), np.float32)
    out[key] = (probs if key == "router" else probs[:, 1]).tolist()
print(json.dumps({{"policies": policies, "float32": float32, "bfloat16": out,
                  "compute": head.layers[-2].compute_dtype}}))
"""


@pytest.mark.slow  # about 2 minutes: two trainings, an evaluate and a predict in subprocesses
def test_a_run_trained_in_mixed_bfloat16_reloads_computing_in_float32(synthetic_root, index, tmp_path):
    run = tmp_path / "run"
    common = ["--data-root", synthetic_root, "--models-dir", run, "--epochs", "1", "--image-size", "64",
              "--weights", "none", "--batch-size", "16", "--precision", "mixed_bfloat16"]
    for command in (["train-router"], ["train-part", "--part", "wrist"]):
        proc = _cli(*command, *common)
        assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["models"]["XR_WRIST"]["config"]["precision"] == "mixed_bfloat16"
    assert "mixed_" not in (run / "heads" / "wrist.keras").read_bytes().decode("latin-1")
    paths = index.images[index.images.part == "XR_WRIST"].path.head(4).tolist()
    result = json.loads(_python(BF16_COMPARE, run=str(run), paths=paths).strip().splitlines()[-1])
    assert result["policies"] == ["float32"] and result["compute"] == "bfloat16"
    for key in ("router", "wrist"):
        np.testing.assert_allclose(result["bfloat16"][key], result["float32"][key], atol=0.02)
    evaluated = _cli("evaluate", "--data-root", synthetic_root, "--models-dir", run, "--out", tmp_path / "eval",
                     "--bootstrap", "20")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    predicted = _cli("predict", paths[0], "--models-dir", run, "--json", tmp_path / "p.json")
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    assert json.loads((tmp_path / "p.json").read_text())[0]["part"]


MIRRORED = """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from bonenet.configs import TrainConfig
from bonenet.data.mura import read_mura
from bonenet.run.store import load_run_models
from bonenet.training.distribute import get_strategy
from bonenet.training.train import train_model
print("REPLICAS", get_strategy("mirrored").num_replicas_in_sync)
index = read_mura({root!r})
for mode in ("cached", "full"):
    config = TrainConfig(epochs=1, batch_size=16, image_size=64, weights="none", strategy="mirrored", mode=mode)
    entry, _ = train_model("router" if mode == "cached" else "wrist", index, {run!r}, config, verbose=0)
    print("MODE", mode, "LOSS_FINITE", bool(entry.holdout["loss"] == entry.holdout["loss"]))
manifest, trunk, heads = load_run_models({run!r})
print("MODELS", sorted(heads))
"""


@pytest.mark.slow  # about 2 minutes
def test_train_model_under_mirrored_strategy_on_two_logical_cpus_in_both_modes(synthetic_root, tmp_path):
    out = _python(MIRRORED, root=str(synthetic_root), run=str(tmp_path / "run"))
    assert "REPLICAS 2" in out
    assert "MODE cached LOSS_FINITE True" in out and "MODE full LOSS_FINITE True" in out
    assert "MODELS ['XR_WRIST', 'router']" in out


WORKER = """
import os, sys
run = os.path.realpath({run!r})
writes = []

def audit(event, args):
    path = None
    if event == "open" and args[1] is not None and any(c in str(args[1]) for c in "wax+"):
        # Opening a folder "for writing" is an unnamed O_TMPFILE: the writability check, which leaves nothing.
        path = None if isinstance(args[0], str) and os.path.isdir(args[0]) else args[0]
    elif event in ("os.mkdir", "os.rename", "os.remove", "os.rmdir", "shutil.rmtree"):
        path = args[0]
    if isinstance(path, (str, bytes, os.PathLike)) and os.path.realpath(os.fsdecode(path)).startswith(run):
        writes.append((event, os.fsdecode(path)))

sys.addaudithook(audit)
import run_pipeline
code = run_pipeline.main({argv!r})
print("EXIT", code, "WRITES_INTO_RUN", len(writes), writes[:3])
sys.exit(code)
"""


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _two_workers(run, *args):
    """Runs `bonenet *args --strategy multiworker` as two workers on 127.0.0.1; returns (pids, outputs)."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    argv = [*map(str, args), "--strategy", "multiworker"]
    procs = []
    for i in range(2):
        env = {**ENV, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})}
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER.format(run=str(run), argv=argv)], cwd=REPO,
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=300))
        except subprocess.TimeoutExpired:  # a worker waits forever on a collective its peer left
            p.kill()
            outs.append(p.communicate())
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-4000:]
        assert "Warning" not in err, err[-4000:]
    assert "WRITES_INTO_RUN 0" in outs[1][0], outs[1][0]  # the non-chief wrote nothing into the run folder
    # TensorFlow's C++ writers escape the audit hook; their event files carry the writer's pid.
    events = list(run.glob("checkpoints/*/tensorboard/*/events.out.tfevents.*"))
    assert events and {e.name.split(".")[-3] for e in events} <= {str(procs[0].pid)} | _KILLED_PIDS, events
    assert "trained (the chief saves)" in outs[1][0] and "saved " in outs[0][0]
    return [p.pid for p in procs], outs


_KILLED_PIDS = set()  # a single-process training killed before the workers resume its run


@pytest.mark.parametrize("mode", ["cached", pytest.param("full", marks=pytest.mark.slow)])  # 35 s and 52 s here
def test_two_local_workers_train_and_only_the_chief_writes_the_run(synthetic_root, index, tmp_path, mode):
    run = tmp_path / "run"
    _two_workers(run, "train-router", "--mode", mode, "--data-root", synthetic_root, "--models-dir", run,
                 "--epochs", 1, "--image-size", 64, "--weights", "none", "--batch-size", 16)
    manifest = json.loads((run / "manifest.json").read_text())
    assert list(manifest["models"]) == ["router"]
    from bonenet.run.store import load_run_models

    _, trunk, heads = load_run_models(run)
    assert set(heads) == {"router"}
    path = index.images.path.iloc[0]
    predicted = _cli("predict", path, "--models-dir", run, "--json", tmp_path / "p.json")
    assert predicted.returncode == 0, predicted.stderr[-3000:]


@pytest.mark.slow  # about a minute
def test_two_local_workers_resume_a_killed_run_at_the_chiefs_epoch(synthetic_root, tmp_path):
    run = tmp_path / "run"
    args = ["train-router", "--data-root", synthetic_root, "--models-dir", run, "--epochs", 3, "--image-size", 64,
            "--weights", "none", "--batch-size", 16, "--patience", 10]
    log = run / "checkpoints" / "router" / "log.csv"
    _KILLED_PIDS.add(str(kill_cli_when(args, epoch_logged(log), timeout=300)))
    done = len(pd.read_csv(log))
    assert 1 <= done < 3

    _, outs = _two_workers(run, *args, "--resume")
    for out, err in outs:  # both workers start at the chief's epoch, from its weights
        assert f"resuming from epoch {done}" in out, err[-3000:]
    assert pd.read_csv(log)["epoch"].tolist() == [0, 1, 2]
    assert json.loads((run / "manifest.json").read_text())["models"]["router"]["epochs_run"] == 3


SCRATCH = """
import json, os
os.environ["TF_CONFIG"] = json.dumps({{"cluster": {{"worker": ["a:1", "b:1"]}}, "task": {{"type": "worker", "index": 1}}}})
from bonenet.configs import TrainConfig
from bonenet.data.mura import read_mura
from bonenet.training.job import prepare_job
index = read_mura({root!r})
config = TrainConfig(strategy="multiworker", weights="none")
jobs = [prepare_job(target, index, {run!r}, config) for target in ("router", "wrist", "elbow")]
print("HOMES", len({{str(job.home) for job in jobs}}), "IN_RUN", any(str(job.home).startswith({run!r}) for job in jobs))
print("HOME", jobs[0].home, os.path.isdir(jobs[0].home))
"""


def test_a_non_chief_worker_keeps_one_private_folder_for_every_model_and_removes_it_at_exit(synthetic_root,
                                                                                              tmp_path):
    # One folder per process: `train-all` on a non-chief computes its feature cache once, not per model.
    out = _python(SCRATCH, root=str(synthetic_root), run=str(tmp_path / "run"))
    assert "HOMES 1 IN_RUN False" in out
    home = out.split("HOME ")[-1].split()
    assert home[1] == "True" and not Path(home[0]).exists()


def test_grad_cam_of_a_confident_prediction_is_not_blank(tmp_path):
    import keras

    from bonenet.inference import gradcam
    from bonenet.models.efficientnet import build_part_model, split_model
    from bonenet.run.store import load_model, save_model_atomic

    model, _ = build_part_model("XR_WRIST", image_size=64)
    trunk, head = split_model(model)
    head = load_model(save_model_atomic(head, tmp_path / "head.keras"))  # a head as a run holds it
    dense = head.get_layer("predictions")
    dense.bias.assign([-40.0, 40.0])  # p(abnormal) = 1.0 in float32: the softmax is saturated
    x = np.random.default_rng(0).uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    features = trunk.predict(x, verbose=0)
    assert head.predict(features, verbose=0)[0, 1] == 1.0
    cam = gradcam.grad_cam(trunk, [head], x)
    assert cam.max() == pytest.approx(1.0)  # the softmax's gradient is exactly zero here; the log-odds' is not
    assert isinstance(dense, keras.layers.Dense)


CAM_BF16 = """
import numpy as np, keras
from bonenet.inference import gradcam
from bonenet.models.efficientnet import build_part_model, copy_weights
keras.utils.set_random_seed(0)
model32 = build_part_model("XR_WRIST", image_size=64)[0]
x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
# The whole classifier as the one "head", behind a trunk that passes the image on.
image = keras.Input((64, 64, 3))
passing = keras.Model(image, keras.layers.Identity()(image))
cam32 = gradcam.grad_cam(passing, [model32], x)
keras.mixed_precision.set_global_policy("mixed_bfloat16")
model16 = build_part_model("XR_WRIST", image_size=64)[0]
copy_weights(model32, model16)
cam16 = gradcam.grad_cam(passing, [model16], x)
print("MAX", float(cam32.max()), "DIFF", float(np.abs(cam32 - cam16).max()), "COMPUTE",
      model16.get_layer("top_conv").compute_dtype)
"""


def test_grad_cam_under_mixed_bfloat16_matches_float32():
    out = _python(CAM_BF16).split()
    values = dict(zip(out[::2], out[1::2], strict=True))
    assert float(values["MAX"]) > 0 and values["COMPUTE"] == "bfloat16"
    # bfloat16 keeps 8 bits of mantissa; on maps scaled to [0, 1] that was at most 0.05 here.
    assert float(values["DIFF"]) < 0.1, values


def test_padded_prediction_batches_do_not_change_results(full_run, index):
    from bonenet.inference.predictor import BoneNet

    net = BoneNet.load(full_run, threshold="default")
    net.pad_batches = True  # as on a GPU with XLA: every batch padded to 32 rows
    paths = index.images[index.images.split == "valid"].path.head(5).tolist()
    x = np.stack([net.prepare(p) for p in paths])
    alone = [net.encode(x[i:i + 1]) for i in range(5)]
    for k in (1, 3, 5):
        features = net.encode(x[:k])
        np.testing.assert_allclose(features, np.concatenate(alone[:k]), atol=1e-5)
        np.testing.assert_allclose(net.router_probs(features),
                                   np.concatenate([net.router_probs(f) for f in alone[:k]]), atol=1e-6)
        np.testing.assert_allclose(net.abnormal_probs("XR_WRIST", features),
                                   np.concatenate([net.abnormal_probs("XR_WRIST", f) for f in alone[:k]]), atol=1e-6)


def test_is_chief_follows_tf_config(monkeypatch):
    from bonenet.training.distribute import is_chief

    def config(task, cluster=("worker",)):
        monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {k: ["a:1", "b:2"] for k in cluster}, "task": task}))

    config({"type": "worker", "index": 0})
    assert is_chief("multiworker") and is_chief("default")
    config({"type": "worker", "index": 1})
    assert not is_chief("multiworker") and is_chief("mirrored")  # TF_CONFIG matters under multiworker only
    config({"type": "worker", "index": 0}, cluster=("chief", "worker"))
    assert not is_chief("multiworker")
    config({"type": "chief", "index": 0}, cluster=("chief", "worker"))
    assert is_chief("multiworker")


def test_a_non_chief_worker_writes_nothing_into_the_run_folder(index, tmp_path, monkeypatch):
    """The non-chief's branch of train_model, run in one process: checkpoints, logs, cache and saves
    go to the process's private folder (removed at exit, see above), and the manifest is left to the chief."""
    from bonenet.configs import TrainConfig
    from bonenet.training import distribute, job, train

    monkeypatch.setattr(job, "is_chief", lambda name: False)
    distribute.worker_scratch.cache_clear()
    run = tmp_path / "run"
    scratch = []
    mkdtemp = distribute.tempfile.mkdtemp
    monkeypatch.setattr(distribute.tempfile, "mkdtemp", lambda **kw: scratch.append(mkdtemp(**kw)) or scratch[-1])
    entry, _ = train.train_model("wrist", index, run, TrainConfig(epochs=1, batch_size=16, image_size=64,
                                                                  weights="none"), verbose=0)
    assert entry.file == "heads/wrist.keras" and entry.holdout
    assert not run.exists()
    workers = [p for p in scratch if Path(p).name.startswith("bonenet-worker-")]
    assert len(workers) == 1 and (Path(workers[0]) / "cache").is_dir()
    assert not train.checkpoint_dir(Path(workers[0]), "XR_WRIST").exists()  # its own copy, dropped once trained
    shutil.rmtree(workers[0])
    distribute.worker_scratch.cache_clear()
