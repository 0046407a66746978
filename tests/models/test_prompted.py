"""Deep-prompted towers: exact open_clip equivalence at depth 0, and IVLP prompt placement (spec §1)."""

from __future__ import annotations

import open_clip
import pytest
import torch
from open_clip.modified_resnet import ModifiedResNet
from torch import Tensor, nn

from sempt_cli.errors import SemptError
from sempt_cli.models import (
    ClassPrompts,
    DeepPrompts,
    LoadedClip,
    PromptedTextTower,
    PromptedVisionTower,
    PromptSpec,
    register_model_config,
)

TEXTS = ["a photo of a cat.", "a dog", "an unusually long description of a small striped tabby cat on a mat."]
ATOL = 1e-5


def images(model: nn.Module, batch: int = 2) -> Tensor:
    height, width = model.visual.image_size
    return torch.randn(batch, 3, height, width)


# ------------------------------------------------------------------------------------------------- depth 0


def test_vision_depth0_equals_encode_image_tiny(tiny: LoadedClip) -> None:
    model = tiny.model
    x = images(model, 3)
    with torch.no_grad():
        torch.testing.assert_close(PromptedVisionTower(model.visual)(x), model.encode_image(x), atol=ATOL, rtol=0)


@pytest.mark.parametrize("truncate", [True, False])
def test_text_depth0_equals_encode_text_tiny(tiny: LoadedClip, truncate: bool) -> None:
    model, tokenizer = tiny.model, tiny.tokenizer
    tower = PromptedTextTower(model, PromptSpec(0), ctx_init=None, truncate=truncate)
    ids = tokenizer(TEXTS)
    with torch.no_grad():
        reference = model.encode_text(ids)
        torch.testing.assert_close(tower(ids), reference, atol=ATOL, rtol=0)
        torch.testing.assert_close(tower(tower.build_prompts(TEXTS)), reference, atol=ATOL, rtol=0)


def test_b16_depth0_equals_open_clip(b16: LoadedClip) -> None:
    model, tokenizer = b16.model, b16.tokenizer
    x = images(model, 2)
    ids = tokenizer(TEXTS[:2])
    with torch.no_grad():
        torch.testing.assert_close(PromptedVisionTower(model.visual)(x), model.encode_image(x), atol=ATOL, rtol=0)
        reference = model.encode_text(ids)
        for truncate in (True, False):
            tower = PromptedTextTower(model, PromptSpec(0), ctx_init=None, truncate=truncate)
            torch.testing.assert_close(tower(ids), reference, atol=ATOL, rtol=0)


def test_custom_text_clip_is_supported() -> None:
    """open_clip's CustomTextCLIP keeps the text tower under `model.text`."""
    model = open_clip.create_model("sempt-demo-student", force_custom_text=True).eval()
    assert isinstance(model, open_clip.CustomTextCLIP)
    tokenizer = open_clip.get_tokenizer("sempt-demo-student")
    ids = tokenizer(TEXTS)
    tower = PromptedTextTower(model, PromptSpec(0), ctx_init=None)
    with torch.no_grad():
        torch.testing.assert_close(tower(ids), model.encode_text(ids), atol=ATOL, rtol=0)
    prompted = PromptedTextTower(model, PromptSpec(2, 4))
    assert prompted(prompted.class_prompts(["cat", "dog"])).shape == (2, 96)


def test_non_vit_towers_are_refused() -> None:
    resnet = ModifiedResNet(layers=(1, 1, 1, 1), output_dim=32, heads=2, image_size=64, width=16)
    with pytest.raises(SemptError, match="VisionTransformer"):
        PromptedVisionTower(resnet, PromptSpec(1, 4))


def test_depth_beyond_the_backbone_is_refused(student: LoadedClip) -> None:
    with pytest.raises(SemptError, match="exceeds"):
        PromptedVisionTower(student.model.visual, PromptSpec(5, 4))
    with pytest.raises(SemptError, match="exceeds"):
        PromptedTextTower(student.model, PromptSpec(4, 4))


# ----------------------------------------------------------------------------------------- vision prompts


def _record(store: dict[int, Tensor]):
    def hook(index: int, x: Tensor) -> None:
        store[index] = x.detach().clone()

    return hook


def test_b16_vision_sequence_is_197_plus_4(b16: LoadedClip) -> None:
    tower = PromptedVisionTower(b16.model.visual, PromptSpec(9, 4))
    lengths: list[int] = []
    with torch.no_grad():
        out = tower.forward_features(images(b16.model, 1), before_block=[lambda i, x: lengths.append(x.shape[1])])
    assert lengths == [201] * 12
    assert out.tokens.shape == (1, 201, 768) and out.num_prompts == 4 and out.features.shape == (1, 512)
    assert tower.spec.num_parameters(tower.width) == 27_648 == sum(p.numel() for p in tower.trainable_parameters())


def test_vision_prompts_enter_where_ivlp_puts_them(teacher: LoadedClip) -> None:
    visual = teacher.model.visual
    tower = PromptedVisionTower(visual, PromptSpec(3, 4))
    before: dict[int, Tensor] = {}
    after: dict[int, Tensor] = {}
    with torch.no_grad():
        tower.forward_features(images(teacher.model), before_block=[_record(before)], after_block=[_record(after)])
        prompts = [p.detach() for p in tower.prompts.tokens]
        # layer 0: appended after the patches, no positional embedding, through ln_pre (per token)
        torch.testing.assert_close(before[0][:, -4:], visual.ln_pre(prompts[0]).expand(2, -1, -1))
        # blocks 1, 2: the previous outputs are dropped and the block's own prompts appended
        for block in (1, 2):
            torch.testing.assert_close(before[block][:, -4:], prompts[block].expand(2, -1, -1))
            torch.testing.assert_close(before[block][:, :-4], after[block - 1][:, :-4])
        # blocks >= depth: prompt outputs flow on unchanged
        for block in range(3, tower.num_layers):
            torch.testing.assert_close(before[block], after[block - 1])
    assert all(x.shape[1] == 37 + 4 for x in before.values())


def test_block3_prompts_are_used_at_block3_and_absent_at_depth3(teacher: LoadedClip) -> None:
    visual = teacher.model.visual
    x = images(teacher.model)
    deep = PromptedVisionTower(visual, PromptSpec(4, 4))
    with torch.no_grad():
        base = deep(x)
        deep.prompts.tokens[3].add_(1.0)
        assert not torch.allclose(deep(x), base)
    shallow = PromptedVisionTower(visual, PromptSpec(3, 4))
    assert len(shallow.prompts.tokens) == 3 and shallow.prompts(3, x) is None


def test_prompts_change_features_get_gradients_and_backbone_gets_none(tiny: LoadedClip) -> None:
    model = tiny.model
    x = images(model)
    vision = PromptedVisionTower(model.visual, PromptSpec(3, 4))
    text = PromptedTextTower(model, PromptSpec(3, 4))
    prompts = text.class_prompts(["cat", "dog", "red_fox"])
    with torch.no_grad():
        assert not torch.allclose(vision(x), model.encode_image(x), atol=1e-3)
    loss = vision(x).square().sum() + text(prompts).square().sum()
    loss.backward()
    for tower in (vision, text):
        names = {n for n, p in tower.named_parameters() if p.requires_grad}
        assert names == {"prompts.tokens.0", "prompts.tokens.1", "prompts.tokens.2"}
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in tower.trainable_parameters())
    assert all(p.grad is None for p in model.parameters())


def test_prompt_init_is_fp32_normal_002() -> None:
    prompts = DeepPrompts(9, 4, 768)
    values = torch.cat([p.detach().flatten() for p in prompts.tokens])
    assert all(p.dtype == torch.float32 and p.shape == (4, 768) for p in prompts.tokens)
    assert abs(values.std().item() - 0.02) < 0.001 and abs(values.mean().item()) < 0.001


def test_return_layers_and_grad_checkpointing(teacher: LoadedClip) -> None:
    visual = teacher.model.visual
    tower = PromptedVisionTower(visual, PromptSpec(2, 4))
    x = images(teacher.model)
    out = tower.forward_features(x, return_layers=True)
    assert len(out.layers) == tower.num_layers and out.layers[-1] is out.tokens
    out.features.sum().backward()
    grads = [p.grad.clone() for p in tower.trainable_parameters()]
    tower.zero_grad()
    visual.set_grad_checkpointing(True)
    try:
        again = tower(x)
        again.sum().backward()
    finally:
        visual.set_grad_checkpointing(False)
    torch.testing.assert_close(again, out.features)
    for before, p in zip(grads, tower.trainable_parameters(), strict=True):
        torch.testing.assert_close(p.grad, before)


class InsertAtBlock(nn.Module):
    """A DPT-style source: no prompts until block `start`, then per-image tokens computed from x."""

    def __init__(self, start: int, count: int, width: int) -> None:
        super().__init__()
        self.start, self.count = start, count
        self.proj = nn.Linear(width, width)

    def forward(self, layer: int, x: Tensor) -> Tensor | None:
        if layer < self.start:
            return None
        return self.proj(x[:, :1]).expand(-1, self.count, -1)  # [B, count, W] from the CLS token


def test_external_prompt_source_can_insert_at_a_later_block(teacher: LoadedClip) -> None:
    visual = teacher.model.visual
    source = InsertAtBlock(start=2, count=3, width=192)
    tower = PromptedVisionTower(visual, prompts=source)
    lengths: list[int] = []
    out = tower.forward_features(images(teacher.model), before_block=[lambda i, x: lengths.append(x.shape[1])])
    assert lengths == [37, 37, 40, 40, 40, 40] and out.num_prompts == 3
    out.features.sum().backward()
    assert source.proj.weight.grad is not None
    assert {n for n, p in tower.named_parameters() if p.requires_grad} == {"prompts.proj.weight", "prompts.proj.bias"}


def test_hooks_can_edit_the_sequence(student: LoadedClip) -> None:
    tower = PromptedVisionTower(student.model.visual)
    x = images(student.model)
    with torch.no_grad():
        edited = tower.forward_features(x, after_block=[lambda i, h: h * 0 if i == 3 else None])
        expected = tower.pool(torch.zeros(2, 37, 128), 0)
    torch.testing.assert_close(edited.features, expected)


# ------------------------------------------------------------------------------------------- text prompts


def test_ctx_init_equals_token_embeddings_of_a_photo_of_a(b16: LoadedClip) -> None:
    model, tokenizer = b16.model, b16.tokenizer
    tower = PromptedTextTower(model, PromptSpec(9, 4))
    expected = model.token_embedding(tokenizer(["a photo of a"]))[0, 1:5]
    torch.testing.assert_close(tower.prompts.tokens[0].detach(), expected)
    assert tower.prefix == "a photo of a"
    prompts = tower.class_prompts(["hot_dog"])
    assert prompts.texts == ["a photo of a hot dog."]
    assert tower.spec.num_parameters(tower.width) == 18_432 == sum(p.numel() for p in tower.trainable_parameters())


def test_depth1_with_ctx_init_reproduces_the_hand_written_prompt(tiny: LoadedClip) -> None:
    """At initialisation the layer-0 ctx equals the frozen "a photo of a" embeddings, so nothing changes."""
    model, tokenizer = tiny.model, tiny.tokenizer
    tower = PromptedTextTower(model, PromptSpec(1, 4))
    with torch.no_grad():
        expected = model.encode_text(tokenizer(["a photo of a cat.", "a photo of a red fox."]))
        torch.testing.assert_close(tower(tower.class_prompts(["cat", "red_fox"])), expected, atol=ATOL, rtol=0)


def test_shorter_ctx_keeps_the_full_prefix_and_longer_ctx_is_random(student: LoadedClip) -> None:
    model, tokenizer = student.model, student.tokenizer
    two = PromptedTextTower(model, PromptSpec(1, 2))
    torch.testing.assert_close(
        two.prompts.tokens[0].detach(), model.token_embedding(tokenizer(["a photo of a"]))[0, 1:3]
    )
    assert two.class_prompts(["cat"]).texts == ["a photo of a cat."]
    six = PromptedTextTower(model, PromptSpec(1, 6))
    assert six.prefix == "X X X X X X" and six.class_prompts(["cat"]).texts == ["X X X X X X cat."]
    random_init = PromptedTextTower(model, PromptSpec(1, 4), ctx_init=None)
    assert random_init.prefix == "X X X X"


def test_text_prompts_replace_positions_1_to_n(teacher: LoadedClip) -> None:
    model = teacher.model
    tower = PromptedTextTower(model, PromptSpec(3, 4))
    prompts = tower.class_prompts(["cat", "red fox"])
    before: dict[int, Tensor] = {}
    after: dict[int, Tensor] = {}
    with torch.no_grad():
        tower.forward_features(prompts, before_block=[_record(before)], after_block=[_record(after)])
        tokens = [p.detach() for p in tower.prompts.tokens]
        length = prompts.length
        position = model.positional_embedding[:length]
        torch.testing.assert_close(before[0][:, 1:5], (tokens[0] + position[1:5]).expand(2, -1, -1))
        torch.testing.assert_close(before[0][:, 5:], (prompts.embeddings[:, 5:length] + position[5:]))
        for block in (1, 2):
            torch.testing.assert_close(before[block][:, 1:5], tokens[block].expand(2, -1, -1))
            torch.testing.assert_close(before[block][:, :1], after[block - 1][:, :1])
            torch.testing.assert_close(before[block][:, 5:], after[block - 1][:, 5:])
        torch.testing.assert_close(before[3], after[2])
    assert {x.shape[1] for x in before.values()} == {length} and length == 9  # SOT a photo of a red fox . EOT


def _lengths(store: set[int]):
    return lambda index, x: store.add(x.shape[1])


def test_b16_text_sequences_stay_within_77(b16: LoadedClip) -> None:
    long_name = "a_very_long_class_name " * 30  # gets cut to 77 tokens by the tokenizer
    cases = ((True, ["cat"], 8), (True, ["cat", long_name], 77), (False, ["cat"], 77))
    for truncate, names, expected in cases:
        tower = PromptedTextTower(b16.model, PromptSpec(9, 4), truncate=truncate)
        lengths: set[int] = set()
        with torch.no_grad():
            tower.forward_features(tower.class_prompts(names), before_block=[_lengths(lengths)])
        assert lengths == {expected}  # "SOT a photo of a cat . EOT" is 8 tokens


def test_truncation_is_exact_with_deep_prompts(tiny: LoadedClip) -> None:
    model = tiny.model
    short = PromptedTextTower(model, PromptSpec(3, 4), truncate=True)
    full = PromptedTextTower(model, PromptSpec(3, 4), truncate=False, prompts=short.prompts)
    prompts = short.class_prompts(["cat", "red fox", "striped tabby cat sitting on a mat"])
    with torch.no_grad():
        torch.testing.assert_close(short(prompts), full(prompts), atol=ATOL, rtol=0)


def test_class_prompts_select_and_are_not_saved(student: LoadedClip) -> None:
    tower = PromptedTextTower(student.model, PromptSpec(2, 4))
    prompts = tower.class_prompts(["cat", "red fox", "x y z w v u"])
    subset = prompts.select([2, 0])
    assert isinstance(subset, ClassPrompts) and subset.texts == [prompts.texts[2], prompts.texts[0]]
    with torch.no_grad():
        torch.testing.assert_close(tower(subset), tower(prompts)[[2, 0]], atol=ATOL, rtol=0)
    holder = nn.Module()
    holder.prompts = prompts
    assert holder.state_dict() == {}


def test_class_specific_context_per_class(student: LoadedClip) -> None:
    """A source may return [C, n, W] (CoOp's class-specific context) instead of shared [n, W]."""
    tower = PromptedTextTower(student.model, PromptSpec(0, 4), ctx_init=None, prompts=_PerClass(3, 4, 96))
    prompts = tower.class_prompts(["a", "b", "c"])
    assert prompts.texts[0] == "X X X X a." and tower(prompts).shape == (3, 96)
    # with ctx_init the prefix is the init words, and their embeddings are offered to the source
    worded = PromptedTextTower(student.model, PromptSpec(0, 4), prompts=_PerClass(3, 4, 96))
    assert worded.prefix == "a photo of a" and worded.ctx_init_vectors is not None
    assert worded.ctx_init_vectors.shape == (4, 96)


class _PerClass(nn.Module):
    def __init__(self, classes: int, length: int, width: int) -> None:
        super().__init__()
        self.ctx = nn.Parameter(torch.randn(classes, length, width) * 0.02)

    def forward(self, layer: int, x: Tensor) -> Tensor | None:
        return self.ctx if layer == 0 else None


# ------------------------------------------------------------------------------------------------ dtypes


def test_cpu_autocast_bf16_runs_and_stays_close(student: LoadedClip) -> None:
    model = student.model
    vision = PromptedVisionTower(model.visual, PromptSpec(2, 4))
    text = PromptedTextTower(model, PromptSpec(2, 4))
    x = images(model)
    prompts = text.class_prompts(["cat", "dog"])
    with torch.no_grad():
        reference = (vision(x), text(prompts))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = (vision(x), text(prompts))
    for ref, got in zip(reference, low, strict=True):
        assert torch.isfinite(got).all()
        assert torch.nn.functional.cosine_similarity(ref, got.float()).min() > 0.98


def test_low_precision_weights_match_open_clip() -> None:
    """open_clip's precision='bf16' casts the weights (LayerNorm stays fp32); the towers follow its dtypes."""
    register_model_config("sempt-test-tiny", _TINY)
    model = open_clip.create_model("sempt-test-tiny", precision="bf16").eval()
    tokenizer = open_clip.get_tokenizer("sempt-test-tiny")
    x = torch.randn(2, 3, 32, 32, dtype=torch.bfloat16)
    ids = tokenizer(TEXTS[:2])
    with torch.no_grad():
        torch.testing.assert_close(PromptedVisionTower(model.visual)(x), model.encode_image(x))
        torch.testing.assert_close(PromptedTextTower(model, ctx_init=None, truncate=False)(ids), model.encode_text(ids))
        deep = PromptedTextTower(model, PromptSpec(2, 4))
        assert deep(deep.class_prompts(["cat"])).dtype == torch.bfloat16


_TINY = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
