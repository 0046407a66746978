"""Load a benchmark script as a module (bench/ is not a package), for the benches' smoke tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"


def load_bench(script: str, module_name: str) -> ModuleType:
    """`bench/<script>` imported under `module_name` (registered in sys.modules, as dataclasses need)."""
    spec = importlib.util.spec_from_file_location(module_name, BENCH_DIR / script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
