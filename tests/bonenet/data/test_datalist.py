"""Datalists: any labelled collection, real FracAtlas radiographs, and a mix of PNG, JPEG and DICOM."""

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

import run_pipeline
from bonenet.data.datalist import fracatlas_datalist, read_dataset
from bonenet.data.decode import load_gray
from bonenet.data.mura import MuraError
from bonenet.run.manifest import read_manifest

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "fracatlas"


def test_fracatlas_becomes_a_datalist_of_hands_and_shoulders(tmp_path):
    table = fracatlas_datalist(FIXTURES, tmp_path / "lists" / "fracatlas.csv")
    assert len(table) == 40
    assert table.groupby(["part", "label"]).size().to_dict() == {
        ("XR_HAND", 0): 10, ("XR_HAND", 1): 10, ("XR_SHOULDER", 0): 10, ("XR_SHOULDER", 1): 10}
    assert (table["patient"] == table["study"]).all()  # no patient identifiers: each image its own
    assert table["path"].str.startswith("../").all()  # relative to the CSV's folder
    index = read_dataset(tmp_path / "lists" / "fracatlas.csv")
    assert index.skipped.empty and len(index.images) == 40
    # No split column: a seeded, patient-grouped fifth of the studies plays MURA's valid split.
    valid = index.studies[index.studies["split"] == "valid"]
    assert 6 <= len(valid) <= 10 and set(valid["part"]) == {"XR_HAND", "XR_SHOULDER"}
    assert read_dataset(tmp_path / "lists" / "fracatlas.csv").studies.equals(index.studies)


def test_bad_datalist_rows_are_listed_with_their_reason(tmp_path):
    image = FIXTURES / "images" / "IMG0000019.jpg"
    shutil.copy(image, tmp_path / "a.jpg")
    (tmp_path / "list.csv").write_text(
        "path,patient,study,part,label,split\n"
        "a.jpg,p1,s1,wrist,abnormal,train\n"
        "a.jpg,p1,s1,wrist,abnormal,train\n"
        "missing.png,p2,s1,hand,0,train\n"
        "a.jpg,p3,s1,knee,1,train\n"
        "a.jpg,p4,s1,hand,maybe,train\n"
        "a.jpg,p5,s1,hand,1,test\n")
    index = read_dataset(tmp_path / "list.csv")
    assert index.images["path"].tolist() == [str(tmp_path / "a.jpg")]
    assert index.images["study"].tolist() == ["p1/s1"] and index.images["part"].tolist() == ["XR_WRIST"]
    reasons = index.skipped["reason"].tolist()
    assert reasons[0] == "listed twice in list.csv (lines 2 and 3)"
    assert any("file does not exist" in r for r in reasons)
    assert any("row 5: unknown part 'knee'" in r for r in reasons)
    assert any("row 6: label 'maybe'" in r for r in reasons)
    assert any("row 7: split 'test'" in r for r in reasons)
    (tmp_path / "short.csv").write_text("path,label\na.jpg,1\n")
    with pytest.raises(MuraError, match="short.csv: datalist lacks column.*patient, study, part"):
        read_dataset(tmp_path / "short.csv")


def test_a_study_whose_images_disagree_on_its_label_is_skipped_not_relabelled(tmp_path):
    for name in ("a.jpg", "b.jpg"):
        shutil.copy(FIXTURES / "images" / "IMG0000019.jpg", tmp_path / name)
    (tmp_path / "list.csv").write_text("path,patient,study,part,label,split\n"
                                       "a.jpg,p1,s1,hand,1,train\nb.jpg,p1,s1,hand,0,train\n")
    index = read_dataset(tmp_path / "list.csv")
    assert index.images.empty and len(index.skipped) == 2
    assert (index.skipped["reason"] == "study p1/s1: its images disagree on split, part or label").all()


def _mixed_format_datalist(synthetic_root, folder, write_dicom):
    """The synthetic wrist studies, every third image a JPEG named .png, every third a DICOM (half of
    them MONOCHROME1), the rest PNG; plus a 1×1 PNG that must be skipped. Returns (csv, n images)."""
    rows = []
    images = sorted((synthetic_root / "train" / "XR_WRIST").rglob("*.png"))
    images += sorted((synthetic_root / "valid" / "XR_WRIST").rglob("*.png"))
    for i, source in enumerate(images):
        split, _, patient, study, _ = source.relative_to(synthetic_root).parts
        gray = load_gray(source)
        target = folder / split / patient / study / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if i % 3 == 1:
            assert cv2.imwrite(str(target.with_suffix(".jpg")), gray, [cv2.IMWRITE_JPEG_QUALITY, 95])
            target.with_suffix(".jpg").rename(target)  # a JPEG under a .png name
        elif i % 3 == 2:
            target = target.with_suffix(".dcm")
            if i % 2:
                write_dicom(target, 255 - gray, "MONOCHROME1")
            else:
                write_dicom(target, gray)
        else:
            shutil.copy(source, target)
        rows.append((target.relative_to(folder).as_posix(), patient, study, "wrist",
                     int(study.endswith("positive")), split))
    assert cv2.imwrite(str(folder / "dot.png"), np.zeros((1, 1), np.uint8))
    rows.append(("dot.png", "patient99999", "study1_negative", "wrist", 0, "train"))
    pd.DataFrame(rows, columns=["path", "patient", "study", "part", "label", "split"]).to_csv(
        folder / "list.csv", index=False)
    return folder / "list.csv", len(images)


@pytest.mark.corpus("R1")
def test_train_part_uses_png_jpeg_and_dicom_alike(synthetic_root, tmp_path, write_dicom, capsys):
    datalist, n = _mixed_format_datalist(synthetic_root, tmp_path / "data", write_dicom)
    assert run_pipeline.main(["data-summary", "--data-root", datalist, "--json", tmp_path / "s.json"]) == 0
    summary = json.loads((tmp_path / "s.json").read_text())
    counted = sum(summary["splits"][s]["XR_WRIST"]["images"] for s in ("train", "valid"))
    assert counted == n
    assert summary["skipped"] == [{"path": str(tmp_path / "data" / "dot.png"),
                                   "reason": "image is too small (1×1); need at least 8×8"}]
    assert run_pipeline.main(["train-part", "--part", "wrist", "--data-root", datalist, "--models-dir",
                              tmp_path / "run", "--weights", "none", "--image-size", "32", "--epochs", "1",
                              "--batch-size", "8"]) == 0
    dataset = read_manifest(tmp_path / "run").models["XR_WRIST"].dataset
    train = summary["splits"]["train"]["XR_WRIST"]["images"]
    assert dataset["train_images"] + dataset["holdout_images"] == train  # every format counted and used
    assert "skipping" not in capsys.readouterr().err  # and none failed to decode in the pipeline


@pytest.mark.slow  # train-all, evaluate and report on FracAtlas: about 50 s
def test_fracatlas_trains_evaluates_and_reports_with_absent_parts_skipped(tmp_path, capsys):
    """The hierarchy on real radiographs, from a datalist holding two of the seven parts."""
    datalist = tmp_path / "fracatlas.csv"
    assert run_pipeline.main(["fracatlas-datalist", "--fracatlas", FIXTURES, "--out", datalist]) == 0
    run = tmp_path / "run"
    assert run_pipeline.main(["train-all", "--data-root", datalist, "--models-dir", run, "--weights", "none",
                              "--image-size", "32", "--epochs", "1", "--batch-size", "8"]) == 0
    out = capsys.readouterr().out
    absent = [line for line in out.splitlines() if "absent from the training data" in line]
    assert len(absent) == 5 and not any(p in " ".join(absent) for p in ("XR_HAND", "XR_SHOULDER"))
    assert set(read_manifest(run).models) == {"router", "XR_HAND", "XR_SHOULDER"}
    card = json.loads((run / "model_card.json").read_text())  # train-all wrote the card; not evaluated yet
    assert set(card["models"]) == {"router", "XR_HAND", "XR_SHOULDER"} and card["evaluation"] is None
    assert "Not evaluated yet" in (run / "MODEL_CARD.md").read_text()
    assert run_pipeline.main(["evaluate", "--data-root", datalist, "--models-dir", run, "--out", tmp_path / "eval",
                              "--bootstrap", "20"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["source"]["parts_scored"] == ["XR_HAND", "XR_SHOULDER"]
    err = capsys.readouterr().err
    assert sum("no studies of" in line for line in err.splitlines()) == 5
    studies = pd.read_csv(tmp_path / "eval" / "study_predictions.csv")
    assert set(studies["part_pred"]) <= {"XR_HAND", "XR_SHOULDER"}  # routed among the parts the run covers
    card = json.loads((run / "model_card.json").read_text())  # evaluate updated it with this split's figures
    assert set(card["evaluation"]["parts"]) == {"XR_HAND", "XR_SHOULDER", "overall"}
    assert card["evaluation"]["parts"]["XR_HAND"]["kappa"] == metrics["study_tuned"]["XR_HAND"]["kappa"]
    assert run_pipeline.main(["report", "--eval-dir", tmp_path / "eval", "--out", tmp_path / "reports"]) == 0
    assert (tmp_path / "reports" / "MODEL_CARD.md").read_text() == (run / "MODEL_CARD.md").read_text()
    assert 'href="MODEL_CARD.md"' in (tmp_path / "reports" / "overview.html").read_text()
    assert {p.name for p in (tmp_path / "reports").glob("*.html")} == {"overview.html", "part_hand.html",
                                                                       "part_shoulder.html"}


@pytest.mark.corpus("V3")
@pytest.mark.parametrize("column", ["shoulder", "fractured"])
def test_a_fracatlas_table_lacking_a_column_is_one_line_naming_it(tmp_path, column, capsys):
    from conftest import run_cli

    root = shutil.copytree(FIXTURES, tmp_path / "fracatlas")
    pd.read_csv(root / "dataset.csv").drop(columns=[column]).to_csv(root / "dataset.csv", index=False)
    code, err = run_cli(["fracatlas-datalist", "--fracatlas", root, "--out", tmp_path / "list.csv"], capsys)
    assert code == 2 and len(err) == 1 and f"dataset.csv: no column {column}" in err[0], err



@pytest.mark.corpus("V7")
def test_an_image_listed_with_two_labels_is_an_error_naming_both_lines(tmp_path):
    shutil.copy(FIXTURES / "images" / "IMG0000019.jpg", tmp_path / "a.jpg")
    (tmp_path / "list.csv").write_text("path,patient,study,part,label,split\n"
                                       "a.jpg,p1,s1,wrist,0,train\n"
                                       "b.jpg,p2,s1,wrist,1,train\n"
                                       "a.jpg,p1,s1,wrist,1,train\n")
    with pytest.raises(MuraError, match=r"list.csv: lines 2 and 4 list .*a.jpg with labels 0 and 1"):
        read_dataset(tmp_path / "list.csv")


@pytest.mark.corpus("V7")
def test_latin_1_bytes_name_the_line_and_a_header_only_datalist_names_the_csv(tmp_path):
    (tmp_path / "latin.csv").write_bytes("path,patient,study,part,label\na.jpg,p1,s1,wrist,0\n"
                                         "b.jpg,Müller,s1,wrist,1\n".encode("latin-1"))
    with pytest.raises(MuraError, match="latin.csv: line 3 is not UTF-8 text"):
        read_dataset(tmp_path / "latin.csv")
    (tmp_path / "empty.csv").write_text("path,patient,study,part,label\n")
    with pytest.raises(MuraError, match="empty.csv: the datalist has no usable rows"):
        read_dataset(tmp_path / "empty.csv")


@pytest.mark.corpus("V8")
def test_a_patient_in_both_splits_is_one_warning_with_the_count_and_an_example(tmp_path, caplog):
    for name in ("a", "b", "c"):
        shutil.copy(FIXTURES / "images" / "IMG0000019.jpg", tmp_path / f"{name}.jpg")
    (tmp_path / "list.csv").write_text("path,patient,study,part,label,split\n"
                                       "a.jpg,p1,s1,wrist,0,train\n"
                                       "b.jpg,p1,s2,wrist,1,valid\n"
                                       "c.jpg,p2,s1,wrist,1,valid\n")
    with caplog.at_level("WARNING", logger="bonenet"):
        read_dataset(tmp_path / "list.csv")
    [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning.startswith(f"{tmp_path / 'list.csv'}: 1 patient(s) have studies in both train and valid "
                              "(for example p1)")
