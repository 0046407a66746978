"""Read and write Dassl checkpoint files (`model-best.pth.tar`, `model.pth.tar-20`) without trusting pickle.

A Dassl checkpoint is `torch.save({"state_dict", "epoch", "optimizer", "scheduler", "val_result"})`. It is read
with `torch.load(weights_only=True)` only, which builds tensors and plain containers and refuses any other pickled
object before constructing it; such a file is refused with a `WeightsError`, never re-read with
`weights_only=False`.

One exception, by name and without running their code: Dassl's warm-up scheduler keeps its successor scheduler
as an attribute (`ConstantWarmupScheduler.successor`, a `CosineAnnealingLR` holding the `SGD` optimizer), so
every official file pickles those two torch objects inside `scheduler`. Those few names are resolved to inert
stand-ins that only receive their attributes; `optimizer` and `scheduler` are then discarded. Every other
global is refused.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sempt_cli.errors import WeightsError
from sempt_cli.io import atomic_open, sha256_file


class _Inert:
    """Stands in for a pickled optimizer or LR scheduler: takes its attributes, runs none of its code."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Inert:
        return super().__new__(cls)


def _plain_dict(*args: Any) -> dict[Any, Any]:
    """Stands in for `collections.defaultdict(dict)` (an optimizer's `state`): a plain dict holds the same items."""
    return {}


_OPTIMIZERS = ("sgd.SGD", "adam.Adam", "adamw.AdamW", "rmsprop.RMSprop")
_SCHEDULERS = ("CosineAnnealingLR", "StepLR", "MultiStepLR")  # Dassl's "cosine", "single_step", "multi_step"
DASSL_STAND_INS: tuple[tuple[Any, str], ...] = (
    *((_Inert, f"torch.optim.{name}") for name in _OPTIMIZERS),
    *((_Inert, f"torch.optim.lr_scheduler.{name}") for name in _SCHEDULERS),
    (_plain_dict, "collections.defaultdict"),
    (dict, "builtins.dict"),
)
"""(stand-in, global) pairs for the torch objects Dassl pickles in `scheduler` (see the module docstring)."""


@dataclass(frozen=True)
class DasslCheckpoint:
    """The tensors of a Dassl checkpoint, its epoch, and the file's identity."""

    path: Path
    state_dict: dict[str, Tensor]
    epoch: int | None
    sha256: str


def read_dassl_checkpoint(path: str | Path) -> DasslCheckpoint:
    """Load a Dassl `.pth.tar` (or a bare state dict) safely; see the module docstring."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"The checkpoint {path} does not exist.")
    try:
        with torch.serialization.safe_globals(list(DASSL_STAND_INS)):
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _refusal(path, exc) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise WeightsError(f"{path} is not a readable PyTorch checkpoint: {_one_line(exc)}.") from None
    state, epoch = _state_dict(loaded, path)
    return DasslCheckpoint(path, state, epoch, sha256_file(path))


def _state_dict(loaded: object, path: Path) -> tuple[dict[str, Tensor], int | None]:
    """`loaded["state_dict"]` (Dassl) or `loaded` itself (a bare state dict), `module.` prefixes removed."""
    if not isinstance(loaded, Mapping):
        raise WeightsError(f"{path} holds a {type(loaded).__name__}, not a checkpoint dict.")
    state = loaded.get("state_dict", loaded)
    epoch = loaded.get("epoch") if "state_dict" in loaded else None
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsError(f"{path} has no state dict of tensors (neither a Dassl checkpoint nor a bare state dict).")
    tensors = {str(k).removeprefix("module."): v for k, v in state.items()}
    return tensors, int(epoch) if isinstance(epoch, int) else None


def write_dassl_checkpoint(path: str | Path, state_dict: Mapping[str, Tensor], epoch: int) -> Path:
    """Write tensors in the layout Dassl's `load_checkpoint` reads: plain tensors and ints only, no optimizer or
    scheduler (loadable with `weights_only=True`), atomically."""
    path = Path(path)
    tensors = OrderedDict((k, v.detach().to("cpu").contiguous().clone()) for k, v in sorted(state_dict.items()))
    payload = {
        "state_dict": tensors,
        "epoch": int(epoch),
        "optimizer": None,
        "scheduler": None,
        "val_result": None,
    }
    with atomic_open(path, "wb") as handle:
        torch.save(payload, handle)
    return path


def _refusal(path: Path, exc: pickle.UnpicklingError) -> WeightsError:
    """Why a weights-only load refused the file: the globals it would import (found by scanning its opcodes, or
    named in torch's message for legacy files; nothing is built either way), or the unpickler's own reason."""
    message = str(exc)
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # legacy (pre-zip) or damaged file: torch's message names what it refused
        found = re.findall(r"GLOBAL ([\w.]+)", message)
    allowed = {name for _, name in DASSL_STAND_INS}
    names = [name for name in found if name not in allowed]
    if names:
        shown = ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")
        return WeightsError(
            f"{path} contains pickled Python objects ({shown}), which could run arbitrary code when loaded; "
            "sempt will not unpickle it.",
            "If you trust its source, re-save only its tensors, e.g. torch.save({'state_dict': "
            "torch.load(PATH, weights_only=False)['state_dict']}, 'clean.pth.tar'), and import that file.",
        )
    reason = message.split("WeightsUnpickler error:", 1)[-1].split("Check the documentation", 1)[0]
    return WeightsError(f"{path} is not a weights-only PyTorch checkpoint ({_one_line(reason)}); sempt will not "
                        "unpickle it.")


def _one_line(exc: BaseException | str) -> str:
    text = str(exc).strip().splitlines()
    if text:
        return text[0].rstrip(".")
    return "no reason given" if isinstance(exc, str) else type(exc).__name__
