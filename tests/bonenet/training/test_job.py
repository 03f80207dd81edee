"""A model's training job (`bonenet.training.job`): the checks before any time is spent, and the split."""

import pytest

from bonenet.configs import TrainConfig
from bonenet.training.job import prepare_job, shared_settings

CONFIG = TrainConfig(epochs=1, batch_size=8, image_size=64, weights="none")


def test_the_hold_out_is_patient_grouped_and_disjoint_from_fitting(index, tmp_path):
    job = prepare_job("wrist", index, tmp_path, CONFIG)
    ex = job.examples
    assert job.key == "XR_WRIST" and ex.num_classes == 2 and job.home == tmp_path
    assert ex.train_paths and ex.val_paths and not set(ex.train_paths) & set(ex.val_paths)
    patients = index.images.set_index("path").patient
    assert not set(patients[ex.train_paths]) & set(patients[ex.val_paths])
    router = prepare_job("router", index, tmp_path, CONFIG)
    assert router.examples.num_classes == 7 and len(router.examples.train_paths) > len(ex.train_paths)


def test_a_part_without_both_classes_is_refused_by_name(index, tmp_path):
    from dataclasses import replace

    images = index.images[~((index.images.part == "XR_WRIST") & (index.images.label == 1))]
    only_normal = replace(index, images=images, studies=index.studies[index.studies.study.isin(set(images.study))])
    with pytest.raises(ValueError, match=r"XR_WRIST: training data has classes \[0\], needs all 2"):
        prepare_job("wrist", only_normal, tmp_path, CONFIG)


def test_the_shared_settings_compare_the_count_until_the_model_is_built():
    origin = {"kind": "none"}
    before = shared_settings(CONFIG, origin, None)
    assert before["trainable_layers"] == {"count": 20} and before["image_size"] == 64
    after = shared_settings(CONFIG, origin, ["top_conv"])
    assert after["trainable_layers"] == {"count": 20, "trainable": ["top_conv"]}
