import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # eight full EfficientNetB0s built and saved: about 45 s
def test_benchmark_prints_every_figure_and_counts_bytes_correctly(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "benchmarks/run.py", "--image-size", "32", "--images", "16",
                           "--batch-size", "8", "--head-epochs", "2", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert json.loads(proc.stdout) == result
    rate, sizes = result["images_per_s"], result["bytes"]
    assert all(v > 0 for v in rate.values())
    # Each ratio is the quotient of the two variants it names, as measured in this run (no speed is
    # asserted: a test's machine is never quiet).
    quotients = {
        "train_speedup": rate["train_cached_heads"] / rate["train_full_model"],
        "inference_speedup": rate["inference_shared_trunk"] / rate["inference_two_full_models"],
        "inference_speedup_vs_one_model_twice": rate["inference_shared_trunk"] / (rate["inference_one_full_model"] / 2),
        "input_speedup": rate["input_cached"] / rate["input_uncached"],
        "input_vs_model": rate["input_uncached"] / rate["train_full_model"],
        "storage_ratio": sizes["eight_full_models_default_save"] / sizes["bonenet_run"],
        "storage_ratio_weights_only": sizes["eight_full_models_weights_only"] / sizes["bonenet_run"],
        "storage_ratio_vs_paper_207_2_mb": sizes["paper_eight_models"] / sizes["bonenet_run"],
    }
    for key, quotient in quotients.items():
        assert result[key] == pytest.approx(quotient, rel=0.03, abs=0.01), key
    # Storage does not depend on image size: eight full models hold 8 × 4.05M weights, a run one
    # 2.35M trunk (to block6c_add) plus eight 1.71M heads; optimizer state adds two moments per
    # trainable weight.
    assert 1.8 < sizes["eight_full_models_weights_only"] / sizes["bonenet_run"] < 2.3
    cache = result["cache"]
    assert cache["dtype"] == "float16" and cache["bytes_per_image_and_view"] == 1 * 1 * 192 * 2  # 32 px: 1×1×192
    assert 0 <= cache["float16_max_abs_error_in_probability"] < 0.01
    assert sizes["eight_full_models_default_save"] > sizes["eight_full_models_weights_only"]
