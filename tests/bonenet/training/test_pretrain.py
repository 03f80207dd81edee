import json

import numpy as np
import pytest

import run_pipeline
from bonenet import runtime
from bonenet.digests import file_sha256
from bonenet.models.backbones import provenance_path
from bonenet.models.efficientnet import resolve_weights
from bonenet.run.provenance import caveat


@pytest.mark.slow  # a router and a part trained on the radiograph backbone from the command line: about a minute
def test_train_all_takes_weights_radiograph(synthetic_root, tmp_path, capsys):
    run = tmp_path / "run"
    assert run_pipeline.main(["train-router", "--data-root", synthetic_root, "--models-dir", run, "--weights",
                              "radiograph", "--image-size", "96", "--epochs", "1", "--batch-size", "16"]) == 0
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["weights"]["kind"] == "radiograph"
    from bonenet.inference.predictor import BoneNet

    assert caveat(BoneNet.load(run).manifest).startswith("CAVEAT: backbone pretrained on 3,738 open real radiographs")


@pytest.mark.slow  # a whole pretraining at a toy size: about 40 s
def test_pretrain_backbone_cli_at_a_toy_size(tmp_path, capsys):
    out = tmp_path / "toy.weights.h5"
    code = run_pipeline.main(["pretrain-backbone", "--out", str(out), "--studies-per-part", "2", "--epochs", "2",
                              "--image-size", "64", "--early-size", "32", "--batch-size", "16", "--warmup-epochs", "0"])
    assert code == 0 and out.is_file()
    provenance = json.loads(provenance_path(out).read_text())
    assert provenance["sha256"] == file_sha256(out) and provenance["storage"] == "float16"
    assert provenance["config"]["studies_per_part"] == 2 and provenance["steps"] >= 1
    assert "--studies-per-part 2" in provenance["command"] and "NOT ImageNet" in provenance["origin"]
    assert provenance["config"]["precision"] == "auto" and provenance["precision"] == runtime.start()["precision"]
    assert "the first 1 of 2 epochs at 32 px (scaled down from 64)" in provenance["schedule"]
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
        toy_fracatlas, tmp_path, capsys, monkeypatch):
    from bonenet.data.sources import benchmark_holdout

    # This process as `--precision mixed_bfloat16` starts it, so a CPU without native bfloat16 checks that path too.
    runtime.start()
    monkeypatch.setitem(runtime._STATE, "precision", "mixed_bfloat16")
    out = tmp_path / "real.weights.h5"
    code = run_pipeline.main(["pretrain-backbone", "--out", str(out), "--real", str(toy_fracatlas), "--init", "none",
                              "--epochs", "1", "--image-size", "32", "--batch-size", "16", "--warmup-epochs", "0",
                              "--precision", "mixed_bfloat16"])
    assert code == 0 and out.is_file()
    provenance = json.loads(provenance_path(out).read_text())
    assert provenance["sha256"] == file_sha256(out) and provenance["storage"] == "float16"
    assert provenance["precision"] == provenance["config"]["precision"] == "mixed_bfloat16"
    import h5py

    with h5py.File(out) as f:
        arrays = []
        f.visititems(lambda name, obj: arrays.append(obj[()]) if isinstance(obj, h5py.Dataset) else None)
    assert arrays and all(np.isfinite(a).all() for a in arrays)  # bfloat16 steps left no NaN in the weights
    (source,) = provenance["sources"]
    held_out = benchmark_holdout(toy_fracatlas)
    assert source["name"] == "FracAtlas" and source["licence"].startswith("CC BY 4.0")
    assert source["excluded_benchmark_holdout"] == len(held_out) > 0
    assert provenance["images"] == source["images"] == provenance["train_images"] + provenance["monitor_images"]
    assert set(provenance["monitor_auroc"]) == {"hand", "leg", "hip", "shoulder", "frontal", "lateral", "oblique",
                                                "fractured", "hardware"}
    assert "--real" in provenance["command"] and provenance["init"] == "random initialisation"
    assert source["root"] == toy_fracatlas.name and str(tmp_path) not in provenance_path(out).read_text()
    assert "NOT ImageNet" in provenance["origin"] and provenance["summary"].endswith("not ImageNet")
    assert "held-back images: hand AUROC" in capsys.readouterr().out
    _, origin = resolve_weights(str(out))
    assert origin["kind"] == "radiograph" and origin["summary"] == provenance["summary"]


def _epoch_recorded(backup):
    """Whether Keras' backup has recorded a finished epoch (its metadata file exists before it is written)."""
    try:
        return "epoch" in json.loads((backup / "training_metadata.json").read_text())
    except (OSError, ValueError):
        return False


@pytest.mark.slow  # a pretraining (progressive resizing) killed after its first epoch and resumed: about a minute
def test_pretraining_on_real_radiographs_resumes_after_a_kill(toy_fracatlas, tmp_path):
    import subprocess
    import sys

    from conftest import REPO, kill_cli_when

    out = tmp_path / "real.weights.h5"
    args = ["pretrain-backbone", "--out", out, "--real", toy_fracatlas, "--init", "none", "--epochs", "3",
            "--image-size", "48", "--early-size", "32", "--batch-size", "8", "--warmup-epochs", "0"]
    backup = tmp_path / "real-backup"
    kill_cli_when(args, lambda: _epoch_recorded(backup))
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
    provenance = json.loads(provenance_path(out).read_text())
    assert out.is_file() and not backup.exists() and provenance["steps"] > 0
    assert "the first 2 of 3 epochs at 32 px" in provenance["schedule"]  # progressive resizing, resumed


def test_a_provenance_command_names_absolute_paths_by_their_name_only():
    from bonenet.training.pretrain import portable_command

    command = "bonenet pretrain-backbone --out /home/me/runs/b.weights.h5 --real ../data/fracatlas '/mnt/x y/list.csv'"
    assert portable_command(command) == ("bonenet pretrain-backbone --out b.weights.h5 --real ../data/fracatlas "
                                         "list.csv")


def test_leave_out_without_real_radiographs_is_one_line(tmp_path, capsys):
    code = run_pipeline.main(["pretrain-backbone", "--out", str(tmp_path / "b.weights.h5"), "--leave-out", "hand"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--leave-out chooses FracAtlas regions" in err[0], err
