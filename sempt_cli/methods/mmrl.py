"""MMRL (CVPR 2025): multi-modal representation learning, as specified in spec/mmrl.md.

One learnable representation space R [K, d_r] shared by both modalities, projected by per-layer linear aligners
into each encoder from block J (`mmrl.start_layer`, official 6) to the last:

* vision: block J receives [CLS, R_v^(J), patches] (the tokens *inserted* right after CLS, no positional
  embedding); blocks after J *replace* positions 1..K with their own R_v. Class feature f_c = CLS → ln_post →
  frozen proj; representation feature f_r = mean_k ln_post(R_k) → trainable proj_rep (random init, §1.3).
* text: the frozen dataset template "a photo of a {c}." (no learnable context words) gets R_t inserted after
  SOT at block J and replaced after it; the causal mask grows by K and the EOT index shifts by K (§1.4).
* heads: ℓ_c = 100·f̂_c·t̂ᵀ and ℓ_r = 100·f̂_r·t̂ᵀ share the same text features (fixed logit scale 100).
* loss: α·CE(ℓ_c) + (1−α)·CE(ℓ_r) + λ·(1 − cos(f̂_c, f̂⁰)) + λ·(1 − cos(t̂, t̂⁰)), f̂⁰/t̂⁰ from frozen CLIP on
  the same augmented batch / the same template (§3.1).
* decoupled inference (§2): the fused ℓ_fuse = α·ℓ_c + (1−α)·ℓ_r only for the training classes on the
  training dataset (B2N base, few-shot, the cross-dataset source); ℓ_c everywhere else (novel classes, all
  classes competing, transfer targets and the ImageNet variants, whose names coincide but whose images differ).

The image embedding is [f̂_c ; f̂_r] so that one encoding serves both rules; `matching_embeddings` is f̂_c, the
feature scored against class embeddings by every other rule (SemPT's unseen classes, spec §7).

Deliberate differences from the official code, documented in docs: the inference text features are computed
per class list and never cached across weight changes (the official cache is never invalidated, §6.9); the
causal mask is built once per length instead of on the CPU in every block (§1.4); training keeps fp32 master
weights with the engine's autocast (§3.2); the frozen reference CLIP is the same frozen backbone run without
representation tokens instead of a second copy (identical features).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import ConfigDict, Field
from torch import Tensor, nn

from sempt_cli.data.records import prompt_name
from sempt_cli.data.registry import get_dataset_info, label_space
from sempt_cli.engine.cache import TensorCache
from sempt_cli.errors import SemptError
from sempt_cli.methods.common import PerClassList
from sempt_cli.models.factory import DEMO_STUDENT, LoadedClip
from sempt_cli.models.official_layout import Layout, PromptStack, TensorRule
from sempt_cli.models.prompted import ClassPrompts, PromptedTextTower, PromptedVisionTower, PromptSpec
from sempt_cli.presets import Computed, Presets, Rule
from sempt_cli.protocol import Batch, Classifier, LossOutput, Method, TrainingForward, register_method
from sempt_cli.settings import Settings, SettingsSection

REG_WEIGHTS: dict[str, float] = {
    "stanford_cars": 7.0, "fgvc_aircraft": 6.0, "sun397": 6.0, "dtd": 6.0, "food101": 5.0, "oxford_flowers": 4.0,
    "ucf101": 3.0, "imagenet": 0.5, "caltech101": 0.5, "oxford_pets": 0.2, "eurosat": 0.01,
}
"""λ per dataset: the official `trainers/config.py` table, applied to every task (spec §4.4)."""

WIDE_SPACE = {"eurosat": 2048}
"""d_r per dataset where it is not 512 (base-to-novel and few-shot only; spec §4.4)."""

TOKEN_STD = 0.02


class RepresentationSpace(nn.Module):
    """R [K, d_r] ~ N(0, 0.02²) and one Linear aligner per layer and modality.

    The aligners of a modality are deep copies of one freshly initialised Linear (PyTorch default init), as the
    official `_get_clones` makes them: every layer starts with the same projection (spec §6.3)."""

    def __init__(self, settings: MMRLSettings, vision_width: int, text_width: int, vision_layers: int,
                 text_layers: int) -> None:
        super().__init__()
        self.tokens = nn.Parameter(torch.randn(settings.num_tokens, settings.rep_dim) * TOKEN_STD)
        vision, text = nn.Linear(settings.rep_dim, vision_width), nn.Linear(settings.rep_dim, text_width)
        self.vision = nn.ModuleList(copy.deepcopy(vision) for _ in range(vision_layers))
        self.text = nn.ModuleList(copy.deepcopy(text) for _ in range(text_layers))

    def forward(self) -> tuple[list[Tensor], list[Tensor]]:
        """R_v^(ℓ) [K, W_v] and R_t^(ℓ) [K, W_t] for every layer from the start layer on."""
        return [align(self.tokens) for align in self.vision], [align(self.tokens) for align in self.text]


def _representation_hook(tokens: Sequence[Tensor], first_block: int) -> Any:
    """A `before_block` hook: insert the K tokens after position 0 at `first_block`, replace them after it."""

    def hook(index: int, x: Tensor) -> Tensor | None:
        if index < first_block:
            return None
        layer = tokens[index - first_block]
        rest = x[:, 1:] if index == first_block else x[:, 1 + layer.shape[0] :]
        return torch.cat([x[:, :1], layer.to(x.dtype).expand(x.shape[0], -1, -1), rest], dim=1)

    return hook


class MMRLSettings(SettingsSection):
    """MMRL (CVPR 2025, spec/mmrl.md): a shared representation space projected into both encoders' upper blocks.

    The per-dataset regularisation weight and EuroSAT's wider space come from the method's preset (the official
    `trainers/config.py` table), so these defaults are the official fallbacks."""

    model_config = ConfigDict(title="MMRL")
    section = "mmrl"

    alpha: float = Field(
        0.7, ge=0.0, le=1.0,
        description="Weight of the class-token head, in the loss and in the fused logits (1−α: representation head).",
        json_schema_extra={"flag": "mmrl-alpha"},
    )
    reg_weight: float = Field(
        1.0, ge=0.0,
        description="λ of the cosine regularisers towards frozen CLIP (preset: the official per-dataset value).",
    )
    rep_dim: int = Field(512, ge=1, description="Width d_r of the shared representation space (preset: EuroSAT 2048).")
    num_tokens: int = Field(5, ge=1, description="K representation tokens.", json_schema_extra={"flag": "rep-tokens"})
    start_layer: int = Field(
        6, ge=1, description="1-based block the tokens enter (official REP_LAYERS 6..12: after 5 untouched blocks).",
        json_schema_extra={"flag": "rep-start-layer"},
    )
    logit_scale: float = Field(
        100.0, gt=0.0, description="Fixed logit scale (the official code hard-codes 100).",
        json_schema_extra={"flag": "mmrl-logit-scale"},
    )


def _imagenet(dataset: str) -> bool:
    return label_space(dataset) == "imagenet"


def _in_domain(setting: str) -> bool:
    return setting not in {"cross-dataset", "cross-domain"}


MMRL_PRESETS = Presets(
    Rule({"train.optimizer": "adamw", "train.lr": 1e-3, "train.weight_decay": 5e-4, "train.warmup_epochs": 1,
          "train.warmup_lr": 1e-5, "data.crop_scale_min": 0.5, "data.shots": 16,
          "mmrl.reg_weight": Computed(lambda c: REG_WEIGHTS.get(label_space(c.settings.data.dataset), 1.0)),
          "mmrl.rep_dim": Computed(lambda c: WIDE_SPACE.get(label_space(c.settings.data.dataset), 512))}),
    Rule({"data.batch_size": 32, "train.epochs": 1, "train.warmup_epochs": 0, "data.subsample": "all",
          "mmrl.reg_weight": 0.2, "mmrl.rep_dim": 512}, when={"data.setting": ("cross-dataset", "cross-domain")}),
    Rule({"data.batch_size": 32, "train.epochs": 5, "data.subsample": "base"},
         when={"data.setting": "base2novel", "data.dataset": _imagenet}),
    Rule({"data.batch_size": 32, "train.epochs": 5, "data.subsample": "all"},
         when={"data.setting": "few-shot", "data.dataset": _imagenet}),
    Rule({"data.batch_size": 32, "train.epochs": 50, "data.subsample": "all"},
         when={"data.setting": "few-shot", "data.dataset": lambda dataset: not _imagenet(dataset)}),
    Rule({"data.batch_size": 4, "train.epochs": 10, "data.subsample": "base"},
         when={"data.setting": "base2novel", "data.dataset": lambda dataset: not _imagenet(dataset)}),
    Rule({"model.backbone": DEMO_STUDENT, "mmrl.start_layer": 2, "data.batch_size": 16, "data.crop_scale_min": 0.8,
          "train.epochs": Computed(lambda c: min(10, int(c.values["train.epochs"])))}, when={"demo": True}),
)
"""The official configs (spec §4.3–4.4): AdamW 1e-3, wd 5e-4, one warm-up epoch at 1e-5, crops ≥ 50 %, the
per-dataset λ and d_r; ImageNet 5 epochs at batch 32. The demo world's stand-in for ViT-B/16 is the demo student
(4 vision / 3 text blocks): the tokens enter at block 2 (the official 6 of 12 leaves half the blocks untouched;
3 text blocks leave room for one), with CPU-sized batches and crops that keep the pictures' size and position
attributes (see `methods.common`)."""


MMRL_MODEL_NAME = "MultiModalRepresentationLearner"
"""MMRL's `register_model` name since commit f6ad5e6 (before: `MultiModalPromptLearner`, spec §6.15)."""

MMRL_CONFIGS = {"base2novel": "vit_b16", "few-shot": "vit_b16_few_shot", "cross-dataset": "vit_b16_cross_datasets"}
"""The MMRL config (`configs/trainers/MMRL/<cfg>.yaml`) per setting; ImageNet uses `vit_b16_imagenet` in B2N and FS."""


def mmrl_folder(dataset: str, setting: str, shots: int, seed: int, epochs: int) -> Path:
    """Where MMRL's scripts write (and `--model-dir` reads) a model, relative to its repository root (spec §5):
    `load_model(<dir>)` takes `<dir>/MultiModalRepresentationLearner/model-best.pth*`, else a `model.pth*`."""
    if setting in ("cross-dataset", "cross-domain"):  # trained on ImageNet, in a folder named base2new all the same
        cfg = MMRL_CONFIGS["cross-dataset"]
    else:
        cfg = "vit_b16_imagenet" if dataset == "imagenet" else MMRL_CONFIGS.get(setting, MMRL_CONFIGS["base2novel"])
    task = Path("few_shot") if setting == "few-shot" else Path("base2new") / "train_base"
    return Path("output") / task / dataset / f"shots_{shots}" / "MMRL" / cfg / f"seed{seed}" / MMRL_MODEL_NAME / \
        f"model.pth.tar-{epochs}"


def _aligners(tower: str, official: str) -> PromptStack:
    """One tower's MMRL aligners: Linear i (weight [width, d_r], bias) feeds the i-th block from the start layer."""
    deep = f"representation_learner.compound_rep_tokens_{official}.{{}}"
    return PromptStack(tower, deep.format(0), deep, f"space.{tower}.{{}}", parts=(".weight", ".bias"))


MMRL_TEACHER = Layout(
    name="MMRL",
    kind="teacher",
    methods=("mmrl",),
    stacks=(_aligners("vision", "r2vproj"), _aligners("text", "r2tproj")),
    marker="representation_learner.",
    folder=lambda place: mmrl_folder(place.dataset, place.setting, place.shots, place.seed, place.epoch),
    space=TensorRule("space.tokens", "representation_learner.compound_rep_tokens"),
    fixed=(TensorRule("proj_rep", "image_encoder.proj_rep"),),
    frozen=(("image_encoder.", "visual."), ("text_encoder.", "")),  # no logit_scale: CustomCLIP keeps no CLIP
    dropped=("prompt_embeddings",),
    learned=("representation_learner.", "image_encoder.proj_rep"),  # the official `names_to_update`
    sections=("mmrl",),
    hint="Pass the --backbone it was trained on (ViT-B-16-quickgelu for the official MMRL).",
)
"""MMRL's `CustomCLIP` (trainers/mmrl.py, spec §1.2–§1.5): `representation_learner.compound_rep_tokens` [K, d_r],
`representation_learner.compound_rep_tokens_r2vproj.{i}` / `..._r2tproj.{i}` (`nn.Linear(d_r, width)` for
`REP_LAYERS[i]`, i.e. ours `space.<tower>.{i}`), `image_encoder.proj_rep` [768, 512] (clip/model_mmrl.py), the
whole frozen CLIP, and the `prompt_embeddings` buffer [C, 77, 512] that `MMRL.load_model` deletes."""


@register_method
class MMRL(Method):
    """Shared representation tokens in both encoders, class and representation heads, decoupled inference."""

    name = "mmrl"
    title = "MMRL"
    options = MMRLSettings
    preset_table = MMRL_PRESETS
    official_layout = MMRL_TEACHER
    settings_sections = ("mmrl",)
    description = "Multi-modal representation learning: shared space projected into upper blocks (CVPR'25)."

    def __init__(
        self, clip: LoadedClip, train_classnames: Sequence[str], settings: Settings, cache: TensorCache | None = None
    ) -> None:
        super().__init__(train_classnames)
        config = settings.section(MMRLSettings)
        self.backbone = clip.model
        self.backbone.requires_grad_(False)
        self.vision = PromptedVisionTower(self.backbone.visual)
        self.text = PromptedTextTower(self.backbone, PromptSpec(0), ctx_init=None, tokenizer=clip.tokenizer)
        if getattr(self.backbone.visual, "pool_type", "tok") != "tok":
            raise SemptError("MMRL reads the class token; this image tower pools otherwise.")
        deepest = min(self.vision.num_layers, self.text.num_layers)
        if config.start_layer > deepest:
            raise SemptError(f"MMRL's start layer {config.start_layer} is beyond this backbone's {deepest} blocks.",
                             "Pass a smaller --rep-start-layer.")
        self.first_block = config.start_layer - 1
        self.num_tokens = config.num_tokens
        self.alpha = config.alpha
        self.reg_weight = config.reg_weight
        self.scale = config.logit_scale
        self.template = get_dataset_info(settings.data.dataset).template
        self.dim = int(self.backbone.visual.output_dim)
        device = next(self.backbone.parameters()).device
        self.space = RepresentationSpace(
            config, self.vision.width, self.text.width, self.vision.num_layers - self.first_block,
            self.text.num_layers - self.first_block,
        ).to(device)
        self.proj_rep = nn.Parameter(torch.randn(self.vision.width, self.dim, device=device) * self.vision.width**-0.5)
        self.prompts = PerClassList(self._prompts, self.train_classnames)
        self._frozen_text: Tensor | None = None  # t̂⁰, needed by training only: encoded on first use

    # ------------------------------------------------------------------ encoders
    def _prompts(self, classnames: Sequence[str]) -> ClassPrompts:
        return self.text.build_prompts([self.template.format(prompt_name(name)) for name in classnames])

    def _text_features(self, prompts: ClassPrompts, tokens: Sequence[Tensor] | None) -> Tensor:
        """Text features of `prompts` with the representation tokens (None: frozen CLIP), in class chunks."""
        hooks = () if tokens is None else (_representation_hook(tokens, self.first_block),)
        shift = 0 if tokens is None else self.num_tokens
        pieces = []
        for chunk in prompts.chunks():
            out = self.text.forward_features(chunk, before_block=hooks)
            pieces.append(self.text.pool(out.tokens, chunk.eot_index + shift))
        return torch.cat(pieces)

    def _image_features(self, images: Tensor, tokens: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """(f_c, f_r), unnormalised: CLS through ln_post and the frozen proj; the mean of the layer-normalised
        representation tokens through proj_rep."""
        out = self.vision.forward_features(images, before_block=(_representation_hook(tokens, self.first_block),))
        visual = self.backbone.visual
        class_feature = self.vision.pool(out.tokens, 0)
        representation = visual.ln_post(out.tokens[:, 1 : 1 + self.num_tokens]).mean(dim=1)
        return class_feature, representation @ self.proj_rep.to(representation.dtype)

    def frozen_text(self) -> Tensor:
        """t̂⁰: frozen CLIP's text features of the training classes (same template), the text regulariser's target."""
        if self._frozen_text is None:
            with torch.no_grad():
                self._frozen_text = F.normalize(self._text_features(self.prompts.train, None).float(), dim=-1)
        return self._frozen_text

    # ------------------------------------------------------------------ protocol
    def logit_scale(self) -> Tensor:
        return torch.tensor(self.scale)

    def image_embeddings(self, images: Tensor) -> Tensor:
        """[f̂_c ; f̂_r] [B, 2D]: one encoding for both inference rules."""
        vision_tokens, _ = self.space()
        class_feature, representation = self._image_features(images, vision_tokens)
        return torch.cat([F.normalize(class_feature, dim=-1), F.normalize(representation, dim=-1)], dim=-1)

    def matching_embeddings(self, image_embeddings: Tensor) -> Tensor:
        return image_embeddings[..., : self.dim]

    def class_embeddings(self, classnames: Sequence[str]) -> Tensor:
        prompts = self.prompts(classnames)
        _, text_tokens = self.space()
        return F.normalize(self._text_features(prompts, text_tokens), dim=-1)

    def logits(self, image_embeddings: Tensor, class_embeddings: Tensor) -> Tensor:
        """ℓ_c: the class feature (f̂_c, or the first half of [f̂_c ; f̂_r]) against the class embeddings."""
        image = self.matching_embeddings(image_embeddings)
        return self.scale * image @ class_embeddings.t().to(image.dtype)

    def fused_logits(self, image_embeddings: Tensor, class_embeddings: Tensor) -> Tensor:
        """ℓ_fuse = α·ℓ_c + (1−α)·ℓ_r, on logits before the softmax (spec §2)."""
        representation = image_embeddings[..., self.dim :]
        rep_logits = self.scale * representation @ class_embeddings.t().to(representation.dtype)
        return self.alpha * self.logits(image_embeddings, class_embeddings) + (1 - self.alpha) * rep_logits

    def uses_fusion(self, classnames: Sequence[str], in_domain: bool) -> bool:
        """Decoupled inference: both heads only for the training classes on the training data."""
        return in_domain and list(classnames) == self.train_classnames

    def classifier(self, classnames: Sequence[str], *, in_domain: bool = True) -> Classifier:
        text = self.class_embeddings(classnames)
        if self.uses_fusion(classnames, in_domain):
            return lambda image: self.fused_logits(image, text)
        return lambda image: self.logits(image, text)

    def training_forward(self, batch: Batch) -> TrainingForward:
        vision_tokens, text_tokens = self.space()
        text = F.normalize(self._text_features(self.prompts.train, text_tokens), dim=-1)
        class_feature, representation = self._image_features(batch.images, vision_tokens)
        image = F.normalize(class_feature, dim=-1)
        representation = F.normalize(representation, dim=-1)
        with torch.no_grad():
            frozen_image = F.normalize(self.vision(batch.images).float(), dim=-1)

        def class_head(logits: Tensor) -> LossOutput:
            ce = F.cross_entropy(logits.float(), batch.labels)
            return LossOutput(self.alpha * ce, {"ce_c": ce.detach()})

        rep_ce = F.cross_entropy(self.scale * representation.float() @ text.float().t(), batch.labels)
        image_reg = 1 - (image.float() * frozen_image).sum(-1).mean()
        text_reg = 1 - (text.float() * self.frozen_text()).sum(-1).mean()
        extra = LossOutput(
            (1 - self.alpha) * rep_ce + self.reg_weight * (image_reg + text_reg),
            {"ce_r": rep_ce.detach(), "cos_i": image_reg.detach(), "cos_t": text_reg.detach()},
        )
        return TrainingForward(image, text, class_head, extra)
