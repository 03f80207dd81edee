"""The console's one channel (`bonenet.console`): results on stdout; remarks, warnings, errors and progress on stderr."""

import logging
import warnings

from bonenet import console


def test_results_go_to_stdout_and_everything_else_to_stderr_prefixed_with_the_command(capsys):
    console.setup_console("predict", 0)
    console.say("a result")
    console.note("a remark")
    logging.getLogger("bonenet.training").warning("a library problem")
    logging.getLogger("bonenet.progress").info("3/10 images")
    logging.getLogger("bonenet.training").debug("hidden at the default verbosity")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = console.show_warning
        warnings.warn("a python warning\nwith a second line", UserWarning, stacklevel=1)
    out, err = capsys.readouterr()
    assert out.splitlines() == ["a result"]
    assert err.splitlines() == ["bonenet predict: a remark", "bonenet predict: warning: a library problem",
                                "3/10 images", "bonenet predict: warning: a python warning (…)"]


def test_quiet_shows_problems_and_the_commands_own_lines_only(capsys):
    console.setup_console("evaluate", -1)
    logging.getLogger("bonenet.evaluation").info("chatter")
    console.say("the result")
    logging.getLogger("bonenet.evaluation").error("a failure")
    out, err = capsys.readouterr()
    assert out == "the result\n" and err == "bonenet evaluate: error: a failure\n"
    console.setup_console("evaluate", 0)
    assert len([h for h in logging.getLogger("bonenet").handlers if isinstance(h, console.ConsoleHandler)]) == 1


def test_one_line_keeps_the_first_line_and_cuts_a_long_one():
    assert console.one_line(ValueError("first\nsecond")) == "first (…)"
    assert console.one_line(ValueError("")) == "ValueError"
    assert console.one_line(ValueError("x" * 600)) == "x" * 500 + "…"
