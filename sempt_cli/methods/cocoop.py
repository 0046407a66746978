"""CoCoOp (Zhou et al., CVPR 2022): CoOp's learned text context, shifted per image by a meta-net.

As the official `trainers/cocoop.py` (KaiyangZhou/CoOp; the PromptKD repository carries the same file) computes it:

* context: `n_ctx` vectors `ctx` [n, W] at positions 1..n of "{ctx} {class}." — initialised from the token
  embeddings of `ctx_init` ("a photo of a"), in which case `n_ctx` is the number of *words* of `ctx_init` and
  `prompts.text_length` is ignored, as the official code ignores `N_CTX`; without `ctx_init`, `text_length`
  vectors drawn from N(0, 0.02²) behind an "X X .. X" prefix;
* meta-net π = Linear(vis_dim, vis_dim // 16) → ReLU → Linear(vis_dim // 16, ctx_dim) (PyTorch's default init),
  applied to the *L2-normalised* frozen CLIP image feature x; every context vector is shifted by the same
  π(x): `ctx_m(x) = ctx_m + π(x)`;
* every image gets its own prompts for every class, so the text tower runs B × C sequences, and
  `logits[b, c] = exp(logit_scale) · <x̂_b, t̂_c(x_b)>`; the loss is the cross-entropy with the labels;
* only `ctx` and π train (the image and text encoders are frozen).

Official hyper-parameters (`configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml`, the config of every
script in `scripts/cocoop/`): SGD lr 0.002, momentum 0.9, weight decay 5e-4, 10 epochs, cosine schedule after one
constant warm-up epoch at 1e-5, batch 1, 16 shots, fp16. Base-to-novel trains on the base classes; cross-dataset
and cross-domain (`xd_train.sh`) train one model on all ImageNet classes with the same config. The authors give
no few-shot recipe: few-shot uses the same config on all classes (say so when comparing). The PromptKD
repository's copy of the config sets batch 8; the CoCoOp paper and its own repository use 1, as here.

Where this implementation differs from the official code (numerically negligible unless noted):

* precision: fp32 master copies of `ctx` and π with the engine's autocast (the official fp16 mode keeps `ctx` and
  π in fp16 and steps them in fp16), and the loss in fp32;
* text runs only up to the last EOT token of each class chunk (exact under the causal mask);
* evaluation bounds the text sequences per forward (`SEQUENCE_BUDGET`, images × classes): the official code
  encodes all C prompts of an image at once, at full length 77, which runs out of memory on ImageNet's 1000
  classes at batch 1; here ImageNet-size class lists are encoded in chunks, and the logits are formed chunk by
  chunk without keeping every image's class embeddings;
* `class_embeddings(classnames)` without an image is refused: CoCoOp has no image-free class embedding, so
  `sempt embed` and PromptKD distillation from a CoCoOp model stop with one sentence (SemPT and evaluation use
  the per-image `class_embeddings_for`).

No official CoCoOp checkpoints were released (the CoOp repository publishes CoOp's ImageNet weights only), so
there is no `sempt interop` layout for it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import ConfigDict, Field
from torch import Tensor, nn

from sempt_cli.engine.cache import TensorCache
from sempt_cli.errors import SemptError
from sempt_cli.methods.common import DEMO_BATCH_AND_CROPS, PerClassList
from sempt_cli.models.factory import DEMO_STUDENT, LoadedClip
from sempt_cli.models.prompted import CLASS_CHUNK, PROMPT_STD, ClassPrompts, PromptedTextTower, PromptSpec
from sempt_cli.presets import Presets, Rule
from sempt_cli.protocol import (
    Batch,
    Classifier,
    Method,
    TrainingForward,
    cross_entropy_head,
    register_method,
)
from sempt_cli.settings import Settings, SettingsSection

SEQUENCE_BUDGET = CLASS_CHUNK
"""Text sequences (images × classes) per forward of the text tower: at most ~1000 classes of one image, or
several images of a smaller class list, so memory stays bounded whatever the class list."""


class CoCoOpSettings(SettingsSection):
    """CoCoOp's meta-net; the context length and its initialisation are `prompts.text_length` / `prompts.ctx_init`."""

    model_config = ConfigDict(title="CoCoOp")
    section = "cocoop"

    meta_ratio: int = Field(
        16, ge=1, description="The meta-net's bottleneck: vis_dim // meta_ratio hidden units (official 16).",
    )


COCOOP_PRESETS = Presets(
    Rule({"train.optimizer": "sgd", "train.lr": 0.002, "train.momentum": 0.9, "train.weight_decay": 5e-4,
          "train.epochs": 10, "train.warmup_epochs": 1, "train.warmup_lr": 1e-5, "data.batch_size": 1,
          "data.shots": 16, "data.subsample": "base", "prompts.text_length": 4, "prompts.ctx_init": "a photo of a",
          "cocoop.meta_ratio": 16}),
    Rule({"data.subsample": "all"}, when={"data.setting": ("cross-dataset", "cross-domain", "few-shot")}),
    Rule({"model.backbone": DEMO_STUDENT, "train.lr": 0.01}, when={"demo": True}),
    DEMO_BATCH_AND_CROPS,
)
"""`vit_b16_c4_ep10_batch1_ctxv1.yaml` for every setting (see the module docstring). The demo world's stand-in
for ViT-B/16 is the demo student, with the CPU-sized batches and crops of the other demo presets and a learning
rate for batch 16."""


@dataclass(frozen=True)
class _Chunk:
    """A chunk of class prompts and its EOT positions on the host (so repeating it per image never syncs)."""

    prompts: ClassPrompts
    eot: list[int]


def _chunks(prompts: ClassPrompts, size: int) -> list[_Chunk]:
    return [_Chunk(chunk, [int(i) for i in chunk.eot_index.tolist()]) for chunk in prompts.chunks(size)]


@register_method
class CoCoOp(Method):
    """CoOp's context shifted per image by a meta-net of the frozen image feature."""

    name = "cocoop"
    title = "CoCoOp"
    description = "Conditional context optimisation: CoOp's context shifted per image by a meta-net (CVPR'22)."
    options = CoCoOpSettings
    preset_table = COCOOP_PRESETS
    settings_sections = ("prompts", "cocoop")
    class_side_needs_images = True

    def __init__(
        self, clip: LoadedClip, train_classnames: Sequence[str], settings: Settings, cache: TensorCache | None = None
    ) -> None:
        super().__init__(train_classnames)
        prompts, own = settings.prompts, settings.section(CoCoOpSettings)
        self.backbone = clip.model
        self.backbone.requires_grad_(False)
        self.text = PromptedTextTower(self.backbone, PromptSpec(0), ctx_init=None, tokenizer=clip.tokenizer)
        device = self.text.token_embedding.weight.device
        width = self.text.width
        ctx_init = (prompts.ctx_init or "").replace("_", " ")
        if ctx_init:  # the official rule: as many context vectors as words, initialised from their tokens
            self.n_ctx = len(ctx_init.split(" "))
            ids = clip.tokenizer([ctx_init]).to(device)
            with torch.no_grad():
                init = self.text.token_embedding(ids[0, 1 : 1 + self.n_ctx]).float()
            self.prefix = ctx_init
        else:
            self.n_ctx = prompts.text_length
            init = torch.empty(self.n_ctx, width, device=device)
            nn.init.normal_(init, std=PROMPT_STD)
            self.prefix = " ".join(["X"] * self.n_ctx)
        self.ctx = nn.Parameter(init.clone())
        vis_dim = int(self.backbone.visual.output_dim)
        hidden = max(1, vis_dim // own.meta_ratio)
        self.meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(vis_dim, hidden)),
            ("relu", nn.ReLU(inplace=True)),
            ("linear2", nn.Linear(hidden, width)),
        ])).to(device)
        self.embedding_dim = vis_dim
        self.sequence_budget = SEQUENCE_BUDGET
        self.prompts = PerClassList(self.class_prompts, self.train_classnames)
        self._chunk_cache: dict[tuple[tuple[str, ...], int], list[_Chunk]] = {}

    # ------------------------------------------------------------------ prompts
    def class_prompts(self, classnames: Sequence[str]) -> ClassPrompts:
        """'{prefix} {class}.' tokenised, with "_" in class names read as spaces (official)."""
        return self.text.build_prompts([f"{self.prefix} {name.replace('_', ' ')}." for name in classnames])

    def _chunks_for(self, classnames: Sequence[str], size: int) -> list[_Chunk]:
        """The class list's prompts in chunks of `size`, built once per class list and size."""
        key = (tuple(classnames), size)
        if key not in self._chunk_cache:
            if len(self._chunk_cache) >= 4:
                self._chunk_cache.pop(next(iter(self._chunk_cache)))
            self._chunk_cache[key] = _chunks(self.prompts(classnames), size)
        return self._chunk_cache[key]

    def shifted_context(self, image_embeddings: Tensor) -> Tensor:
        """`ctx + π(x̂)` [B, n, W] for L2-normalised image features x̂ [B, D]."""
        bias = self.meta_net(image_embeddings.to(self.ctx.dtype))  # π is fp32, as `ctx`
        return self.ctx.unsqueeze(0) + bias.unsqueeze(1)

    def _encode(self, context: Tensor, chunk: _Chunk) -> Tensor:
        """L2-normalised text features [b, c, D] of the chunk's classes with each image's context [b, n, W]."""
        prompts, n = chunk.prompts, self.n_ctx
        images, classes = context.shape[0], len(prompts)
        embeddings = prompts.embeddings
        length, width = embeddings.shape[1], embeddings.shape[2]
        per_image = context.to(embeddings.dtype).unsqueeze(1).expand(images, classes, n, width)
        tokens = torch.cat([embeddings[None, :, :1].expand(images, -1, -1, -1), per_image,
                            embeddings[None, :, 1 + n :].expand(images, -1, -1, -1)], dim=2)
        sequences = ClassPrompts(prompts.token_ids.repeat(images, 1), prompts.eot_index.repeat(images),
                                 tokens.reshape(images * classes, length, width), 0, eot=chunk.eot * images)
        return F.normalize(self.text(sequences), dim=-1).reshape(images, classes, -1)

    def _blocks(self, image_embeddings: Tensor, classnames: Sequence[str]) -> Iterator[tuple[slice, slice, Tensor]]:
        """(image rows, class columns, text features [b, c, D]) covering every image × class once, each block at
        most `sequence_budget` sequences."""
        per_forward = max(1, min(len(classnames), self.sequence_budget))
        images_per_forward = max(1, self.sequence_budget // per_forward)
        context = self.shifted_context(image_embeddings)
        chunks = self._chunks_for(classnames, per_forward)
        for start in range(0, context.shape[0], images_per_forward):
            rows = slice(start, start + images_per_forward)
            column = 0
            for chunk in chunks:
                columns = slice(column, column + len(chunk.prompts))
                column = columns.stop
                yield rows, columns, self._encode(context[rows], chunk)

    # ------------------------------------------------------------------ protocol
    def logit_scale(self) -> Tensor:
        return self.backbone.logit_scale.exp()

    def image_embeddings(self, images: Tensor) -> Tensor:
        visual = self.backbone.visual
        return F.normalize(visual(images.to(next(visual.parameters()).dtype)), dim=-1)

    def class_embeddings(self, classnames: Sequence[str]) -> Tensor:
        raise SemptError("CoCoOp's class embeddings depend on the image, so it has none to give without one.",
                         "Use a method with image-free class embeddings (e.g. CoOp) for `sempt embed` or as a "
                         "PromptKD teacher.")

    def class_embeddings_for(self, image_embeddings: Tensor, classnames: Sequence[str]) -> Tensor:
        """[B, C, D]: every image's own class embeddings (training, SemPT's T_lbl)."""
        rows: dict[int, list[Tensor]] = {}
        for image_rows, _columns, features in self._blocks(image_embeddings, classnames):
            rows.setdefault(image_rows.start, []).append(features)
        return torch.cat([torch.cat(parts, dim=1) for parts in rows.values()])

    def class_embedding_dim(self) -> int:
        return self.embedding_dim

    def classifier(self, classnames: Sequence[str], *, in_domain: bool = True) -> Classifier:
        """The logits block by block: no [B, C, D] (let alone [B, C, 77, W]) is ever held for a long class list."""
        names = list(classnames)

        def logits(image_embeddings: Tensor) -> Tensor:
            scale = self.logit_scale()
            out: Tensor | None = None
            for rows, columns, features in self._blocks(image_embeddings, names):
                block = scale * torch.einsum("bd,bcd->bc", image_embeddings[rows], features.to(image_embeddings.dtype))
                if out is None:
                    out = block.new_empty(image_embeddings.shape[0], len(names))
                out[rows, columns] = block
            assert out is not None
            return out

        return logits

    def training_forward(self, batch: Batch) -> TrainingForward:
        image = self.image_embeddings(batch.images)
        text = self.class_embeddings_for(image, self.train_classnames)

        return TrainingForward(image, text, cross_entropy_head(batch.labels))
