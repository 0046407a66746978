"""What enters or leaves every transformer block while some code runs: the tests' view of a tower from inside,
through PyTorch hooks on open_clip's own resblocks (nothing in sempt is patched)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn


def _recorded(blocks: Iterable[nn.Module], run: Callable[[], object], *, inputs: bool) -> list[Tensor]:
    caught: list[Tensor] = []

    def keep(tensor: Tensor) -> None:
        caught.append(tensor.detach().clone())

    handles = [block.register_forward_pre_hook(lambda _m, args: keep(args[0])) if inputs
               else block.register_forward_hook(lambda _m, _args, out: keep(out)) for block in blocks]
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    return caught


def block_inputs(blocks: Iterable[nn.Module], run: Callable[[], object]) -> list[Tensor]:
    """The sequence entering each block, in call order, while `run()` runs without gradients."""
    return _recorded(blocks, run, inputs=True)


def block_outputs(blocks: Iterable[nn.Module], run: Callable[[], object]) -> list[Tensor]:
    """Each block's output, in call order, while `run()` runs without gradients."""
    return _recorded(blocks, run, inputs=False)
