"""benchmarks/evaluate_memory.py: an untrained run that loads, and a toy-scale run of the measurement."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # eight models built and saved, and a synthetic split evaluated: about a minute
def test_evaluate_memory_at_a_toy_scale_reports_its_peak_above_the_baseline(tmp_path):
    out = tmp_path / "memory.json"
    proc = subprocess.run([sys.executable, "benchmarks/evaluate_memory.py", "--valid-studies-per-part", "4",
                           "--image-size", "32", "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["valid_images"] >= 7 * 4 and result["image_size"] == 32
    assert 0 <= result["peak_above_baseline_mb"] <= result["peak_rss_mb"]
    assert result["float32_split_in_memory_would_be_mb"] == round(result["valid_images"] * 32**2 * 3 * 4 / 2**20)


def test_the_untrained_run_loads_as_a_bonenet_with_every_part(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import evaluate_memory

    from bonenet.inference.predictor import BoneNet
    from bonenet.parts import PARTS

    evaluate_memory.build_untrained_run(tmp_path, 32)
    net = BoneNet.load(tmp_path)
    assert net.parts == list(PARTS) and net.image_size == 32
