"""The codebase's own rules, checked on its source: short functions, no print in the library, no
module state, and a test file per module."""

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("bonenet", "preprocessing")
SOURCES = [p for pkg in PACKAGES for p in sorted((REPO / pkg).glob("*.py"))] + [REPO / "run_pipeline.py"]
MAX_FUNCTION_LINES = 60
# Process-wide facts, not data: TensorFlow's devices and threads are set up once per process, and a
# run lock this process already holds must not wait for itself.
MODULE_STATE_ALLOWED = {("runtime.py", "_STATE"), ("store.py", "_HELD")}


def _tree(path):
    return ast.parse(path.read_text(), filename=str(path))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_no_function_is_longer_than_60_lines(path):
    long = [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(_tree(path))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, long


@pytest.mark.parametrize("path", SOURCES[:-1], ids=lambda p: p.name)
def test_the_library_logs_and_never_prints(path):
    """Only the command line (run_pipeline.py) writes to the console itself."""
    calls = [node.lineno for node in ast.walk(_tree(path))
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"]
    assert not calls, f"print( at lines {calls}"


def _mutable(value):
    return (isinstance(value, (ast.Dict, ast.List, ast.Set))
            or isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id in ("dict", "list", "set"))


@pytest.mark.parametrize("path", SOURCES[:-1], ids=lambda p: p.name)
def test_no_module_level_mutable_state(path):
    """Skips, tuning and caches live in values a command owns, never in a module's globals; tables
    of constants are written in capitals and never changed."""
    state = [target.id for node in _tree(path).body if isinstance(node, ast.Assign) and _mutable(node.value)
             for target in node.targets if isinstance(target, ast.Name) and not target.id.isupper()
             and not target.id.startswith("__")
             and (path.name, target.id) not in MODULE_STATE_ALLOWED]
    assert not state, state


@pytest.mark.parametrize("path", SOURCES[:-1], ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_module_has_its_test_file(path):
    if path.name == "__init__.py":
        pytest.skip("a package's __init__ only names its version")
    assert (REPO / "tests" / path.parent.name / f"test_{path.name}").is_file()


def test_tests_are_named_by_what_they_check_not_by_ticket():
    names = [p.name for p in (REPO / "tests").rglob("test_*.py")]
    functions = [node.name for p in (REPO / "tests").rglob("test_*.py") for node in ast.walk(_tree(p))
                 if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")]
    assert not [n for n in names + functions if re.search(r"issue|ticket|_bug_?\d", n.lower())
                and n != "test_tests_are_named_by_what_they_check_not_by_ticket"]
