"""Device, precision and seeding, resolved once from the settings."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from sempt_cli.errors import SettingsError
from sempt_cli.settings import ModelSettings


@dataclass(frozen=True)
class Runtime:
    """Where tensors live and which autocast dtype (if any) the forward passes use.

    `half_weights` (precision fp16) is the official PromptSRC/PromptKD arithmetic rather than generic mixed
    precision: the frozen backbone is loaded with fp16 weights (`models.factory.to_official_fp16`), activations
    are fp16, and there is no loss scaling (the official code has none, so no step is ever skipped). Trainable
    tensors keep fp32 master copies and losses are computed in fp32 (where the official code keeps the text
    context and the projector in fp16 and computes its losses in fp16). Precision amp is fp16 autocast over
    fp32 weights with loss scaling (MMRL's `PREC: amp`)."""

    device: torch.device
    amp_dtype: torch.dtype | None
    half_weights: bool = False
    """Backbones are loaded in the official fp16 layout (`load_backbone(..., half=)`)."""

    @property
    def uses_grad_scaler(self) -> bool:
        return self.amp_dtype is torch.float16 and not self.half_weights  # amp scales; the official fp16 does not

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def describe(self) -> str:
        precision = "fp32" if self.amp_dtype is None else f"autocast {str(self.amp_dtype).removeprefix('torch.')}"
        if self.half_weights:
            precision = "fp16 weights and activations, as the official code"
        return f"{self.device} ({precision})"


def resolve_runtime(model: ModelSettings, local_rank: int | None = None) -> Runtime:
    """auto → CUDA when present (bf16 autocast if supported), else CPU fp32; refuse CUDA requests without CUDA.
    fp16 also runs on CPU (slowly: it is there to check parity with the official arithmetic), bf16 and amp do not."""
    wants_cuda = model.device.startswith("cuda") or (model.device == "auto" and torch.cuda.is_available())
    if wants_cuda and not torch.cuda.is_available():
        raise SettingsError(f"model.device = {model.device!r} but no CUDA device is visible; use --device cpu.")
    if wants_cuda:
        index = local_rank if local_rank is not None else (int(model.device[5:]) if ":" in model.device else 0)
        device = torch.device("cuda", index)
    else:
        device = torch.device("cpu")
    precision = model.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision in {"bf16", "amp"} and device.type != "cuda":
        raise SettingsError(f"model.precision = {precision!r} needs a CUDA device; use --precision fp32 on CPU.")
    amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16, "amp": torch.float16}[precision]
    return Runtime(device, amp_dtype, half_weights=precision == "fp16")


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (as Dassl's set_random_seed) so initialisation is reproducible."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block and then restore python's, numpy's and torch's random states: work that runs only sometimes
    (filling a cache) must not change what the caller draws next (e.g. a model's initialisation)."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block under a fixed torch seed without disturbing the caller's RNG stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
