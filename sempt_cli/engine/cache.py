"""Content-addressed tensor caches shared by every command.

An entry's key is the hash of everything that determines it (checkpoint hash, class list, template, ...),
so two commands that need the same tensors share one file, and changing any input simply misses the cache.
Entries are safetensors files with a JSON sidecar describing their inputs, both written atomically.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save
from torch import Tensor

from sempt_cli.engine.runtime import preserved_rng
from sempt_cli.io import atomic_write_bytes, atomic_write_json, stable_hash


class TensorCache:
    """`get_or_compute(kind, inputs, compute)` under `<root>/<kind>/<hash>.safetensors`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_for(self, kind: str, inputs: Mapping[str, Any]) -> Path:
        return self.root / kind / f"{stable_hash(dict(inputs), length=24)}.safetensors"

    def get(self, kind: str, inputs: Mapping[str, Any]) -> dict[str, Tensor] | None:
        path = self.path_for(kind, inputs)
        return load_file(path) if path.is_file() else None

    def put(self, kind: str, inputs: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> Path:
        path = self.path_for(kind, inputs)
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
