"""Output folders written whole or not at all.

`evaluate --out`, `report --out` and `make-synthetic --out` write into a temporary folder beside
the target and rename it into place when complete, so a killed command never leaves a folder that
mixes old and new files, or looks finished when it is not.
"""

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def folder_written_whole(target):
    """Yields a fresh temporary folder beside `target`; on success it replaces `target`.

    On an exception the temporary folder is removed and `target` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if target.exists():
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            os.replace(target, old)
            shutil.rmtree(old)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
