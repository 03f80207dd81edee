"""The console's one channel: every line a command shows goes through the `bonenet` logger and one
`ConsoleHandler`: a command's result (`say`) on standard output; its remarks and problems (`note`), the
library's warnings, Python's warnings (`show_warning`) and errors on standard error, prefixed with the command;
progress lines (`bonenet.progress`) on standard error."""

import logging
import os
import sys
import warnings

CLI = logging.getLogger("bonenet.cli")
NOTE = logging.INFO + 5  # a command's remark or problem: standard error, prefixed with the command
logging.addLevelName(NOTE, "NOTE")


def say(text):
    """A command's own result, on standard output."""
    CLI.info(text)


def note(text):
    """A command's one-line remark or problem, on standard error, prefixed with the command."""
    CLI.log(NOTE, text)


def one_line(exc, limit=500):
    """An exception's message as one line: some library errors carry whole tensors in their text; the user
    gets the first line, cut at `limit` characters."""
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    text = lines[0] if len(lines[0]) <= limit else lines[0][:limit] + "…"
    return text + (" (…)" if len(lines) > 1 else "")


class ConsoleHandler(logging.Handler):
    """The console: information on standard output; progress lines on standard error; remarks, warnings and
    errors on standard error prefixed with the command. The streams are looked up at each record, so a
    redirected `sys.stdout` (a test's capture) is honoured."""

    PREFIX = {NOTE: "", logging.WARNING: "warning: ", logging.ERROR: "error: "}

    def __init__(self, command):
        super().__init__()
        self.command = command

    def emit(self, record):
        """Prints one record on the stream its level and source call for."""
        try:
            text = record.getMessage()
            if record.levelno >= NOTE:
                prefix = self.PREFIX.get(record.levelno, f"{record.levelname.lower()}: ")
                print(f"bonenet {self.command}: {prefix}{text}", file=sys.stderr, flush=True)
            else:
                print(text, file=sys.stderr if record.name == "bonenet.progress" else sys.stdout, flush=True)
        except Exception:
            self.handleError(record)


def show_warning(message, category, filename, lineno, file=None, line=None):
    """Python's warnings, through the console's one channel as one line; BONENET_DEBUG=1 adds the source."""
    where = f" ({filename}:{lineno}, {category.__name__})" if os.environ.get("BONENET_DEBUG") else ""
    CLI.warning(f"{one_line(message)}{where}")


def setup_console(command, verbosity):
    """One console handler on the `bonenet` logger; -q (`verbosity` < 0) shows problems only, -v (> 0) adds
    debug lines. A command's own results and remarks always show."""
    logger = logging.getLogger("bonenet")
    for handler in [h for h in logger.handlers if isinstance(h, ConsoleHandler)]:
        logger.removeHandler(handler)
    logger.addHandler(ConsoleHandler(command))
    logger.setLevel(logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO)
    CLI.setLevel(logging.INFO)
    warnings.showwarning = show_warning
