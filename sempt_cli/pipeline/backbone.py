"""Load the backbone a `ModelSettings` names: an open_clip tag, a local weights file, or the demo CLIPs."""

from __future__ import annotations

from pathlib import Path

import torch

from sempt_cli.errors import SettingsError
from sempt_cli.models.factory import LoadedClip, load_clip, to_official_fp16
from sempt_cli.presets import is_demo_backbone
from sempt_cli.settings import ModelSettings

DEMO_TAG = "demo"


def load_backbone(
    model: ModelSettings, device: torch.device, cache_dir: Path | None = None, *, half: bool = False
) -> LoadedClip:
    """The frozen CLIP to adapt; 'demo' weights exist only for the built-in sempt-demo-* backbones. `half`: in the
    official fp16 layout (`Runtime.half_weights`, `--precision fp16`; see `to_official_fp16`)."""
    if model.checkpoint is None and model.pretrained == DEMO_TAG:
        if not is_demo_backbone(model.backbone):
            raise SettingsError(
                f"model.pretrained = 'demo' only exists for the built-in sempt-demo-teacher/-student backbones, "
                f"not {model.backbone}; pass --pretrained openai (or another open_clip tag) or --checkpoint PATH."
            )
        from sempt_cli.models.demo_clip import load_demo_clip

        clip = load_demo_clip(model.backbone, device)
    else:
        clip = load_clip(model.backbone, model.pretrained, model.checkpoint, device=device)
    if half:
        to_official_fp16(clip.model)
    return clip
