"""The shipped backbones (`bonenet.models.backbones`): pinned by sha256, described by their provenance, refused when
damaged."""

import dataclasses

import pytest

from bonenet.configs import DemoPlan, PretrainConfig
from bonenet.digests import file_sha256
from bonenet.models import backbones
from bonenet.models.backbones import (
    RADIOGRAPH_BACKBONE,
    SHIPPED_BACKBONE,
    provenance_path,
    radiograph_backbone,
    shipped_backbone,
)
from bonenet.models.efficientnet import build_base, resolve_weights

RADIOGRAPH_SHA256 = "f80bbd796e1205ef33ffb2d379902904c84e21d2fabaffec929aea3e6d6ee429"


def test_the_shipped_radiograph_backbone_is_pinned_with_its_sources_and_licence():
    path, provenance = radiograph_backbone()
    assert path == RADIOGRAPH_BACKBONE and file_sha256(path) == provenance["sha256"] == RADIOGRAPH_SHA256
    (source,) = provenance["sources"]
    assert source["name"] == "FracAtlas" and source["licence"].startswith("CC BY 4.0")
    assert "10.1038/s41597-023-02432-4" in source["citation"]
    assert source["images"] == provenance["images"] == 3738 and source["excluded_benchmark_holdout"] == 286
    assert provenance["train_images"] + provenance["monitor_images"] == 3738
    assert provenance["summary"] == "pretrained on 3,738 open real radiographs (FracAtlas, CC BY 4.0), not ImageNet"
    assert "--real ../shared/data/fracatlas" in provenance["command"] and "--init synthetic" in provenance["command"]
    assert source["root"] == "fracatlas"
    assert provenance["config"]["image_size"] == 96 and provenance["config"]["seed"] == 1
    assert provenance["steps"] == 2120 and provenance["storage"] == "float16"
    assert provenance["init"].startswith("the shipped synthetic backbone")
    assert (path.parent / "radiograph_backbone_96.NOTICE.md").read_text().count("CC BY 4.0") >= 2  # attribution
    weights, origin = resolve_weights("radiograph")  # `--weights radiograph` names it
    assert weights == str(path) and origin["kind"] == "radiograph" and origin["sha256"] == RADIOGRAPH_SHA256
    base = build_base(96, weights=weights)
    assert base.count_params() > 4_000_000


def test_a_damaged_radiograph_backbone_is_refused(tmp_path, monkeypatch):
    copy = tmp_path / "radiograph_backbone_96.weights.h5"
    copy.write_bytes(backbones.RADIOGRAPH_BACKBONE.read_bytes()[:-10] + b"0123456789")
    (tmp_path / "radiograph_backbone_96.json").write_text(provenance_path(backbones.RADIOGRAPH_BACKBONE).read_text())
    monkeypatch.setattr(backbones, "RADIOGRAPH_BACKBONE", copy)
    with pytest.raises(ValueError, match="differs from its provenance"):
        resolve_weights("radiograph")


def test_the_shipped_backbone_matches_the_sha256_and_says_what_it_is():
    path, provenance = shipped_backbone()
    assert file_sha256(path) == provenance["sha256"]
    assert path.stat().st_size <= 10 * 2**20 and provenance["storage"] == "float16"
    assert "synthetic radiographs" in provenance["origin"] and "NOT ImageNet" in provenance["origin"]
    assert provenance["command"].startswith("bonenet pretrain-backbone")
    # The shipped file is what `pretrain-backbone` makes at its defaults, seeded apart from the demo's data (0).
    # The defaults made it; `leave_out`, `early_size`, `objective` and `precision` came later, and their defaults
    # change nothing (nothing left out, every epoch at full size, the labels as targets, float32 on its CPU).
    assert ({**provenance["config"], "leave_out": "", "early_size": 0, "objective": "targets",
             "precision": "auto"}
            == dataclasses.asdict(PretrainConfig()))
    assert PretrainConfig().seed != DemoPlan().seed
    assert provenance["steps"] == PretrainConfig().epochs * -(-provenance["train_images"] // PretrainConfig().batch_size)
    assert {"generator_version", "dataset_fingerprint", "data_sha256", "holdout_accuracy"} <= set(provenance)
    # Loaded as `--weights PATH`, it is recorded as a file with that provenance, never as ImageNet.
    weights, origin = resolve_weights(str(path))
    assert origin["kind"] == "file" and "NOT ImageNet" in origin["description"]
    base = build_base(96, weights)
    # Stored as float16, loaded into float32 variables (the input Normalization's count is an integer).
    assert {str(w.dtype) for w in base.weights} == {"float32", "int64"}


def test_a_damaged_shipped_backbone_is_refused(tmp_path, monkeypatch):
    copy = tmp_path / SHIPPED_BACKBONE.name
    data = bytearray(SHIPPED_BACKBONE.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    provenance_path(copy).write_text(provenance_path(SHIPPED_BACKBONE).read_text())
    monkeypatch.setattr(backbones, "SHIPPED_BACKBONE", copy)
    with pytest.raises(ValueError, match="differs from its provenance"):
        backbones.shipped_backbone()


def test_the_shipped_provenance_files_record_no_machine_paths():
    import json

    from bonenet.models.backbones import ASSETS

    def strings(value):
        if isinstance(value, dict):
            return [s for v in value.values() for s in strings(v)]
        if isinstance(value, list):
            return [s for v in value for s in strings(v)]
        return [value] if isinstance(value, str) else []

    files = sorted(ASSETS.glob("*.json"))
    assert len(files) >= 2
    for path in files:
        text = strings(json.loads(path.read_text()))
        assert not [s for s in text if s.startswith("/") or " /" in s], path.name
