"""benchmarks/full_scale.py at a toy scale: its JSON, and stages that add up to the total."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bonenet.data.synthetic import mura_plan

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # a tiny MURA-shaped dataset through train-all and evaluate: about a minute and a half
def test_full_scale_at_a_toy_scale_records_every_stage_and_they_add_up(tmp_path):
    args = [sys.executable, "benchmarks/full_scale.py", "--out", str(tmp_path), "--scale", "0.0001",
            "--image-size", "32", "--epochs", "1", "--views", "1"]
    began = time.perf_counter()
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=900)
    outer = time.perf_counter() - began
    assert proc.returncode == 0, proc.stderr[-3000:] + (tmp_path / "train.log").read_text()[-3000:]
    result = json.loads((tmp_path / "full_scale.json").read_text())
    assert {"date", "commit", "machine", "setup", "seconds", "attempts", "peak_memory_mb", "cache_bytes"} <= set(result)
    assert {"model", "cpus", "avx512", "bf16", "amx"} <= set(result["machine"])
    s = result["seconds"]
    assert set(s["heads"]) == {"router", "XR_ELBOW", "XR_FINGER", "XR_FOREARM", "XR_HAND", "XR_HUMERUS",
                               "XR_SHOULDER", "XR_WRIST"}
    # Stages timed inside train-all (the cache's and each fit's own clocks) fit inside its wall time, and the
    # commands' wall times inside the benchmark's own, timed here from outside.
    timed_inside = s["decode_and_prepare"] + s["trunk_forward"] + sum(s["heads"].values())
    assert timed_inside < s["train_all"] and s["train_all"] + s["evaluate"] <= outer
    assert min(s["decode_and_prepare"], s["trunk_forward"], s["evaluate"], *s["heads"].values()) > 0
    assert s["train_other"] > 0  # indexing, building and saving take time: the remainder is not a fudge
    plan = mura_plan(0.0001)
    assert result["setup"]["images"] == {split: sum(views for studies in plan[split].values() for _, views in studies)
                                         for split in plan}
    assert result["cache_bytes"] > 0 and result["peak_memory_mb"]["train_all"] > 100
    assert result["cpu_seconds"]["train_all"] > 0 and result["cpu_seconds"]["evaluate"] > 0
    assert proc.stdout.strip().splitlines()[-1].startswith("total ")
    # Run again: everything is done, so it only reads back the same figures.
    again = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and json.loads((tmp_path / "full_scale.json").read_text())["seconds"] == s
