#!/usr/bin/env python3
"""Set up a virtual environment and run sempt's demo or its tests, on a machine that has only Python.

    python3 quickstart.py demo    # the whole pipeline on the built-in demo world (CPU is fine)
    python3 quickstart.py test    # the test suite

The environment lives in ./.venv and is reused; delete it to start over. Standard library only.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STAMP = VENV / ".sempt-installed"
TEST_COMMAND = ["-m", "pytest", "-q"]
DEMO_COMMAND = ["-m", "sempt_cli", "demo"]


def _python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _install() -> None:
    """Create the venv and `pip install -e .[test]` unless pyproject.toml is unchanged since last time."""
    fingerprint = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.is_file() and STAMP.read_text() == fingerprint:
        return
    if not _python().exists():
        print(f"Creating a virtual environment in {VENV} ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("Installing sempt and its pinned dependencies (first time: a few minutes, ~6 GB) ...", flush=True)
    subprocess.run([str(_python()), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
    subprocess.run([str(_python()), "-m", "pip", "install", "--quiet", "-e", f"{ROOT}[test]"], check=True)
    STAMP.write_text(fingerprint)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"demo", "test", "setup"}:
        print(__doc__)
        return 2
    _install()
    if argv[0] == "setup":
        return 0
    command = DEMO_COMMAND if argv[0] == "demo" else TEST_COMMAND
    return subprocess.run([str(_python()), *command, *argv[1:]], cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
