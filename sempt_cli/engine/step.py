"""How one training step runs on the device: compiled or eager, read back every few steps, fused optimizers.

Why: at the official batch of 8 a prompt-learning step is a few hundred small kernels, so an eager step is bound
by Python, kernel launches and host synchronisation rather than by arithmetic. Three levers remove that without
changing what is computed:

- `train.compile`: `torch.compile` of the method's forward and loss (AOTAutograd compiles the backward too);
  on CUDA `cuda-graphs` replays the captured kernels as CUDA graphs (mode reduce-overhead). Graph breaks in a
  method (Python-side caches, data-dependent control flow) are fine: those parts run eagerly.
- `LossReader`: the loss and its parts stay on the device and are read back together every `train.read_every`
  steps (and before every checkpoint, so a non-finite step is never saved), instead of one sync per part and
  step. A non-finite loss still stops the run, naming the step it happened at.
- `fused_optimizer_options`: one fused kernel for the whole SGD/AdamW update on CUDA.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Literal, TypeVar

import torch
from torch import Tensor, nn

from sempt_cli.errors import SemptError, SettingsError

T = TypeVar("T")
StepMode = Literal["off", "compile", "cuda-graphs"]

BACKEND = "inductor"
"""torch.compile's backend; tests set "aot_eager" (the same graph capture and AOTAutograd, no C++ compiler)."""


def resolve_compile(setting: str, device: torch.device) -> StepMode:
    """`train.compile` for this device: auto = cuda-graphs on CUDA, off on CPU (compiling costs more there than
    the step it would speed up, and needs a C++ compiler)."""
    if setting == "auto":
        return "cuda-graphs" if device.type == "cuda" else "off"
    if setting == "cuda-graphs" and device.type != "cuda":
        raise SettingsError("train.compile = 'cuda-graphs' needs a CUDA device; use --compile compile or off on CPU.")
    if setting not in ("off", "compile", "cuda-graphs"):
        raise SettingsError(f"train.compile = {setting!r} is not one of auto, off, compile, cuda-graphs.")
    return setting  # type: ignore[return-value]


def compile_step(module: nn.Module, mode: StepMode) -> nn.Module:
    """`module` itself (off) or its compiled form; parameters and buffers stay shared with the original."""
    if mode == "off":
        return module
    options: dict[str, Any] = {"backend": BACKEND}
    if BACKEND == "inductor":
        options["mode"] = "reduce-overhead" if mode == "cuda-graphs" else "default"
    return torch.compile(module, **options)  # type: ignore[return-value]


def begin_step(mode: StepMode) -> None:
    """Tell CUDA-graph trees a new iteration starts, so the previous step's graph outputs may be reused."""
    if mode == "cuda-graphs":
        torch.compiler.cudagraph_mark_step_begin()


def fused_optimizer_options(device: torch.device) -> dict[str, Any]:
    """`fused=True` where PyTorch has a fused SGD/AdamW kernel for the parameters (CUDA); nothing elsewhere."""
    return {"fused": True} if device.type == "cuda" else {}


class LossReader:
    """The loss and its parts of each step, kept on the device until `read()` fetches them all in one transfer.

    `read()` raises the run's one-sentence error for the first non-finite step since the last read. Parts given
    as Python floats (a method that reads its own values back) are passed through unchanged."""

    def __init__(self) -> None:
        self._pending: list[tuple[int, Tensor, list[str], dict[str, float]]] = []
        self.last: dict[str, float] = {}

    def add(self, step: int, total: Tensor, parts: Mapping[str, Tensor | float]) -> None:
        """Record optimizer step `step` (its loss summed over micro-batches). A new tensor is made here, so
        outputs of a replayed CUDA graph may be overwritten by the next step."""
        names = [k for k, v in parts.items() if isinstance(v, Tensor)]
        values = torch.stack([total.detach().float().reshape(()),
                              *(parts[k].detach().float().reshape(()) for k in names)])  # type: ignore[union-attr]
        floats = {k: float(v) for k, v in parts.items() if not isinstance(v, Tensor)}
        self._pending.append((step, values, names, floats))

    @property
    def pending(self) -> int:
        return len(self._pending)

    def read(self) -> dict[str, float]:
        """The last recorded step's parts as floats (one host synchronisation for every pending step)."""
        self.read_steps()
        return self.last

    def read_steps(self) -> list[tuple[int, dict[str, float]]]:
        """Every pending step's number and parts, in order (one host synchronisation for all of them); raises the
        run's one-sentence error at the first non-finite loss."""
        if not self._pending:
            return []
        pending, self._pending = self._pending, []
        flat = torch.cat([values for _, values, _, _ in pending]).tolist()  # the one transfer
        steps, start = [], 0
        for step, values, names, floats in pending:
            row = flat[start:start + len(values)]
            start += len(values)
            if not math.isfinite(row[0]):
                raise SemptError(
                    f"The loss became {row[0]} at step {step}; lower --lr or use --precision fp32/bf16."
                )
            steps.append((step, dict(zip(names, row[1:], strict=True)) | floats))
        self.last = steps[-1][1]
        return steps


def sum_parts(into: dict[str, Tensor | float], parts: Mapping[str, Tensor | float], weight: float) -> None:
    """`into[k] += weight * parts[k]` without reading device values back (micro-batch averaging)."""
    for key, value in parts.items():
        term = value.detach() * weight if isinstance(value, Tensor) else value * weight
        into[key] = into[key] + term if key in into else term


class EpochClock:
    """Where an epoch's wall time goes: blocked waiting for the next batch (decoding, augmentation, workers
    starting) versus running steps. Printed at each epoch's end so users see when their disk or CPU bounds a run."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.waiting = 0.0
        self.stepping = 0.0
        self.images = 0

    def batches(self, iterable: Iterable[T]) -> Iterator[T]:
        """`iterable`, timing how long each `next` blocks (creating the iterator included: workers start there)."""
        start = time.perf_counter()
        iterator = iter(iterable)
        while True:
            try:
                item = next(iterator)
            except StopIteration:
                self.waiting += time.perf_counter() - start
                return
            self.waiting += time.perf_counter() - start
            yield item
            start = time.perf_counter()

    @contextlib.contextmanager
    def step(self, images: int) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stepping += time.perf_counter() - start
            self.images += images

    def describe(self, epoch: int, epochs: int) -> str:
        total = max(time.perf_counter() - self.started, 1e-9)
        share = 100 * self.waiting / total
        line = (f"epoch {epoch}/{epochs}: {total:.1f} s, {self.images / total:.3g} img/s; waiting for data "
                f"{self.waiting:.1f} s ({share:.0f} %), steps {self.stepping:.1f} s "
                f"({100 * self.stepping / total:.0f} %)")
        if share >= 25:
            line += " — loading bounds this run (more --workers, a faster disk, or smaller stored images help)"
        return line
