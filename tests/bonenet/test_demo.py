"""`demo --quick` through the command line: the whole chain, a quiet console, the last words."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bonenet.demo import closing_text, summary_table
from bonenet.parts import PARTS, short_name

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # the whole chain, quick: about 90 s
def test_demo_quick_runs_the_chain_and_ends_with_the_per_part_table(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as a newcomer's shell has it
    proc = subprocess.run([sys.executable, "run_pipeline.py", "demo", "--quick", "--out", str(tmp_path / "demo")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    console = proc.stdout + proc.stderr
    # No TensorFlow C++ or absl log lines, no CUDA probe errors and no kernel noise reach the console.
    assert not re.search(r"^[IWEF]\d{4} |absl::|cuda|cuInit", console, re.MULTILINE), console[:3000]
    assert "[IPKernelApp]" not in console
    # Every long step says what it does: the trunk features (how many, where), epochs, evaluate, report.
    assert re.search(r"^trunk features of [\d,]+ train images × 3 view\(s\) .* into .*features-", proc.stderr, re.M)
    assert re.search(r"^\d+/\d+ - \d+s - .*loss: [\d.]+ - val_accuracy", proc.stdout, re.MULTILINE)  # an epoch's line
    assert "evaluate: trunk, router and part models over the split: " in proc.stderr
    assert re.search(r"^report: rendering 1 page\(s\) into .*: 1/1 pages \(100%\)$", proc.stderr, re.MULTILINE)
    lines = proc.stdout.strip().splitlines()
    assert lines[-1].startswith("open first: ") and lines[-1].endswith("overview.html")
    assert lines[-2].startswith("router study accuracy")
    table = lines[-11:-2]
    assert table[0].split() == ["part", "studies", "kappa", "95%", "CI", "AUROC", "Stanford"]
    assert [row.split()[0] for row in table[1:]] == [short_name(p) for p in PARTS] + ["overall"]
    summary = json.loads((tmp_path / "demo" / "demo_summary.json").read_text())
    assert summary["plan"]["studies_per_part"] == 8 and summary["plan"]["image_size"] == 64  # the quick plan
    assert set(summary["study"]) == {*PARTS, "overall"} and summary["stanford_kappa"]["overall"] == 0.705
    assert "NOT ImageNet" in summary["backbone"]["origin"]
    manifest = json.loads((tmp_path / "demo" / "saved_models" / "demo" / "manifest.json").read_text())
    assert manifest["weights"]["kind"] == "file" and "NOT ImageNet" in manifest["weights"]["description"]
    assert (tmp_path / "demo" / "reports" / "overview.html").is_file()
    predictions = json.loads((tmp_path / "demo" / "predictions.json").read_text())
    assert not [p for p in predictions if "error" in p]
    assert len([p for p in predictions if "study" in p]) == len(PARTS)  # one valid study per part


def test_the_closing_table_shows_every_scored_part_with_dashes_for_what_is_undefined():
    study = {"XR_WRIST": {"n": 12, "kappa": 0.5, "kappa_ci95": [0.1, 0.8], "auroc": 0.75},
             "XR_HAND": {"n": 3, "kappa": float("nan"), "kappa_ci95": [None, None], "auroc": float("nan")},
             "overall": {"n": 15, "kappa": 0.4, "kappa_ci95": [0.05, 0.7], "auroc": 0.7}}
    rows = [row.split() for row in summary_table({"study": study}).splitlines()]
    assert [r[0] for r in rows] == ["part", "hand", "wrist", "overall"]  # in the parts' order, overall last
    assert rows[1] == ["hand", "3", "—", "—", "—", "0.851"]
    assert rows[2] == ["wrist", "12", "0.500", "[0.10,", "0.80]", "0.750", "0.931"]
    summary = {"seconds": 61.2, "study": study, "router_study_accuracy": 0.9, "router_image_accuracy": 0.8,
               "open_first": "out/reports/overview.html"}
    text = closing_text(summary, "out").splitlines()
    assert text[1] == "=== done in 61s ===" and text[-1] == "open first: out/reports/overview.html"
    assert text[-2] == "router study accuracy 0.900 (images 0.800)"
