"""`--precision fp16` is the official PromptSRC/PromptKD arithmetic (issue #19, item 13): fp16 frozen weights as
CLIP's `convert_weights` leaves them, fp16 activations, fp32 LayerNorm, no loss scaling; checked on CPU against
open_clip's pure-fp16 forward (the OpenAI CLIP code path the official trainers run)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from sempt_cli.engine.runtime import Runtime, resolve_runtime
from sempt_cli.errors import SettingsError
from sempt_cli.methods.promptsrc import PromptSRC
from sempt_cli.models import DEMO_STUDENT, LoadedClip, load_clip
from sempt_cli.models.factory import to_official_fp16
from sempt_cli.models.prompted import PromptedTextTower, PromptedVisionTower, PromptSpec
from sempt_cli.protocol import Batch
from sempt_cli.settings import ModelSettings, load_settings

FP16 = resolve_runtime(ModelSettings(device="cpu", precision="fp16"))


@pytest.fixture(scope="module")
def clips() -> tuple[LoadedClip, LoadedClip]:
    torch.manual_seed(3)
    fp32 = load_clip(DEMO_STUDENT, None)
    half = dataclasses.replace(fp32, model=to_official_fp16(copy.deepcopy(fp32.model)))
    return fp32, half


def test_fp16_runs_on_cpu_without_loss_scaling() -> None:
    assert FP16.device.type == "cpu" and FP16.amp_dtype is torch.float16
    assert FP16.half_weights and not FP16.uses_grad_scaler  # the official code scales no loss, skips no step
    assert not resolve_runtime(ModelSettings(device="cpu", precision="fp32")).half_weights
    amp = Runtime(torch.device("cuda", 0), torch.float16)  # MMRL's PREC amp: fp32 weights, scaled fp16 autocast
    assert amp.uses_grad_scaler and not amp.half_weights
    with pytest.raises(SettingsError, match="amp"):
        resolve_runtime(ModelSettings(device="cpu", precision="amp"))


def test_fp16_weights_are_the_official_layout(clips: tuple[LoadedClip, LoadedClip]) -> None:
    model = clips[1].model
    visual, block = model.visual, model.visual.transformer.resblocks[0]
    for half in (visual.conv1.weight, block.attn.in_proj_weight, block.attn.out_proj.weight, block.mlp.c_fc.weight,
                 visual.proj, model.text_projection):
        assert half.dtype == torch.float16
    for full in (visual.class_embedding, visual.positional_embedding, visual.ln_pre.weight, model.ln_final.weight,
                 model.token_embedding.weight, model.positional_embedding, model.logit_scale):
        assert full.dtype == torch.float32


def test_fp16_forward_is_the_official_pure_fp16_forward(clips: tuple[LoadedClip, LoadedClip]) -> None:
    fp32, half = clips
    images = torch.randn(6, 3, 48, 48)
    texts = [f"a photo of a thing number {i}." for i in range(7)]
    with torch.no_grad():
        official_image = half.model.encode_image(images.half())  # OpenAI CLIP's `image.type(self.dtype)` path
        official_text = half.model.encode_text(half.tokenizer(texts))
        vision = PromptedVisionTower(half.model.visual, PromptSpec(0))
        text = PromptedTextTower(half.model, PromptSpec(0), ctx_init=None, tokenizer=half.tokenizer)
        text.truncate = False  # all 77 positions, as the official code (truncation rounds differently, ~1e-4)
        with FP16.autocast():
            ours_image, ours_text = vision(images), text(text.build_prompts(texts))
            before = PromptedVisionTower(fp32.model.visual, PromptSpec(0))(images)  # autocast over fp32 weights
    assert ours_image.dtype == torch.float16
    assert torch.equal(ours_image, official_image) and torch.equal(ours_text, official_text)
    assert not torch.equal(before, official_image)  # what fp16 meant before: fp32 residual stream


def test_fp16_training_step_on_cpu_keeps_fp32_masters(clips: tuple[LoadedClip, LoadedClip]) -> None:
    settings = load_settings({"prompts.vision_depth": 2, "prompts.text_depth": 2}, env={}).settings
    method = PromptSRC(clips[1], ["cat", "dog"], settings)
    batch = Batch(torch.randn(2, 3, 48, 48), torch.tensor([0, 1]), torch.tensor([0, 1]))
    with FP16.autocast():
        loss = method.training_loss(batch)
    loss.total.backward()
    trainable = [p for p in method.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in trainable)
    # the 60-template targets are encoded in fp32, as the official code does, from the fp16 weights' values
    expected = promptsrc_targets(clips[1], ["cat", "dog"])
    torch.testing.assert_close(method.frozen_text(), expected, rtol=0, atol=0)


def promptsrc_targets(clip: LoadedClip, classnames: list[str]) -> torch.Tensor:
    from sempt_cli.methods.promptsrc import IMAGENET_TEMPLATES, template_ensemble

    fp32 = dataclasses.replace(clip, model=copy.deepcopy(clip.model).float())
    return template_ensemble(fp32, classnames, IMAGENET_TEMPLATES)
