"""Zero-shot CLIP: the frozen backbone with the dataset's hand-written template (CoOp's `zsclip.py`).

The reference every prompt learner is compared with; it has nothing to train.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from sempt_cli.data.records import prompt_name
from sempt_cli.data.registry import get_dataset_info
from sempt_cli.engine.cache import TensorCache
from sempt_cli.models.factory import LoadedClip
from sempt_cli.models.prompted import PromptedTextTower, PromptSpec
from sempt_cli.protocol import Method, register_method
from sempt_cli.settings import Settings


@register_method
class ZeroShotCLIP(Method):
    """Frozen CLIP, class embeddings from `template.format(name)`."""

    name = "zeroshot"
    title = "CLIP"
    role = "zero-shot"
    supervised = False
    description = "Frozen CLIP with the dataset's hand-written prompt template (no training)."

    def __init__(
        self, clip: LoadedClip, train_classnames: Sequence[str], settings: Settings, cache: TensorCache | None = None
    ) -> None:
        super().__init__(train_classnames)
        self.backbone = clip.model
        self.template = get_dataset_info(settings.data.dataset).template
        self.text = PromptedTextTower(self.backbone, PromptSpec(0), ctx_init=None, tokenizer=clip.tokenizer)

    def logit_scale(self) -> Tensor:
        return self.backbone.logit_scale.exp()

    def image_embeddings(self, images: Tensor) -> Tensor:
        return F.normalize(self.backbone.encode_image(images), dim=-1)

    def class_embeddings(self, classnames: Sequence[str]) -> Tensor:
        prompts = self.text.build_prompts([self.template.format(prompt_name(name)) for name in classnames])
        return F.normalize(self.text(prompts), dim=-1)
