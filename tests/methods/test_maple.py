"""MaPLe against the official code: a minimal re-statement of its forward (`trainers/maple.py`: the prompt learner,
`TextEncoder`, `CustomCLIP`; `clip/model.py`: `VisionTransformer_MaPLe`, `ResidualAttentionBlock_MaPLe`), run on
the same open_clip weights, gives the same logits, loss and gradients; plus the trainable part, the coupling,
the initialisation, the presets and SemPT on top."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sempt_cli.errors import SettingsError
from sempt_cli.methods.maple import MaPLe, PromptFeed
from sempt_cli.methods.sempt import AttributeBank, SemPT
from sempt_cli.models import DEMO_STUDENT, LoadedClip, load_clip
from sempt_cli.protocol import Batch
from sempt_cli.settings import Settings, load_settings
from tests.blocks import block_inputs

CLASSES = ["cat", "dog", "sea_lion"]


def settings(depth: int = 9, length: int = 2, values: Mapping[str, object] | None = None) -> Settings:
    geometry = {"prompts.vision_depth": depth, "prompts.text_depth": depth, "prompts.vision_length": length,
                "prompts.text_length": length}
    return load_settings({"data.dataset": "oxford_pets", **geometry, **(values or {})}, env={}).settings


@pytest.fixture(scope="module")
def demo_teacher() -> LoadedClip:
    """6 vision / 4 text blocks: room for prompts that stop before the last block in both towers."""
    torch.manual_seed(4)
    return load_clip("sempt-demo-teacher", None)


def official_state(method: MaPLe) -> dict[str, Tensor]:
    """The prompt learner's tensors under the official `MultiModalPromptLearner` names, as independent leaves."""
    return {name: p.detach().clone().requires_grad_(True) for name, p in method.prompt_learner.named_parameters()}


def official_forward(clip: LoadedClip, state: dict[str, Tensor], classnames: Sequence[str], images: Tensor,
                     labels: Tensor, ctx_init: str = "a photo of a") -> tuple[Tensor, Tensor]:
    """(logits, loss) of the official `CustomCLIP.forward`, re-stated from its code on open_clip's modules.

    Sequence-first (LND) as the official transformer runs; open_clip's batch-first blocks are called in between.
    The official fp16 casts (`.half()`) are left out: both sides run in fp32 here."""
    model = clip.model
    n_ctx = state["ctx"].shape[0]
    depth = 1 + sum(1 for key in state if key.startswith("compound_prompts_text."))
    deeper_text = [state[f"compound_prompts_text.{i}"] for i in range(depth - 1)]

    def linear(prefix: str, x: Tensor) -> Tensor:
        return F.linear(x, state[f"{prefix}.weight"], state[f"{prefix}.bias"])

    # MultiModalPromptLearner.forward
    names = [name.replace("_", " ") for name in classnames]
    tokenized = clip.tokenizer([f"{ctx_init} {name}." for name in names])
    with torch.no_grad():
        embedding = model.token_embedding(tokenized)
    prefix, suffix = embedding[:, :1, :], embedding[:, 1 + n_ctx :, :]
    ctx = state["ctx"].unsqueeze(0).expand(len(names), -1, -1)
    prompts = torch.cat([prefix, ctx, suffix], dim=1)
    shared_ctx = linear("proj", state["ctx"])
    deeper_vision = [linear(f"compound_prompt_projections.{i}", deeper_text[i]) for i in range(depth - 1)]

    def run(block: nn.Module, x: Tensor, mask: Tensor | None) -> Tensor:
        return block(x.permute(1, 0, 2), attn_mask=mask).permute(1, 0, 2)

    # TextEncoder.forward with ResidualAttentionBlock_MaPLe(text_layer=True)
    x = (prompts + model.positional_embedding).permute(1, 0, 2)
    counter = 0
    for i, block in enumerate(model.transformer.resblocks):
        if i != 0 and len(deeper_text) > 0 and not counter > len(deeper_text) - 1:
            context = deeper_text[counter].expand(x.shape[1], -1, -1).permute(1, 0, 2)
            x = torch.cat([x[:1], context, x[1 + n_ctx :]], dim=0)
            counter += 1
        x = run(block, x, model.attn_mask)
    x = model.ln_final(x.permute(1, 0, 2))
    text_features = x[torch.arange(x.shape[0]), tokenized.argmax(dim=-1)] @ model.text_projection

    # VisionTransformer_MaPLe.forward with ResidualAttentionBlock_MaPLe(text_layer=False)
    visual = model.visual
    v = visual.conv1(images)
    v = v.reshape(v.shape[0], v.shape[1], -1).permute(0, 2, 1)
    cls = visual.class_embedding + torch.zeros(v.shape[0], 1, v.shape[-1])
    v = torch.cat([cls, v], dim=1) + visual.positional_embedding
    v = torch.cat([v, shared_ctx.expand(v.shape[0], -1, -1)], dim=1)
    v = visual.ln_pre(v).permute(1, 0, 2)
    counter = 0
    for i, block in enumerate(visual.transformer.resblocks):
        if i != 0 and len(deeper_vision) > 0 and not counter > len(deeper_vision) - 1:
            context = deeper_vision[counter].expand(v.shape[1], -1, -1).permute(1, 0, 2)
            v = torch.cat([v[: v.shape[0] - n_ctx], context], dim=0)
            counter += 1
        v = run(block, v, None)
    v = v.permute(1, 0, 2)
    image_features = visual.ln_post(v[:, 0, :]) @ visual.proj

    # CustomCLIP.forward
    image_features = image_features / image_features.norm(dim=-1, keepdim=True)
    text_features = text_features / text_features.norm(dim=-1, keepdim=True)
    logits = model.logit_scale.exp() * image_features @ text_features.t()
    return logits, F.cross_entropy(logits, labels)


def vision_prompts(method: MaPLe, layer: int) -> Tensor:
    tokens = method.prompt_learner.vision(layer)
    assert tokens is not None
    return tokens.detach()


def trainable_count(method: MaPLe) -> int:
    return sum(p.numel() for p in method.parameters() if p.requires_grad)


def test_logits_loss_and_gradients_equal_the_official_forward(demo_teacher: LoadedClip) -> None:
    method = MaPLe(demo_teacher, CLASSES, settings(depth=3))  # text prompts stop before the last of 4 blocks
    with torch.no_grad():  # away from the initial state: every prompt and projection different
        for p in method.prompt_learner.parameters():
            p.add_(0.05 * torch.randn_like(p))
    state = official_state(method)
    images, labels = torch.randn(3, 3, 48, 48), torch.tensor([2, 0, 1])

    step = method.training_forward(Batch(images, labels, torch.arange(3)))
    logits = method.logits(step.image_embeddings, step.class_embeddings)
    loss = step.head_loss(logits).total
    loss.backward()
    expected_logits, expected_loss = official_forward(demo_teacher, state, CLASSES, images, labels)
    expected_loss.backward()

    torch.testing.assert_close(logits, expected_logits, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(loss, expected_loss, atol=1e-6, rtol=1e-5)
    for name, p in method.prompt_learner.named_parameters():
        assert p.grad is not None and state[name].grad is not None, name
        torch.testing.assert_close(p.grad, state[name].grad, atol=1e-6, rtol=1e-4, msg=name)
    assert all(p.grad is None for p in method.backbone.parameters())


def test_vit_b16_official_geometry_parameter_count_and_logits(b16: LoadedClip) -> None:
    method = MaPLe(b16, CLASSES, settings())
    # ctx 2×512, proj 512→768, 8 deep text prompts 2×512 and 8 projections 512→768 (the paper's 3.55 M)
    per_layer = 2 * 512 + 512 * 768 + 768
    assert trainable_count(method) == 9 * per_layer == 3_555_072
    with torch.no_grad():
        for p in method.prompt_learner.parameters():
            p.add_(0.05 * torch.randn_like(p))
    images = torch.randn(1, 3, 224, 224)
    seen = block_inputs(b16.model.visual.transformer.resblocks, lambda: method.image_embeddings(images))
    assert [x.shape[1] for x in seen] == [199] * 12  # CLS + 196 patches + 2 prompts, in every block
    for block in range(1, 9):  # blocks 1..8: the trailing 2 tokens are this layer's projected text prompts
        torch.testing.assert_close(seen[block][0, -2:], vision_prompts(method, block))
    assert not torch.allclose(seen[9][0, -2:], vision_prompts(method, 8))  # from block 9 on they flow on
    with torch.no_grad():
        logits = method.logits(method.image_embeddings(images), method.class_embeddings(CLASSES))
        expected, _ = official_forward(b16, official_state(method), CLASSES, images, torch.tensor([0]))
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-5)


def test_initialisation_follows_the_official_prompt_learner(demo_teacher: LoadedClip) -> None:
    method = MaPLe(demo_teacher, CLASSES, settings(depth=3))
    learner = method.prompt_learner
    ids = demo_teacher.tokenizer(["a photo of a"])[0]
    with torch.no_grad():
        torch.testing.assert_close(learner.ctx, demo_teacher.model.token_embedding(ids[1:3]))  # "a photo"
    assert method.prompts.train.texts == ["a photo of a cat.", "a photo of a dog.", "a photo of a sea lion."]
    first, *others = [module.state_dict() for module in learner.compound_prompt_projections]
    assert others and all(torch.equal(first[key], other[key]) for other in others for key in ("weight", "bias"))
    deep = torch.cat([p.detach().flatten() for p in learner.compound_prompts_text])
    assert 0.01 < float(deep.std()) < 0.03  # N(0, 0.02²)
    without = settings(depth=3)
    without = without.model_copy(update={"prompts": without.prompts.model_copy(update={"ctx_init": None})})
    random = MaPLe(demo_teacher, CLASSES, without)
    assert random.prompts.train.texts is not None and random.prompts.train.texts[0] == "X X cat."


def test_vision_prompts_follow_the_text_prompts(demo_teacher: LoadedClip) -> None:
    method = MaPLe(demo_teacher, CLASSES, settings(depth=3))
    images = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        before = method.image_embeddings(images)
        method.prompt_learner.compound_prompts_text[1].add_(0.5)  # a text prompt of block 2
        after = method.image_embeddings(images)
        assert not torch.allclose(before, after)
        method.prompt_learner.ctx.add_(0.5)  # the input-level text context moves the input-level vision prompts
        assert not torch.allclose(after, method.image_embeddings(images))
    labels = torch.tensor([0, 1])
    method.training_loss(Batch(images, labels, torch.arange(2))).total.backward()
    learner = method.prompt_learner
    for module in (learner.proj, *learner.compound_prompt_projections):
        assert module.weight.grad is not None and module.weight.grad.abs().sum() > 0


def test_coupled_geometry_is_enforced() -> None:
    clip = load_clip(DEMO_STUDENT, None)
    with pytest.raises(SettingsError, match="depths must be equal"):
        MaPLe(clip, CLASSES, settings(depth=3, values={"prompts.vision_depth": 2}))
    with pytest.raises(SettingsError, match="lengths must be equal"):
        MaPLe(clip, CLASSES, settings(depth=3, values={"prompts.vision_length": 4}))


def test_presets_follow_the_official_configs() -> None:
    b2n = MaPLe.presets(settings(), "ViT-B-16-quickgelu")
    assert (b2n["train.optimizer"], b2n["train.lr"], b2n["train.epochs"], b2n["data.batch_size"]) == \
        ("sgd", 0.0035, 5, 4)
    assert (b2n["prompts.text_depth"], b2n["prompts.vision_depth"], b2n["prompts.text_length"]) == (9, 9, 2)
    assert (b2n["train.warmup_epochs"], b2n["train.warmup_lr"], b2n["data.subsample"]) == (1, 1e-5, "base")
    for setting in ("cross-dataset", "cross-domain"):
        imagenet = settings(values={"data.dataset": "imagenet", "data.setting": setting})
        cross = MaPLe.presets(imagenet, "ViT-B-16-quickgelu")
        assert (cross["train.lr"], cross["train.epochs"], cross["prompts.text_depth"], cross["prompts.vision_depth"],
                cross["data.subsample"], cross["data.batch_size"]) == (0.0026, 2, 3, 3, "all", 4)
    few = MaPLe.presets(settings(values={"data.setting": "few-shot"}), "ViT-B-16-quickgelu")
    assert (few["train.epochs"], few["data.subsample"]) == (5, "all")
    demo = MaPLe.presets(settings(values={"data.dataset": "demo"}), "sempt-demo-teacher")
    assert (demo["model.backbone"], demo["prompts.text_depth"], demo["prompts.vision_depth"]) == (DEMO_STUDENT, 3, 3)


def test_sempt_on_maple_trains_the_prompts_and_the_fusion(demo_student: LoadedClip) -> None:
    method = MaPLe(demo_student, CLASSES, settings(depth=3))
    novel = ["fish", "horse"]
    vectors = F.normalize(torch.randn(5, 6, int(demo_student.model.visual.output_dim)), dim=-1)
    wrapped = SemPT(method, settings().sempt, AttributeBank(CLASSES + novel, vectors), CLASSES)
    batch = Batch(torch.randn(4, 3, 48, 48), torch.tensor([0, 1, 2, 0]), torch.arange(4))
    loss = wrapped.training_loss(batch)
    loss.total.backward()
    assert {"ce_lbl", "ce_enh"} <= set(loss.parts)
    assert wrapped.fusion.fc1.weight.grad is not None
    assert method.prompt_learner.compound_prompt_projections[0].weight.grad is not None
    wrapped.eval()
    with torch.no_grad():
        images = wrapped.image_embeddings(torch.randn(2, 3, 48, 48))
        torch.testing.assert_close(wrapped.classifier(CLASSES)(images), method.classifier(CLASSES)(images))


def test_a_deep_copy_reads_its_own_prompt_learner(demo_student: LoadedClip) -> None:
    """The towers read MaPLe's prompts through a bound method of the prompt learner, so a copy of the method (the
    compiled step's, a DDP replica's) must read its own (compiled = eager: tests/methods/test_compiled_step.py)."""
    copied = copy.deepcopy(MaPLe(copy.deepcopy(demo_student), CLASSES, settings(depth=3)))
    feed = copied.text.prompts
    assert isinstance(feed, PromptFeed)
    assert getattr(feed.read, "__self__", None) is copied.prompt_learner
