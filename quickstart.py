#!/usr/bin/env python3
"""Set up a virtual environment and run sempt's demo or its tests, on a machine that has only Python.

    python3 quickstart.py demo          # the whole pipeline on the built-in demo world (CPU is fine)
    python3 quickstart.py test          # the test suite's fast lane (minutes)
    python3 quickstart.py test --slow   # the end-to-end lane (demo-world training runs)
    python3 quickstart.py test --all    # both

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
LANES = {"--fast": ["-m", "not slow"], "--slow": ["-m", "slow"], "--all": []}
"""Test lanes: `slow` marks the end-to-end runs on the demo world (pyproject.toml's pytest markers)."""
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
    if argv[0] == "demo":
        return subprocess.run([str(_python()), *DEMO_COMMAND, *argv[1:]], cwd=ROOT).returncode
    extra = argv[1:]
    lane = extra.pop(0) if extra and extra[0] in LANES else "--fast"
    code = subprocess.run([str(_python()), *TEST_COMMAND, *LANES[lane], *extra], cwd=ROOT).returncode
    if lane == "--fast" and code == 0:
        print("Fast lane passed. `python3 quickstart.py test --slow` runs the end-to-end lane, `--all` both.")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
