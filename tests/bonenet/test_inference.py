import json
import shutil

import cv2
import numpy as np
import pytest

import run_pipeline
from bonenet import gradcam
from bonenet.imageio import load_gray
from bonenet.inference import BoneNet, group_inputs


@pytest.fixture(scope="module")
def net(run):
    return BoneNet.load(run[0])


@pytest.fixture(scope="module")
def wrist_study(index):
    studies = index.images[(index.images.part == "XR_WRIST") & (index.images.split == "valid")]
    return sorted(studies.groupby("study").path.apply(list).values, key=len)[-1]


def test_predict_image_uses_the_saved_recipe_and_returns_a_decision(net, wrist_study):
    result = net.predict_image(wrist_study[0])
    assert result["part"] in net.labels and 0 <= result["part_confidence"] <= 1
    if result["part"] in net.models:
        assert 0 <= result["p_abnormal"] <= 1 and result["abnormal"] == (result["p_abnormal"] >= 0.5)
    same = net.predict_image(load_gray(wrist_study[0]))  # an array gives the same answer as its path
    assert same == result


def test_predict_study_routes_by_the_mean_softmax(net, wrist_study):
    result = net.predict_study(wrist_study)
    x = np.stack([net.prepare(p) for p in wrist_study])
    mean = net.router_probs(net.encode(x)).mean(axis=0)
    assert result["part"] == net.labels[int(mean.argmax())]
    assert len(result["images"]) == len(wrist_study)
    assert all(image["part"] == result["part"] for image in result["images"])
    if result["p_abnormal"] is not None:
        assert result["p_abnormal"] == pytest.approx(np.mean([i["p_abnormal"] for i in result["images"]]))


def test_grad_cam_is_non_negative_image_sized_and_maps_back(net, wrist_study):
    gray = load_gray(wrist_study[0])
    x = net.prepare(gray)[None]
    cam = gradcam.grad_cam(net.models["XR_WRIST"], net.encode(x), size=(net.image_size,) * 2)
    assert cam.shape == (1, net.image_size, net.image_size) and cam.dtype == np.float32
    assert cam.min() >= 0 and cam.max() <= 1
    full = gradcam.to_original(cam[0], net.recipe.layout(gray, net.image_size), gray.shape)
    assert full.shape == gray.shape and full.min() >= 0
    box = gradcam.cam_box(full)
    if box is not None:
        x0, y0, x1, y1 = box
        assert 0 <= x0 < x1 <= gray.shape[1] and 0 <= y0 < y1 <= gray.shape[0]


def test_cam_box_is_the_largest_region_above_twenty_percent():
    cam = np.zeros((50, 60), np.float32)
    cam[10:20, 5:15] = 1.0  # largest region
    cam[40:43, 50:53] = 0.9  # smaller one
    cam[30, 30] = 0.1  # below 20% of the peak
    assert gradcam.cam_box(cam) == [5, 10, 15, 20]
    assert gradcam.cam_box(np.zeros((5, 5))) is None


def test_predict_cli_reports_good_files_and_errors_for_bad_ones(run, wrist_study, tmp_path):
    study = tmp_path / "study1_positive"
    study.mkdir()
    for path in wrist_study:
        shutil.copy(path, study)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    rgb = tmp_path / "rgb.png"
    cv2.imwrite(str(rgb), cv2.cvtColor(load_gray(wrist_study[0]), cv2.COLOR_GRAY2BGR))
    out = tmp_path / "pred.json"
    code = run_pipeline.main(["predict", str(rgb), str(bad), str(study), str(tmp_path / "missing.png"),
                              "--models-dir", str(run[0]), "--cam-dir", str(tmp_path / "cams"), "--json", str(out)])
    assert code == 1  # some inputs failed
    results = json.loads(out.read_text())
    errors = {r["path"]: r["error"] for r in results if "error" in r}
    assert "truncated" in errors[str(bad)] and "does not exist" in errors[str(tmp_path / "missing.png")]
    images = [r for r in results if "error" not in r and "study" not in r]
    assert {r["path"] for r in images} == {str(rgb), *(str(study / p.split("/")[-1]) for p in wrist_study)}
    studies = [r for r in results if "study" in r]
    assert len(studies) == 1 and studies[0]["study"] == str(study) and len(studies[0]["images"]) == len(wrist_study)
    for r in images:
        assert {"part", "part_confidence", "p_abnormal", "abnormal"} <= set(r)
        if "cam" in r:
            cam = cv2.imread(r["cam"])
            assert cam.shape[:2] == load_gray(r["path"]).shape


def test_group_inputs_splits_files_and_study_folders(synthetic_root):
    patient = next((synthetic_root / "valid" / "XR_HAND").iterdir())
    singles, studies = group_inputs([patient, synthetic_root / "valid_image_paths.csv"])
    assert len(singles) == 1 and all(folder.parent == patient for folder in studies)


def test_shared_trunk_pipeline_equals_separate_full_models(run, net, wrist_study):
    _, trained = run
    x = np.stack([net.prepare(p) for p in wrist_study]).astype(np.float32)
    features = net.encode(x)
    np.testing.assert_allclose(net.router_probs(features), trained["router"].predict(x, verbose=0), atol=1e-4)
    np.testing.assert_allclose(net.abnormal_probs("XR_WRIST", features),
                               trained["XR_WRIST"].predict(x, verbose=0)[:, 1], atol=1e-4)


def test_a_folder_of_full_models_from_format_version_1_still_loads(run, net, wrist_study, index, tmp_path):
    from bonenet import store
    from bonenet.train import TrainConfig, train_model

    run_dir, trained = run
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["format_version"] = 1
    del manifest["trunk"]
    for key, file in [("router", "router.keras"), ("XR_WRIST", "parts/wrist.keras")]:
        store.save_model_atomic(trained[key], tmp_path / file)
        manifest["models"][key]["file"] = file
        del manifest["models"][key]["input"]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    legacy = BoneNet.load(tmp_path)
    assert legacy.trunk is None
    old, new = legacy.predict_study(wrist_study), net.predict_study(wrist_study)
    assert old["part"] == new["part"]
    for a, b in zip([old, *old["images"]], [new, *new["images"]], strict=True):
        assert a["part_confidence"] == pytest.approx(b["part_confidence"], abs=1e-4)
        if a["p_abnormal"] is not None:
            assert a["p_abnormal"] == pytest.approx(b["p_abnormal"], abs=1e-4)
    with pytest.raises(store.ManifestError, match="format version 1.*new --models-dir"):
        train_model("hand", index, tmp_path, TrainConfig(epochs=1, image_size=64, weights="none"), verbose=0)
