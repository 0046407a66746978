"""Load the backbone a `ModelSettings` names: an open_clip tag, a local weights file, or the demo CLIPs."""

from __future__ import annotations

from pathlib import Path

import torch

from sempt_cli.errors import SettingsError
from sempt_cli.models.factory import LoadedClip, load_clip
from sempt_cli.settings import ModelSettings

DEMO_TAG = "demo"


def load_backbone(model: ModelSettings, device: torch.device, cache_dir: Path | None = None) -> LoadedClip:
    """The frozen CLIP to adapt; 'demo' weights exist only for the built-in sempt-demo-* backbones."""
    if model.checkpoint is None and model.pretrained == DEMO_TAG:
        if not model.backbone.startswith("sempt-demo"):
            raise SettingsError(
                f"model.pretrained = 'demo' only exists for the built-in sempt-demo-teacher/-student backbones, "
                f"not {model.backbone}; pass --pretrained openai (or another open_clip tag) or --checkpoint PATH."
            )
        from sempt_cli.models.demo_clip import load_demo_clip

        return load_demo_clip(model.backbone, device)
    return load_clip(model.backbone, model.pretrained, model.checkpoint, device=device)
