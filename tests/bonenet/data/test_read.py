"""The read path: one read-and-prepare function, and skips as records that each command prints once."""

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

import run_pipeline
from bonenet.data.decode import ImageReadError, load_gray
from bonenet.data.mura import holdout_split, read_mura
from bonenet.data.read import Skip, SkipLog, read_prepared, skip_table, try_prepared
from bonenet.preprocessing.recipes import get_recipe

EQUALIZE = get_recipe("equalize")
COMMON = ["--epochs", "1", "--image-size", "64", "--weights", "none", "--batch-size", "16"]


def _corrupt(path):
    """Breaks a PNG's body and keeps its signature, header and trailer, so only a full decode finds it."""
    data = bytearray(path.read_bytes())
    data[60:-20] = bytes(len(data) - 80)
    path.write_bytes(bytes(data))


def test_a_path_its_bytes_and_its_pixels_are_prepared_alike(index):
    path = index.images.path.iloc[0]
    with open(path, "rb") as f:
        data = f.read()
    from_path = read_prepared(path, EQUALIZE, 64)
    assert from_path.shape == (64, 64, 3) and from_path.dtype == np.uint8
    np.testing.assert_array_equal(read_prepared(data, EQUALIZE, 64, name="upload.png"), from_path)
    np.testing.assert_array_equal(read_prepared(load_gray(path), EQUALIZE, 64), from_path)


@pytest.mark.parametrize("source, name", [(np.zeros((3, 3), np.uint8), "tiny"), (b"not an image", "notes.png")])
def test_what_cannot_be_read_is_an_error_naming_the_input(source, name):
    with pytest.raises(ImageReadError, match=rf"^{name}: "):
        read_prepared(source, EQUALIZE, 64, name=name)


def test_try_prepared_gives_a_skip_with_the_real_reason(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    image, skip = try_prepared(str(empty).encode(), EQUALIZE, 64)  # tf.data hands paths over as bytes
    assert image is None and skip == Skip(str(empty), "empty file (0 bytes)", "read")
    assert str(skip) == f"{empty}: empty file (0 bytes)"


def test_a_skip_log_keeps_each_file_once_in_the_order_found():
    log = SkipLog([Skip("a", "first", "index")])
    log.add(Skip("b", "broken"))
    assert log.note(b"a", b"again") is False  # a pipeline's filter: the element is not kept
    assert [(s.path, s.reason) for s in log] == [("a", "first"), ("b", "broken")] and "b" in log and len(log) == 2
    assert skip_table(log).to_dict("records") == [{"path": "a", "reason": "first", "stage": "index"},
                                                  {"path": "b", "reason": "broken", "stage": "read"}]


@pytest.fixture(scope="module")
def corrupted(synthetic_root, tmp_path_factory):
    """A copy of the synthetic data with one corrupt wrist image in the fit part of train, one in the
    hold-out and one in valid: (data root, {where: path})."""
    root = shutil.copytree(synthetic_root, tmp_path_factory.mktemp("corrupted") / "MURA-v1.1")
    index = read_mura(root)
    split = holdout_split(index.studies, 0.2, 0)
    wrist = index.images[index.images.part == "XR_WRIST"]
    held = set(split.loc[split.holdout, "study"])
    chosen = {"fit": wrist[(wrist.split == "train") & ~wrist.study.isin(held)].path.iloc[0],
              "hold-out": wrist[wrist.study.isin(held)].path.iloc[0],
              "valid": wrist[wrist.split == "valid"].path.iloc[0]}
    for path in chosen.values():
        _corrupt(Path(path))
    return root, chosen


def _lines_naming(text, path):
    return [line for line in text.splitlines() if path in line]


@pytest.mark.slow  # every command run on a corrupt image: about 45 s
@pytest.mark.corpus("M1", "M3")
def test_a_corrupt_image_is_named_once_by_each_command_with_its_real_reason(corrupted, tmp_path, capsys):
    root, chosen = corrupted
    run = tmp_path / "run"
    assert run_pipeline.main(["train-router", "--data-root", root, "--models-dir", run, *COMMON]) == 0
    router = capsys.readouterr()
    assert run_pipeline.main(["train-part", "--part", "wrist", "--data-root", root, "--models-dir", run,
                              *COMMON]) == 0
    wrist = capsys.readouterr()
    assert run_pipeline.main(["evaluate", "--data-root", root, "--models-dir", run, "--out", tmp_path / "eval",
                              "--bootstrap", "10"]) == 0
    evaluated = capsys.readouterr()
    for output in (router, wrist):  # the header check passes them; the full read in training does not
        for where in ("fit", "hold-out"):
            [line] = _lines_naming(output.out + output.err, chosen[where])
            assert line.startswith("bonenet train-") and "corrupt PNG" in line, (where, line)
        assert not _lines_naming(output.out + output.err, chosen["valid"])  # training never reads valid
    [line] = _lines_naming(evaluated.out + evaluated.err, chosen["valid"])
    skipped = pd.read_csv(tmp_path / "eval" / "skipped.csv").to_dict("records")
    assert [(r["path"], r["stage"]) for r in skipped] == [(chosen["valid"], "read")]
    assert skipped[0]["reason"].startswith("corrupt PNG") and line.endswith(skipped[0]["reason"])
    manifest = json.loads((run / "manifest.json").read_text())
    unread = manifest["models"]["XR_WRIST"]["dataset"]["unread"]
    assert sorted(u["path"] for u in unread) == sorted([chosen["fit"], chosen["hold-out"]])


@pytest.mark.slow  # full-mode trainings over one image cache: about 50 s
def test_full_mode_reading_a_finished_image_cache_keeps_the_hold_out_aligned(corrupted, tmp_path, capsys):
    """A second process that reads a finished `--cache-dir` still knows which hold-out image was
    unreadable, so its scores and paths stay aligned and the threshold is tuned."""
    root, chosen = corrupted
    args = ["train-part", "--part", "wrist", "--data-root", root, "--mode", "full", "--cache-dir",
            tmp_path / "cache", *COMMON[:2], "--image-size", "32", *COMMON[4:]]
    for attempt in ("first", "second"):
        assert run_pipeline.main([*args, "--models-dir", tmp_path / attempt]) == 0, attempt
        output = capsys.readouterr()
        assert len(_lines_naming(output.out + output.err, chosen["hold-out"])) == 1, attempt
        entry = json.loads((tmp_path / attempt / "manifest.json").read_text())["models"]["XR_WRIST"]
        assert entry["tuning"]["studies"] > 0, attempt
    assert any(p.name.startswith("images-") for p in (tmp_path / "cache").iterdir())


@pytest.mark.corpus("M1")
def test_a_skipped_training_image_is_named(tmp_path):
    from bonenet.data.read import try_prepared
    from bonenet.preprocessing.recipes import get_recipe

    tiny = tmp_path / "tiny.png"
    cv2.imwrite(str(tiny), np.zeros((1, 1), np.uint8))
    image, skip = try_prepared(str(tiny), get_recipe("equalize"), 32)
    assert image is None and skip.path == str(tiny) and skip.reason.startswith("image is too small")
