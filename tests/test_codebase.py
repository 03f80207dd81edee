"""The codebase's own rules, checked on its source: short functions and modules, no print in the library,
no module state, and tests that mirror the tree both ways."""

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("bonenet", "preprocessing")  # the library: it logs, never prints
SCRIPTS = ("benchmarks",)  # command-line scripts beside run_pipeline.py: they print their figures
LIBRARY = [p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))]  # subpackages too
BENCHMARKS = [p for folder in SCRIPTS for p in sorted((REPO / folder).rglob("*.py"))]
SOURCES = LIBRARY + BENCHMARKS + [REPO / "run_pipeline.py"]
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 400
# Process-wide facts, not data: TensorFlow's devices and threads are set up once per process, and a
# run lock this process already holds must not wait for itself; a cached feature file verified by content
# need not be hashed again while its stamp holds.
MODULE_STATE_ALLOWED = {("runtime.py", "_STATE"), ("manifest.py", "_HELD"), ("features.py", "_VERIFIED")}
# Test files at the top of tests/ that check the tree as a whole, not one module.
WHOLE_TREE_TESTS = {"test_codebase.py"}
MUTATORS = {"append", "extend", "insert", "update", "setdefault", "pop", "popitem", "clear", "add", "discard",
            "remove"}


def _tree(path):
    return ast.parse(path.read_text(), filename=str(path))


def _name(path):
    return str(path.relative_to(REPO))


@pytest.mark.parametrize("path", SOURCES, ids=_name)
def test_no_function_is_longer_than_60_lines(path):
    long = [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(_tree(path))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, long


@pytest.mark.parametrize("path", [*LIBRARY, REPO / "run_pipeline.py"], ids=_name)
def test_no_module_is_longer_than_400_lines(path):
    assert len(path.read_text().splitlines()) <= MAX_MODULE_LINES


@pytest.mark.parametrize("path", [p for p in LIBRARY if p.name != "console.py"], ids=_name)
def test_the_library_logs_and_never_prints(path):
    """Only the console's handler (bonenet/console.py, behind the `bonenet` logger) and the benchmark scripts write
    to the console themselves."""
    calls = [node.lineno for node in ast.walk(_tree(path))
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"]
    assert not calls, f"print( at lines {calls}"


def _mutable(value):
    return (isinstance(value, (ast.Dict, ast.List, ast.Set))
            or isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id in ("dict", "list", "set"))


def _mutated(tree):
    """Names that code in the module changes in place: `X[k] = …`, `X.append(…)`, `del X[k]`, `global X`."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Global):
            names.update(node.names)
        targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else \
            [node.target] if isinstance(node, ast.AugAssign) else []
        names.update(t.value.id for t in targets if isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name))
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in MUTATORS
                and isinstance(node.func.value, ast.Name)):
            names.add(node.func.value.id)
    return names


def module_state(path):
    """Module-level mutable values that are state: not a constant table in capitals, or changed in place."""
    tree = _tree(path)
    changed = _mutated(tree)
    return [target.id for node in tree.body if isinstance(node, ast.Assign) and _mutable(node.value)
            for target in node.targets if isinstance(target, ast.Name) and not target.id.startswith("__")
            and (not target.id.isupper() or target.id in changed)]


@pytest.mark.parametrize("path", LIBRARY + BENCHMARKS, ids=_name)
def test_no_module_level_mutable_state(path):
    """Skips, tuning and caches live in values a command owns, never in a module's globals; tables
    of constants are written in capitals and never changed."""
    state = [name for name in module_state(path) if (path.name, name) not in MODULE_STATE_ALLOWED]
    assert not state, state


def test_the_module_state_rule_sees_the_allowed_state_and_a_changed_table(tmp_path):
    allowed = {(p.name, name) for p in LIBRARY for name in module_state(p)}
    assert MODULE_STATE_ALLOWED <= allowed  # every allowed entry is state the rule finds, so none is dead
    sample = tmp_path / "sample.py"
    sample.write_text("TABLE = {'a': 1}\nCACHE = {}\ncache = []\n\ndef f(k):\n    CACHE[k] = 1\n")
    assert module_state(sample) == ["CACHE", "cache"]  # a capitalised table that code fills is still state


def _modules(folder):
    return {p.stem for p in (REPO / folder).rglob("*.py") if p.name != "__init__.py"}


@pytest.mark.parametrize("path", [p for p in LIBRARY + BENCHMARKS if p.name != "__init__.py"], ids=_name)
def test_every_module_has_its_test_file(path):
    folder = path.relative_to(REPO).parent
    assert (REPO / "tests" / folder / f"test_{path.name}").is_file()


@pytest.mark.parametrize("path", sorted((REPO / "tests").rglob("test_*.py")), ids=_name)
def test_every_test_file_is_named_for_a_module(path):
    """tests/<folder>/test_<module>[_<feature>].py for a module of <folder>; tests/test_run_pipeline.py for the
    command line."""
    folder = path.relative_to(REPO / "tests").parent
    stem = path.stem.removeprefix("test_")
    if folder == Path("."):
        assert path.name in WHOLE_TREE_TESTS or stem == "run_pipeline"
    else:
        modules = _modules(folder)
        assert modules and any(stem == m or stem.startswith(f"{m}_") for m in modules), f"{stem} names no module"


def test_tests_are_named_by_what_they_check_not_by_ticket():
    names = [p.name for p in (REPO / "tests").rglob("test_*.py")]
    functions = [node.name for p in (REPO / "tests").rglob("test_*.py") for node in ast.walk(_tree(p))
                 if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")]
    assert not [n for n in names + functions if re.search(r"issue|ticket|_bug_?\d", n.lower())
                and n != "test_tests_are_named_by_what_they_check_not_by_ticket"]


# Declared, but needed at run time rather than imported (each says why in setup.cfg).
RUN_TIME_ONLY = {"tensorboard", "ipykernel", "python-multipart", "tf2onnx", "onnx", "onnxruntime", "ai-edge-litert",
                 "pytest-timeout", "pytest-xdist", "ruff", "import-linter", "httpx2"}
FIRST_PARTY = {"bonenet", "run_pipeline"}


def _normal(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared():
    """{"install_requires" | extra: {distribution}} from setup.cfg."""
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")

    def names(text):
        return {_normal(re.match(r"[A-Za-z0-9_.\-]+", line.strip()).group())
                for line in text.splitlines() if line.strip() and not line.strip().startswith("#")}

    out = {"install_requires": names(cfg["options"]["install_requires"])}
    out.update({extra: names(text) for extra, text in cfg["options.extras_require"].items()})
    return out


def _imported(files):
    """The third-party distributions that `files` import (anywhere in them, lazily too)."""
    import sys
    from importlib.metadata import packages_distributions

    local = FIRST_PARTY | set(SCRIPTS) | {p.stem for p in REPO.rglob("*.py") if ".venv" not in p.parts}  # scripts, conftest
    tops = set()
    for path in files:
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Import):
                tops.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                tops.add(node.module.split(".")[0])
    third = {t for t in tops if t not in sys.stdlib_module_names and t not in local}
    known = packages_distributions()
    missing = sorted(t for t in third if t not in known)
    assert not missing, f"imported but not installed: {missing}"
    return {_normal(known[t][0]) for t in third}


def test_setup_cfg_declares_what_the_code_imports_and_nothing_else():
    declared = _declared()
    everything = set().union(*declared.values())
    library = _imported(LIBRARY + [REPO / "run_pipeline.py"])
    tests = _imported(sorted((REPO / "tests").rglob("*.py")) + BENCHMARKS)
    assert library - everything == set(), "imported by the library but not declared"
    assert library - declared["install_requires"] <= declared["dicom"], "only the extras' features import them lazily"
    assert tests - everything == set(), "imported by the tests or benchmarks but not declared"
    unused = everything - library - tests - RUN_TIME_ONLY
    assert unused == set(), "declared but imported nowhere (drop it, or say in setup.cfg why it is needed at run time)"
    assert RUN_TIME_ONLY <= everything  # the list of run-time needs names only declared ones


def _lint_imports(root):
    """Runs import-linter on the package under `root` with the contract in setup.cfg: (exit status, output)."""
    tool = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(tool), "--config", str(REPO / "setup.cfg"), "--no-cache"], cwd=root, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)}, capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr


def test_the_stages_are_layered_and_a_lazy_back_edge_breaks_the_contract(tmp_path):
    """.ci/run runs `lint-imports`; an import of a higher stage from a lower one, even inside a function, fails."""
    shutil.copytree(REPO / "bonenet", tmp_path / "bonenet", ignore=shutil.ignore_patterns("__pycache__", "assets"))
    code, out = _lint_imports(tmp_path)
    assert code == 0 and "1 kept, 0 broken" in out, out
    read = tmp_path / "bonenet" / "data" / "read.py"
    read.write_text(read.read_text() + "\n\ndef _back_edge():\n    from bonenet.serving import serve\n\n    return serve\n")
    code, out = _lint_imports(tmp_path)
    assert code == 1 and "bonenet.data.read -> bonenet.serving.serve" in out, out


@pytest.mark.parametrize("path", sorted((REPO / "preprocessing").glob("*.py")), ids=_name)
def test_preprocessing_imports_no_stage_of_the_package(path):
    """preprocessing/ installs as bonenet.preprocessing, outside the tree import-linter walks: image code, below
    every stage."""
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "bonenet":
            assert node.module.startswith("bonenet.preprocessing"), f"{node.module} (line {node.lineno})"
        elif isinstance(node, ast.Import):
            assert not any(a.name.split(".")[0] == "bonenet" for a in node.names), f"line {node.lineno}"


def test_the_public_surface_resolves_and_importing_bonenet_loads_no_tensorflow():
    code = ("import sys, bonenet; assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules; "
            "names = [n for n in bonenet.__all__ if n != '__version__']; "
            "assert all(getattr(bonenet, n) is not None for n in names), names; "
            "assert bonenet.BoneNet.__module__ == 'bonenet.inference.predictor'; print(len(names))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "7", proc.stderr[-2000:]
    with pytest.raises(AttributeError, match="has no attribute 'store'"):
        import bonenet

        bonenet.store  # noqa: B018 -- the stages are imported by their own names, never through the top


def test_setup_cfg_installs_every_subpackage():
    """A subpackage missing from `packages` works in the editable checkout and is absent from the wheel."""
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    listed = set(cfg["options"]["packages"].split())
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "bonenet").rglob("__init__.py")}
    assert found | {"bonenet.preprocessing", "bonenet.notebooks"} == listed
