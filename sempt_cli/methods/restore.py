"""RESTORE (ECCV 2024, arXiv 2403.06136): feature-shift consistency and shift-guided "surgery" adapters on IVLP.

IVLP deep vision+text prompts (PromptSRC's towers, `methods/promptsrc.py`) trained with (§3.4–3.5)

* Eq. 6, the feature shift of block l: Ω_l = (prompted output of block l) − (a reference output), per modality,
  over the tokens that are not prompts: vision CLS + patches (G_l, the trailing prompt tokens dropped); text
  every real token after the context slots up to EOT ({c_i, t_eot} of F_l: the slots hold the prompts, SOS
  never changes under the causal mask, padding after EOT is no token of the prompt);
* Eq. 8–9, L_fs = Σ_l MSE(Norm(Ω_l^v), Norm(Ω_l^t)); Eq. 10, L_total = L_ce + λ_fs L_fs (λ_fs = 1, §4.4);
* Eq. 11, on the pooled, projected outputs before L2 normalisation: x̃ ← x̃ + α_v·Surgery(x̃) and
  w̃_i ← w̃_i + α_t·Surgery_t(w̃_i), Surgery(x) = ReLU(LN(x) W_up) W_down (one adapter per modality, no
  biases as written), α_v = γ Σ_l Norm(Ω_l^v), α_t = β Σ_l Norm(Ω_l^t) (γ: vision, β: text; no constant).

What the paper leaves open, decided here (each a `restore.*` setting):

* Reference (`shift_reference`). Eq. 6 writes Ω_l = G_{l+1} − Φ_l(G_l): block l applied to the prompted stream's
  own input with the prompt tokens removed, a per-block increment ("block"). The text around it ("variation of
  embeddings after introducing the learned prompts", §3.5's "deviation from pre-trained features") reads as the
  deviation from frozen CLIP, and under IVLP the text prompts *replace* the "a photo of a" words, so the block
  reading charges the text branch for having context words at all (non-zero shift at initialisation). Default
  "frozen": the same layer of the same tower run without prompts (a `PromptSpec(0)` tower on the frozen
  backbone and the same token ids), which is exactly zero for an untrained ctx_init text prompt of depth 1.
  Zero-*valued* prompt tokens are not absent: vision prompts are extra tokens (ln_pre of a zero vector is its
  bias) and text prompts overwrite word embeddings, so both still shift the features; only depth 0 gives Ω = 0.
* Norm (`shift_norm`). The paper's Frobenius norm is taken per image and per class (so an image's embedding
  never depends on the rest of its batch, and a class's never on the other classes scored with it). As written
  it grows with √tokens and the residual-stream scale, which differ between towers (197 image tokens, ~10 text
  tokens); the default "relative" divides by the reference's Frobenius norm over the same tokens, a
  dimensionless shift comparable across modalities ("rms" divides by √tokens; "frobenius" is Eq. 8 as written).
* MSE (`fs_pairing`). Eq. 8 compares one number per modality and layer; we use the batch mean over images and
  the mean over all training classes, so L_fs = Σ_l (mean_b s_l^v − mean_c s_l^t)², independent of batch size
  and class count. "label" pairs each image with its label's class instead: mean_b (s_l^v(b) − s_l^t(y_b))².
* Layers. Σ over every block (prompts' effects flow past the prompt depth). When the towers differ in depth
  (ViT-L/14: 24/12; the demo CLIPs: 6/4 and 4/3), L_fs pairs block j (1-based) of the shallower tower with block
  ⌈j·L_deep/L_shallow⌉ of the deeper one, the same relative depth; α sums each tower's own blocks.
* α (`detach_alpha`). "We dynamically update α_v and α_t to control the surgery": α is a measured
  coefficient, detached by default (the official code also uses a constant), so the loss cannot steer the
  prompts through α (shrinking the shift to switch the adapter off). At inference it is computed the same way,
  from each test image's own shift and each class's own shift (no running value: the paper states none, and a
  per-sample α keeps evaluation independent of batch composition and class lists).
* Adapter (`surgery_ratio`, `surgery_zero_init`, `gamma`, `beta`). W_up widens to 4× the embedding width (the
  official Feature_Calibrator's 512 → 2048) and W_down starts at zero, so training starts from plain IVLP.
  γ = β = 0.1: relative shifts of ~0.2 per block (the demo CLIPs after a few steps) give α ≈ 0.1 over 4–6
  blocks, the order of the official code's blend ratio (0.05 and up).

Cost: one extra forward of each tower without prompts and without gradient per step ("frozen"), or a second
pass of every block with gradient ("block"); text references are recomputed for every class chunk.

The public code (github.com/Yaphabates/RESTORE_, MaPLe_FSA) differs from the paper: its "shift" is the Frobenius
norm of each layer's prompt Gram matrix PᵀP relative to its initial value, and its adapters blend
r·(x + FFN(LN(x))) + (1−r)·x with a QuickGELU FFN, r = 0.05 raised once at a third of training. We follow the
paper; γ/β are not the official r.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from open_clip.transformer import Transformer
from pydantic import ConfigDict, Field
from torch import Tensor, nn

from sempt_cli.engine.cache import TensorCache
from sempt_cli.methods.common import IVLP_DEMO_RULES
from sempt_cli.methods.promptsrc import IVLP
from sempt_cli.models.factory import LoadedClip
from sempt_cli.models.prompted import ClassPrompts, PromptedTextTower, PromptedVisionTower, PromptSpec
from sempt_cli.presets import Presets, Rule
from sempt_cli.protocol import Batch, LossOutput, TrainingForward, cross_entropy_head, register_method
from sempt_cli.settings import Settings, SettingsSection


def _safe_sqrt(x: Tensor) -> Tensor:
    """√x that is exactly 0 with a zero (not NaN) gradient at x = 0 (an unshifted layer)."""
    return torch.where(x > 0, x.clamp_min(1e-30).sqrt(), torch.zeros_like(x))


def shift_norms(prompted: Tensor, reference: Tensor, mask: Tensor | None, kind: str) -> Tensor:
    """Norm(Ω) per sample [N] of Ω = prompted − reference [N, T, W] over the tokens where `mask` [N, T] is true."""
    prompted, reference = prompted.float(), reference.float()
    per_token = (prompted - reference).pow(2).sum(-1)
    if mask is not None:
        per_token = per_token * mask
    squared = per_token.sum(-1)
    if kind == "frobenius":
        return _safe_sqrt(squared)
    if kind == "rms":
        count = mask.sum(-1) if mask is not None else torch.full_like(squared, prompted.shape[1])
        return _safe_sqrt(squared / count.clamp_min(1))
    if kind == "relative":
        scale = reference.pow(2).sum(-1)
        scale = (scale * mask if mask is not None else scale).sum(-1)
        return _safe_sqrt(squared / scale.clamp_min(1e-12))
    raise ValueError(f"unknown shift norm {kind!r}")


def paired_layers(vision_layers: int, text_layers: int) -> tuple[list[int], list[int]]:
    """Block indices compared by L_fs: every layer of the shallower tower with the deeper tower's layer at the
    same relative depth (the last of its group), so 12/12 pairs l with l and 24/12 pairs 2l+1 with l."""
    shallow, deep = min(vision_layers, text_layers), max(vision_layers, text_layers)
    deep_index = [math.ceil((j + 1) * deep / shallow) - 1 for j in range(shallow)]
    shallow_index = list(range(shallow))
    return (deep_index, shallow_index) if vision_layers >= text_layers else (shallow_index, deep_index)


def feature_shift_loss(vision: Tensor, text: Tensor, labels: Tensor | None = None) -> Tensor:
    """Eq. 8–9 on paired layers: Σ_l (mean_b v_bl − mean_c t_cl)², or with `labels` Σ_l mean_b (v_bl − t_{y_b}l)².

    `vision` [B, L] and `text` [C, L] hold Norm(Ω_l) per image and per class."""
    if labels is None:
        return (vision.mean(0) - text.mean(0)).pow(2).sum()
    return (vision - text[labels]).pow(2).mean(0).sum()


class Surgery(nn.Module):
    """Eq. 11's adapter: x + α · ReLU(LN(x) W_up) W_down, with α one coefficient per row of x."""

    def __init__(self, dim: int, ratio: float = 4.0, *, zero_init: bool = True) -> None:
        super().__init__()
        hidden = max(1, round(dim * ratio))
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)
        if zero_init:
            nn.init.zeros_(self.down.weight)

    def delta(self, x: Tensor) -> Tensor:
        """Surgery(x) of Eq. 11 (without the residual)."""
        return self.down(F.relu(self.up(self.norm(x))))

    def forward(self, x: Tensor, alpha: Tensor) -> Tensor:
        delta = self.delta(x)
        return x + alpha.unsqueeze(-1).to(delta.dtype) * delta


@dataclass
class Encoded:
    """One tower's pass: output features (after surgery, unnormalised), Norm(Ω_l) per sample [N, L], α [N]."""

    features: Tensor
    shifts: Tensor
    alpha: Tensor


def _run_block(transformer: Transformer, index: int, x: Tensor, mask: Tensor | None) -> Tensor:
    """open_clip's block `index` on a batch-first sequence (the block itself, never a copy)."""
    block = transformer.resblocks[index]
    if getattr(transformer, "batch_first", True):
        return block(x, attn_mask=mask)
    return block(x.transpose(0, 1), attn_mask=mask).transpose(0, 1)


def _recorder(inputs: list[Tensor]) -> Callable[[int, Tensor], None]:
    """A before-block hook that keeps every block's input (prompts already inserted)."""

    def record(index: int, x: Tensor) -> None:
        inputs.append(x)

    return record


class RestoreSettings(SettingsSection):
    """RESTORE (feature-shift consistency + feature-shift-guided surgery adapters) on IVLP deep prompts.

    The paper leaves the reference of the shift, its normalisation, the adapter width and γ/β open; every such
    choice is a field here, defaulting to the reading `methods/restore.py` documents."""

    model_config = ConfigDict(title="RESTORE")
    section = "restore"

    fs_weight: float = Field(1.0, ge=0.0, description="λ_fs, weight of the feature-shift consistency loss.")
    gamma: float = Field(
        0.1, ge=0.0, description="γ: the image surgery coefficient is α_v = γ · Σ_l Norm(Ω_l^v) (paper: unstated).",
        json_schema_extra={"flag": "restore-gamma"},
    )
    beta: float = Field(
        0.1, ge=0.0, description="β: the text surgery coefficient is α_t = β · Σ_l Norm(Ω_l^t) (paper: unstated).",
        json_schema_extra={"flag": "restore-beta"},
    )
    surgery: bool = Field(
        True, description="Apply the shift-guided surgery adapters (--no-surgery: feature-shift loss only).",
        json_schema_extra={"flag": "surgery"},
    )
    surgery_ratio: float = Field(
        4.0, gt=0.0, description="Hidden width of W_up as a multiple of the embedding width (official code: 4×).",
    )
    surgery_zero_init: bool = Field(
        True, description="Start W_down at zero so that training starts from plain IVLP (else PyTorch's default).",
    )
    detach_alpha: bool = Field(
        True, description="Treat α_v/α_t as measured coefficients (no gradient from the surgery into the shift).",
    )
    shift_reference: Literal["frozen", "block"] = Field(
        "frozen", description="What a prompted block output is compared with: frozen = the same layer of the tower "
        "run without prompts (deviation from pre-trained CLIP); block = the same block run on the same input with "
        "the prompt tokens removed (Eq. 6 taken literally, a per-block increment).",
    )
    shift_norm: Literal["relative", "rms", "frobenius"] = Field(
        "relative", description="Norm(Ω_l) per image / class: relative = ‖Ω_l‖_F / ‖reference‖_F; rms = ‖Ω_l‖_F / "
        "√tokens; frobenius = ‖Ω_l‖_F as written (grows with sequence length and width).",
    )
    fs_pairing: Literal["modality-mean", "label"] = Field(
        "modality-mean", description="L_fs per layer: modality-mean = (mean over images − mean over classes)²; "
        "label = mean over images of (image shift − its label's class shift)².",
    )


RESTORE_PRESETS = Presets(
    Rule({"train.epochs": 10, "train.lr": 0.0035, "data.batch_size": 4,
          "prompts.vision_depth": 9, "prompts.text_depth": 9, "prompts.vision_length": 4, "prompts.text_length": 4,
          "prompts.ctx_init": "a photo of a", "restore.fs_weight": 1.0, "data.shots": 16, "data.subsample": "base"}),
    Rule({"train.epochs": 4, "prompts.vision_depth": 3, "prompts.text_depth": 3, "data.subsample": "all"},
         when={"data.setting": ("cross-dataset", "cross-domain")}),
    Rule({"train.epochs": 50, "data.subsample": "all"}, when={"data.setting": "few-shot"}),
    Rule({"train.lr": 0.007, "data.batch_size": 8}, when={"backbone": "L-14"}),
    *IVLP_DEMO_RULES,
)
"""The paper's §4.1 values (SGD, lr 0.0035, batch 4, 10 epochs base-to-novel, 4 cross-dataset/domain, λ_fs = 1,
"a photo of a"); PromptSRC's where it is silent: prompt depth 9 (3 across datasets/domains), 4 tokens per layer,
50 few-shot epochs, and its L/14 rule of doubling batch and lr."""


@register_method
class Restore(IVLP):
    """IVLP prompts + feature-shift consistency loss + shift-guided surgery adapters; see the module docstring."""

    name = "restore"
    title = "RESTORE"
    role = "baseline"
    options = RestoreSettings
    preset_table = RESTORE_PRESETS
    official_layout = None  # IVLP's layout without RESTORE's own parts: no official file holds it
    settings_sections = ("prompts", "restore")
    description = "IVLP prompts + cross-modal feature-shift consistency + shift-guided surgery adapters (ECCV'24)."

    def __init__(
        self, clip: LoadedClip, train_classnames: Sequence[str], settings: Settings, cache: TensorCache | None = None
    ) -> None:
        super().__init__(clip, train_classnames, settings, cache)
        self.hyper = settings.section(RestoreSettings)
        self.reference_vision = PromptedVisionTower(self.backbone.visual, PromptSpec(0))
        self.reference_text = PromptedTextTower(self.backbone, PromptSpec(0), ctx_init=None, tokenizer=clip.tokenizer)
        dim = int(self.backbone.visual.output_dim)
        device = self.backbone.visual.conv1.weight.device
        self.vision_surgery = Surgery(dim, self.hyper.surgery_ratio, zero_init=self.hyper.surgery_zero_init).to(device)
        self.text_surgery = Surgery(dim, self.hyper.surgery_ratio, zero_init=self.hyper.surgery_zero_init).to(device)
        self.vision_surgery.requires_grad_(self.hyper.surgery)
        self.text_surgery.requires_grad_(self.hyper.surgery)
        self.vision_pairs, self.text_pairs = paired_layers(self.vision.num_layers, self.text.num_layers)

    # ------------------------------------------------------------------ protocol
    def image_embeddings(self, images: Tensor) -> Tensor:
        return F.normalize(self.encode_images(images).features, dim=-1)

    def class_embeddings(self, classnames: Sequence[str]) -> Tensor:
        return F.normalize(self.encode_text(self.prompts(classnames)).features, dim=-1)

    def training_forward(self, batch: Batch) -> TrainingForward:
        text = self.encode_text(self.prompts.train)
        image = self.encode_images(batch.images)

        labels = batch.labels if self.hyper.fs_pairing == "label" else None
        l_fs = feature_shift_loss(image.shifts[:, self.vision_pairs], text.shifts[:, self.text_pairs], labels)
        extra = LossOutput(self.hyper.fs_weight * l_fs, {"fs": l_fs.detach()})
        return TrainingForward(
            F.normalize(image.features, dim=-1), F.normalize(text.features, dim=-1), cross_entropy_head(batch.labels),
            extra,
        )

    # ------------------------------------------------------------------ towers with feature shift
    def encode_images(self, images: Tensor) -> Encoded:
        """Prompted image features, Norm(Ω_l^v) per image over CLS + patches, α_v and the vision surgery."""
        inputs: list[Tensor] = []
        block = self.hyper.shift_reference == "block"
        hooks = [_recorder(inputs)] if block else []
        out = self.vision.forward_features(images, return_layers=True, before_block=hooks)
        tokens = out.tokens.shape[1] - out.num_prompts
        if block:
            transformer = self.vision.visual.transformer
            references = [_run_block(transformer, i, x[:, :tokens], None) for i, x in enumerate(inputs)]
        else:
            with torch.no_grad():
                references = self.reference_vision.forward_features(images, return_layers=True).layers
        shifts = torch.stack(
            [shift_norms(p[:, :tokens], r[:, :tokens], None, self.hyper.shift_norm)
             for p, r in zip(out.layers, references, strict=True)], dim=1,
        )
        return self._apply_surgery(out.features, shifts, self.hyper.gamma, self.vision_surgery)

    def encode_text(self, prompts: ClassPrompts) -> Encoded:
        """Prompted class features, Norm(Ω_l^t) per class over its tokens after the context slots up to EOT, α_t
        and the text surgery; classes in chunks as PromptSRC's text features."""
        pieces = [self._encode_text_chunk(chunk) for chunk in prompts.chunks()]
        features = torch.cat([p[0] for p in pieces])
        shifts = torch.cat([p[1] for p in pieces])
        return self._apply_surgery(features, shifts, self.hyper.beta, self.text_surgery)

    def _encode_text_chunk(self, prompts: ClassPrompts) -> tuple[Tensor, Tensor]:
        inputs: list[Tensor] = []
        block = self.hyper.shift_reference == "block"
        hooks = [_recorder(inputs)] if block else []
        out = self.text.forward_features(prompts, return_layers=True, before_block=hooks)
        n_ctx = prompts.n_ctx
        if block:  # the block on [SOS, tokens after the slots]: the same input with the prompt tokens removed
            tower = self.text
            reduced = [torch.cat([x[:, :1], x[:, 1 + n_ctx :]], dim=1) for x in inputs]
            masks = [tower.causal_mask[: x.shape[1], : x.shape[1]] if tower.causal else None for x in reduced]
            references = [_run_block(tower.transformer, i, x, m)[:, 1:]
                          for i, (x, m) in enumerate(zip(reduced, masks, strict=True))]
        else:
            with torch.no_grad():
                layers = self.reference_text.forward_features(prompts, return_layers=True).layers
            references = [r[:, 1 + n_ctx :] for r in layers]
        prompted = [p[:, 1 + n_ctx :] for p in out.layers]
        width = prompted[0].shape[1]
        positions = torch.arange(width, device=prompts.eot_index.device)
        mask = positions.unsqueeze(0) < (prompts.eot_index - n_ctx).unsqueeze(1)
        shifts = torch.stack(
            [shift_norms(p, r, mask, self.hyper.shift_norm) for p, r in zip(prompted, references, strict=True)], dim=1
        )
        return out.features, shifts

    def _apply_surgery(self, features: Tensor, shifts: Tensor, scale: float, surgery: Surgery) -> Encoded:
        """Eq. 11: α = scale · Σ_l Norm(Ω_l) per sample, then x + α · Surgery(x)."""
        alpha = scale * shifts.sum(dim=1)
        if self.hyper.detach_alpha:
            alpha = alpha.detach()
        if self.hyper.surgery:
            features = surgery(features, alpha)
        return Encoded(features, shifts, alpha)
