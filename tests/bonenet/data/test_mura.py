
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import as_nobody, problems, run_cli

import run_pipeline
from bonenet.configs import SyntheticConfig
from bonenet.data.mura import MuraError, holdout_split, read_mura, resolve_data_root, summarize
from bonenet.data.synthetic import make_synthetic


@pytest.fixture
def tree(synthetic_root, tmp_path):
    """A writable copy of the session's synthetic tree."""
    return shutil.copytree(synthetic_root, tmp_path / "MURA-v1.1")


def _csv(root, name):
    return pd.read_csv(root / name, header=None)


@pytest.mark.corpus("H11")
def test_counts_agree_with_the_csvs_written(synthetic_root):
    index = read_mura(synthetic_root)
    for split in ("train", "valid"):
        paths = _csv(synthetic_root, f"{split}_image_paths.csv")[0]
        labels = _csv(synthetic_root, f"{split}_labeled_studies.csv")
        imgs = index.images[index.images.split == split]
        stds = index.studies[index.studies.split == split]
        assert len(imgs) == len(paths) and len(stds) == len(labels)
        assert stds.label.sum() == labels[1].sum()
        assert set(stds.study + "/") == {p.split("MURA-v1.1/")[1] for p in labels[0]}
    assert index.skipped.empty
    # Labels follow the folder suffix, study by study.
    assert (index.images.label == index.images.study.str.endswith("positive").astype(int)).all()


def test_parent_folder_is_accepted(synthetic_root):
    assert resolve_data_root(synthetic_root.parent) == synthetic_root.resolve()


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(MuraError, match="does not exist"):
        read_mura(tmp_path / "nowhere")
    with pytest.raises(MuraError, match="not a MURA-v1.1 folder"):
        read_mura(tmp_path)


@pytest.mark.corpus("H10")
def test_header_row_is_tolerated(tree):
    base = read_mura(tree)
    for split in ("train", "valid"):
        for name, header in [("image_paths", "path\n"), ("labeled_studies", "study,label\n")]:
            csv = tree / f"{split}_{name}.csv"
            csv.write_text(header + csv.read_text())
    again = read_mura(tree)
    assert len(again.images) == len(base.images) and len(again.studies) == len(base.studies)
    assert again.skipped.empty


def test_walks_the_tree_when_csvs_are_missing(tree):
    base = read_mura(tree)
    for csv in tree.glob("*.csv"):
        csv.unlink()
    with pytest.warns(UserWarning, match="walking"):
        walked = read_mura(tree)
    pd.testing.assert_frame_equal(
        walked.studies.reset_index(drop=True), base.studies.reset_index(drop=True)
    )


@pytest.mark.corpus("H02", "H03", "H04", "H05")
def test_bad_files_are_skipped_with_reasons_and_good_ones_counted(tree, tmp_path):
    base = read_mura(tree)
    train = base.images[base.images.split == "train"].reset_index(drop=True)
    victims = train.path.iloc[:3].tolist()
    open(victims[0], "wb").close()  # zero bytes
    data = open(victims[1], "rb").read()
    open(victims[2], "wb").write(b"this is not a png")
    with open(victims[1], "wb") as f:  # truncated
        f.write(data[: len(data) // 3])
    study_dir = victims[0].rsplit("/", 1)[0]
    shutil.copy(train.path.iloc[5], study_dir + "/._image1.png")  # macOS resource fork
    with open(tree / "train_image_paths.csv", "a") as f:
        f.write("MURA-v1.1/train/XR_WRIST/patient99999/study1_positive/image1.png\n")

    code = run_pipeline.main(["data-summary", "--data-root", str(tree), "--json", str(tmp_path / "s.json")])
    assert code == 0
    summary = json.loads((tmp_path / "s.json").read_text())
    reasons = {e["path"].rsplit("MURA-v1.1/", 1)[1]: e["reason"] for e in summary["skipped"]}
    rel = [v.rsplit("MURA-v1.1/", 1)[1] for v in victims]
    assert "empty" in reasons[rel[0]]
    assert "truncated" in reasons[rel[1]]
    assert "not a PNG" in reasons[rel[2]]
    assert "resource fork" in reasons[rel[0].rsplit("/", 1)[0] + "/._image1.png"]
    assert "does not exist" in reasons["train/XR_WRIST/patient99999/study1_positive/image1.png"]
    images_counted = sum(c["images"] for c in summary["splits"]["train"].values())
    assert images_counted == len(train) - 3


@pytest.mark.corpus("H12")
def test_label_disagreeing_with_folder_suffix_is_skipped_not_relabelled(tree):
    csv = tree / "train_labeled_studies.csv"
    rows = csv.read_text().splitlines()
    path, label = rows[0].rsplit(",", 1)
    rows[0] = f"{path},{1 - int(label)}"
    csv.write_text("\n".join(rows) + "\n")
    index = read_mura(tree)
    study = path.split("MURA-v1.1/")[1].rstrip("/")
    assert study not in set(index.studies.study)
    assert index.skipped.reason.str.contains("disagrees with folder suffix").any()
    assert index.skipped.reason.str.contains("no usable images").any()


def test_summary_counts_patients_and_classes(synthetic_root):
    index = read_mura(synthetic_root)
    summary = summarize(index)
    train = index.studies[index.studies.split == "train"]
    wrist = summary["splits"]["train"]["XR_WRIST"]
    w = train[train.part == "XR_WRIST"]
    assert wrist == {
        "images": int(w.n_images.sum()),
        "studies": len(w),
        "patients": w.patient.nunique(),
        "normal_studies": int((w.label == 0).sum()),
        "abnormal_studies": int((w.label == 1).sum()),
    }
    assert summary["totals"]["train"]["patients"] == train.patient.nunique()


def test_holdout_is_patient_grouped_stratified_and_seeded(tmp_path):
    root = make_synthetic(tmp_path, SyntheticConfig(studies_per_part=20, seed=5), progress=False)
    studies = read_mura(root).studies
    split = holdout_split(studies, fraction=0.2, seed=1)
    held, kept = split[split.holdout], split[~split.holdout]
    assert set(held.patient).isdisjoint(kept.patient)
    assert 0.12 < len(held) / len(split) < 0.28
    assert set(held.part) == set(split.part)  # every part appears in the hold-out
    again = holdout_split(studies, fraction=0.2, seed=1)
    assert np.array_equal(again.holdout.values, split.holdout.values)
    other = holdout_split(studies, fraction=0.2, seed=2)
    assert not np.array_equal(other.holdout.values, split.holdout.values)


@pytest.mark.corpus("T6")
def test_data_summary_names_a_listed_path_that_is_a_folder(synthetic_root, tmp_path, capsys):
    import shutil

    root = tmp_path / "MURA-v1.1"
    shutil.copytree(synthetic_root, root)
    listed = Path(root / "valid_image_paths.csv").read_text().splitlines()[0].split("/", 1)[1]
    target = root / listed
    target.unlink()
    target.mkdir()
    code, _ = run_cli(["data-summary", "--data-root", root, "--json", tmp_path / "s.json"], capsys)
    summary = json.loads((tmp_path / "s.json").read_text())
    assert code == 0 and any("a folder, not an image" in str(s) for s in summary["skipped"])


@pytest.mark.corpus("M2")
def test_data_summary_verify_decodes_and_finds_a_corrupt_body(synthetic_root, tmp_path, capsys):
    import shutil

    root = tmp_path / "MURA-v1.1"
    shutil.copytree(synthetic_root, root)
    listed = Path(root / "train_image_paths.csv").read_text().splitlines()[0].split("/", 1)[1]
    data = bytearray((root / listed).read_bytes())
    data[60:-20] = bytes(len(data) - 80)  # signature and IEND intact, body zeroed
    (root / listed).write_bytes(bytes(data))
    code, _ = run_cli(["data-summary", "--data-root", root, "--json", tmp_path / "quick.json"], capsys)
    quick = json.loads((tmp_path / "quick.json").read_text())
    assert code == 0 and quick["check"].startswith("header and trailer") and not quick["skipped"]
    code, _ = run_cli(["data-summary", "--data-root", root, "--verify", "--json", tmp_path / "full.json"], capsys)
    full = json.loads((tmp_path / "full.json").read_text())
    assert full["check"] == "every image decoded"
    assert [s["path"] for s in full["skipped"]] == [str(root / listed)] and "corrupt" in full["skipped"][0]["reason"]


@pytest.mark.corpus("T6")
def test_data_summary_names_an_unreadable_listed_image(synthetic_root, shared_tmp):
    root = shutil.copytree(synthetic_root, shared_tmp / "MURA-v1.1")
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    listed = root / Path(root / "valid_image_paths.csv").read_text().splitlines()[0].split("/", 1)[1]
    listed.chmod(0)
    for verify in ([], ["--verify"]):
        proc = as_nobody(["data-summary", "--data-root", root, *verify, "--json", shared_tmp / "s.json"], shared_tmp)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        summary = json.loads((shared_tmp / "s.json").read_text())
        assert summary["skipped"] == [{"path": str(listed), "reason": "cannot be read (Permission denied)"}]


@pytest.mark.corpus("M8")
def test_too_few_studies_say_how_many_each_part_and_label_needs(tmp_path, capsys):
    assert run_cli(["make-synthetic", "--out", tmp_path, "--studies-per-part", 4], capsys)[0] == 0
    code, err = run_cli(["train-router", "--data-root", tmp_path / "MURA-v1.1", "--models-dir", tmp_path / "run",
                      "--image-size", 64, "--weights", "none"], capsys)
    err = problems(err)
    assert code == 2 and len(err) == 1
    assert "each part needs at least 5 normal and 5 abnormal train studies" in err[0]
    assert "--studies-per-part 20 or more" in err[0] and "n_splits" not in err[0]
