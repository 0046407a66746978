"""DPT: dual-modality prompt tuning with class-aware visual prompts (Xing et al., IEEE TMM 2023).

Three variants of one method (`dpt.variant`, paper §IV-B):

* `vpt`: VPT-deep visual prompts (length 10 in every block), class names through the frozen text encoder with
  the dataset's hand-written template;
* `vlp`: CoOp text context (16 learnable tokens at the input) + VPT-deep visual prompts (§III-B);
* `dpt`: VLP + class-aware visual prompts (CAVPT, §III-C) in the last block(s).

CAVPT (Eq. 6-8), per inserted block l: the frozen CLIP's zero-shot prediction (frozen image feature against the
frozen text features of the candidate classes, dataset template) picks the top-K_N classes; their *prompted* text
features g_j go through a fully connected layer to queries q_j (vision width); keys and values are the block's
input tokens (class token + patches) plus learnable visual prompts; o_j = softmax(q_j W_q (k W_k)ᵀ / √d_k) k W_v;
the K_N tokens P̃_j = LN(o_j + q_j) are this block's visual prompts (Eq. 10: they replace the deep prompts there).
A K-way classifier on LN(o_j) is trained with cross-entropy on the token whose query is the ground-truth class,
when that class is among the top-K_N (Eq. 8), weighted α (Eq. 11).

General-knowledge warm-up (Eq. 12, vlp and dpt): for the first `dpt.guidance_epochs` epochs the loss is
L_coop + L_vpt + β·L_ce + α·L_ce^ca, where L_coop is CoOp's loss (frozen image feature against the prompted text
features: it trains the text prompts alone), L_vpt is VPT's loss (prompted image feature against the frozen
template text features) and L_ce is VLP's own cross-entropy; afterwards L_ce + α·L_ce^ca.

Readings of the paper, each matching the official code (github.com/fanrena/DPT, `trainers/DPT.py`; the
parameter count it implies, 1,136,384 on ViT-B/32 without the K-way head, is the paper's Table VI):

* "visual prompts" among CAVPT's keys/values are the block's own learnable prompts (length
  `prompts.vision_length`), not the previous block's prompt outputs, which leave the sequence at that block;
* the K-way classifier is a bias-free linear layer over the training classes on LN(o_j) (a second LayerNorm,
  not the one of Eq. 7); the loss is averaged over the classified tokens (0 when no ground truth is in a top-K_N);
* queries come from the unnormalised prompted text features; W_v is applied after the attention (equal by
  linearity); d_k = 32; keys/values are detached from the visual tokens (`dpt.cavpt_detach`).

Learning rates as in the official code, which has one optimizer per part: the visual prompts and CAVPT at
`train.lr` (0.01, ten warm-up epochs, one on ImageNet), the text context at `dpt.text_lr` (0.002) with
`dpt.text_warmup_epochs` (one); two parameter groups of one optimizer (`parameter_groups`), each on the shared
warm-up + cosine schedule at its own rate.

Deliberate difference from the official code: layer-0 visual prompts pass through `ln_pre` (the towers' IVLP
semantics, `models/prompted.py`) where the official code appends them after it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Literal

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer
from pydantic import ConfigDict, Field
from torch import Tensor, nn

from sempt_cli.data.registry import get_dataset_info
from sempt_cli.engine.cache import TensorCache
from sempt_cli.errors import SemptError
from sempt_cli.methods.common import CACHED_CLASS_LISTS, DEMO_BATCH_AND_CROPS, PerClassList, template_ensemble
from sempt_cli.models.factory import LoadedClip
from sempt_cli.models.identity import backbone_identity
from sempt_cli.models.prompted import (
    PROMPT_STD,
    DeepPrompts,
    PromptedTextTower,
    PromptedVisionTower,
    PromptSpec,
)
from sempt_cli.presets import Computed, PresetContext, Presets, Rule
from sempt_cli.protocol import (
    Batch,
    LossOutput,
    Method,
    ParameterGroup,
    TrainingForward,
    cross_entropy_head,
    register_method,
)
from sempt_cli.settings import Settings, SettingsSection

FEW_SHOT_60_EPOCHS = {"caltech101", "oxford_pets"}
"""Datasets whose 16-shot DPT run stops at 60 epochs instead of 100 (§IV-A)."""


class ClassAwarePrompts(nn.Module):
    """CAVPT for one vision block (Eq. 6-8): K_N prompt tokens from the candidate classes' text features."""

    def __init__(
        self, embed_dim: int, width: int, num_prompts: int, attn_dim: int, num_classes: int, *, detach: bool = True
    ) -> None:
        super().__init__()
        self.detach = detach
        self.attn_dim = attn_dim
        self.query = nn.Linear(embed_dim, width)  # the FC layer mapping g_j to q_j
        self.w_q = nn.Linear(width, attn_dim, bias=False)
        self.w_k = nn.Linear(width, attn_dim, bias=False)
        self.w_v = nn.Linear(width, width, bias=False)
        self.norm = nn.LayerNorm(width)  # Eq. 7
        self.aux_norm = nn.LayerNorm(width)  # LN(o_j) that the K-way classifier reads (Eq. 8)
        self.classifier = nn.Linear(width, num_classes, bias=False)
        self.prompts = nn.Parameter(torch.empty(num_prompts, width).normal_(std=PROMPT_STD))

    def keys(self, tokens: Tensor) -> Tensor:
        """k: the block's class + patch tokens [B, n, W] followed by this block's learnable visual prompts."""
        tokens = tokens.detach() if self.detach else tokens
        prompts = self.prompts.to(tokens.dtype).unsqueeze(0).expand(tokens.shape[0], -1, -1)
        return torch.cat([tokens, prompts], dim=1)

    def attention(self, queries: Tensor, keys: Tensor) -> Tensor:
        """Softmax(q W_q (k W_k)ᵀ / √d_k): [B, K_N, n + prompts]."""
        scores = self.w_q(queries) @ self.w_k(keys).transpose(1, 2)
        return F.softmax(scores / math.sqrt(self.attn_dim), dim=-1)

    def forward(self, text_features: Tensor, tokens: Tensor, *, classify: bool = False) -> tuple[Tensor, Tensor | None]:
        """(P̃ [B, K_N, W], K-way logits [B, K_N, K] or None) from text features [B, K_N, D] and tokens [B, n, W]."""
        queries = self.query(text_features.to(self.query.weight.dtype))
        keys = self.keys(tokens.to(queries.dtype))
        attended = self.w_v(self.attention(queries, keys) @ keys)
        logits = self.classifier(self.aux_norm(attended)) if classify else None
        return self.norm(attended + queries), logits


class DualVisionPrompts(nn.Module):
    """The vision tower's prompt source: VPT-deep prompts below the CAVPT blocks, class-aware prompts in them.

    `conditioned(text_features)` supplies the top-K_N classes' text features for one forward pass (they are per
    image, so they cannot live in the module) and collects the K-way logits of every CAVPT block."""

    def __init__(self, deep: DeepPrompts | None, cavpt: Mapping[int, ClassAwarePrompts]) -> None:
        super().__init__()
        self.deep = deep
        self.cavpt = nn.ModuleDict({str(layer): module for layer, module in sorted(cavpt.items())})
        self._text: Tensor | None = None
        self._classify = False
        self._logits: list[Tensor] = []
        self._in_sequence = 0  # prompt tokens currently trailing the sequence

    @property
    def layers(self) -> list[int]:
        """Tower layer indices (0 = input level, i = before block i) that get class-aware prompts."""
        return [int(layer) for layer in self.cavpt]

    @contextmanager
    def conditioned(self, text_features: Tensor | None, *, classify: bool = False) -> Iterator[list[Tensor]]:
        """Run the tower inside this block with `text_features` [B, K_N, D]; yields the list the blocks' K-way
        logits are appended to."""
        self._text, self._classify, self._logits = text_features, classify, []
        try:
            yield self._logits
        finally:
            self._text, self._classify = None, False

    def forward(self, layer: int, x: Tensor) -> Tensor | None:
        if layer == 0:
            self._in_sequence = 0
        key = str(layer)
        if key in self.cavpt:
            if self._text is None:
                raise SemptError("DPT's class-aware prompts need the candidate classes; encode images with "
                                 "`image_embeddings_among(images, classnames)`.")
            image_tokens = x[:, : x.shape[1] - self._in_sequence]
            tokens, logits = self.cavpt[key](self._text, image_tokens, classify=self._classify)
            if logits is not None:
                self._logits.append(logits)
        else:
            tokens = self.deep(layer, x) if self.deep is not None else None
        if tokens is not None:
            self._in_sequence = int(tokens.shape[-2])
        return tokens


def class_aware_loss(logits: Sequence[Tensor], top: Tensor, labels: Tensor) -> Tensor:
    """L_ce^ca (Eq. 8): only the token whose query is the ground-truth class is classified (K-way), for images
    whose ground truth is among their top-K_N; mean over those tokens and the CAVPT blocks, 0 if there are none.

    `logits`: per CAVPT block [B, K_N, K]; `top`: [B, K_N] class indices of the queries; `labels`: [B]."""
    hit = top == labels.unsqueeze(1)
    if not logits or not bool(hit.any()):
        return torch.zeros((), device=labels.device)
    rows = torch.cat([block[hit] for block in logits]).float()
    targets = labels.unsqueeze(1).expand_as(top)[hit].repeat(len(logits))
    return F.cross_entropy(rows, targets)


def vision_blocks(backbone: str) -> int:
    """Blocks of the backbone's image tower from its open_clip config (12 when the name is unknown)."""
    config = open_clip.get_model_config(backbone) or {}
    layers = config.get("vision_cfg", {}).get("layers")
    return layers if isinstance(layers, int) else 12


class DPTSettings(SettingsSection):
    """DPT (dual-modality prompt tuning: text + visual prompts + class-aware visual prompts, `methods/dpt.py`).

    Defaults are the paper's (§III, §IV-A); where the paper is silent, the official code's choice. Prompt lengths
    and depths live in `prompts` (the method's preset sets the paper's 16 text / 10 visual tokens)."""

    model_config = ConfigDict(title="DPT")
    section = "dpt"

    variant: Literal["vpt", "vlp", "dpt"] = Field(
        "dpt", description="vpt = visual prompts only; vlp = text + visual prompts; dpt = vlp + class-aware visual "
        "prompts.", json_schema_extra={"flag": "dpt-variant"},
    )
    cavpt_length: int = Field(
        10, ge=1, description="K_N: class-aware prompts per CAVPT block, one per top-K_N zero-shot class, capped at "
        "the number of candidate classes (§III-C; Table V: 10 is best).",
    )
    cavpt_layers: int = Field(
        1, ge=1, description="CAVPT goes into the last N vision blocks, replacing the deep visual prompts there "
        "(§IV-D top-down, Fig. 6; 1 = the last block only, the paper's choice).",
    )
    cavpt_attn_dim: int = Field(
        32, ge=1, description="d_k of the cross-attention's query/key projections W_q, W_k (Eq. 6; the paper gives "
        "no value, the official code uses 32).",
    )
    cavpt_detach: bool = Field(
        True, description="No gradient from CAVPT's keys/values back into the visual tokens, as in the official code "
        "(the paper is silent).",
    )
    aux_weight: float = Field(
        0.3, ge=0.0, description="α, weight of the class-aware K-way cross-entropy L_ce^ca (Eq. 11; Table IV).",
        json_schema_extra={"flag": "dpt-alpha"},
    )
    guidance_weight: float = Field(
        0.1, ge=0.0, description="β: weight of VLP's own cross-entropy during the general-knowledge warm-up, "
        "L = L_coop + L_vpt + β·L_ce + α·L_ce^ca (Eq. 12).", json_schema_extra={"flag": "dpt-beta"},
    )
    guidance_epochs: int = Field(
        30, ge=0, description="Epochs of the general-knowledge warm-up (Eq. 12) for vlp and dpt: 30, 10 on ImageNet "
        "(preset); 0 = off.", json_schema_extra={"flag": "dpt-guidance-epochs"},
    )
    text_lr: float | None = Field(
        None, gt=0.0, description="Peak learning rate of the text prompts (vlp, dpt); the visual prompts and CAVPT "
        "take train.lr. Unset = train.lr; the preset sets the official 0.002 (visual: 0.01).",
        json_schema_extra={"flag": "dpt-text-lr"},
    )
    text_warmup_epochs: int | None = Field(
        None, ge=0, description="Constant-LR warm-up epochs of the text prompts; unset = train.warmup_epochs. The "
        "preset sets the official 1 (visual: 10, 1 on ImageNet).", json_schema_extra={"flag": "dpt-text-warmup-epochs"},
    )


def _shots(settings: Settings) -> int:
    """Shots of the recipe: the few-shot protocol's own; cross-domain is the paper's 1-shot domain generalisation;
    base-to-novel and cross-dataset take the 16-shot recipe."""
    return {"few-shot": settings.data.shots, "cross-domain": 1}.get(settings.data.setting, 16)


def _demo_guidance(context: PresetContext) -> int:
    """The general-knowledge warm-up shrunk in proportion to the demo's epochs."""
    epochs = int(context.values["train.epochs"])
    return max(1, round(int(context.values["dpt.guidance_epochs"]) * min(epochs, 10) / epochs))


DPT_PRESETS = Presets(
    Rule({"train.optimizer": "sgd", "train.lr": 0.01, "data.batch_size": 32, "train.warmup_epochs": 10,
          "train.warmup_lr": 1e-5,
          "train.epochs": Computed(lambda c: _epochs(c.settings.section(DPTSettings).variant, c.settings.data.dataset,
                                                  _shots(c.settings))),
          "prompts.vision_depth": Computed(lambda c: vision_blocks(c.backbone)), "prompts.vision_length": 10,
          "prompts.text_depth": 1, "prompts.text_length": 16, "prompts.ctx_init": None, "data.subsample": "all"}),
    Rule({"train.warmup_epochs": 1}, when={"data.dataset": "imagenet"}),
    Rule({"prompts.text_depth": 0}, when={"dpt.variant": "vpt"}),
    Rule({"data.subsample": "base"}, when={"data.setting": "base2novel"}),
    Rule({"dpt.guidance_epochs": 30, "dpt.text_lr": 0.002, "dpt.text_warmup_epochs": 1},
         when={"dpt.variant": ("vlp", "dpt")}),
    Rule({"dpt.guidance_epochs": 10}, when={"dpt.variant": ("vlp", "dpt"), "data.dataset": "imagenet"}),
    Rule({"data.shots": Computed(lambda c: _shots(c.settings))},
         when={"data.setting": ("base2novel", "cross-dataset", "cross-domain")}),
    Rule({"dpt.guidance_epochs": Computed(_demo_guidance)},
         when={"demo": True, "preset:dpt.guidance_epochs": lambda epochs: True}),
    DEMO_BATCH_AND_CROPS,
    Rule({"train.epochs": Computed(lambda c: min(int(c.values["train.epochs"]), 10)), "train.warmup_epochs": 1},
         when={"demo": True}),
)
"""The paper's hyper-parameters (§IV-A; official `train_single.sh`, `configs/trainers/VPT/vit_b32_deep.yaml`; the
text prompts' own rate and warm-up from `trainers/DPT.py` and `VLP.py`).
Few-shot is the paper's protocol; cross-domain is its domain generalisation (§IV-C: ImageNet, 1 shot);
base-to-novel and cross-dataset are not in the paper and take the 16-shot few-shot recipe of the training
dataset (ImageNet's for cross-dataset). The tiny demo CLIPs: CPU-sized batches, at most 10 epochs with the
warm-up and the general-knowledge guidance shrunk in proportion; the prompt depth needs no change (visual
prompts already go into every block the backbone has)."""


@register_method
class DPT(Method):
    """VPT / VLP / DPT (`dpt.variant`); see the module docstring."""

    name = "dpt"
    title = "DPT"
    options = DPTSettings
    preset_table = DPT_PRESETS
    description = "Dual-modality prompt tuning: CoOp text + VPT-deep visual + class-aware visual prompts (TMM'23)."
    image_side_needs_classes = True
    settings_sections = ("prompts", "dpt")

    frozen_text: Tensor
    """Buffer: the frozen text features of the training classes."""

    def __init__(
        self, clip: LoadedClip, train_classnames: Sequence[str], settings: Settings, cache: TensorCache | None = None
    ) -> None:
        super().__init__(train_classnames)
        prompts, dpt = settings.prompts, settings.section(DPTSettings)
        self.clip = clip
        self.cache = cache
        self.variant = dpt.variant
        self.template = get_dataset_info(settings.data.dataset).template
        self.aux_weight = dpt.aux_weight
        self.guidance = (dpt.guidance_weight, dpt.guidance_epochs if self.variant != "vpt" else 0)
        self.text_rates = (dpt.text_lr, dpt.text_warmup_epochs)
        self.backbone = clip.model
        for parameter in self.backbone.parameters():
            parameter.requires_grad_(False)
        visual = self.backbone.visual
        if not isinstance(visual, VisionTransformer):
            raise SemptError(f"DPT needs an open_clip VisionTransformer image tower, not {type(visual).__name__}.",
                             "Use a ViT backbone (ResNet and timm towers are not supported).")
        blocks = len(visual.transformer.resblocks)
        cavpt_layers = dpt.cavpt_layers if self.variant == "dpt" else 0
        if cavpt_layers > blocks:
            raise SemptError(f"dpt.cavpt_layers = {cavpt_layers} exceeds the {blocks} vision blocks of this backbone.")
        start = blocks - cavpt_layers
        self.cavpt_length = dpt.cavpt_length
        width, embed_dim = int(visual.conv1.out_channels), int(visual.output_dim)
        device = visual.conv1.weight.device
        depth = min(prompts.vision_depth, start)
        deep = DeepPrompts(depth, prompts.vision_length, width, device=device) if depth else None
        cavpt = {layer: ClassAwarePrompts(embed_dim, width, prompts.vision_length, dpt.cavpt_attn_dim,
                                          len(self.train_classnames), detach=dpt.cavpt_detach).to(device)
                 for layer in range(start, blocks)}
        self.vision = PromptedVisionTower(visual, PromptSpec(depth, prompts.vision_length),
                                          prompts=DualVisionPrompts(deep, cavpt))
        self.image_side_needs_classes = bool(cavpt)
        # the K-way head gets no gradient in a step whose images have no ground truth among their top-K_N (Eq. 8)
        self.unused_parameters = bool(cavpt)
        self.text: PromptedTextTower | None = None
        if self.variant != "vpt":
            self.text = PromptedTextTower(self.backbone, PromptSpec(prompts.text_depth, prompts.text_length),
                                          ctx_init=prompts.ctx_init, tokenizer=clip.tokenizer)
            self.prompts = PerClassList(self.text.class_prompts, self.train_classnames)
        self._frozen: dict[tuple[str, ...], Tensor] = {}
        self._prompted: dict[tuple[str, ...], tuple[tuple[tuple[int, int], ...], Tensor]] = {}
        self.register_buffer("frozen_text", self._frozen_features(self.train_classnames), persistent=False)

    @property
    def prompt_source(self) -> DualVisionPrompts:
        source = self.vision.prompts
        assert isinstance(source, DualVisionPrompts)
        return source

    # ------------------------------------------------------------------ protocol
    def parameter_groups(self) -> list[ParameterGroup]:
        """The official code's optimizers: visual prompts and CAVPT at `train.*`, the text prompts at
        `dpt.text_lr` with `dpt.text_warmup_epochs`."""
        vision = ParameterGroup("vision", [p for p in self.vision.parameters() if p.requires_grad])
        if self.text is None:
            return [vision]
        lr, warmup = self.text_rates
        return [vision, ParameterGroup("text", self.text.trainable_parameters(), lr=lr, warmup_epochs=warmup)]

    def logit_scale(self) -> Tensor:
        return self.backbone.logit_scale.exp()

    def class_embeddings(self, classnames: Sequence[str]) -> Tensor:
        if self.text is None:
            return self.frozen_class_embeddings(classnames)
        return F.normalize(self._prompted_text(classnames), dim=-1)

    def image_embeddings(self, images: Tensor) -> Tensor:
        """Image embeddings with the training classes as candidates."""
        return self.image_embeddings_among(images, self.train_classnames)

    def image_embeddings_among(self, images: Tensor, classnames: Sequence[str]) -> Tensor:
        if not self.prompt_source.layers:
            return F.normalize(self.vision(images), dim=-1)
        top = self.top_classes(self.zero_shot_image(images), self.frozen_class_embeddings(classnames))
        image, _ = self._encode(images, self._prompted_text(classnames)[top])
        return image

    def training_forward(self, batch: Batch) -> TrainingForward:
        labels = batch.labels
        raw_text = self.text.encode(self.prompts.train) if self.text is not None else None
        text = F.normalize(raw_text, dim=-1) if raw_text is not None else self.frozen_text
        beta, guidance_epochs = self.guidance
        guided = guidance_epochs > 0 and batch.epoch <= guidance_epochs  # epoch 0: before training
        cavpt = bool(self.prompt_source.layers)
        zero_shot = self.zero_shot_image(batch.images) if cavpt or guided else None
        extra: LossOutput | None = None
        if cavpt:
            assert zero_shot is not None and raw_text is not None
            top = self.top_classes(zero_shot, self.frozen_text)
            image, logits = self._encode(batch.images, raw_text[top], classify=self.aux_weight > 0)
            if self.aux_weight > 0:
                aux = class_aware_loss(logits, top, labels)
                extra = LossOutput(self.aux_weight * aux, {"ca": aux.detach()})
        else:
            image = F.normalize(self.vision(batch.images), dim=-1)
        if guided:
            assert zero_shot is not None
            scale = self.logit_scale()
            coop = F.cross_entropy((scale * zero_shot @ text.t().to(zero_shot.dtype)).float(), labels)
            vpt = F.cross_entropy((scale * image @ self.frozen_text.t().to(image.dtype)).float(), labels)
            warm = LossOutput(coop + vpt, {"coop": coop.detach(), "vpt": vpt.detach()})
            extra = warm if extra is None else extra + warm
        weight = beta if guided else 1.0

        return TrainingForward(image, text, cross_entropy_head(labels, weight), extra)

    # ------------------------------------------------------------------ pieces
    def zero_shot_image(self, images: Tensor) -> Tensor:
        """The frozen CLIP's L2-normalised image features (no prompts, no gradient)."""
        with torch.no_grad():
            return F.normalize(self.backbone.encode_image(images), dim=-1)

    def top_classes(self, zero_shot_image: Tensor, frozen_text: Tensor) -> Tensor:
        """Indices [B, K_N] of each image's top-K_N classes under zero-shot CLIP (K_N capped at the classes)."""
        scores = zero_shot_image @ frozen_text.t().to(zero_shot_image.dtype)
        return scores.topk(min(self.cavpt_length, scores.shape[1]), dim=-1).indices

    def _encode(self, images: Tensor, text_features: Tensor, *, classify: bool = False) -> tuple[Tensor, list[Tensor]]:
        """Prompted image embeddings with the class-aware prompts of `text_features` [B, K_N, D], and the CAVPT
        blocks' K-way logits when `classify`."""
        with self.prompt_source.conditioned(text_features, classify=classify) as logits:
            features = self.vision(images)
        return F.normalize(features, dim=-1), logits

    def frozen_class_embeddings(self, classnames: Sequence[str]) -> Tensor:
        """L2-normalised frozen text features of `template.format(name)`: zero-shot CLIP's classifier."""
        key = tuple(classnames)
        if list(key) == self.train_classnames:
            return self.frozen_text
        if key not in self._frozen:
            if len(self._frozen) >= CACHED_CLASS_LISTS:
                self._frozen.pop(next(iter(self._frozen)))
            self._frozen[key] = self._frozen_features(classnames)
        return self._frozen[key].to(self.frozen_text.device)

    def _frozen_features(self, classnames: Sequence[str]) -> Tensor:
        def compute() -> dict[str, Tensor]:
            return {"features": template_ensemble(self.clip, classnames, [self.template])}

        identity = backbone_identity(self.clip)
        if self.cache is None or identity is None:
            features = compute()["features"]
        else:
            inputs = {"backbone": identity, "classnames": list(classnames), "templates": [self.template],
                      "pooling": "mean-then-normalise"}
            features = self.cache.get_or_compute("template-ensemble", inputs, compute)[0]["features"]
        return F.normalize(features.float(), dim=-1).to(self.backbone.logit_scale.device)

    def _prompted_text(self, classnames: Sequence[str]) -> Tensor:
        """Unnormalised prompted text features [C, D]. Without gradients they are kept per class list until a
        text prompt changes (its version counter or storage), so evaluation encodes the classes once, not once
        per image batch (the class-aware prompts need them for every batch)."""
        assert self.text is not None
        prompts = self.prompts(classnames)
        if torch.is_grad_enabled():
            return self.text.encode(prompts)
        key = tuple(classnames)
        state = tuple((p.data_ptr(), p._version) for p in self.text.trainable_parameters())
        hit = self._prompted.get(key)
        if hit is not None and hit[0] == state:
            return hit[1]
        features = self.text.encode(prompts).float()
        if key not in self._prompted and len(self._prompted) >= CACHED_CLASS_LISTS:
            self._prompted.pop(next(iter(self._prompted)))
        self._prompted[key] = (state, features)
        return features


def _epochs(variant: str, dataset: str, shots: int) -> int:
    """Maximum epochs (§IV-A): VLP/DPT 100 (60 at 1 shot, 20 on ImageNet, 60 for DPT's 16-shot Caltech101 and
    OxfordPets); VPT "the same as CoOp": 200 at 16 shots, 100 at 4-8, 50 at 1-2, 50 on ImageNet."""
    shots = shots or 16  # all images: the 16-shot schedule
    if variant == "vpt":
        return 50 if dataset == "imagenet" or shots <= 2 else 100 if shots <= 8 else 200
    if dataset == "imagenet":
        return 20
    if variant == "dpt" and shots == 16 and dataset in FEW_SHOT_60_EPOCHS:
        return 60
    return 60 if shots == 1 else 100
