"""Outputs written whole or not at all (`bonenet/files.py`): dead writers' leftovers, full disks."""

import json
import os
import socket
from pathlib import Path

import pytest

from bonenet import files as outputs


def _dead_pid():
    """A pid no process can have: above the kernel's largest (an exited child's pid could be reused)."""
    return int(Path("/proc/sys/kernel/pid_max").read_text()) + 1


def test_temporaries_of_dead_writers_are_removed_and_live_or_foreign_ones_kept(tmp_path):
    target, host = tmp_path / "eval", socket.gethostname()
    stale_folder = tmp_path / f".eval.{host}.{_dead_pid()}.x1y2"
    stale_file = tmp_path / f".eval.{host}.{_dead_pid()}.ab.keras"
    live = tmp_path / f".eval.{host}.{os.getpid()}.x1y2"
    other_host = tmp_path / f".eval.elsewhere.{_dead_pid()}.x1y2"
    other_target = tmp_path / f".evaluation.{host}.{_dead_pid()}.x1y2"
    for folder in (stale_folder, live, other_host, other_target):
        folder.mkdir()
        (folder / "0.npy").write_bytes(b"partial")
    stale_file.write_bytes(b"partial")
    assert sorted(outputs.remove_dead_writers_temps(target)) == sorted([stale_folder, stale_file])
    assert live.exists() and other_host.exists() and other_target.exists()


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="start times come from /proc")
def test_a_writer_whose_pid_now_belongs_to_another_process_is_dead(tmp_path):
    target, host = tmp_path / "eval", socket.gethostname()
    mine = Path(outputs.temp_prefix(target)).name
    assert mine == f".eval.{host}.{os.getpid()}-{outputs._started(os.getpid())}."
    live = tmp_path / f"{mine}x1"
    reused = tmp_path / f".eval.{host}.{os.getpid()}-1.x1"  # this pid, when an earlier process held it
    for folder in (live, reused):
        folder.mkdir()
    assert outputs.remove_dead_writers_temps(target) == [reused] and live.exists()


def test_a_file_is_replaced_whole_with_the_umasks_mode(tmp_path):
    target = tmp_path / "a" / "p.json"
    outputs.write_text_whole(target, "old")
    outputs.write_text_whole(target, "new")
    assert target.read_text() == "new" and sorted(p.name for p in target.parent.iterdir()) == ["p.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_failed_folder_write_leaves_the_earlier_folder_and_no_temporary(tmp_path):
    target = tmp_path / "eval"
    with outputs.folder_written_whole(target, "metrics.json") as tmp:
        (tmp / "metrics.json").write_text("1")
    with pytest.raises(RuntimeError), outputs.folder_written_whole(target, "metrics.json") as tmp:
        (tmp / "metrics.json").write_text("2")
        raise RuntimeError("killed half-way")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval"] and (target / "metrics.json").read_text() == "1"


def test_a_full_disk_names_the_target_and_keeps_the_earlier_file(small_disk):
    target = small_disk / "p.json"
    outputs.write_text_whole(target, "earlier")
    with pytest.raises(OSError) as caught:
        outputs.write_text_whole(target, "x" * 1_000_000)
    assert caught.value.errno == 28
    assert str(caught.value) == (f"{target}: not written (No space left on device); any earlier version is "
                                 "unchanged")
    assert target.read_text() == "earlier" and [p.name for p in small_disk.iterdir()] == ["p.json"]


def test_a_full_disk_fails_a_folder_write_naming_the_folder(small_disk):
    target = small_disk / "eval"
    with pytest.raises(OSError) as caught, outputs.folder_written_whole(target, "a.txt") as tmp:
        (tmp / "big.csv").write_text("x" * 1_000_000)
    assert caught.value.errno == 28 and str(caught.value).startswith(f"{target}: not written (No space left")
    assert list(small_disk.iterdir()) == []


def test_json_safe_turns_nan_and_infinity_into_null_everywhere():
    value = {"a": float("nan"), "b": [1.0, float("inf"), {"c": -float("inf")}], "d": (0.5, "x"), "e": None}
    assert json.dumps(outputs.json_safe(value)) == '{"a": null, "b": [1.0, null, {"c": null}], "d": [0.5, "x"], "e": null}'


@pytest.mark.corpus("V4")
def test_a_folder_of_someone_elses_files_is_never_replaced(tmp_path):
    mine = tmp_path / "mine"
    (mine / "photos").mkdir(parents=True)
    (mine / "notes.txt").write_text("hi")
    with pytest.raises(FileExistsError, match=f"{mine}: holds files BoneNet did not write \\(no out.json\\)"), \
            outputs.folder_written_whole(mine, "out.json") as tmp:
        (tmp / "out.json").write_text("1")
    assert (mine / "notes.txt").read_text() == "hi" and (mine / "photos").is_dir()
    with outputs.folder_written_whole(mine, "out.json", force=True) as tmp:  # asked for: replaced
        (tmp / "out.json").write_text("1")
    with outputs.folder_written_whole(mine, "out.json") as tmp:  # an earlier output: replaced whole
        (tmp / "out.json").write_text("2")
    assert sorted(p.name for p in mine.iterdir()) == ["out.json"] and (mine / "out.json").read_text() == "2"
    empty = tmp_path / "empty"
    empty.mkdir()
    with outputs.folder_written_whole(empty, "out.json") as tmp:
        (tmp / "out.json").write_text("3")
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is a file, not a folder"), \
            outputs.folder_written_whole(tmp_path / "file", "out.json"):
        pass


@pytest.mark.corpus("V4")
def test_export_refuses_a_folder_of_other_files_before_any_work(run, tmp_path, capsys):
    from conftest import run_cli

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("hi")
    code, err = run_cli(["export", "--models-dir", run[0], "--format", "savedmodel", "--out", mine], capsys)
    assert code == 2 and len(err) == 1 and "holds files BoneNet did not write (no bonenet_export.json)" in err[0]
    assert "--force" in err[0] and [p.name for p in mine.iterdir()] == ["notes.txt"]
