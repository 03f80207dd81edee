import dataclasses
import json

import numpy as np
import pytest

import run_pipeline
from bonenet.configs import DemoPlan, PretrainConfig
from bonenet.models import build_base, resolve_weights
from bonenet.pretrain import SHIPPED_BACKBONE, file_sha256, provenance_path, shipped_backbone

RADIOGRAPH_SHA256 = "f80bbd796e1205ef33ffb2d379902904c84e21d2fabaffec929aea3e6d6ee429"


def test_the_shipped_radiograph_backbone_is_pinned_with_its_sources_and_licence():
    from bonenet.pretrain import RADIOGRAPH_BACKBONE, radiograph_backbone

    path, provenance = radiograph_backbone()
    assert path == RADIOGRAPH_BACKBONE and file_sha256(path) == provenance["sha256"] == RADIOGRAPH_SHA256
    (source,) = provenance["sources"]
    assert source["name"] == "FracAtlas" and source["licence"].startswith("CC BY 4.0")
    assert "10.1038/s41597-023-02432-4" in source["citation"]
    assert source["images"] == provenance["images"] == 3738 and source["excluded_benchmark_holdout"] == 286
    assert provenance["train_images"] + provenance["monitor_images"] == 3738
    assert provenance["summary"] == "pretrained on 3,738 open real radiographs (FracAtlas, CC BY 4.0), not ImageNet"
    assert "--real ../shared/data/fracatlas" in provenance["command"] and "--init synthetic" in provenance["command"]
    assert provenance["config"]["image_size"] == 96 and provenance["config"]["seed"] == 1
    assert provenance["steps"] == 2120 and provenance["storage"] == "float16"
    assert provenance["init"].startswith("the shipped synthetic backbone")
    assert (path.parent / "radiograph_backbone_96.NOTICE.md").read_text().count("CC BY 4.0") >= 2  # attribution
    weights, origin = resolve_weights("radiograph")  # `--weights radiograph` names it
    assert weights == str(path) and origin["kind"] == "radiograph" and origin["sha256"] == RADIOGRAPH_SHA256
    base = build_base(96, weights=weights)
    assert base.count_params() > 4_000_000


def test_a_damaged_radiograph_backbone_is_refused(tmp_path, monkeypatch):
    from bonenet import pretrain

    copy = tmp_path / "radiograph_backbone_96.weights.h5"
    copy.write_bytes(pretrain.RADIOGRAPH_BACKBONE.read_bytes()[:-10] + b"0123456789")
    (tmp_path / "radiograph_backbone_96.json").write_text(provenance_path(pretrain.RADIOGRAPH_BACKBONE).read_text())
    monkeypatch.setattr(pretrain, "RADIOGRAPH_BACKBONE", copy)
    with pytest.raises(ValueError, match="differs from its provenance"):
        resolve_weights("radiograph")


@pytest.mark.slow  # a router and a part trained on the radiograph backbone from the command line: about a minute
def test_train_all_takes_weights_radiograph(synthetic_root, tmp_path, capsys):
    run = tmp_path / "run"
    assert run_pipeline.main(["train-router", "--data-root", synthetic_root, "--models-dir", run, "--weights",
                              "radiograph", "--image-size", "96", "--epochs", "1", "--batch-size", "16"]) == 0
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["weights"]["kind"] == "radiograph"
    from bonenet.inference import BoneNet

    assert BoneNet.load(run).caveat.startswith("CAVEAT: backbone pretrained on 3,738 open real radiographs")


def test_the_shipped_backbone_matches_the_sha256_and_says_what_it_is():
    path, provenance = shipped_backbone()
    assert file_sha256(path) == provenance["sha256"]
    assert path.stat().st_size <= 10 * 2**20 and provenance["storage"] == "float16"
    assert "synthetic radiographs" in provenance["origin"] and "NOT ImageNet" in provenance["origin"]
    assert provenance["command"].startswith("bonenet pretrain-backbone")
    # The shipped file is what `pretrain-backbone` makes at its defaults, seeded apart from the demo's data (0).
    assert provenance["config"] == dataclasses.asdict(PretrainConfig()) and PretrainConfig().seed != DemoPlan().seed
    assert provenance["steps"] == PretrainConfig().epochs * -(-provenance["train_images"] // PretrainConfig().batch_size)
    assert {"generator_version", "dataset_fingerprint", "data_sha256", "holdout_accuracy"} <= set(provenance)
    # Loaded as `--weights PATH`, it is recorded as a file with that provenance, never as ImageNet.
    weights, origin = resolve_weights(str(path))
    assert origin["kind"] == "file" and "NOT ImageNet" in origin["description"]
    base = build_base(96, weights)
    # Stored as float16, loaded into float32 variables (the input Normalization's count is an integer).
    assert {str(w.dtype) for w in base.weights} == {"float32", "int64"}


def test_a_damaged_shipped_backbone_is_refused(tmp_path, monkeypatch):
    import bonenet.pretrain as pretrain

    copy = tmp_path / SHIPPED_BACKBONE.name
    data = bytearray(SHIPPED_BACKBONE.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    provenance_path(copy).write_text(provenance_path(SHIPPED_BACKBONE).read_text())
    monkeypatch.setattr(pretrain, "SHIPPED_BACKBONE", copy)
    with pytest.raises(ValueError, match="differs from its provenance"):
        pretrain.shipped_backbone()


@pytest.mark.slow  # a whole pretraining at a toy size: about 40 s
def test_pretrain_backbone_cli_at_a_toy_size(tmp_path, capsys):
    out = tmp_path / "toy.weights.h5"
    code = run_pipeline.main(["pretrain-backbone", "--out", str(out), "--studies-per-part", "2", "--epochs", "1",
                              "--image-size", "32", "--batch-size", "16", "--warmup-epochs", "0"])
    assert code == 0 and out.is_file()
    provenance = json.loads(provenance_path(out).read_text())
    assert provenance["sha256"] == file_sha256(out) and provenance["storage"] == "float16"
    assert provenance["config"]["studies_per_part"] == 2 and provenance["steps"] >= 1
    assert "--studies-per-part 2" in provenance["command"] and "NOT ImageNet" in provenance["origin"]
    assert 0 <= provenance["holdout_accuracy"]["joint"] <= 1
    assert (tmp_path / "toy-data" / "MURA-v1.1" / "synthetic.json").is_file()
    assert not (tmp_path / "toy-backup").exists()  # the resume backup is gone once the file is written
    # float16 on disk, float32 in the model.
    import h5py

    with h5py.File(out) as f:
        dtypes = set()
        f.visititems(lambda name, obj: dtypes.add(obj.dtype) if isinstance(obj, h5py.Dataset) else None)
    assert np.dtype("float16") in dtypes and np.dtype("float32") not in dtypes
    assert "hold-out accuracy" in capsys.readouterr().out


@pytest.mark.slow  # a pretraining at a toy size: about 50 s
def test_pretraining_on_real_radiographs_at_a_toy_size_records_its_sources_and_loads_as_a_radiograph_backbone(
        toy_fracatlas, tmp_path, capsys):
    from bonenet.pretrain_data import benchmark_holdout

    out = tmp_path / "real.weights.h5"
    code = run_pipeline.main(["pretrain-backbone", "--out", str(out), "--real", str(toy_fracatlas), "--init", "none",
                              "--epochs", "1", "--image-size", "32", "--batch-size", "16", "--warmup-epochs", "0"])
    assert code == 0 and out.is_file()
    provenance = json.loads(provenance_path(out).read_text())
    assert provenance["sha256"] == file_sha256(out) and provenance["storage"] == "float16"
    (source,) = provenance["sources"]
    held_out = benchmark_holdout(toy_fracatlas)
    assert source["name"] == "FracAtlas" and source["licence"].startswith("CC BY 4.0")
    assert source["excluded_benchmark_holdout"] == len(held_out) > 0
    assert provenance["images"] == source["images"] == provenance["train_images"] + provenance["monitor_images"]
    assert set(provenance["monitor_auroc"]) == {"hand", "leg", "hip", "shoulder", "frontal", "lateral", "oblique",
                                                "fractured", "hardware"}
    assert "--real" in provenance["command"] and provenance["init"] == "random initialisation"
    assert "NOT ImageNet" in provenance["origin"] and provenance["summary"].endswith("not ImageNet")
    assert "AUROC on" in capsys.readouterr().out
    _, origin = resolve_weights(str(out))
    assert origin["kind"] == "radiograph" and origin["summary"] == provenance["summary"]


@pytest.mark.slow  # a pretraining killed after its first epoch and resumed: about a minute
def test_pretraining_on_real_radiographs_resumes_after_a_kill(toy_fracatlas, tmp_path):
    import subprocess
    import sys

    from conftest import REPO, kill_cli_when

    out = tmp_path / "real.weights.h5"
    args = ["pretrain-backbone", "--out", out, "--real", toy_fracatlas, "--init", "none", "--epochs", "3",
            "--image-size", "32", "--batch-size", "8", "--warmup-epochs", "0"]
    backup = tmp_path / "real-backup"
    kill_cli_when(args, lambda: (backup / "training_metadata.json").is_file())
    epoch = json.loads((backup / "training_metadata.json").read_text())["epoch"]
    assert not out.exists() and 1 <= epoch < 3  # killed mid-run: nothing written, the backup kept
    refused = subprocess.run([sys.executable, "run_pipeline.py", *map(str, args)], cwd=REPO, capture_output=True,
                             text=True, timeout=600)
    assert refused.returncode == 2 and "pass --resume to continue it" in refused.stderr
    resumed = subprocess.run([sys.executable, "run_pipeline.py", *map(str, args), "--resume"], cwd=REPO,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    shown = resumed.stdout + resumed.stderr
    assert f"Epoch {epoch + 1}/3" in shown and "Epoch 1/3" not in shown  # it went on from the killed epoch
    assert out.is_file() and not backup.exists() and json.loads(provenance_path(out).read_text())["steps"] > 0
