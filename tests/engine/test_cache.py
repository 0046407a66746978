"""The tensor cache: a damaged or non-finite entry is rebuilt, never fatal; non-finite tensors are never stored."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor

from sempt_cli.engine.cache import TensorCache
from sempt_cli.errors import SemptError

INPUTS = {"checkpoint": "abc", "classes": ["cat", "dog"]}


def _counting(value: Tensor) -> tuple[list[int], Callable[[], dict[str, Tensor]]]:
    calls: list[int] = []

    def compute() -> dict[str, Tensor]:
        calls.append(1)
        return {"vectors": value.clone()}

    return calls, compute


@pytest.mark.parametrize("damage", ["truncated", "non-finite"])
def test_a_damaged_entry_is_rebuilt(tmp_path: Path, damage: str, capsys: pytest.CaptureFixture[str]) -> None:
    cache = TensorCache(tmp_path)
    value = torch.randn(2, 4)
    calls, compute = _counting(value)
    cache.get_or_compute("class-vectors", INPUTS, compute)
    path = cache.path_for("class-vectors", INPUTS)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:-7])
    else:
        from safetensors.torch import save

        path.write_bytes(save({"vectors": torch.full((2, 4), float("nan"))}))
    tensors, hit = cache.get_or_compute("class-vectors", INPUTS, compute)
    assert not hit and len(calls) == 2
    torch.testing.assert_close(tensors["vectors"], value)
    assert f"Cache file {path}" in capsys.readouterr().err.replace("\n", "")
    again, hit = cache.get_or_compute("class-vectors", INPUTS, compute)
    assert hit and len(calls) == 2
    torch.testing.assert_close(again["vectors"], value)


def test_non_finite_tensors_are_not_cached(tmp_path: Path) -> None:
    cache = TensorCache(tmp_path)
    _, compute = _counting(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(SemptError, match=r"hold NaN or infinite values .*not cached"):
        cache.get_or_compute("class-vectors", INPUTS, compute)
    assert not cache.path_for("class-vectors", INPUTS).exists()
