"""Precision is a training-speed choice, never a result: under a mixed bfloat16 policy (a process started with
`--precision mixed_bfloat16`, or a user's script that set it globally) every output of predict, evaluate, serve, export,
Grad-CAM and an ensemble is float32 and equals the float32 numbers (1e-5). These tests force the policy, so a
developer on a CPU without bfloat16 sees what a user on one would."""

import io
import json

import keras
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from bonenet import runtime
from bonenet.configs import ExportConfig
from bonenet.data.read import read_gray
from bonenet.inference.heatmap import part_cam
from bonenet.inference.predictor import BoneNet
from bonenet.models.ensemble import ensemble_head
from bonenet.serving.export import export_run
from bonenet.serving.serve import create_app

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def reference(ensemble_run, index):
    """The ensemble run with flip views, loaded and scored in float32: its wrist valid images and p(abnormal)."""
    net = BoneNet.load(ensemble_run[0], tta="flip")
    paths = index.images.loc[(index.images.split == "valid") & (index.images.part == "XR_WRIST"), "path"].tolist()
    features = net.encode(np.stack([net.prepare(p) for p in paths]))
    return {"paths": paths, "router": net.router_probs(features), "wrist": net.abnormal_probs("XR_WRIST", features),
            "net": net}


@pytest.fixture
def bfloat16(monkeypatch):
    """This process as `--precision mixed_bfloat16` runs it (what "auto" chose on a CPU with native bfloat16
    until it was measured slower), with the global Keras policy mixed bfloat16 as a user's script may leave it."""
    runtime.start()
    monkeypatch.setitem(runtime._STATE, "precision", "mixed_bfloat16")
    saved = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    yield
    keras.mixed_precision.set_global_policy(saved)


def _float32_everywhere(net):
    """Every layer of the loaded run, an ensemble's mean included, computes in float32."""
    policies = {layer.dtype_policy.name for model in (net.trunk, *net.models.values()) for layer in model.layers}
    assert policies == {"float32"}, policies


def test_the_ensemble_mean_is_float32_and_exact_under_a_mixed_policy(ensemble_net, bfloat16):
    heads = ensemble_net.members["XR_WRIST"]
    combined = ensemble_head(heads)
    features = np.random.default_rng(0).normal(size=(4, *heads[0].input_shape[1:])).astype(np.float32)
    out = np.asarray(combined.predict_on_batch(features))
    each = np.stack([np.asarray(h.predict_on_batch(features)) for h in heads])
    assert out.dtype == np.float32 and np.abs(out - each.mean(axis=0)).max() <= 1e-6


def test_a_run_loaded_under_a_mixed_policy_predicts_the_float32_numbers(ensemble_run, reference, bfloat16):
    net = BoneNet.load(ensemble_run[0], tta="flip")
    _float32_everywhere(net)
    features = net.encode(np.stack([net.prepare(p) for p in reference["paths"]]))
    router, wrist = net.router_probs(features), net.abnormal_probs("XR_WRIST", features)
    assert router.dtype == wrist.dtype == np.float32
    assert np.abs(router - reference["router"]).max() <= TOLERANCE
    assert np.abs(wrist - reference["wrist"]).max() <= TOLERANCE
    study = net.predict_study(reference["paths"][:3])
    expected = reference["net"].predict_study(reference["paths"][:3])
    assert isinstance(study["p_abnormal"], float) and abs(study["p_abnormal"] - expected["p_abnormal"]) <= TOLERANCE
    gray = read_gray(reference["paths"][0])
    cam, want = part_cam(net, "XR_WRIST", gray)[0], part_cam(reference["net"], "XR_WRIST", gray)[0]
    assert cam.dtype == np.float32 and np.abs(cam - want).max() <= TOLERANCE


def test_evaluate_of_an_ensemble_with_flip_views_writes_float32_scores(synthetic_root, ensemble_run, reference,
                                                                     tmp_path, bfloat16, capsys):
    import run_pipeline

    out = tmp_path / "eval"
    code = run_pipeline.main(["evaluate", "--data-root", str(synthetic_root), "--models-dir", str(ensemble_run[0]),
                              "--out", str(out), "--tta", "flip", "--bootstrap", "0", "--gallery", "0", "-q"])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["source"]["tta"] == "flip"
    images = pd.read_csv(out / "image_predictions.csv").set_index("path")
    assert images["score"].dtype == np.float64  # written from float32, read back by pandas
    scored = images.loc[reference["paths"], "score"].to_numpy()
    assert np.abs(scored - reference["wrist"]).max() <= TOLERANCE


def test_serve_answers_the_float32_numbers_under_a_mixed_policy(ensemble_run, reference, bfloat16):
    client = TestClient(create_app(BoneNet.load(ensemble_run[0], tta="flip")), base_url="http://localhost")
    paths = reference["paths"][:2]
    files = [("files", (f"v{i}.png", io.BytesIO(open(p, "rb").read()), "image/png")) for i, p in enumerate(paths)]
    response = client.post("/api/predict", files=files)
    assert response.status_code == 200, response.text
    images = [entry for entry in response.json() if "study" not in entry]
    got = np.array([entry["p_abnormal"] for entry in images])
    assert np.abs(got - reference["wrist"][:2]).max() <= TOLERANCE


@pytest.mark.parametrize("fmt", ["savedmodel", "onnx"])
def test_the_export_under_a_mixed_policy_is_float32_and_matches_bonenet(fmt, ensemble_run, reference, tmp_path,
                                                                       bfloat16):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime", reason='onnxruntime is not installed: pip install "bonenet[export]"')
    from conftest import run_exported

    net = BoneNet.load(ensemble_run[0], tta="flip")
    artifact, _ = export_run(ensemble_run[0], fmt, tmp_path / "out", net=net, config=ExportConfig(tta="flip"))
    x = np.stack([net.prepare(p) for p in reference["paths"]]).astype(np.float32)
    out = run_exported(fmt, artifact, x)
    assert out["router_probs"].dtype == out["p_abnormal"].dtype == np.float32
    assert np.abs(out["router_probs"] - reference["router"]).max() <= TOLERANCE
    assert np.abs(out["p_abnormal"][:, 0] - reference["wrist"]).max() <= TOLERANCE


def test_training_builds_under_its_precision_and_leaves_the_global_policy_alone(bfloat16):
    """The policy a training chose applies inside its scope only; the caller's is restored."""
    keras.mixed_precision.set_global_policy("float32")
    with runtime.precision_scope("mixed_bfloat16"):
        inside = keras.layers.Dense(2)
    outside = keras.layers.Dense(2)
    assert inside.compute_dtype == "bfloat16" and outside.compute_dtype == "float32"
    assert keras.mixed_precision.dtype_policy().name == "float32"
