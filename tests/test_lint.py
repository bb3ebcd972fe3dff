"""`make lint` (run by `make test` before pytest) fails on a file that breaks the house style."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO

BADLY_FORMATTED = "x = {  'a':1 }\n"
UNUSED_IMPORT = "import os\n\nx = 1\n"


def ruff(*args: str, cwd) -> subprocess.CompletedProcess:
    settings = str(REPO / "pyproject.toml")
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args, "--config", settings, "."],
        cwd=cwd,
        capture_output=True,
        text=True,
    )


def test_the_formatter_check_fails_on_unformatted_code(tmp_path):
    (tmp_path / "module.py").write_text(BADLY_FORMATTED)
    assert ruff("format", "--check", cwd=tmp_path).returncode == 1
    (tmp_path / "module.py").write_text("x = {'a': 1}\n".replace("'", '"'))
    assert ruff("format", "--check", cwd=tmp_path).returncode == 0


def test_the_linter_fails_on_an_unused_import(tmp_path):
    (tmp_path / "module.py").write_text(UNUSED_IMPORT)
    result = ruff("check", cwd=tmp_path)
    assert result.returncode == 1 and "F401" in result.stdout
    (tmp_path / "module.py").write_text("x = 1\n")
    assert ruff("check", cwd=tmp_path).returncode == 0


def test_the_tree_is_formatted_and_lint_free():
    for args in (("format", "--check"), ("check",)):
        result = ruff(*args, cwd=REPO)
        assert result.returncode == 0, result.stdout + result.stderr
