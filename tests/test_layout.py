"""The shape of the code: stages import only common/ (never each other), common/ imports no stage, every stage
has the same entry point, and no function in the product code grows past a screen."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("curate", "train", "evaluate", "export")
MAX_FUNCTION_LINES = 60


def imported_packages(path: Path) -> set[str]:
    """Top-level names of every module imported anywhere in the file (function-level imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", STAGES + ("common",))
def test_import_graph(package):
    allowed = {package} if package in STAGES else set()
    wrong = {f"{p.relative_to(ROOT)} imports {other}" for p in sources(package)
             for other in (imported_packages(p) & set(STAGES)) - allowed}
    assert not wrong, sorted(wrong)


def test_the_import_graph_check_sees_function_level_imports(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("def g():\n    from train.pipeline import run\n    import evaluate.report\n")
    assert imported_packages(f) == {"train", "evaluate"}


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_has_one_entry_point(stage):
    package = importlib.import_module(stage)
    assert callable(package.run) and callable(package.checks)
    assert package.run.__module__ == f"{stage}.pipeline"
    assert (ROOT / stage / "__main__.py").is_file()


def test_no_long_functions():
    long = []
    for package in STAGES + ("common",):
        for p in sources(package):
            for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    n = node.end_lineno - node.lineno + 1
                    if n > MAX_FUNCTION_LINES:
                        long.append(f"{p.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, long


def test_big_local_folders_are_ignored_even_as_symlinks():
    """.venv, models and runs are often symlinks (a worktree sharing one environment, runs on a bigger disk):
    a `dir/` pattern ignores only directories, so `git add -A` would commit the link, and a checkout of that
    commit replaces the real folder (ignored files are expendable to git). The patterns must match files too."""
    import subprocess

    for path in (".venv", "models", "runs"):
        proc = subprocess.run(["git", "check-ignore", "--no-index", "-v", path], cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 0 and not proc.stdout.split("\t")[0].endswith("/"), (path, proc.stdout)


MAX_CURATE_MODULE_LINES = 300  # one responsibility per module: a file past this holds more than one


def test_no_curate_module_holds_more_than_one_responsibility():
    long = {str(p.relative_to(ROOT)): n for p in sources("curate")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_CURATE_MODULE_LINES}
    assert not long, long


def repository_paths(text: str) -> set[str]:
    """Repository paths a document names: `a/b.py`-like words under a top-level folder of this repository, or a
    top-level file name, in backticks, link targets or a code block."""
    tops = {p.name for p in ROOT.iterdir() if not p.name.startswith(".")} | {".ci", ".streamlit"}
    found = set()
    for word in re.findall(r"[\w./-]+", text):
        word = word.rstrip(".,:;")
        head = word.split("/")[0]
        if head in tops and "/" in word and "<" not in word and "*" not in word and word.split("/")[-1]:
            found.add(word)
    return found


def test_readme_is_short_and_every_path_it_names_exists():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    ignored = ("runs/", "models/")  # made by the commands the README shows, git-ignored
    missing = sorted(p for p in repository_paths(text) if not p.startswith(ignored) and not (ROOT / p).exists())
    assert not missing, missing
    assert len(repository_paths(text)) > 10  # the check sees the paths (docs/, scripts/, curate/ ...)


def test_the_path_check_sees_a_missing_path():
    assert "docs/gone.md" in repository_paths("see [x](docs/gone.md) and `scripts/preflight.py`.")


def test_nothing_edits_sys_path():
    """The project is installed (editable) into .venv by `make setup`: every module imports the packages as they are."""
    edits = [str(p.relative_to(ROOT)) for folder in STAGES + ("common", "scripts", "tests") for p in sources(folder)
             if re.search(r"sys\.path(\.insert|\.append|\[[^]]*\] *=)", p.read_text(encoding="utf-8"))
             and p.name != "test_layout.py"]
    assert not edits, edits
