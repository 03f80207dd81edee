"""Output folders written whole or not at all.

`evaluate --out`, `report --out` and `make-synthetic --out` write into a temporary folder beside
the target and rename it into place when complete, so a killed command never leaves a folder that
mixes old and new files, or looks finished when it is not.
"""

import os
import shutil
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
