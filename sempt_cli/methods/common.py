"""What several method files share: the frozen template ensemble and the demo-world preset rules of IVLP-style
prompts. Anything here is used by at least two methods; a method's own helpers stay in its file."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from sempt_cli.models.factory import LoadedClip
from sempt_cli.models.prompted import PromptedTextTower, PromptSpec
from sempt_cli.presets import Rule


def template_ensemble(clip: LoadedClip, classnames: Sequence[str], templates: Sequence[str]) -> Tensor:
    """Frozen text features per class, averaged over templates *before* normalising (official quirk, §5.6)."""
    frozen = PromptedTextTower(clip.model, PromptSpec(0), ctx_init=None, tokenizer=clip.tokenizer)
    names = [name.replace("_", " ") for name in classnames]
    total: Tensor | None = None
    with torch.no_grad():
        for template in templates:
            features = frozen.encode(frozen.build_prompts([template.format(n) for n in names])).float()
            total = features if total is None else total + features
    assert total is not None
    return total / len(templates)


DEMO_BATCH_AND_CROPS = Rule({"data.batch_size": 16, "data.crop_scale_min": 0.8}, when={"demo": True})
"""The demo CLIPs' CPU-sized batches; their 48-pixel pictures carry object size and position as attributes,
which crops down to 8% of the area destroy (the demo CLIPs were pre-trained with small shifts only), so the demo
crops keep most of the picture."""

DEMO_DEEP_PROMPTS = Rule({"prompts.vision_depth": 4, "prompts.text_depth": 3},
                         when={"demo": True, "preset:prompts.vision_depth": lambda depth: depth > 3})
"""The tiny demo CLIPs have 6/4 (teacher) and 4/3 (student) blocks: keep the official depth *ratio* (9 of 12
layers) instead of a depth they do not have."""

IVLP_DEMO_RULES = (
    DEMO_BATCH_AND_CROPS,
    Rule({"train.lr": 0.01}, when={"demo": True}),
    DEMO_DEEP_PROMPTS,
    Rule({"train.epochs": 10}, when={"demo": True, "preset:train.epochs": lambda epochs: epochs > 10}),
)
"""Demo presets of the IVLP-prompt methods (PromptSRC and its variants, PromptKD, RESTORE): batch 16, lr 0.01,
scaled depth, at most 10 epochs."""
