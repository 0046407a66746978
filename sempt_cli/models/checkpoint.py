"""Save and load what training learned (prompts, projectors, heads), never the frozen backbone.

Layout: `<name>.safetensors` (the tensors) + `<name>.json` (sidecar: format, sha256 of the tensor file,
tensor shapes, versions, and a free-form `metadata` dict: settings, backbone, pretrained tag, class list...).
Both are written atomically, tensors first: a crash between the two leaves a sidecar whose hash does not
match, which `load_learned` reports instead of loading a half-saved run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sempt_cli.errors import WeightsError
from sempt_cli.io import atomic_write_bytes, atomic_write_json
from sempt_cli.models.record import RunRecord

FORMAT = "sempt.learned/1"
_SUFFIXES = (".safetensors", ".json")


@dataclass(frozen=True)
class LearnedCheckpoint:
    """A loaded checkpoint: the tensors, the user metadata, and the verified hash of the tensor file."""

    tensors: dict[str, Tensor]
    metadata: dict[str, Any]
    sha256: str
    path: Path

    @cached_property
    def record(self) -> RunRecord:
        """The metadata as a typed run record (old sidecars migrated)."""
        return RunRecord.from_metadata(self.metadata, str(self.path))


def checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    """(`<name>.safetensors`, `<name>.json`) for `<name>`, `<name>.safetensors` or `<name>.json`."""
    path = Path(path)
    for suffix in _SUFFIXES:
        if path.name.endswith(suffix):
            path = path.with_name(path.name[: -len(suffix)])
            break
    return path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")


def learned_state_dict(module: nn.Module) -> dict[str, Tensor]:
    """Trainable parameters plus the persistent buffers of modules that own one (e.g. a projector's BN stats)."""
    state = {name: p.detach() for name, p in module.named_parameters() if p.requires_grad}
    for prefix, sub in module.named_modules():
        if any(p.requires_grad for p in sub.parameters(recurse=False)):
            for name, buf in sub.named_buffers(recurse=False):
                if name not in sub._non_persistent_buffers_set:
                    state[f"{prefix}.{name}" if prefix else name] = buf.detach()
    return state


def save_learned(
    path: str | Path,
    tensors: Mapping[str, Tensor],
    metadata: RunRecord | Mapping[str, Any] | None = None,
) -> Path:
    """Write `tensors` and a sidecar with `metadata` (a run's record); returns the tensor file's path."""
    if isinstance(metadata, RunRecord):
        metadata = metadata.to_metadata()
    from safetensors.torch import save

    from sempt_cli import __version__

    tensor_path, json_path = checkpoint_paths(path)
    # clone: safetensors refuses shared storage, and parameters may share it
    payload = {k: v.detach().to("cpu").contiguous().clone() for k, v in sorted(tensors.items())}
    data = save(payload, metadata={"format": "pt"})
    atomic_write_bytes(tensor_path, data)
    sidecar = {
        "format": FORMAT,
        "tensor_file": tensor_path.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype)[len("torch.") :]} for k, v in payload.items()},
        "versions": {"sempt": __version__, "torch": torch.__version__, "open_clip": _open_clip_version()},
        "metadata": json.loads(json.dumps(dict(metadata or {}), default=str)),
    }
    atomic_write_json(json_path, sidecar)
    return tensor_path


def load_learned(
    path: str | Path,
    *,
    expected: Mapping[str, Tensor] | nn.Module | None = None,
    device: str | torch.device = "cpu",
) -> LearnedCheckpoint:
    """Read and verify a checkpoint; with `expected`, also require exactly its keys and shapes."""
    from safetensors.torch import load

    tensor_path, json_path = checkpoint_paths(path)
    if not json_path.is_file() or not tensor_path.is_file():
        missing = json_path if not json_path.is_file() else tensor_path
        raise WeightsError(f"Checkpoint {tensor_path.with_suffix('')} is incomplete: {missing} does not exist.")
    try:
        sidecar = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WeightsError(f"Checkpoint sidecar {json_path} is not valid JSON: {exc}.") from exc
    if not isinstance(sidecar, dict) or sidecar.get("format") != FORMAT:
        raise WeightsError(f"{json_path} is not a sempt checkpoint sidecar (format {FORMAT}).")
    data = tensor_path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != sidecar.get("sha256"):
        raise WeightsError(
            f"Checkpoint {tensor_path} does not match its sidecar's sha256: it was modified or only partly written.",
            "Re-run the training that produced it, or restore both files together.",
        )
    try:
        loaded = load(data)
    except Exception as exc:  # safetensors' own error type: a bad, truncated or absurd header
        raise WeightsError(
            f"Checkpoint {tensor_path} is not a readable safetensors file ({_one_line(exc)}).",
            "Re-run the training that produced it, or restore it from a copy.",
        ) from None
    bad = non_finite(loaded)
    if bad:
        raise WeightsError(
            f"Checkpoint {tensor_path} holds NaN or infinite values (in {_some(bad)}); its scores would be "
            "meaningless.",
            "The training that produced it diverged or the file was altered; train again (a lower learning rate "
            "or --precision fp32 may help).",
        )
    tensors = {k: v.to(device) for k, v in loaded.items()}
    if expected is not None:
        check_state(tensors, expected, source=str(tensor_path))
    return LearnedCheckpoint(tensors, dict(sidecar.get("metadata") or {}), digest, tensor_path)


def check_state(
    tensors: Mapping[str, Tensor],
    expected: Mapping[str, Tensor] | nn.Module,
    *,
    source: str,
) -> None:
    """Raise a WeightsError naming the missing, unexpected and mis-shaped keys, if any."""
    if isinstance(expected, nn.Module):
        expected = learned_state_dict(expected)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    shapes = sorted(k for k in set(expected) & set(tensors) if tuple(expected[k].shape) != tuple(tensors[k].shape))
    if not (missing or unexpected or shapes):
        return
    parts = []
    if missing:
        parts.append(f"missing {_some(missing)}")
    if unexpected:
        parts.append(f"unexpected {_some(unexpected)}")
    for key in shapes[:3]:
        parts.append(f"{key} is {tuple(tensors[key].shape)} but the model expects {tuple(expected[key].shape)}")
    raise WeightsError(
        f"Checkpoint {source} does not fit this model: {'; '.join(parts)}.",
        "Was it trained with another method, backbone, prompt depth/length or class count?",
    )


def non_finite(tensors: Mapping[str, Tensor]) -> list[str]:
    """The keys of floating-point tensors holding NaN or infinity, sorted."""
    return sorted(k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0].rstrip(".")[:200] if text else type(exc).__name__


def _some(keys: list[str], shown: int = 5) -> str:
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


def load_learned_into(
    module: nn.Module,
    path: str | Path,
) -> LearnedCheckpoint:
    """Verify a checkpoint against `module`'s learned state and copy it in place; returns what was read."""
    own = learned_state_dict(module)
    device = next((t.device for t in own.values()), torch.device("cpu"))
    ckpt = load_learned(path, expected=own, device=device)
    targets = dict(module.named_parameters()) | dict(module.named_buffers())
    with torch.no_grad():
        for key, value in ckpt.tensors.items():
            targets[key].copy_(value)
    return ckpt


def _open_clip_version() -> str:
    try:
        import open_clip

        return str(open_clip.__version__)
    except Exception:  # pragma: no cover - open_clip is a dependency
        return "unknown"
