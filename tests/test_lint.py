"""ruff and the import-linter layers contract (both configured in pyproject.toml) are part
of the test suite."""

import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("args", [["check", "."], ["format", "--check", "."]])
def test_ruff(args):
    beside = pathlib.Path(sys.executable).parent / "ruff"
    ruff = str(beside) if beside.exists() else shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (it comes with the dev extra)")
    result = subprocess.run([ruff, *args], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_layers():
    beside = pathlib.Path(sys.executable).parent / "lint-imports"
    tool = str(beside) if beside.exists() else shutil.which("lint-imports")
    if tool is None:
        pytest.skip("import-linter is not installed (it comes with the dev extra)")
    result = subprocess.run([tool], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout
