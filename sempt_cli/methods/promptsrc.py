"""PromptSRC (ICCV 2023) and the prompt learners that are presets of it: IVLP, CoOp, VPT.

PromptSRC = IVLP deep vision+text prompts trained with cross-entropy plus three self-regulating
consistency losses against the frozen CLIP (spec/promptkd-promptsrc.md §2):

* L_text   = w_t · mean |t_p − t_zs|     (t_zs: frozen text features averaged over 60 templates)
* L_img    = w_i · mean |v_p − v_zs|     (v_zs: frozen image features of the same augmented view)
* L_logits = KL(p_zs ‖ p_p) summed and divided by B·C, as the official code does (§5.4)

and Gaussian-weighted prompt aggregation (GPA) over epochs.

Deliberate differences from the official code, each numerically negligible and documented:

* GPA aggregates the trainable prompts only (the official code averages the whole state dict, perturbing
  frozen fp16 weights by ~1 ulp, spec §5.5);
* precision is fp32 master weights with optional bf16/fp16 autocast instead of pure fp16 (spec §1.4, §5.9);
* the frozen zero-shot image encoder is the same frozen backbone run without prompts rather than a second
  copy of it, and text runs only up to the last EOT token (exact under the causal mask, spec §6.3).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import ConfigDict, Field
from torch import Tensor

from sempt_cli.data.registry import get_dataset_info
from sempt_cli.engine.cache import TensorCache
from sempt_cli.engine.schedule import gaussian_aggregation_weights
from sempt_cli.errors import SettingsError
from sempt_cli.methods.common import IVLP_DEMO_RULES, PerClassList, template_ensemble
from sempt_cli.methods.templates import IMAGENET_TEMPLATES
from sempt_cli.models.factory import LoadedClip
from sempt_cli.models.identity import backbone_identity
from sempt_cli.models.official_layout import Kind, Layout, PromptStack
from sempt_cli.models.prompted import PromptedTextTower, PromptedVisionTower, PromptSpec
from sempt_cli.presets import Presets, Rule
from sempt_cli.protocol import Batch, LossOutput, Method, Role, TrainingForward, cross_entropy_head, register_method
from sempt_cli.settings import Settings, SettingsSection

FEW_SHOT_NARROW_GPA = {"stanford_cars", "oxford_flowers", "fgvc_aircraft", "dtd", "eurosat"}
"""Datasets whose official PromptSRC few-shot config uses GPA μ=45, σ=5 (the others use 30/30)."""


class PromptSRCSettings(SettingsSection):
    """PromptSRC's self-regulating losses and Gaussian prompt aggregation (official values)."""

    model_config = ConfigDict(title="PromptSRC")
    section = "promptsrc"

    text_loss_weight: float = Field(25.0, ge=0.0, description="Weight of the L1 text-feature consistency loss.")
    image_loss_weight: float = Field(10.0, ge=0.0, description="Weight of the L1 image-feature consistency loss.")
    logits_loss_weight: float = Field(1.0, ge=0.0, description="Weight of the KL logit consistency loss.")
    gpa_mean: float = Field(15.0, description="Mean (epoch) of the Gaussian prompt aggregation.")
    gpa_std: float = Field(1.0, gt=0.0, description="Standard deviation (epochs) of the Gaussian aggregation.")


PROMPTSRC_PRESETS = Presets(
    Rule({"train.epochs": 20, "train.lr": 0.0025, "data.batch_size": 4,
          "prompts.vision_depth": 9, "prompts.text_depth": 9, "prompts.vision_length": 4, "prompts.text_length": 4,
          "prompts.ctx_init": "a photo of a", "promptsrc.gpa_mean": 15.0, "promptsrc.gpa_std": 1.0,
          "data.shots": 16, "data.subsample": "base"}),
    Rule({"prompts.vision_depth": 3, "prompts.text_depth": 3, "promptsrc.gpa_mean": 6.0, "promptsrc.gpa_std": 10.0,
          "data.subsample": "all"}, when={"data.setting": ("cross-dataset", "cross-domain")}),
    Rule({"train.epochs": 50, "data.subsample": "all", "promptsrc.gpa_mean": 30.0, "promptsrc.gpa_std": 30.0},
         when={"data.setting": "few-shot"}),
    Rule({"promptsrc.gpa_mean": 45.0, "promptsrc.gpa_std": 5.0},
         when={"data.setting": "few-shot", "data.dataset": FEW_SHOT_NARROW_GPA}),
    Rule({"train.lr": 0.005, "data.batch_size": 8}, when={"backbone": "L-14"}),
    Rule({"promptsrc.gpa_mean": 7.5}, when={"demo": True, "preset:train.epochs": lambda epochs: epochs > 10}),
    *IVLP_DEMO_RULES,
)
"""Official PromptSRC configs (§2.5); the L/14 teacher config doubles batch and lr. On the demo CLIPs
(`IVLP_DEMO_RULES`) GPA is centred at 3/4 of the 10 epochs, as 15 of 20."""


DASSL_MODEL_NAME = "VLPromptLearner"
"""The name PromptSRC and PromptKD register their model under: the folder their checkpoints sit in."""


def official_folder(dataset: str, setting: str, kind: Kind, epochs: int) -> Path:
    """Where the official code looks for a model (relative to its repository root), so an export drops in."""
    if kind == "student":
        return Path(DASSL_MODEL_NAME) / "model-best.pth.tar"
    if dataset == "imagenet" and setting == "cross-dataset":
        return Path("teacher_model") / "ImageNet-xd" / f"{DASSL_MODEL_NAME}_large" / f"model.pth.tar-{epochs}"
    try:
        name = get_dataset_info(dataset).dassl_name
    except KeyError:
        raise SettingsError(f"Unknown dataset {dataset!r} in the checkpoint's sidecar.") from None
    return Path("teacher_model") / name / DASSL_MODEL_NAME / "model-best.pth.tar"


VISION = PromptStack("vision", "image_encoder.VPT", "image_encoder.transformer.resblocks.{}.VPT_shallow")
TEXT = PromptStack("text", "prompt_learner.ctx", "text_encoder.transformer.resblocks.{}.VPT_shallow")

PROMPTSRC_TEACHER = Layout(
    name="PromptSRC/IVLP",
    kind="teacher",
    methods=("promptsrc", "ivlp"),
    stacks=(VISION, TEXT),
    marker="prompt_learner.ctx",
    folder=lambda place: official_folder(place.dataset, place.setting, place.kind, place.epoch),
    frozen=(
        ("image_encoder.", "visual."),
        ("prompt_learner.ZS_image_encoder.", "visual."),  # PromptSRC's prompt-free copy of the image tower
        ("text_encoder.", ""),  # transformer.*, positional_embedding, ln_final.*, text_projection
        ("logit_scale", "logit_scale"),
    ),
    dropped=("prompt_learner.token_prefix", "prompt_learner.token_suffix",
             "prompt_learner.token_prefix2", "prompt_learner.token_suffix2"),
    hint="Pass the --backbone it was trained on (ViT-L-14-quickgelu for PromptKD teachers, ViT-B-16-quickgelu for "
         "PromptSRC B/16 teachers).",
)
"""PromptSRC and IVLP teachers (`CustomCLIP` of trainers/promptsrc.py and independentVL.py), which is also what
PromptKD loads as its teacher (`CustomCLIP_teacher`)."""


@register_method
class PromptSRC(Method):
    """Deep vision+text prompts with self-regulating constraints and Gaussian prompt aggregation."""

    name = "promptsrc"
    title = "PromptSRC"
    role: ClassVar[Role] = "teacher"  # declared wide: RESTORE, a subclass, is a baseline
    options: ClassVar[type[SettingsSection] | None] = PromptSRCSettings  # and has its own section
    preset_table = PROMPTSRC_PRESETS
    official_layout: ClassVar[Layout | None] = PROMPTSRC_TEACHER
    settings_sections = ("prompts", "promptsrc")
    description = "IVLP prompts + self-regulating consistency losses + Gaussian prompt aggregation (ICCV'23)."
    use_consistency: ClassVar[bool] = True
    use_aggregation: ClassVar[bool] = True

    def __init__(
        self, clip: LoadedClip, train_classnames: Sequence[str], settings: Settings, cache: TensorCache | None = None
    ) -> None:
        super().__init__(train_classnames)
        prompts, src = settings.prompts, settings.section(PromptSRCSettings)
        self.clip = clip
        self.weights = (src.text_loss_weight, src.image_loss_weight, src.logits_loss_weight)
        self.gpa = (src.gpa_mean, src.gpa_std)
        self.backbone = clip.model
        for parameter in self.backbone.parameters():
            parameter.requires_grad_(False)
        self.vision = PromptedVisionTower(self.backbone.visual, PromptSpec(prompts.vision_depth, prompts.vision_length))
        self.text = PromptedTextTower(
            self.backbone, PromptSpec(prompts.text_depth, prompts.text_length), ctx_init=prompts.ctx_init,
            tokenizer=clip.tokenizer,
        )
        self.prompts = PerClassList(self.text.class_prompts, self.train_classnames)
        self._cache = cache
        self._frozen_text: Tensor | None = None  # training only: encoded on first use (see frozen_text)
        self._aggregate: dict[str, Tensor] | None = None

    # ------------------------------------------------------------------ protocol
    def logit_scale(self) -> Tensor:
        return self.backbone.logit_scale.exp()

    def image_embeddings(self, images: Tensor) -> Tensor:
        return F.normalize(self.vision(images), dim=-1)

    def class_embeddings(self, classnames: Sequence[str]) -> Tensor:
        return F.normalize(self.text.encode(self.prompts(classnames)), dim=-1)

    def training_forward(self, batch: Batch) -> TrainingForward:
        text = self.class_embeddings(self.train_classnames)
        image = self.image_embeddings(batch.images)

        extra = self._consistency(batch, image, text) if self.use_consistency else None
        return TrainingForward(image, text, cross_entropy_head(batch.labels), extra)

    def frozen_text(self) -> Tensor:
        """t_zs, the frozen text features over 60 templates: needed by training only, so they are encoded (or read
        from the cache) on the first training step, never when a trained model is loaded to evaluate, embed or
        teach (60 text passes per class: minutes for a ViT-B/16 on CPU). Encoded outside autocast, in the
        precision of the weights, so the cached targets do not depend on the run's autocast dtype."""
        device = self.backbone.logit_scale.device
        if self._frozen_text is None:
            with torch.autocast(device_type=device.type, enabled=False):
                self._frozen_text = self._frozen_text_targets(self.clip, self.train_classnames, self._cache)
        return self._frozen_text.to(device)

    def _consistency(self, batch: Batch, image: Tensor, text: Tensor) -> LossOutput:
        """The self-regulating terms: L1 to the frozen features and KL to the frozen logits."""
        scale = self.logit_scale()
        frozen_text = self.frozen_text()
        with torch.no_grad():
            zs_image = F.normalize(self.backbone.encode_image(batch.images), dim=-1)
            zs_text = F.normalize(frozen_text, dim=-1)
            zs_logits = scale * zs_image @ zs_text.t().to(zs_image.dtype)
        logits = self.logits(image, text)
        text_weight, image_weight, logits_weight = self.weights
        l_text = text_weight * F.l1_loss(text.float(), zs_text.float())
        l_image = image_weight * F.l1_loss(image.float(), zs_image.float())
        l_logits = logits_weight * F.kl_div(
            F.log_softmax(logits.float(), dim=1), F.log_softmax(zs_logits.float(), dim=1),
            reduction="sum", log_target=True,
        ) / logits.numel()
        parts: dict[str, Tensor | float] = {"text": l_text.detach(), "img": l_image.detach(), "kl": l_logits.detach()}
        return LossOutput(l_text + l_image + l_logits, parts)

    # ------------------------------------------------------------------ Gaussian prompt aggregation
    def on_epoch_end(self, epoch: int, num_epochs: int) -> None:
        if not self.use_aggregation:
            return
        weight = gaussian_aggregation_weights(num_epochs, *self.gpa)[epoch - 1]
        current = {name: p.detach().float() * weight for name, p in self.named_parameters() if p.requires_grad}
        if self._aggregate is None:
            self._aggregate = current
        else:
            self._aggregate = {name: self._aggregate[name] + value for name, value in current.items()}

    def on_train_end(self) -> None:
        if self.use_aggregation and self._aggregate is not None:
            self.load_trainable_state(self.trainable_state() | self._aggregate, source="prompt aggregation")
            self._aggregate = None

    def extra_state(self) -> dict[str, Tensor]:
        return {f"gpa.{k}": v for k, v in (self._aggregate or {}).items()}

    def load_extra_state(self, state: Mapping[str, Tensor]) -> None:
        restored = {k.removeprefix("gpa."): v for k, v in state.items() if k.startswith("gpa.")}
        self._aggregate = restored or None

    # ------------------------------------------------------------------ construction helpers
    @staticmethod
    def _frozen_text_targets(clip: LoadedClip, classnames: Sequence[str], cache: TensorCache | None) -> Tensor:
        half = any(p.dtype == torch.float16 for p in clip.model.parameters())

        def compute() -> dict[str, Tensor]:
            source = clip
            if half:  # the official code encodes them with a CLIP cast to fp32 (spec §2.2), from the fp16 values
                source = dataclasses.replace(clip, model=copy.deepcopy(clip.model).float())
            return {"features": template_ensemble(source, classnames, IMAGENET_TEMPLATES)}

        identity = backbone_identity(clip)
        if cache is None or identity is None:
            return compute()["features"]
        inputs = {"backbone": identity, "classnames": list(classnames), "templates": list(IMAGENET_TEMPLATES),
                  "pooling": "mean-then-normalise"}
        if half:  # from fp16-rounded weights: equal to the fp32 entry for OpenAI's fp16-stored weights only
            inputs["weights"] = "fp16-rounded"
        tensors, _ = cache.get_or_compute("template-ensemble", inputs, compute)
        return tensors["features"].to(next(clip.model.parameters()).device)


@register_method
class IVLP(PromptSRC):
    """Independent vision-language prompting: PromptSRC's prompts trained with cross-entropy alone."""

    name = "ivlp"
    title = "IVLP"
    description = "Deep vision+text prompts, cross-entropy only (the IVLP baseline of PromptSRC)."
    use_consistency = False
    use_aggregation = False


@register_method
class CoOp(IVLP):
    """Text context only (CoOp): 16 learnable context tokens at the input, frozen image encoder."""

    name = "coop"
    title = "CoOp"
    description = "Learnable text context at the input layer only (IJCV'22)."
    official_layout = None  # CoOp's own trainer saves `prompt_learner` alone, under other names
    preset_table = PROMPTSRC_PRESETS.extended(Rule(
        {"prompts.vision_depth": 0, "prompts.text_depth": 1, "prompts.text_length": 16, "prompts.ctx_init": None}
    ))


@register_method
class VPT(IVLP):
    """Deep visual prompts only (VPT-deep), class names through the frozen text encoder."""

    name = "vpt"
    title = "VPT"
    description = "Deep visual prompt tuning; text side is frozen CLIP with the 'a photo of a' template."
    official_layout = None
    preset_table = PROMPTSRC_PRESETS.extended(Rule({"prompts.text_depth": 0, "prompts.vision_length": 10}))
