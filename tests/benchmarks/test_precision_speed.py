import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_precision_speed_times_both_precisions_and_compares_their_features(tmp_path):
    out = tmp_path / "precision.json"
    proc = subprocess.run([sys.executable, "benchmarks/precision_speed.py", "--image-size", "32", "--images", "16",
                           "--rounds", "1", "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert {"bf16", "amx", "model"} <= set(result["cpu"])
    rates, ratios = result["images_per_s"], result["ratio_bfloat16_to_float32"]
    assert set(rates) == {"float32", "mixed_bfloat16"} and set(ratios) == {"trunk", "head_steps", "full_steps"}
    for stage, ratio in ratios.items():  # this run's quotients; no speed is asserted
        assert ratio == pytest.approx(rates["mixed_bfloat16"][stage] / rates["float32"][stage], rel=1e-9)
    # The two trunks compute the same features up to bfloat16's 8 bits of mantissa (through 16 blocks).
    assert 0 < result["feature_difference_relative"] < 0.1
