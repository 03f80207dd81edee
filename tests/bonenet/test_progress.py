"""Progress (`bonenet.progress`): a bar on a terminal, a few logged step lines otherwise."""

import io
import logging

from bonenet.progress import Progress


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_off_a_terminal_a_step_logs_its_start_and_each_quarter(caplog):
    caplog.set_level(logging.INFO, logger="bonenet.progress")
    bar = Progress(10, "scoring", stream=io.StringIO())
    for _ in range(10):
        bar.update()
    bar.close()
    assert caplog.messages == ["scoring (10 images)", "scoring: 3/10 images (25%)", "scoring: 5/10 images (50%)",
                               "scoring: 8/10 images (75%)", "scoring: 10/10 images (100%)"]


def test_on_a_terminal_a_bar_is_drawn_and_nothing_is_logged(caplog):
    caplog.set_level(logging.INFO, logger="bonenet.progress")
    stream = _Terminal()
    with Progress(4, "pages", unit="page", stream=stream) as bar:
        bar.update(4)
    assert "pages" in stream.getvalue() and not caplog.messages


def test_a_disabled_step_says_nothing(caplog):
    caplog.set_level(logging.INFO, logger="bonenet.progress")
    bar = Progress(3, "quiet", enabled=False, stream=io.StringIO())
    bar.update(3)
    bar.close()
    assert not caplog.messages and bar.done == 3


def test_units_are_counted_in_their_plural(caplog):
    caplog.set_level(logging.INFO, logger="bonenet.progress")
    Progress(2, "drawing", unit="study", stream=io.StringIO())
    assert caplog.messages == ["drawing (2 studies)"]
