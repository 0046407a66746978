"""Checkpoints in the official PromptSRC / PromptKD / MMRL layout with random values (names and shapes per
spec/promptkd-promptsrc.md §3, §7.1 and spec/mmrl.md §1.2–§1.5).

They are built the way the official code saves them: the whole `CustomCLIP.state_dict()` (prompts or MMRL's
representation space, the frozen CLIP copy, PromptSRC's `ZS_image_encoder`, the `token_prefix`/`token_suffix` or
`prompt_embeddings` buffers), inside Dassl's dict with a real optimizer state and a scheduler state that pickles
its successor `CosineAnnealingLR` object.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from sempt_cli.models import LoadedClip

CONTEXT = 77


def _perturbed(value: Tensor, generator: torch.Generator) -> Tensor:
    """Like the frozen weights in a PromptSRC file: fp16 and nudged (GPA sums every tensor, spec §5.5)."""
    if not value.is_floating_point():
        return value.clone()
    noise = torch.randn(value.shape, generator=generator) * 2e-4
    return (value.float() * (1 + noise)).half()


def widths(clip: LoadedClip) -> tuple[int, int]:
    """(vision width, text width) of a CLIP: the prompts' second dimension in each tower."""
    return int(clip.model.visual.conv1.out_channels), int(clip.model.token_embedding.weight.shape[1])


def teacher_state(
    clip: LoadedClip,
    vision_depth: int,
    text_depth: int,
    *,
    length: int = 4,
    num_classes: int = 20,
    frozen: bool = True,
    seed: int = 0,
) -> dict[str, Tensor]:
    """A PromptSRC `CustomCLIP.state_dict()`: prompts (ctx in fp16, VPT in fp32, spec §1.4), buffers, frozen CLIP."""
    g = torch.Generator().manual_seed(seed)
    vision, text = widths(clip)
    state = {"prompt_learner.ctx": torch.randn(length, text, generator=g).half()}
    for layer in range(1, text_depth):
        state[f"text_encoder.transformer.resblocks.{layer}.VPT_shallow"] = torch.randn(length, text, generator=g)
    if vision_depth:
        state["image_encoder.VPT"] = torch.randn(length, vision, generator=g)
    for layer in range(1, vision_depth):
        state[f"image_encoder.transformer.resblocks.{layer}.VPT_shallow"] = torch.randn(length, vision, generator=g)
    state["prompt_learner.token_prefix"] = torch.randn(num_classes, 1, text, generator=g).half()
    state["prompt_learner.token_suffix"] = torch.randn(num_classes, CONTEXT - 1 - length, text, generator=g).half()
    if frozen:
        for key, value in clip.model.state_dict().items():
            if key.startswith("visual."):
                state["image_encoder." + key[len("visual."):]] = _perturbed(value, g)
                state["prompt_learner.ZS_image_encoder." + key[len("visual."):]] = value.half()
            elif key.startswith(("transformer.", "positional_embedding", "ln_final.", "text_projection")):
                state["text_encoder." + key] = _perturbed(value, g)
            elif key == "logit_scale":
                state[key] = value.clone()
    return state


def student_state(
    clip: LoadedClip, vision_depth: int, teacher_dim: int, *, length: int = 4, frozen: bool = True, seed: int = 1,
) -> dict[str, Tensor]:
    """A PromptKD student `CustomCLIP.state_dict()`: visual prompts, the 1×1-conv projector (convs fp16, BN fp32)
    with BatchNorm statistics, and the frozen image tower."""
    g = torch.Generator().manual_seed(seed)
    vision, _ = widths(clip)
    student_dim = int(clip.model.visual.output_dim)
    state = {"image_encoder.VPT": torch.randn(length, vision, generator=g)}
    for layer in range(1, vision_depth):
        state[f"image_encoder.transformer.resblocks.{layer}.VPT_shallow"] = torch.randn(length, vision, generator=g)
    prefix = "VPT_image_trans.conv1."
    state |= {
        f"{prefix}0.weight": (torch.randn(teacher_dim, student_dim, 1, 1, generator=g) * 0.05).half(),
        f"{prefix}0.bias": (torch.randn(teacher_dim, generator=g) * 0.05).half(),
        f"{prefix}1.weight": torch.rand(teacher_dim, generator=g) + 0.5,
        f"{prefix}1.bias": torch.randn(teacher_dim, generator=g) * 0.1,
        f"{prefix}1.running_mean": torch.randn(teacher_dim, generator=g) * 0.1,
        f"{prefix}1.running_var": torch.rand(teacher_dim, generator=g) + 0.5,
        f"{prefix}1.num_batches_tracked": torch.tensor(1234),
        f"{prefix}3.weight": (torch.randn(teacher_dim, teacher_dim, 1, 1, generator=g) * 0.05).half(),
        f"{prefix}3.bias": (torch.randn(teacher_dim, generator=g) * 0.05).half(),
    }
    if frozen:
        for key, value in clip.model.state_dict().items():
            if key.startswith("visual."):
                state["image_encoder." + key[len("visual."):]] = value.half()
            elif key == "logit_scale":
                state[key] = value.clone()
    return state


def mmrl_state(
    clip: LoadedClip,
    start_layer: int,
    *,
    rep_dim: int = 512,
    tokens: int = 5,
    num_classes: int = 20,
    frozen: bool = True,
    seed: int = 2,
) -> dict[str, Tensor]:
    """An MMRL `CustomCLIP.state_dict()` (trainers/mmrl.py, clip/model_mmrl.py): the representation tokens, one
    Linear aligner per tower for every block from `start_layer` (1-based, the official REP_LAYERS[0]) to the last,
    `proj_rep`, the `prompt_embeddings` buffer [C, 77, text width] and the frozen CLIP (fp32, as PREC amp saves)."""
    g = torch.Generator().manual_seed(seed)
    vision, text = widths(clip)
    blocks = {"r2vproj": (vision, len(clip.model.visual.transformer.resblocks)),
              "r2tproj": (text, len(clip.model.transformer.resblocks))}
    state = {"representation_learner.compound_rep_tokens": torch.randn(tokens, rep_dim, generator=g) * 0.02}
    for name, (width, depth) in blocks.items():
        for index in range(depth - start_layer + 1):
            prefix = f"representation_learner.compound_rep_tokens_{name}.{index}"
            state[f"{prefix}.weight"] = (torch.rand(width, rep_dim, generator=g) - 0.5) * 2 / rep_dim**0.5
            state[f"{prefix}.bias"] = (torch.rand(width, generator=g) - 0.5) * 2 / rep_dim**0.5
    state["prompt_embeddings"] = torch.randn(num_classes, CONTEXT, text, generator=g)
    state["image_encoder.proj_rep"] = torch.randn(vision, int(clip.model.visual.output_dim), generator=g) / vision**0.5
    if frozen:
        for key, value in clip.model.state_dict().items():
            if key.startswith("visual."):
                state["image_encoder." + key[len("visual."):]] = value.clone()
            elif key.startswith(("transformer.", "positional_embedding", "ln_final.", "text_projection")):
                state["text_encoder." + key] = value.clone()
    return state


def save_dassl(path: Path, state: dict[str, Tensor], epoch: int = 20, **extra: object) -> Path:
    """`torch.save` as Dassl's `save_checkpoint` does: with the optimizer state and a scheduler state whose
    `successor` is a pickled torch `CosineAnnealingLR` (holding the optimizer: SGD for PromptSRC/PromptKD, AdamW
    for MMRL), as in every official file."""
    mmrl = any(k.startswith("representation_learner.") for k in state)
    params = [nn.Parameter(v.float().clone()) for k, v in state.items()
              if "VPT" in k or k.endswith(".ctx") or k.startswith("representation_learner.")][:3]
    optimizer = (torch.optim.AdamW(params, lr=1e-3, weight_decay=5e-4) if mmrl
                 else torch.optim.SGD(params, lr=0.005, momentum=0.9, weight_decay=5e-4))
    sum(p.sum() for p in params).backward()  # type: ignore[union-attr]
    optimizer.step()  # momentum buffers, as after training
    successor = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epoch)
    scheduler = {"successor": successor, "warmup_epoch": 1, "cons_lr": 1e-5, "base_lrs": [0.005],
                 "last_epoch": epoch, "_step_count": epoch + 1, "verbose": False,
                 "_get_lr_called_within_step": False, "_last_lr": [0.0001]}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, "epoch": epoch, "optimizer": optimizer.state_dict(), "scheduler": scheduler,
                "val_result": 81.25, **extra}, path)
    return path
