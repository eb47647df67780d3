"""
The project as a user installs it (C{pip install .} into a fresh
virtualenv), built once per test run for every test that needs it (the
fixtures are in C{conftest.py}).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).parent.parent.parent
#: The environment of a user's shell: this checkout is not on the path.
CLEAN_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def build_wheel(out: Path) -> Path:
    """The project built into a wheel in C{out}."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)],
        check=True, timeout=300, env=CLEAN_ENV, cwd=out,
    )
    (path,) = out.glob("lbproxy-*.whl")
    return path


def install(wheel: Path, venv: Path) -> Path:
    """A fresh virtualenv at C{venv} with only C{wheel} installed."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120, env=CLEAN_ENV)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)],
                   check=True, timeout=600, env=CLEAN_ENV, cwd=venv.parent)
    return venv
