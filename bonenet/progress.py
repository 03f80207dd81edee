"""One progress convention for long steps: a labelled bar on a terminal, step lines otherwise.

A log file or CI console gets a few lines (at the start, at each quarter and at the end), logged
to `bonenet.progress`, instead of a bar redrawn hundreds of times, or of silence.
"""

import logging
import sys

from tqdm import tqdm

log = logging.getLogger(__name__)


def keras_verbosity(verbose="auto"):
    """Keras' `verbose` for `fit`: "auto" draws its bar on a terminal, and one line per epoch otherwise
    ("Epoch 3/10" and its figures), so that a log still counts the epochs."""
    if verbose != "auto":
        return verbose
    return 1 if sys.stdout.isatty() else 2


class Progress:
    """Counts work done for one labelled step.

    Args:
        total: units of work in the step.
        label: what the step does, e.g. "evaluate: scoring 3,197 valid images".
        unit: what is counted. Defaults to "image".
        stream: where a bar is drawn when it is a terminal. Defaults to standard error.
        enabled: False shows nothing. Defaults to True.
    """

    def __init__(self, total, label, unit="image", stream=None, enabled=True):
        self.total, self.label, self.unit, self.done = int(total), label, unit, 0
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.bar = None
        self._next_quarter = 1
        if not enabled:
            return
        if self.stream.isatty():
            self.bar = tqdm(total=self.total, desc=label, unit=unit, file=self.stream, leave=False)
        else:
            self._line(f"{label} ({self.total:,} {self.units})")

    @property
    def units(self):
        """The unit's plural: images, pages, studies."""
        return self.unit[:-1] + "ies" if self.unit.endswith("y") else self.unit + "s"

    def _line(self, text):
        log.info(text)

    def update(self, n=1):
        """Adds `n` units done."""
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and self.total:
            reached = min(4, self.done * 4 // self.total)
            if reached >= self._next_quarter:
                self._line(f"{self.label}: {min(self.done, self.total):,}/{self.total:,} {self.units} ({25 * reached}%)")
                self._next_quarter = reached + 1

    def close(self):
        """Ends the step (the bar is cleared; step lines have said 100%)."""
        if self.bar is not None:
            self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
