"""Real radiographs for pretraining (`bonenet.data.sources`): FracAtlas' targets, and the benchmark's held-out
images left out by construction and refused by their bytes."""

import shutil

import pandas as pd
import pytest

from bonenet.data import sources
from bonenet.data.datalist import fracatlas_datalist, read_dataset
from bonenet.data.mura import MuraError


def _benchmark_valid(root, tmp_path):
    csv = tmp_path / "bench.csv"
    fracatlas_datalist(root, csv)
    return {p.split("/")[-1] for p in read_dataset(csv, splits=("valid",)).images["path"]}


def test_fracatlas_gives_nine_targets_and_leaves_out_exactly_the_benchmarks_held_out_images(toy_fracatlas, tmp_path):
    (source,) = sources.read_sources([toy_fracatlas])
    valid = _benchmark_valid(toy_fracatlas, tmp_path)
    names = {p.split("/")[-1] for p in source.table["path"]}
    assert valid and not names & valid  # none of the benchmark's held-out images is pretrained on
    every = set(pd.read_csv(toy_fracatlas / "dataset.csv")["image_id"])
    assert names == every - valid and source.excluded == len(valid)  # and every other image is, legs too
    assert list(source.table.columns) == ["path", *sources.FRACATLAS_TARGETS]
    facts = source.as_dict()
    assert facts["licence"].startswith("CC BY 4.0") and "10.1038/s41597-023-02432-4" in facts["citation"]
    assert facts["images"] == len(every) - len(valid) and facts["excluded_benchmark_holdout"] == len(valid)


def test_a_region_left_out_leaves_none_of_its_films_and_says_how_many(toy_fracatlas, tmp_path):
    (whole,) = sources.read_sources([toy_fracatlas])
    (source,) = sources.read_sources([toy_fracatlas], leave_out=("hand",))
    dataset = pd.read_csv(toy_fracatlas / "dataset.csv").set_index("image_id")
    names = [p.split("/")[-1] for p in source.table["path"]]
    assert names and not dataset.loc[names, "hand"].any()  # no hand film, train or held out
    hands = int(whole.table["hand"].sum())
    assert hands > 0 and len(source.table) == len(whole.table) - hands and source.left_out_images == hands
    facts = source.as_dict()
    assert facts["left_out_regions"] == ["hand"] and facts["left_out_images"] == hands
    assert facts["root"] == toy_fracatlas.name


def test_only_fracatlas_regions_can_be_left_out():
    from bonenet.configs import PretrainConfig

    assert PretrainConfig(leave_out="Hand, leg").regions_left_out == ("hand", "leg")
    with pytest.raises(ValueError, match="leave_out: unknown region\\(s\\) knee"):
        PretrainConfig(leave_out="knee")


def test_a_held_out_image_under_another_name_is_refused(toy_fracatlas, tmp_path):
    held = sorted(_benchmark_valid(toy_fracatlas, tmp_path))[0]
    copy = tmp_path / "renamed.jpg"
    shutil.copy(toy_fracatlas / "images" / held, copy)  # same bytes, another name and folder
    others = sorted((toy_fracatlas / "images").glob("*.jpg"))[:12]
    rows = [{"path": str(p), "patient": f"p{i}", "study": f"s{i}", "part": "hand", "label": i % 2}
            for i, p in enumerate([copy, *others])]
    csv = tmp_path / "mine.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    with pytest.raises(ValueError, match=f"{copy}: this image is held out by the FracAtlas benchmark .*{held}"):
        sources.read_sources([toy_fracatlas, csv])


def test_a_fracatlas_table_without_a_target_column_names_it(toy_fracatlas, tmp_path):
    broken = shutil.copytree(toy_fracatlas, tmp_path / "broken")
    table = pd.read_csv(broken / "dataset.csv").drop(columns=["hardware"])
    table.to_csv(broken / "dataset.csv", index=False)
    with pytest.raises(MuraError, match="dataset.csv: no column hardware"):
        sources.fracatlas_source(broken, {})


def test_a_datalist_gives_its_parts_and_abnormal(toy_fracatlas, tmp_path):
    csv = tmp_path / "fracatlas.csv"
    fracatlas_datalist(toy_fracatlas, csv)
    source = sources.datalist_source(csv, "CC BY 4.0")
    assert list(source.table.columns) == ["path", "XR_HAND", "XR_SHOULDER", "abnormal"]
    assert source.table[["XR_HAND", "XR_SHOULDER"]].sum(axis=1).eq(1).all()
    with pytest.raises(ValueError, match="neither a FracAtlas folder"):
        sources.read_sources([tmp_path / "fracatlas.txt"])


def test_a_folder_of_images_gives_paths_without_labels_and_names_what_it_leaves_out(toy_fracatlas, tmp_path, caplog):
    import cv2
    import numpy as np

    folder = tmp_path / "archive"
    (folder / "deep").mkdir(parents=True)
    for i in range(3):
        cv2.imwrite(str(folder / "deep" / f"film{i}.png"), np.full((40, 30), 40 * i, np.uint8))
    (folder / "notes.txt").write_text("not a film")
    (source,) = sources.read_sources([folder])
    assert list(source.table.columns) == ["path"] and len(source.table) == 3
    assert source.as_dict()["targets"] == [] and source.as_dict()["root"] == "archive"
    assert "archive: 1 file(s) left out, not images" in caplog.text and "notes.txt" in caplog.text
    with pytest.raises(ValueError, match="archive: a folder of images gives no labels to learn; .*--objective "
                                         "contrastive or both"):
        sources.check_labelled(sources.read_sources([toy_fracatlas, folder]))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MuraError, match="empty: no PNG, JPEG or DICOM images in this folder"):
        sources.read_sources([empty])


def test_a_held_out_film_in_a_folder_of_images_is_refused(toy_fracatlas, tmp_path):
    held = sorted(_benchmark_valid(toy_fracatlas, tmp_path))[0]
    folder = tmp_path / "archive"
    folder.mkdir()
    shutil.copy(toy_fracatlas / "images" / held, folder / "mine.jpg")
    with pytest.raises(ValueError, match="mine.jpg: this image is held out by the FracAtlas benchmark"):
        sources.read_sources([toy_fracatlas, folder])
