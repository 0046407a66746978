"""Content-addressed tensor caches shared by every command.

An entry's key is the hash of everything that determines it (checkpoint hash, class list, template, ...),
so two commands that need the same tensors share one file, and changing any input simply misses the cache.
Entries are safetensors files with a JSON sidecar describing their inputs, both written atomically. An entry
that cannot be read or holds NaN/infinity (a damaged disk, a hand-edited file) is said and rebuilt, and
non-finite tensors are never stored: a cache must not turn one bad computation into every later run's input.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from safetensors.torch import load_file, save
from torch import Tensor

from sempt_cli.engine.runtime import preserved_rng
from sempt_cli.errors import SemptError
from sempt_cli.io import atomic_write_bytes, atomic_write_json, stable_hash
from sempt_cli.models.checkpoint import non_finite


def read_cached(path: Path, console: Console | None = None) -> dict[str, Tensor] | None:
    """The tensors of a cache file, or None (and a note) when it is unreadable or not finite, to be rebuilt."""
    try:
        tensors = load_file(path)
    except Exception as exc:  # safetensors' own error type, or an OS error
        problem = f"cannot be read ({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__})"
    else:
        bad = non_finite(tensors)
        if not bad:
            return tensors
        problem = f"holds NaN or infinite values ({', '.join(bad[:3])})"
    (console or Console(stderr=True)).print(f"[yellow]Cache file {escape(str(path))} {escape(problem)}; "
                                            "rebuilding it.[/]")
    return None


class TensorCache:
    """`get_or_compute(kind, inputs, compute)` under `<root>/<kind>/<hash>.safetensors`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_for(self, kind: str, inputs: Mapping[str, Any]) -> Path:
        return self.root / kind / f"{stable_hash(dict(inputs), length=24)}.safetensors"

    def get(self, kind: str, inputs: Mapping[str, Any]) -> dict[str, Tensor] | None:
        path = self.path_for(kind, inputs)
        return read_cached(path) if path.is_file() else None

    def put(self, kind: str, inputs: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> Path:
        path = self.path_for(kind, inputs)
        bad = non_finite(tensors)
        if bad:
            raise SemptError(f"The {kind} computed for {path} hold NaN or infinite values ({', '.join(bad[:3])}); "
                             "they were not cached.", "Check the checkpoint and model they were computed from.")
        contiguous = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
        atomic_write_json(path.with_suffix(".json"), {"kind": kind, "inputs": dict(inputs)})
        atomic_write_bytes(path, save(contiguous))
        return path

    def get_or_compute(
        self, kind: str, inputs: Mapping[str, Any], compute: Callable[[], Mapping[str, Tensor]]
    ) -> tuple[dict[str, Tensor], bool]:
        """Return (tensors, hit): the cached entry, or `compute()` stored for next time. `compute` runs with the
        caller's random state preserved, so a hit and a miss leave the caller in the same state (it may rebuild
        and reseed a model, as `load_teacher` does)."""
        cached = self.get(kind, inputs)
        if cached is not None:
            return cached, True
        with preserved_rng():
            tensors = dict(compute())
        self.put(kind, inputs, tensors)
        return {k: v.detach().cpu() for k, v in tensors.items()}, False

    def describe(self, kind: str, inputs: Mapping[str, Any]) -> dict[str, Any] | None:
        sidecar = self.path_for(kind, inputs).with_suffix(".json")
        return json.loads(sidecar.read_text()) if sidecar.is_file() else None
