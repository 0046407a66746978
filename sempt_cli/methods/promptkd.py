"""PromptKD (CVPR 2024) stage II: unsupervised prompt distillation from a frozen prompted teacher.

Student = deep visual prompts on its own CLIP image tower + a two-layer projector (Linear → BatchNorm → ReLU →
Linear, the official 1×1-conv module) into the teacher's text space. There is no student text tower: the
student classifies against the teacher's stored class vectors ("shared class vectors"). The only loss is KD on
unlabelled images of *all* classes (spec/promptkd-promptsrc.md §3.3):

    L = kd_weight · τ² · Σ_{b,c} q_t (log q_t − log q_s) / (B · n)

with q = softmax(logits / τ), n = every class, kd_weight 1000 and τ = 1 as in the official scripts.

Where the teacher's signals come from is not this method's business: it receives a `TeacherSignals` whose class
vectors are computed once (from `sempt embed`) and whose image features come from a per-view cache or a live
teacher forward — or, in the reference mode, both encoders every step as the official code does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import ConfigDict, Field
from torch import Tensor, nn

from sempt_cli.engine.cache import TensorCache
from sempt_cli.errors import SemptError
from sempt_cli.methods.common import IVLP_DEMO_RULES
from sempt_cli.methods.promptsrc import DASSL_MODEL_NAME, VISION
from sempt_cli.models.factory import LoadedClip
from sempt_cli.models.official_layout import Layout, batchnorm_rules, conv1x1_rules
from sempt_cli.models.prompted import PromptedVisionTower, PromptSpec
from sempt_cli.presets import Presets, Rule
from sempt_cli.protocol import Batch, LossOutput, Method, TrainingForward, contiguous_block, register_method
from sempt_cli.settings import Settings, SettingsSection


@dataclass
class TeacherSignals:
    """What the frozen teacher contributes to a distillation step.

    `class_vectors()` → L2-normalised [n, D_t] for all classes; `image_features(batch)` → L2-normalised
    [B, D_t] for exactly the views in `batch`; `logit_scale` is the teacher's (100 for CLIP).
    `on_epoch_start(epoch)` lets a cache prepare the epoch's features.
    """

    class_vectors: Callable[[], Tensor]
    image_features: Callable[[Batch], Tensor]
    logit_scale: float = 100.0
    on_epoch_start: Callable[[int], None] | None = None


class FeatureProjector(nn.Module):
    """PromptKD's `Feature_Trans_Module_two_layer`: 1×1 convs on [B, C, 1, 1] are Linear layers."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, out_dim)
        self.bn = nn.BatchNorm1d(out_dim)
        self.fc2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.relu(self.bn(self.fc1(x))))


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Σ KL(q_t ‖ q_s) · τ² / numel — the official normalisation (per element, not per sample)."""
    log_q_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_q_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = F.kl_div(log_q_s, log_q_t, reduction="sum", log_target=True)
    return kl * temperature**2 / student_logits.numel()


class PromptKDSettings(SettingsSection):
    """PromptKD distillation (official scripts: KD weight 1000, temperature 1) and the teacher-side caches."""

    model_config = ConfigDict(title="PromptKD")
    section = "promptkd"

    kd_weight: float = Field(1000.0, ge=0.0, description="Weight of the KD loss (scripts: 1000; see docs).")
    kd_temperature: float = Field(1.0, gt=0.0, description="Distillation temperature τ.")
    teacher_cache_gb: float = Field(
        20.0, ge=0.0, description="Disk budget for cached teacher image features; beyond it they are computed live."
    )
    recompute_teacher: bool = Field(
        False, description="Reference mode: run the teacher's image and text encoders every step, as the official code."
    )


PROMPTKD_PRESETS = Presets(
    Rule({"train.epochs": 20, "train.lr": 0.005, "data.batch_size": 8, "data.shots": 0, "data.subsample": "all",
          "prompts.vision_depth": 9, "prompts.vision_length": 4}),
    Rule({"prompts.vision_depth": 3}, when={"data.setting": ("cross-dataset", "cross-domain")}),
    *IVLP_DEMO_RULES,
)
"""Official PromptKD configs (§3.4): all training images of all classes, unlabelled; batch 8, lr 0.005."""


PROMPTKD_STUDENT = Layout(
    name="PromptKD student",
    kind="student",
    methods=("promptkd",),
    stacks=(VISION,),
    marker="VPT_image_trans.",
    folder=lambda place: Path(DASSL_MODEL_NAME) / "model-best.pth.tar",
    fixed=(*conv1x1_rules("projector.fc1", "VPT_image_trans.conv1.0"),
           *batchnorm_rules("projector.bn", "VPT_image_trans.conv1.1"),
           *conv1x1_rules("projector.fc2", "VPT_image_trans.conv1.3")),
    frozen=(("image_encoder.", "visual."), ("logit_scale", "logit_scale")),
    hint="Pass the --backbone it was trained on (ViT-B-16-quickgelu for PromptKD students).",
)
"""PromptKD's student `CustomCLIP`: ViT-B/16 visual prompts + `Feature_Trans_Module_two_layer` (Conv 1×1 → BN →
ReLU → Conv 1×1, spec §3.2)."""


@register_method
class PromptKD(Method):
    """Student visual prompts + projector distilled from a prompted teacher's logits."""

    name = "promptkd"
    title = "PromptKD"
    role = "student"
    options = PromptKDSettings
    preset_table = PROMPTKD_PRESETS
    official_layout = PROMPTKD_STUDENT
    settings_sections = ("prompts", "promptkd")
    supervised = False
    description = "Unsupervised prompt distillation from a PromptSRC teacher (CVPR'24)."

    def __init__(
        self,
        clip: LoadedClip,
        train_classnames: Sequence[str],
        settings: Settings,
        cache: TensorCache | None = None,
        *,
        teacher: TeacherSignals | None = None,
        teacher_dim: int | None = None,
    ) -> None:
        super().__init__(train_classnames)
        self.backbone = clip.model
        self.backbone.requires_grad_(False)
        prompts = settings.prompts
        self.vision = PromptedVisionTower(self.backbone.visual, PromptSpec(prompts.vision_depth, prompts.vision_length))
        student_dim = int(self.backbone.visual.output_dim)
        if teacher_dim is None:
            if teacher is None:
                raise SemptError("PromptKD needs the teacher's embedding width (or its signals) to build a projector.")
            teacher_dim = int(teacher.class_vectors().shape[1])
        self.projector = FeatureProjector(student_dim, teacher_dim).to(next(self.backbone.parameters()).device)
        self.teacher = teacher
        own = settings.section(PromptKDSettings)
        self.kd_weight = own.kd_weight
        self.temperature = own.kd_temperature
        self.classnames = list(train_classnames)

    def logit_scale(self) -> Tensor:
        return self.backbone.logit_scale.exp()

    def image_embeddings(self, images: Tensor) -> Tensor:
        return F.normalize(self.projector(self.vision(images).float()), dim=-1)

    def class_embeddings(self, classnames: Sequence[str]) -> Tensor:
        """Rows of the teacher's class vectors: a contiguous block of the full list (base = first m, novel = the
        rest), so duplicate names (ImageNet's two 'missile's) cannot be confused."""
        if self.teacher is None:
            raise SemptError("This PromptKD student has no teacher class vectors attached.")
        return self.teacher.class_vectors()[contiguous_block(self.classnames, classnames)]

    def training_forward(self, batch: Batch) -> TrainingForward:
        if self.teacher is None:
            raise SemptError("PromptKD cannot train without a teacher.")
        with torch.no_grad():
            vectors = self.teacher.class_vectors()
            teacher_logits = self.teacher.logit_scale * self.teacher.image_features(batch).float() @ vectors.t().float()

        def distillation(student_logits: Tensor) -> LossOutput:
            loss = self.kd_weight * kd_loss(student_logits, teacher_logits, self.temperature)
            return LossOutput(loss, {"kd": loss.detach()})

        return TrainingForward(self.image_embeddings(batch.images), vectors, distillation)

    def on_epoch_start(self, epoch: int) -> None:
        if self.teacher is not None and self.teacher.on_epoch_start is not None:
            self.teacher.on_epoch_start(epoch)
