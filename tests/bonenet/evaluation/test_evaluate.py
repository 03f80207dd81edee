
import html
import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import kill_while_writing, run_cli, snapshot
from sklearn.metrics import cohen_kappa_score

import run_pipeline
from bonenet.configs import EvaluateConfig
from bonenet.evaluation.evaluate import evaluate_run
from bonenet.parts import PARTS
from bonenet.scoring.metrics import METRIC_KEYS


@pytest.fixture(scope="module")
def evaluation(full_run, synthetic_root, tmp_path_factory):
    run_dir = full_run
    out = tmp_path_factory.mktemp("eval")
    code = run_pipeline.main(["evaluate", "--data-root", str(synthetic_root), "--models-dir", str(run_dir),
                              "--out", str(out), "--bootstrap", "200"])
    assert code == 0
    return out


def test_evaluate_writes_every_file_and_key_of_the_contract(evaluation):
    for name in ("metrics.json", "study_predictions.csv", "image_predictions.csv", "router_confusion.png",
                 "part_confusion.png", "roc.png", "kappa_vs_stanford.png", "reliability.png", "gallery.csv",
                 "skipped.csv", "MODEL_CARD.md", "model_card.json"):
        assert (evaluation / name).is_file(), name
    metrics = json.loads((evaluation / "metrics.json").read_text())
    assert {"study", "image", "router", "baseline", "oracle", "calibration"} <= set(metrics)
    for part, entry in metrics["calibration"].items():
        assert {"n", "bins", "ece_before", "ece_before_ci95", "ece_after", "ece_after_ci95"} <= set(entry)
        assert part == "overall" or {"calibrated", "temperature", "calibration"} <= set(entry)
    for level in ("study", "image", "oracle"):
        assert "overall" in metrics[level]
        for m in metrics[level].values():
            assert set(METRIC_KEYS) <= set(m)
    router = metrics["router"]
    assert {"image_accuracy", "study_accuracy", "confusion", "labels"} <= set(router)
    assert router["labels"] == list(PARTS) and np.array(router["confusion"]).shape == (7, 7)
    assert metrics["baseline"]["stanford_kappa"]["XR_WRIST"] == 0.931
    studies = pd.read_csv(evaluation / "study_predictions.csv")
    assert list(studies.columns) == ["study", "patient", "part_true", "part_pred", "router_confidence", "label",
                                     "score", "threshold", "pred", "score_uncalibrated"]
    images = pd.read_csv(evaluation / "image_predictions.csv")
    assert list(images.columns) == ["path", "study", "patient", "part_true", "part_pred", "image_part_pred",
                                    "router_confidence", "label", "score"]
    # Each image's score comes from its study's routed part model, and the CSV says which.
    routed = studies.set_index("study")["part_pred"]
    assert (images["part_pred"] == images["study"].map(routed)).all()
    assert np.array(router["confusion"]).sum() == len(images)


def test_study_kappa_equals_sklearn_recomputed_from_the_csv(evaluation):
    metrics = json.loads((evaluation / "metrics.json").read_text())
    studies = pd.read_csv(evaluation / "study_predictions.csv")
    scored = studies[studies["pred"] >= 0]
    for part, m in metrics["study"].items():
        rows = scored if part == "overall" else scored[scored["part_true"] == part]
        expected = cohen_kappa_score(rows["label"], rows["pred"], labels=[0, 1])
        if m["kappa"] is None:
            assert not np.isfinite(expected)
        else:
            assert m["kappa"] == pytest.approx(expected), part
        assert m["n"] == len(rows)


def test_every_part_is_scored_routed_oracle_and_tuned(evaluation):
    metrics = json.loads((evaluation / "metrics.json").read_text())
    studies = pd.read_csv(evaluation / "study_predictions.csv")
    assert metrics["source"]["parts_scored"] == list(PARTS)
    # The tiny fixture's wrist hold-out has one class, so its tuning failed, and says so.
    assert not [m for m in metrics["source"]["messages"] if "undefined" not in m and "tuning was not possible" not in m]
    assert (studies["pred"] >= 0).all()
    for level in ("study", "oracle", "study_tuned"):
        assert set(metrics[level]) == {*PARTS, "overall"}
        assert metrics[level]["overall"]["n"] == len(studies)
    assert metrics["thresholds"]["tuned_on_holdout"]["XR_ELBOW"] == 0.4


def test_missing_part_models_are_reported_and_the_rest_scored(run, synthetic_root, tmp_path):
    metrics = evaluate_run(synthetic_root, run[0], tmp_path, EvaluateConfig(bootstrap=50, plots=False))
    messages = " ".join(metrics["source"]["messages"])
    assert "no model in the run for XR_ELBOW" in messages
    assert metrics["source"]["parts_scored"] == ["XR_WRIST"]  # the only part with a model; the rest are named above
    assert metrics["source"]["models"] == {"router": "heads/router.keras", "XR_WRIST": "heads/wrist.keras"}
    # The oracle still scores every true wrist study with the wrist model.
    assert metrics["oracle"]["XR_WRIST"]["n"] == int((pd.read_csv(tmp_path / "study_predictions.csv")["part_true"]
                                                      == "XR_WRIST").sum())


@pytest.mark.slow  # an evaluation of a changed split: about 25 s
def test_a_split_lacking_a_part_is_named(full_run, synthetic_root, tmp_path):
    root = shutil.copytree(synthetic_root, tmp_path / "MURA-v1.1")
    for name in ("valid_image_paths.csv", "valid_labeled_studies.csv"):
        csv = root / name
        csv.write_text("".join(line for line in csv.read_text().splitlines(True) if "XR_HUMERUS" not in line))
    metrics = evaluate_run(root, full_run, tmp_path / "out", EvaluateConfig(bootstrap=50, plots=False))
    assert "XR_HUMERUS" not in metrics["study"]
    assert any("no studies of XR_HUMERUS" in m for m in metrics["source"]["messages"])


def _visible_text(page):
    """What a reader sees of an HTML page: no style sheets, scripts, tags or embedded images."""
    page = re.sub(r"<(style|script)\b.*?</\1>", " ", page, flags=re.DOTALL | re.IGNORECASE)
    return html.unescape(re.sub(r"<[^>]+>", " ", page))


def _check_pages(folder, expected):
    pages = sorted(p.name for p in folder.glob("*.html"))
    assert pages == sorted(expected)
    for name in pages:
        page = (folder / name).read_text()
        assert page.count("data:image/png;base64") >= 4, name  # the plots are in the page
        assert re.search(r'<img [^>]*alt="[^"]+"', page), name  # figures carry alt text
        text = _visible_text(page)
        assert "Stanford" in text and "Traceback" not in text and "Warning" not in text, name
        # No TensorFlow or absl start-up lines, no prompts, no NaN, and the synthetic data is named.
        for noise in ("I0000", "absl", "cuda", "Out[", "In [", "NaN", "nan", "oracle"):
            assert not re.search(rf"(?<![A-Za-z]){re.escape(noise)}(?![A-Za-z])", text), (name, noise)
        assert "Not clinical evidence" in text and "synthetic" in text, name


@pytest.mark.slow  # eight notebooks run and read in a browser: about 50 s
@pytest.mark.browser
def test_reports_read_cleanly_link_both_ways_and_decide_as_predict_does(evaluation, full_run, tmp_path, browser,
                                                                        screenshot):
    from bonenet.inference.predictor import BoneNet

    assert run_pipeline.main(["report", "--eval-dir", str(evaluation), "--out", str(tmp_path)]) == 0
    _check_pages(tmp_path, ["overview.html"] + [f"part_{p[3:].lower()}.html" for p in PARTS])
    gallery = pd.read_csv(evaluation / "gallery.csv")
    predict_thresholds = BoneNet.load(full_run).thresholds  # what predict and serve decide with
    for part in PARTS:
        page = (tmp_path / f"part_{part[3:].lower()}.html").read_text()
        assert "Heat-map galleries" in page
        shown = gallery[gallery.part == part]
        assert len(shown) > 0, part  # the tiny fixture has true or false positives or misses in every part
        assert page.count('class="bonenet-tile"') == len(shown), part  # one tile per heat map
        # Every study decided at the threshold predict uses for it: its routed part's.
        expected = [predict_thresholds[p][0] for p in shown["part_pred"]]
        assert shown["threshold"].to_numpy() == pytest.approx(expected), part
        shown_in_page = re.findall(r'class="bonenet-threshold">([\d.]+)<', page)
        assert shown_in_page == [f"{t:.3f}" for t in expected], part
    for name, other in (("overview.html", "part_wrist.html"), ("part_wrist.html", "overview.html")):
        browser.get((tmp_path / name).as_uri())
        text = browser.find_element("tag name", "body").text
        assert "Not clinical evidence" in text and "NaN" not in text and "`" not in text, name
        link = browser.find_element("css selector", f'nav.bonenet-links a[href="{other}"]')
        assert link.is_displayed(), (name, other)
        assert screenshot(browser, f"report_{name[:-5]}.png").stat().st_size > 20_000
    # The calibration section: the table of ECE before and after, and the reliability diagram, as Chromium shows it.
    browser.get((tmp_path / "part_wrist.html").as_uri())
    text = browser.find_element("tag name", "body").text
    calibration = json.loads((evaluation / "metrics.json").read_text())["calibration"]["XR_WRIST"]
    for when in ("before", "after"):
        assert re.search(rf"{when} calibration\s+{calibration[f'ece_{when}']:.3f} \[", text), when
    diagram = browser.find_element("css selector", 'img[alt="Calibration"]')
    assert diagram.is_displayed() and diagram.size["width"] > 300
    assert browser.find_element("css selector", 'nav.bonenet-links a[href="MODEL_CARD.md"]').is_displayed()
    captions = browser.find_elements("css selector", "figure.bonenet-tile figcaption")
    assert captions and all(float(c.value_of_css_property("font-size")[:-2]) >= 13 for c in captions)
    assert "study p(abnormal)" in captions[0].text and "this view p(abnormal)" in captions[0].text
    sizes = {(t.size["width"], t.size["height"]) for t in browser.find_elements("css selector", "figure.bonenet-tile img")}
    assert len(sizes) == 1  # gallery tiles of one size


def test_evaluated_studies_match_predict_study(evaluation, full_run, index):
    """Tables (study.aggregate_studies) and single studies (BoneNet.score_study) route and score alike."""
    from bonenet.inference.predictor import BoneNet

    net = BoneNet.load(full_run)
    studies = pd.read_csv(evaluation / "study_predictions.csv").set_index("study")
    valid = index.images[index.images.split == "valid"]
    for study, rows in list(valid.groupby("study"))[:6]:
        result = net.predict_study(rows["path"].tolist())
        assert result["part"] == studies.loc[study, "part_pred"], study
        assert result["p_abnormal"] == pytest.approx(studies.loc[study, "score"], abs=1e-5), study


@pytest.mark.slow  # an evaluation of a changed run: about 25 s
def test_a_part_whose_tuning_failed_is_named_in_evaluates_output(full_run, synthetic_root, tmp_path):
    run_dir = shutil.copytree(full_run, tmp_path / "run")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["models"]["XR_HAND"]["tuning"] = {"threshold": None, "reason": "the hold-out has 2 studies of one class"}
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    metrics = evaluate_run(synthetic_root, run_dir, tmp_path / "out", EvaluateConfig(bootstrap=20, plots=False))
    assert "XR_HAND" not in metrics["thresholds"]["tuned_on_holdout"]
    assert "tuning was not possible" in metrics["thresholds"]["tuning"]["XR_HAND"]
    assert any(m.startswith("XR_HAND: default 0.5: tuning was not possible (the hold-out has 2 studies")
               for m in metrics["source"]["messages"])


@pytest.mark.slow  # three evaluations: about 25 s
@pytest.mark.corpus("S5")
def test_an_evaluation_killed_mid_write_leaves_the_previous_one_whole(full_run, synthetic_root, tmp_path,
                                                                      monkeypatch):
    out = tmp_path / "eval"
    evaluate_run(synthetic_root, full_run, out, EvaluateConfig(bootstrap=20, plots=False))
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob('*') if p.is_file()}

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # stands in for a kill after the CSVs were written

    monkeypatch.setattr(json, "dumps", killed)
    with pytest.raises(KeyboardInterrupt):
        evaluate_run(synthetic_root, full_run, out, EvaluateConfig(bootstrap=20, plots=False, seed=1))
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob('*') if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["eval"]


@pytest.mark.corpus("T2")
def test_evaluate_on_a_full_disk_names_its_output_and_leaves_nothing(full_run, synthetic_root, small_disk, capsys):
    code, err = run_cli(["evaluate", "--data-root", synthetic_root, "--models-dir", full_run, "--out",
                      small_disk / "eval", "--bootstrap", 20], capsys)
    assert code == 2 and err[-1] == (f"bonenet evaluate: error: {small_disk / 'eval'}: not written (No space left "
                                     "on device); any earlier version is unchanged"), err
    assert list(small_disk.iterdir()) == []


@pytest.mark.corpus("S5")
@pytest.mark.slow  # about a minute: three evaluations
def test_evaluate_killed_mid_write_leaves_the_earlier_evaluation_and_its_leftovers_go_next_time(
        full_run, synthetic_root, tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["evaluate", "--data-root", synthetic_root, "--models-dir", full_run, "--out", out, "--bootstrap", 20]
    assert run_cli(args, capsys)[0] == 0
    before = snapshot(out)
    kill_while_writing([*args, "--seed", 1], out, files=3)
    assert snapshot(out) == before  # the earlier evaluation, whole; the half-written one is hidden
    assert run_cli([*args, "--seed", 1], capsys)[0] == 0
    assert [p.name for p in tmp_path.iterdir()] == ["eval"]  # the killed writer's leftovers removed


@pytest.mark.corpus("M3")
def test_evaluate_prints_and_lists_every_skipped_file(evaluated):
    out, console, corrupt = evaluated
    assert console.count(str(corrupt)) == 1
    skipped = pd.read_csv(out / "skipped.csv").to_dict("records")
    assert [(r["path"], r["stage"]) for r in skipped] == [(str(corrupt), "read")]
    assert skipped[0]["reason"] in console and "could not be decoded" not in skipped[0]["reason"]


@pytest.mark.corpus("C1", "C2")
def test_no_intervals_and_a_one_class_part_give_one_line_each_and_no_traceback(full_run, synthetic_root, tmp_path,
                                                                                capsys):
    import warnings

    import run_pipeline

    run = shutil.copytree(full_run, tmp_path / "run")  # evaluate writes the run's card: not the shared run's
    root = shutil.copytree(synthetic_root, tmp_path / "MURA-v1.1")
    for name in ("valid_image_paths.csv", "valid_labeled_studies.csv"):  # the valid wrist studies: normal only
        csv = root / name
        csv.write_text("".join(line for line in csv.read_text().splitlines(True)
                               if not ("XR_WRIST" in line and "positive" in line)))
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # a library warning, repeated or not, would reach the console
        code = run_pipeline.main(["evaluate", "--data-root", root, "--models-dir", run, "--out", tmp_path / "out",
                                  "--bootstrap", "0", "--gallery", "0"])
    out, err = capsys.readouterr()
    assert code == 0 and "Traceback" not in err, err
    lines = err.splitlines()
    wrist = [line for line in lines if "XR_WRIST" in line and "undefined" in line]
    assert wrist == [line for line in lines if "undefined" in line] and len(wrist) == 1, lines
    assert "undefined (left blank): its" in wrist[0] and "valid studies are all normal" in wrist[0]
    assert sum("no confidence intervals (--bootstrap 0)" in line for line in lines) == 1
    assert not [line for line in lines if "warning" in line.lower() and "calibration made" not in line], lines
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["study"]["overall"]["kappa_ci95"] == [None, None]  # NaN, written as JSON null
    assert metrics["calibration"]["overall"]["ece_after_ci95"] == [None, None]


def test_predict_serve_and_the_gallery_draw_the_same_heat_map_for_the_same_image(evaluation, full_run, tmp_path):
    """One heat map: the gallery's PNG, predict's --cam-dir PNG and serve's data URL hold the same overlay of one
    image (below their caption bands, which differ by the gallery's header line), with the same boxes."""
    import base64

    import cv2
    from fastapi.testclient import TestClient

    from bonenet.data.read import read_gray
    from bonenet.inference.inputs import predict_paths
    from bonenet.inference.predictor import BoneNet
    from bonenet.serving.serve import create_app

    net = BoneNet.load(full_run)
    gallery = pd.read_csv(evaluation / "gallery.csv")
    for row in gallery.itertuples():
        predicted = predict_paths(net, [row.path], cam_dir=tmp_path)[0]
        if predicted["part"] == row.part_pred and predicted["abnormal"] == (row.image_score >= row.threshold):
            break
    else:
        pytest.fail("no gallery image is routed and decided alike as a study of one")
    height = read_gray(row.path).shape[0]
    drawn = cv2.imread(str(evaluation / row.file))[-height:]
    np.testing.assert_array_equal(cv2.imread(predicted["cam"])[-height:], drawn)
    with open(row.path, "rb") as f:
        served = TestClient(create_app(net), base_url="http://localhost").post(
            "/api/predict", files=[("files", ("view.png", f.read(), "image/png"))]).json()[0]
    png = base64.b64decode(served["cam"].split(",", 1)[1])
    np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)[-height:], drawn)
    assert served["heat_map_note"] == predicted["heat_map_note"] == row.heat_map_note
    # The same boxes, in the image's pixels: the locator's, the default heat map's.
    assert served["heat_map"] == predicted["heat_map"] == "locator"
    assert served["boxes"] == json.loads(json.dumps(predicted["boxes"]))
    assert json.loads(row.boxes) == [b["box"] for b in predicted["boxes"]]
