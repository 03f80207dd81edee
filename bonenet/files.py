"""Outputs written whole or not at all: one mechanism for every file and folder BoneNet writes.

A file or folder is written under a temporary name beside its target and renamed into place when
complete, so a killed or failed command never leaves a target that mixes old and new content, or
looks finished when it is not. The temporary name carries the writer's host, pid and (on Linux) the
process's start time, so a later writer removes what a killed one left, even once its pid is reused. A
write that fails (a full disk, a read-only mount) names the target, not the temporary file, and leaves
any earlier target unchanged.
"""

import errno
import glob
import math
import os
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path


def _started(pid):
    """When process `pid` started (clock ticks since boot, from /proc), or None where that is unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the name before ")" may hold spaces


def _alive(pid, started=None):
    """Whether process `pid` still runs; with `started`, only the process that started then (pids are reused,
    quickly where many threads run: TensorFlow starts dozens per process)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        pass
    return started is None or _started(pid) in (None, started)


def _writer():
    """This process as a temporary name carries it: `<pid>` or `<pid>-<start time>`."""
    started = _started(os.getpid())
    return f"{os.getpid()}" if started is None else f"{os.getpid()}-{started}"


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_prefix(target):
    """The start of a temporary name for `target`: `.<name>.<host>.<pid>[-<start time>].` beside it."""
    return f".{Path(target).name}.{socket.gethostname()}.{_writer()}."


def dead_writers_temps(target):
    """The temporary files and folders of `target` left on this host by writers no longer running."""
    target = Path(target)
    start = f".{target.name}.{socket.gethostname()}."
    dead = []
    for tmp in sorted(target.parent.glob(glob.escape(start) + "*")):
        pid, _, started = tmp.name[len(start):].split(".", 1)[0].partition("-")
        if pid.isdigit() and not _alive(int(pid), started or None):
            dead.append(tmp)
    return dead


def remove_dead_writers_temps(target):
    """Deletes the temporary files and folders of `target` left on this host by killed writers.

    Returns:
        The removed paths.
    """
    removed = dead_writers_temps(target)
    for tmp in removed:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
    return removed


class NotWritten(OSError):
    """A write that failed, named by its target rather than by the temporary file it went to."""

    def __init__(self, target, reason, code=None):
        super().__init__(code, reason, str(target))

    def __str__(self):
        return f"{self.filename}: not written ({self.strerror}); any earlier version is unchanged"


@contextmanager
def _naming(target, tmp):
    """Re-raises a failed write (no file named, or one inside `tmp`) as `NotWritten(target)`."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None and not str(exc.filename).startswith(str(tmp)):
            raise
        raise NotWritten(target, exc.strerror or str(exc), exc.errno) from None


@contextmanager
def file_written_whole(path, suffix=""):
    """Yields a temporary file path beside `path`; when the block succeeds it replaces `path`.

    Args:
        path: the file to write.
        suffix: the temporary file's ending, for writers that insist on one (Keras: ".keras").
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_writers_temps(path)
    with _naming(path, path.parent / temp_prefix(path)):
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=suffix, dir=path.parent)
        os.close(fd)
        # mkstemp makes the file private (0600); shared run and output folders need the umask's mode.
        os.chmod(tmp, 0o666 & ~_umask())
        try:
            yield Path(tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def write_text_whole(path, text):
    """Writes `text` to `path` whole (see `file_written_whole`), synced to disk before the rename."""
    with file_written_whole(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


@contextmanager
def folder_written_whole(target, marker, force=False):
    """Yields a fresh temporary folder beside `target`; when the block succeeds it replaces `target`.

    On an exception the temporary folder is removed and `target` is left as it was. BoneNet never
    deletes what it did not write: an existing `target` that is not empty is replaced only when it
    holds `marker` (the file every such output of BoneNet's holds, so an earlier output), or with
    `force` (None where the command offers no --force, so the refusal does not suggest one).

    Raises:
        FileExistsError: `target` is a file, or a folder of someone else's files; the message names it.
    """
    target = Path(target)
    check_replaceable(target, marker, force)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_writers_temps(target)
    with _naming(target, target.parent / temp_prefix(target)):
        tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(target), dir=target.parent))
        os.chmod(tmp, 0o777 & ~_umask())
        try:
            yield tmp
            if target.exists():
                # A folder cannot be renamed over a non-empty one: move the old one aside first.
                # Killed in between, the old one is a dead writer's temporary, removed next time.
                old = Path(tempfile.mkdtemp(prefix=temp_prefix(target), dir=target.parent))
                os.replace(target, old / "old")
                shutil.rmtree(old)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def check_replaceable(target, marker, force=False):
    """Refuses, before any work, to replace `target` unless it is absent, empty, or an earlier output (holds
    `marker`), or `force` is given; see `folder_written_whole`."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target}: is a file, not a folder; choose another output folder")
    if target.is_dir() and any(target.iterdir()) and not (target / marker).exists() and not force:
        raise FileExistsError(f"{target}: holds files BoneNet did not write (no {marker}), and replacing the folder "
                              "would delete them; choose a new or empty folder" + (", or pass --force" if force is not
                                                                                 None else ""))


def check_writable(path):
    """Fails at once, before any work, when `path` (a file or folder to be written) cannot be written.

    Tries a temporary file in the nearest existing folder on the way to `path`, so read-only
    mounts, permissions and full disks give their real error; nothing is left behind.

    Raises:
        OSError: "`path`: cannot write here (reason)".
    """
    path = Path(path).absolute()
    folder = path if path.is_dir() else path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise NotADirectoryError(f"{path}: cannot write here ({folder} is a file, not a folder)")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        error = OSError(f"{path}: cannot write here ({exc.strerror or exc})")
        error.errno = exc.errno
        raise error from None


def check_free_space(folder, nbytes, what):
    """Fails before writing when the disk holding `folder` has less than `nbytes` free.

    A disk that fills up half-way is worse than one found full at the start: a memory-mapped
    write then kills the process, and HDF5 fails inside its destructors.

    Raises:
        OSError (ENOSPC): "`folder`: N MB free, `what` needs about M MB".
    """
    folder = Path(folder).absolute()
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if free < nbytes:
        error = OSError(f"{folder}: {_megabytes(free)} free, {what} needs about {_megabytes(nbytes)}; "
                        "free some space or write elsewhere")
        error.errno = errno.ENOSPC
        raise error


def _megabytes(nbytes):
    return f"{nbytes / 1e6:,.1f} MB" if nbytes < 1e7 else f"{nbytes / 1e6:,.0f} MB"


def json_safe(value):
    """`value` with every NaN or infinity (in dicts and lists) as None: NaN is not JSON, so every reader can parse it."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
