import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # the benchmark's variants, each in its own process: about 50 s
def test_trunk_speed_compares_variants_and_their_features(tmp_path):
    out = tmp_path / "trunk.json"
    proc = subprocess.run([sys.executable, "benchmarks/trunk_speed.py", "--image-size", "32", "--images", "6",
                           "--rounds", "1", "--variants", "previous,batch_4", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert {"avx512", "bf16", "amx"} <= set(result["machine"])
    assert result["setup"]["images"] == 6 and result["setup"]["default_batch"] == 32
    previous, small = result["variants"]["previous"], result["variants"]["batch_4"]
    assert (previous["batch"], small["batch"]) == (32, 4)
    # Ratios are the quotients of this run's rates (no speed is asserted: a test's machine is never quiet).
    assert small["ratio"] == pytest.approx(small["images_per_s"] / previous["images_per_s"], rel=0.01, abs=0.002)
    assert small["trunk_ratio"] == pytest.approx(small["trunk_images_per_s"] / previous["trunk_images_per_s"],
                                                 rel=0.01, abs=0.002)
    # A batch never changes an image beyond float32 rounding: at most one float16 step of the stored value.
    assert previous["max_abs_difference"] == 0
    assert small["max_abs_difference"] <= result["setup"]["largest_value"] * 2 ** -10


def test_trunk_speed_refuses_a_run_without_the_previous_code():
    proc = subprocess.run([sys.executable, "benchmarks/trunk_speed.py", "--variants", "batch_4"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "must include previous" in proc.stderr
