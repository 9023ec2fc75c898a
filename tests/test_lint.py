"""The package, tests, docs scripts and notebook builder pass `ruff check` with the rules of pyproject.toml."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _ruff(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True,
                          input=stdin, timeout=120)


def test_ruff_check_passes():
    result = _ruff("check", "--no-cache", ".")
    assert result.returncode == 0, f"ruff check found problems:\n{result.stdout}\n{result.stderr}"


def test_ruff_config_is_in_force():
    """The same command flags what the configuration selects: an unused import, docstrings missing or misplaced."""
    source = 'import os\n\n\ndef f(x):\n    """Summary\n    on two lines."""\n    return x\n'
    result = _ruff("check", "--no-cache", "--output-format", "concise", "--stdin-filename", "magma_pymc/example.py",
                   "-", stdin=source)
    assert result.returncode == 1
    codes = {line.split()[1] for line in result.stdout.splitlines() if line.startswith("magma_pymc/example.py")}
    assert {"F401", "D100", "D205", "D209"} <= codes, result.stdout
