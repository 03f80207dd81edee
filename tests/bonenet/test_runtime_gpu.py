"""GPU smoke test, for people who have one: `python -m pytest -m gpu tests/bonenet/test_runtime_gpu.py`.

Skipped where TensorFlow sees no GPU (the default suite's machines have none). One epoch of
`train-all` in both training modes with mixed float16 and XLA (what `--precision auto` chooses on a
GPU), then `evaluate` and `predict` on the result.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.gpu


def _gpus():
    probe = subprocess.run([sys.executable, "-c", "from bonenet import runtime; print(runtime.start()['gpus'])"],
                           cwd=REPO, capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, f"the GPU probe itself failed: {probe.stderr[-2000:]}"  # a broken probe is a failure
    return int(probe.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def gpu():
    if not _gpus():
        pytest.skip("no GPU visible to TensorFlow")


@pytest.mark.parametrize("mode", ["cached", "full"])
def test_train_all_evaluate_and_predict_on_a_gpu(gpu, synthetic_root, index, tmp_path, mode):
    run = tmp_path / "run"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}

    def cli(*args):
        proc = subprocess.run([sys.executable, "run_pipeline.py", *map(str, args)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=1800)
        assert proc.returncode == 0, proc.stderr[-4000:]
        return proc

    cli("train-all", "--data-root", synthetic_root, "--models-dir", run, "--epochs", "1", "--image-size", "64",
        "--weights", "none", "--batch-size", "16", "--mode", mode, "--precision", "auto")
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["models"]["router"]["config"]["precision"] == "auto"
    # What "auto" resolved to on a GPU: mixed float16, XLA, and the GPUs it saw.
    assert manifest["models"]["router"]["runtime"] == {"gpus": _gpus(), "precision": "mixed_float16", "xla": True}
    cli("evaluate", "--data-root", synthetic_root, "--models-dir", run, "--out", tmp_path / "eval", "--bootstrap", "50")
    cli("predict", index.images.path.iloc[0], "--models-dir", run, "--cam-dir", tmp_path / "cams",
        "--json", tmp_path / "p.json")
    assert json.loads((tmp_path / "p.json").read_text())[0]["part"]
