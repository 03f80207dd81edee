
import json

import cv2
import numpy as np
import pytest
from conftest import kill_while_writing, run_cli, snapshot

import run_pipeline
from bonenet.configs import SyntheticConfig
from bonenet.data.mura import read_mura
from bonenet.data.synthetic import MURA_IMAGES, MURA_STUDIES, draw_radiograph, make_synthetic, mura_plan
from bonenet.parts import PARTS


def test_same_seed_gives_byte_identical_output(tmp_path):
    a = make_synthetic(tmp_path / "a", SyntheticConfig(studies_per_part=2, seed=7), progress=False)
    b = make_synthetic(tmp_path / "b", SyntheticConfig(studies_per_part=2, seed=7), progress=False)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    c = make_synthetic(tmp_path / "c", SyntheticConfig(studies_per_part=2, seed=8), progress=False)
    assert (a / "train_labeled_studies.csv").read_bytes() != (c / "train_labeled_studies.csv").read_bytes() or (
        (a / "train/XR_ELBOW/patient00001/study1_negative/image1.png").read_bytes()
        != (c / "train/XR_ELBOW/patient00001/study1_negative/image1.png").read_bytes()
    )


def test_layout_csvs_and_image_formats(synthetic_root):
    lines = (synthetic_root / "train_labeled_studies.csv").read_text().splitlines()
    assert all(line.startswith("MURA-v1.1/train/XR_") and line.endswith(("/,0", "/,1")) for line in lines)
    paths = (synthetic_root / "valid_image_paths.csv").read_text().splitlines()
    assert paths and all(p.startswith("MURA-v1.1/valid/") and p.endswith(".png") for p in paths)
    shapes = [cv2.imread(str(synthetic_root.parent / p), cv2.IMREAD_UNCHANGED).shape for p in paths]
    assert all(max(s[:2]) <= 512 for s in shapes)


def test_abnormal_rate_near_mura(tmp_path):
    root = make_synthetic(tmp_path, SyntheticConfig(studies_per_part=16, seed=0), progress=False)
    labels = [int(line[-1]) for line in (root / "train_labeled_studies.csv").read_text().splitlines()]
    assert 0.3 < np.mean(labels) < 0.5


def test_findings_change_the_bone_not_the_markers():
    for part in PARTS:
        normal = draw_radiograph(part, [], np.random.default_rng(1), size=256)
        abnormal = draw_radiograph(part, [("lesion", 0)], np.random.default_rng(1), size=256)
        assert normal.shape == abnormal.shape and normal.dtype == np.uint8
        diff = np.abs(normal.astype(int) - abnormal.astype(int))
        assert 0 < (diff > 40).sum() < 0.05 * diff.size  # a local finding, not a global change


def test_cli_writes_the_dataset_the_library_makes_with_the_counts_asked_for(tmp_path, capsys):
    args = ["--studies-per-part", "2", "--valid-studies-per-part", "1", "--seed", "1"]
    assert run_pipeline.main(["make-synthetic", "--out", str(tmp_path / "cli"), *args]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'cli' / 'MURA-v1.1'}"
    config = SyntheticConfig(studies_per_part=2, valid_studies_per_part=1, seed=1)
    library = make_synthetic(tmp_path / "lib", config, progress=False)
    files = sorted(p.relative_to(library) for p in library.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "cli" / "MURA-v1.1")
                           for p in (tmp_path / "cli" / "MURA-v1.1").rglob("*") if p.is_file())
    assert all((library / f).read_bytes() == (tmp_path / "cli" / "MURA-v1.1" / f).read_bytes() for f in files)
    per_part = read_mura(library).studies.groupby(["split", "part"]).size()
    assert set(per_part.loc["train"]) == {2} and set(per_part.loc["valid"]) == {1} and len(per_part) == 14


@pytest.mark.corpus("M7")
def test_make_synthetic_refuses_an_existing_dataset_and_a_killed_run_leaves_the_old_one_whole(tmp_path, monkeypatch):
    import json

    from bonenet.data import synthetic

    root = make_synthetic(tmp_path, SyntheticConfig(studies_per_part=2, seed=0), progress=False)
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert json.loads((root / "synthetic.json").read_text())["seed"] == 0
    with pytest.raises(ValueError, match="already exists; pass --overwrite"):
        make_synthetic(tmp_path, SyntheticConfig(studies_per_part=2, seed=1), progress=False)
    calls = []

    def killed(path, image):
        calls.append(path)
        if len(calls) > 3:
            raise KeyboardInterrupt  # stands in for kill -9 half-way through the images
        return cv2.imwrite(path, image)

    monkeypatch.setattr(synthetic.cv2, "imwrite", killed)
    with pytest.raises(KeyboardInterrupt):
        make_synthetic(tmp_path, SyntheticConfig(studies_per_part=2, seed=1), overwrite=True, progress=False)
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before  # seed 0, whole
    assert [p.name for p in tmp_path.iterdir()] == ["MURA-v1.1"]


@pytest.mark.corpus("M7")
def test_make_synthetic_killed_over_an_existing_dataset_leaves_it_whole(tmp_path, capsys):
    args = ["make-synthetic", "--out", tmp_path, "--studies-per-part", 6]
    assert run_cli(args, capsys)[0] == 0
    root = tmp_path / "MURA-v1.1"
    before = snapshot(root)
    kill_while_writing([*args, "--seed", 1, "--overwrite"], root, files=5)
    assert snapshot(root) == before and json.loads((root / "synthetic.json").read_text())["seed"] == 0
    assert run_cli([*args, "--seed", 1, "--overwrite"], capsys)[0] == 0
    assert json.loads((root / "synthetic.json").read_text())["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["MURA-v1.1"]


def test_the_mura_plan_has_muras_own_counts_and_keeps_a_hold_out_possible_when_scaled_down():
    plan = mura_plan(1.0)
    images = {split: sum(v for studies in plan[split].values() for _, v in studies) for split in plan}
    assert images == {"train": 36_808, "valid": 3_197}
    for split, parts in MURA_STUDIES.items():
        for part, (normal, abnormal) in parts.items():
            labels = [label for label, _ in plan[split][part]]
            assert (labels.count(0), labels.count(1)) == (normal, abnormal), (split, part)
            assert sum(v for _, v in plan[split][part]) == MURA_IMAGES[split][part], (split, part)
    tiny = mura_plan(0.0001)
    assert all([label for label, _ in studies].count(1) >= 6 for studies in tiny["train"].values())


def test_make_synthetic_draws_the_planned_counts(tmp_path):
    root = make_synthetic(tmp_path, SyntheticConfig(mura_scale=0.0001), progress=False)
    index = read_mura(root)
    plan = mura_plan(0.0001)
    for (split, part), rows in index.images.groupby(["split", "part"]):
        assert len(rows) == sum(v for _, v in plan[split][part]), (split, part)
    studies = index.studies.groupby(["split", "part", "label"]).size()
    assert studies.loc[("train", "XR_WRIST", 1)] == 6 and studies.loc[("valid", "XR_HAND", 0)] == 2
    assert json.loads((root / "synthetic.json").read_text())["mura_scale"] == 0.0001
