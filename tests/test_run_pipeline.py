"""The command line a newcomer meets: --version, the workflow in the help, fast refusals of typos."""

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import run_cli

from bonenet import __version__

REPO = Path(__file__).resolve().parents[1]


def _cli(*args, without_tensorflow=False):
    """Runs the command line; with `without_tensorflow`, any import of TensorFlow (or of Keras, which imports
    it) fails loudly, so a refusal that comes before TensorFlow loads is checked, not timed."""
    env = dict(os.environ)
    if without_tensorflow:
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests" / "fixtures" / "no_tensorflow"),
                                             env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "run_pipeline.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=env)


def test_version_and_the_workflow_in_the_help():
    proc = _cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"bonenet {__version__}"
    proc = _cli("--help")
    assert "not for clinical use" in proc.stdout.lower()
    assert all(f"  {i}. " in proc.stdout for i in range(1, 6))


@pytest.mark.parametrize("args,names", [(["train-part", "--part", "wirst"], "elbow, finger, forearm"),
                                        (["train-all", "--recipe", "equalise"], "none, equalize, sharpen")])
def test_a_misspelt_part_or_recipe_fails_before_tensorflow_loads(args, names):
    proc = _cli(*args, "--data-root", "x", "--models-dir", "y", without_tensorflow=True)
    assert proc.returncode == 2 and names in proc.stderr and "Traceback" not in proc.stderr
    assert "tensorflow" not in proc.stderr.lower()  # parsing failed before any heavy import


@pytest.mark.parametrize("args,accepted", [
    (["train-all", "--trainable-layers", "300"], "within [0, 234]"),
    (["train-router", "--image-size", "16"], "at least 32"),
    (["train-part", "--part", "hand", "--learning-rate", "0"], "above 0"),
    (["train-all", "--holdout-fraction", "1"], "within (0, 1)"),
    (["serve", "--port", "70000"], "within [1, 65535]"),
    (["serve", "--port", "-1"], "within [1, 65535]"),
    (["evaluate", "--out", "z", "--bootstrap", "-5"], "at least 0"),
    (["pretrain-backbone", "--out", "b.weights.h5", "--epochs", "0"], "at least 1"),
    (["demo", "--image-size", "8"], "at least 32"),
    (["train-locator", "--fracatlas", "x", "--out", "l.weights.h5", "--positive-weight", "0.5"], "at least 1"),
])
def test_out_of_range_values_are_refused_while_parsing_with_the_range(args, accepted):
    if args[0] in ("train-all", "train-router", "train-part", "evaluate"):
        args = [*args, "--data-root", "x"]
    if args[0] not in ("pretrain-backbone", "demo", "train-locator"):
        args = [*args, "--models-dir", "y"]
    proc = _cli(*args, without_tensorflow=True)  # refused before any data is read or TensorFlow loads
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "out of range: must be " + accepted in last, last


def test_a_too_small_image_is_named_in_the_message(tmp_path):
    tiny = tmp_path / "tiny.png"
    cv2.imwrite(str(tiny), np.zeros((1, 1), np.uint8))
    proc = _cli("preprocess", str(tiny), "--out", str(tmp_path / "panel.png"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"bonenet preprocess: error: {tiny}: image is too small (1×1); need at least 8×8"


@pytest.mark.parametrize("command", [
    ["make-synthetic", "--out", "{ro}/data"],
    ["data-summary", "--data-root", "{data}", "--json", "{ro}/summary.json"],
    ["preprocess", "{image}", "--out", "{ro}/panel.png"],
    ["train-part", "--part", "wrist", "--data-root", "{data}", "--models-dir", "{ro}/run"],
    ["evaluate", "--data-root", "{data}", "--models-dir", "{run}", "--out", "{ro}/eval"],
    ["report", "--eval-dir", "{ro}", "--out", "{ro}/reports"],
    ["predict", "{image}", "--models-dir", "{run}", "--json", "{ro}/p.json"],
    ["predict", "{image}", "--models-dir", "{run}", "--cam-dir", "{ro}/cams"],
    ["predict", "{image}", "--models-dir", "{run}", "--csv", "{ro}/p.csv"],
])
@pytest.mark.corpus("T1", "S1")
def test_an_unwritable_output_fails_at_once_in_one_line(command, read_only, synthetic_root, run, index, capsys):
    image = index.images.path.iloc[0]
    args = [a.format(ro=read_only, data=synthetic_root, run=run[0], image=image) for a in command]
    code, err = run_cli(args, capsys)
    assert code == 2 and len(err) == 1, err
    assert "cannot write here (Read-only file system)" in err[0] and str(read_only) in err[0]


@pytest.mark.corpus("T5")
def test_preprocess_on_a_folder_names_it(tmp_path, capsys):
    code, err = run_cli(["preprocess", tmp_path, "--out", tmp_path / "p.png"], capsys)
    assert code == 2 and err == [f"bonenet preprocess: error: {tmp_path}: is a folder, not an image"]


@pytest.mark.parametrize("exc, shown", [
    (NotImplementedError(), "NotImplementedError (no message)"),
    (TypeError("expected number as argument to bfloat16 constructor\nmore"),
     "TypeError: expected number as argument to bfloat16 constructor (…)"),
    (ValueError(), "ValueError (no message)"),
])
def test_an_unexpected_error_is_one_line_saying_what_failed_where_and_on_what(exc, shown, tmp_path, capsys,
                                                                               monkeypatch):
    from bonenet.evaluation import report

    def fails(*args, **kwargs):
        raise exc

    monkeypatch.setattr(report, "load_evaluation", fails)
    code, err = run_cli(["report", "--eval-dir", tmp_path / "eval", "--out", tmp_path / "pages"], capsys)
    assert code in (1, 2) and len(err) == 1, err
    assert err[0] == (f"bonenet report: error: report of evaluation {tmp_path / 'eval'} failed in "
                      f"bonenet.evaluation.report.run_reports (line {err[0].split('(line ')[1].split(')')[0]}): {shown} "
                      "(unexpected: BONENET_DEBUG=1 shows the traceback)")


def test_bonenet_debug_shows_an_unexpected_errors_traceback(tmp_path, monkeypatch):
    from bonenet.evaluation import report

    monkeypatch.setattr(report, "load_evaluation", lambda *a: (_ for _ in ()).throw(NotImplementedError("x")))
    monkeypatch.setenv("BONENET_DEBUG", "1")
    import run_pipeline

    with pytest.raises(NotImplementedError):
        run_pipeline.main(["report", "--eval-dir", tmp_path, "--out", tmp_path / "pages"])
