"""Content identity of a loaded backbone, the root of every cache key that depends on its weights."""

from __future__ import annotations

from sempt_cli.io import file_identity
from sempt_cli.models.factory import LoadedClip


def backbone_identity(clip: LoadedClip) -> str | None:
    """`<backbone>@<sha256 of the weights file>`; None for random initialisation, which must never be cached."""
    if clip.weights_file is None:
        return None
    return f"{clip.backbone}@{file_identity(clip.weights_file)}"
