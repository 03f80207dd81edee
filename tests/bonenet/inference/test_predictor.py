import json
import shutil

import cv2
import numpy as np
import pandas as pd
import pytest

import run_pipeline
from bonenet.configs import EvaluateConfig
from bonenet.data.decode import load_gray
from bonenet.data.read import group_inputs
from bonenet.inference.inputs import predict_paths
from bonenet.inference.notes import calibration_note, tta_note
from bonenet.inference.predictor import BoneNet
from bonenet.scoring.calibration import apply_temperature


def test_predict_image_uses_the_saved_recipe_and_returns_a_decision(run, net, wrist_study):
    from bonenet.preprocessing.recipes import Recipe, get_recipe
    from bonenet.run.manifest import read_manifest

    saved = read_manifest(run[0]).recipe
    assert net.recipe == Recipe.from_dict(saved)  # the recipe the run was trained with, from its manifest
    result = net.predict_image(wrist_study[0])
    assert result["part"] == "XR_WRIST" and 0 <= result["part_confidence"] <= 1  # the run's one part model
    assert 0 <= result["p_abnormal"] <= 1 and result["abnormal"] == (result["p_abnormal"] >= result["threshold"])
    gray = load_gray(wrist_study[0])
    by_hand = net.score(net.encode(Recipe.from_dict(saved).apply(gray, net.image_size)[None].astype(np.float32)))[1]
    assert by_hand == result  # the input was prepared with exactly that recipe
    other = get_recipe("full" if saved["name"] != "full" else "equalize").apply(gray, net.image_size)
    assert net.score(net.encode(other[None].astype(np.float32)))[1]["p_abnormal"] != result["p_abnormal"]
    same = net.predict_image(gray)  # an array gives the same answer as its path
    assert same == result


def test_predict_study_routes_by_the_mean_softmax_among_the_parts_the_run_covers(net, wrist_study):
    result = net.predict_study(wrist_study)
    x = np.stack([net.prepare(p) for p in wrist_study])
    mean = net.router_probs(net.encode(x)).mean(axis=0)
    covered = [net.labels.index(p) for p in net.parts]
    assert net.parts == ["XR_WRIST"] and result["part"] == "XR_WRIST"  # the run has one part model
    assert result["part_confidence"] == pytest.approx(mean[covered].max())
    assert len(result["images"]) == len(wrist_study)
    if result["p_abnormal"] is not None:
        assert result["p_abnormal"] == pytest.approx(np.mean([i["p_abnormal"] for i in result["images"]]))


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
    for r in images:  # every image is routed to the run's one part model, so each is scored and drawn
        assert {"part", "part_confidence", "p_abnormal", "abnormal", "cam"} <= set(r)
        cam, (h, w) = cv2.imread(r["cam"]), load_gray(r["path"]).shape
        assert cam.shape[0] > h and cam.shape[1] > w  # the radiograph, a caption band and a colour bar


def test_group_inputs_keeps_input_order_and_names_bad_inputs(synthetic_root, tmp_path):
    patient = next((synthetic_root / "valid" / "XR_HAND").iterdir())
    items = group_inputs([tmp_path, patient, synthetic_root / "valid_image_paths.csv", tmp_path / "nope.png"])
    kinds = [kind for kind, _, _ in items]
    assert kinds[0] == "error" and "no PNG, JPEG or DICOM images" in items[0][2]
    assert set(kinds[1:-2]) == {"study"} and all(folder.parent == patient for _, folder, _ in items[1:-2])
    assert kinds[-2:] == ["image", "error"] and items[-1][2] == "does not exist"


def test_shared_trunk_pipeline_equals_separate_full_models(run, net, wrist_study):
    _, trained = run
    x = np.stack([net.prepare(p) for p in wrist_study]).astype(np.float32)
    features = net.encode(x)
    router = net.router_probs(features, calibrated=False)
    np.testing.assert_allclose(router, trained["router"].predict(x, verbose=0), atol=1e-4)
    wrist = net.abnormal_probs("XR_WRIST", features, calibrated=False)
    np.testing.assert_allclose(wrist, trained["XR_WRIST"].predict(x, verbose=0)[:, 1], atol=1e-4)
    # Calibrated, as every output is: each model's temperature from the manifest over the same numbers.
    np.testing.assert_array_equal(net.router_probs(features), apply_temperature(router, net.temperature("router")))
    np.testing.assert_array_equal(net.abnormal_probs("XR_WRIST", features),
                                  apply_temperature(wrist, net.temperature("XR_WRIST")))


def test_predict_threshold_tuned_uses_the_manifests_value(full_run, wrist_study, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(full_run, run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    for key in manifest["models"]:
        if key != "router":
            manifest["models"][key]["tuning"] = {"threshold": 1e-6, "studies": 3}
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    results = {}
    for mode in ("tuned", "default"):
        out = tmp_path / f"{mode}.json"
        run_pipeline.main(["predict", wrist_study[0], "--models-dir", str(run_dir), "--threshold", mode,
                           "--json", str(out)])
        results[mode] = json.loads(out.read_text())[0]
    tuned, default = results["tuned"], results["default"]
    assert tuned["threshold"] == 1e-6 and tuned["threshold_source"] == "tuned on the training hold-out"
    assert tuned["abnormal"] is True
    assert default["threshold"] == 0.5 and default["abnormal"] == (default["p_abnormal"] >= 0.5)


def test_a_part_whose_tuning_failed_says_so_and_decides_at_half(run, tmp_path):
    from bonenet.training.holdout import tune_on_holdout

    table = pd.DataFrame({"path": ["a", "b"], "study": ["s1", "s2"], "label": [0, 0]})
    failed = tune_on_holdout([0.2, 0.3], ["a", "b"], table, "XR_WRIST")
    assert failed["threshold"] is None and "2 normal and 0 abnormal studies" in failed["reason"]
    run_dir = tmp_path / "run"
    shutil.copytree(run[0], run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["models"]["XR_WRIST"]["tuning"] = failed
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    threshold, source = BoneNet.load(run_dir).thresholds["XR_WRIST"]
    assert threshold == 0.5 and "tuning was not possible" in source and "needs at least 10 of each" in source


def test_predicts_console_line_gives_the_part_the_score_whether_it_is_calibrated_and_the_decision(run, wrist_study,
                                                                                                tmp_path, capsys):
    assert run_pipeline.main(["predict", wrist_study[0], "--models-dir", str(run[0]), "--json",
                              str(tmp_path / "r.json")]) == 0
    r = json.loads((tmp_path / "r.json").read_text())[0]
    line = capsys.readouterr().out.splitlines()[0]
    calibrated = "calibrated" if r["calibrated"] else "not calibrated"
    assert line == (f"{wrist_study[0]}: {r['part']} (router confidence {r['part_confidence']:.2f}) "
                    f"p(abnormal)={r['p_abnormal']:.3f} ({calibrated}) -> {'abnormal' if r['abnormal'] else 'normal'} "
                    f"at threshold {r['threshold']:.3f} ({r['threshold_source']})")
    assert r["calibration"] == calibration_note(BoneNet.load(run[0]).manifest, "XR_WRIST")


def test_an_ensemble_scores_the_mean_of_its_members(ensemble_net, index):
    net = ensemble_net
    heads = net.members["XR_WRIST"]
    assert len(heads) == 3 and len(net.members["router"]) == 1
    paths = index.images.loc[index.images.split == "valid", "path"].tolist()[:6]
    features = net.encode(np.stack([net.prepare(p) for p in paths]))
    each = np.stack([np.asarray(h.predict_on_batch(features[:, 0]))[:, 1] for h in heads])
    assert np.ptp(each, axis=0).max() > 1e-6  # differently seeded members give different scores
    np.testing.assert_allclose(net.abnormal_probs("XR_WRIST", features, calibrated=False), each.mean(axis=0),
                               atol=1e-6)
    result = net.predict_image(paths[0])
    assert result["members"] == 3 and result["tta"] == "none"


def test_tta_scores_are_the_mean_of_the_separately_scored_views(net, index):
    paths = index.images.loc[index.images.split == "valid", "path"].tolist()[:5]
    x = np.stack([net.prepare(p) for p in paths]).astype(np.float32)
    mirrored = np.stack([cv2.flip(image, 1) for image in x])  # left-right, built independently of tta_views
    flipped = net.with_tta("flip")
    features = flipped.encode(x)
    assert features.shape[:2] == (5, 2)
    one, other = net.encode(x), net.encode(mirrored)
    np.testing.assert_allclose(flipped.router_probs(features, calibrated=False),
                               (net.router_probs(one, calibrated=False) + net.router_probs(other, calibrated=False)) / 2,
                               atol=1e-6)
    expected = (net.abnormal_probs("XR_WRIST", one, calibrated=False)
                + net.abnormal_probs("XR_WRIST", other, calibrated=False)) / 2
    np.testing.assert_allclose(flipped.abnormal_probs("XR_WRIST", features, calibrated=False), expected, atol=1e-6)
    assert flipped.predict_image(paths[0])["tta"] == "flip" and "twice" in tta_note(flipped.tta)
    assert tta_note(net.tta) is None


def test_predict_evaluate_and_serve_agree_on_an_ensemble_with_tta(ensemble_run, ensemble_net, synthetic_root,
                                                                  tmp_path):
    from fastapi.testclient import TestClient

    from bonenet.evaluation.evaluate import evaluate_run
    from bonenet.serving.serve import create_app

    run_dir, _ = ensemble_run
    net = ensemble_net.with_tta("flip")
    evaluate_run(synthetic_root, run_dir, tmp_path / "eval",
                 EvaluateConfig(bootstrap=0, plots=False, gallery=0, tta="flip"), net=net)
    table = pd.read_csv(tmp_path / "eval" / "image_predictions.csv")
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["source"]["tta"] == "flip" and metrics["source"]["members"]["XR_WRIST"] == 3
    row = table[table["part_pred"] == "XR_WRIST"].iloc[0]
    predicted = predict_paths(net, [row["path"]])[0]
    with open(row["path"], "rb") as f:
        served = TestClient(create_app(net), base_url="http://localhost").post(
            "/api/predict", files=[("files", ("view.png", f.read(), "image/png"))]).json()[0]
    assert predicted["p_abnormal"] == pytest.approx(row["score"], abs=1e-6)
    assert served["p_abnormal"] == pytest.approx(predicted["p_abnormal"], abs=1e-6)
    assert served["tta"] == predicted["tta"] == "flip" and served["members"] == 3
