"""CoCoOp against a minimal re-statement of the official forward (`trainers/cocoop.py` of KaiyangZhou/CoOp) on the
same random weights: logits, loss, trainable part, context initialisation, chunked evaluation, presets, and SemPT
on top."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sempt_cli.errors import SemptError
from sempt_cli.methods.cocoop import CoCoOp
from sempt_cli.methods.sempt import AttributeBank, SemPT
from sempt_cli.models import DEMO_STUDENT, LoadedClip
from sempt_cli.protocol import Batch, Method
from sempt_cli.settings import SemptHyperParameters, Settings, load_settings

CLASSES = ["cat", "golden_retriever", "bird", "sea turtle", "fire truck"]


def settings(**values: object) -> Settings:
    return load_settings({"data.dataset": "oxford_pets", **values}, env={}).settings


def cocoop(clip: LoadedClip, classes: Sequence[str] = CLASSES, **values: object) -> CoCoOp:
    method = CoCoOp(clip, classes, settings(**values))
    with torch.no_grad():  # move the context off its initialisation so a wrong position would show
        method.ctx.add_(0.05 * torch.randn_like(method.ctx))
    return method


def official_logits(clip: LoadedClip, ctx: Tensor, meta_net: nn.Module, prompt_prefix: str,
                    classnames: Sequence[str], images: Tensor) -> Tensor:
    """`CustomCLIP.forward` of the official code (eval mode), written from it: full 77-token prompts
    [SOS, ctx + π(x̂), suffix], the whole text transformer per image over all classes, EOT pooling, cosine × scale."""
    model = clip.model
    n_ctx = ctx.shape[0]
    names = [name.replace("_", " ") for name in classnames]
    tokenized = clip.tokenizer([prompt_prefix + " " + name + "." for name in names])
    embedding = model.token_embedding(tokenized)
    token_prefix, token_suffix = embedding[:, :1, :], embedding[:, 1 + n_ctx :, :]
    image_features = model.visual(images)
    image_features = image_features / image_features.norm(dim=-1, keepdim=True)
    bias = meta_net(image_features).unsqueeze(1)
    ctx_shifted = ctx.unsqueeze(0) + bias
    logits = []
    for ctx_i, imf_i in zip(ctx_shifted, image_features, strict=True):
        prompts = torch.cat([token_prefix, ctx_i.unsqueeze(0).expand(len(names), -1, -1), token_suffix], dim=1)
        x = prompts + model.positional_embedding
        x = model.transformer(x, attn_mask=model.attn_mask)  # open_clip 3 is batch-first (NLD)
        x = model.ln_final(x)
        text = x[torch.arange(x.shape[0]), tokenized.argmax(dim=-1)] @ model.text_projection
        text = text / text.norm(dim=-1, keepdim=True)
        logits.append(model.logit_scale.exp() * imf_i @ text.t())
    return torch.stack(logits)


def trainable(method: Method) -> dict[str, int]:
    return {name: p.numel() for name, p in method.named_parameters() if p.requires_grad}


# ------------------------------------------------------------------------------------------------ structure


def test_trainable_part_is_the_context_and_the_meta_net_with_the_official_count(b16: LoadedClip) -> None:
    method = CoCoOp(b16, CLASSES, settings())
    # official ViT-B/16, ctxv1: ctx 4×512, linear1 512→32, linear2 32→512
    assert trainable(method) == {"ctx": 4 * 512, "meta_net.linear1.weight": 32 * 512, "meta_net.linear1.bias": 32,
                                 "meta_net.linear2.weight": 512 * 32, "meta_net.linear2.bias": 512}
    assert sum(trainable(method).values()) == 35_360
    assert set(method.trainable_state()) == set(trainable(method))
    random = CoCoOp(b16, CLASSES, settings(**{"prompts.ctx_init": "", "prompts.text_length": 16}))
    assert sum(trainable(random).values()) == 16 * 512 + 33_312  # c16: 16 context vectors, same meta-net


def test_context_follows_the_official_ctx_init_rule(demo_student: LoadedClip) -> None:
    method = CoCoOp(demo_student, CLASSES, settings(**{"prompts.text_length": 16}))
    assert method.n_ctx == 4 and method.prefix == "a photo of a"  # words of ctx_init, N_CTX ignored
    ids = demo_student.tokenizer(["a photo of a"])
    with torch.no_grad():
        torch.testing.assert_close(method.ctx, demo_student.model.token_embedding(ids[0, 1:5]))
    assert method.prompts.train.texts == ["a photo of a cat.", "a photo of a golden retriever.",
                                          "a photo of a bird.", "a photo of a sea turtle.", "a photo of a fire truck."]
    random = CoCoOp(demo_student, CLASSES, settings(**{"prompts.ctx_init": "", "prompts.text_length": 8}))
    assert random.n_ctx == 8 and random.prefix == " ".join(["X"] * 8)
    assert 0.01 < float(random.ctx.detach().std()) < 0.03  # N(0, 0.02²)


# ------------------------------------------------------------------------------------------------ official forward


@pytest.mark.parametrize("backbone", ["demo_student", "b16"])
def test_logits_and_loss_equal_the_official_forward(backbone: str, request: pytest.FixtureRequest) -> None:
    clip: LoadedClip = request.getfixturevalue(backbone)
    method = cocoop(clip)
    size = int(clip.model.visual.image_size[0])
    images, labels = torch.randn(2, 3, size, size), torch.tensor([3, 1])
    method.eval()
    with torch.no_grad():
        expected = official_logits(clip, method.ctx, method.meta_net, method.prefix, CLASSES, images)
        step = method.training_forward(Batch(images, labels, torch.arange(2)))
        got = method.logits(step.image_embeddings, step.class_embeddings)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(step.head_loss(got).total, F.cross_entropy(expected, labels), rtol=1e-5, atol=1e-5)
        classified = method.classifier(CLASSES)(method.image_embeddings(images))
        torch.testing.assert_close(classified, expected, rtol=1e-5, atol=1e-4)
    assert expected.std(dim=0).abs().sum() > 0  # the two images see different class embeddings


def test_gradients_reach_the_context_and_the_meta_net_only(demo_student: LoadedClip) -> None:
    method = cocoop(demo_student)
    batch = Batch(torch.randn(3, 3, 48, 48), torch.tensor([0, 4, 2]), torch.arange(3))
    method.training_loss(batch).total.backward()
    with_grad = {name for name, p in method.named_parameters() if p.grad is not None}
    assert with_grad == set(trainable(method))
    assert all(bool(p.grad.abs().sum() > 0) for p in method.parameters() if p.grad is not None)
    assert all(p.grad is None for p in method.backbone.parameters())


def test_class_embeddings_without_an_image_are_refused(demo_student: LoadedClip) -> None:
    with pytest.raises(SemptError, match="depend on the image"):
        CoCoOp(demo_student, CLASSES, settings()).class_embeddings(CLASSES)


# ------------------------------------------------------------------------------------------------ evaluation


@pytest.mark.parametrize("budget", [1, 3, 7])
def test_chunked_evaluation_equals_the_unchunked_one(demo_student: LoadedClip, budget: int) -> None:
    method = cocoop(demo_student)
    method.eval()
    with torch.no_grad():
        image = method.image_embeddings(torch.randn(4, 3, 48, 48))
        whole = method.classifier(CLASSES)(image)
        embeddings = method.class_embeddings_for(image, CLASSES)
        method.sequence_budget = budget  # 1: one sequence per forward; 3: class chunks; 7: 1 image × 5 classes
        torch.testing.assert_close(method.classifier(CLASSES)(image), whole, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(method.class_embeddings_for(image, CLASSES), embeddings, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(whole, method.logits(image, embeddings))


def test_sequences_per_text_forward_stay_within_the_budget(demo_student: LoadedClip) -> None:
    classes = [f"class {i}" for i in range(40)]
    method = cocoop(demo_student, classes)
    method.sequence_budget = 16
    sizes: list[int] = []
    first_block = method.text.transformer.resblocks[0]
    hook = first_block.register_forward_pre_hook(lambda _module, args: sizes.append(args[0].shape[0]))
    with torch.no_grad():
        method.classifier(classes)(method.image_embeddings(torch.randn(3, 3, 48, 48)))
    hook.remove()
    assert max(sizes) <= 16 and sum(sizes) == 3 * 40


# ------------------------------------------------------------------------------------------------ presets


def test_presets_are_the_official_ctxv1_config_in_every_setting() -> None:
    official = {"train.lr": 0.002, "train.epochs": 10, "data.batch_size": 1, "train.warmup_epochs": 1,
                "train.warmup_lr": 1e-5, "prompts.ctx_init": "a photo of a", "data.shots": 16}
    for setting, dataset, subsample in [("base2novel", "oxford_pets", "base"), ("cross-dataset", "imagenet", "all"),
                                        ("cross-domain", "imagenet", "all"), ("few-shot", "dtd", "all")]:
        resolved = CoCoOp.presets(settings(**{"data.setting": setting, "data.dataset": dataset}),
                                  "ViT-B-16-quickgelu")
        assert {k: resolved[k] for k in official} == official, setting
        assert resolved["data.subsample"] == subsample, setting
    demo = CoCoOp.presets(settings(**{"data.dataset": "demo"}), DEMO_STUDENT)
    assert demo["model.backbone"] == DEMO_STUDENT and demo["data.batch_size"] == 16


# ------------------------------------------------------------------------------------------------ SemPT on top


def sempt_on(method: CoCoOp, seen: Sequence[str]) -> SemPT:
    dim = method.class_embedding_dim()
    bank = AttributeBank(list(CLASSES), F.normalize(torch.randn(len(CLASSES), 4, dim), dim=-1))
    hyper = SemptHyperParameters(top_k=2, tau_sa=0.05, alpha=0.5, beta=0.5)
    return SemPT(method, hyper, bank, seen)


def test_sempt_on_cocoop_trains_its_context_meta_net_and_fusion(demo_student: LoadedClip) -> None:
    method = cocoop(demo_student, CLASSES[:3])
    wrapped = sempt_on(method, CLASSES[:3])
    batch = Batch(torch.randn(2, 3, 48, 48), torch.tensor([0, 2]), torch.arange(2))
    loss = wrapped.training_loss(batch)
    assert torch.isfinite(loss.total) and set(loss.parts) == {"ce_lbl", "ce_enh"}
    loss.total.backward()
    for name, parameter in [("ctx", method.ctx), ("meta_net", method.meta_net.linear1.weight),
                            ("fusion", wrapped.fusion.fc1.weight)]:
        assert parameter.grad is not None and bool(parameter.grad.abs().sum() > 0), name


def test_sempt_hybrid_scores_seen_classes_by_cocoops_own_rule(demo_student: LoadedClip) -> None:
    method = cocoop(demo_student, CLASSES[:3])
    wrapped = sempt_on(method, CLASSES[:3])
    wrapped.eval()
    with torch.no_grad():
        image = wrapped.image_embeddings(torch.randn(3, 3, 48, 48))
        got = wrapped.classifier(CLASSES)(image)
        own = method.classifier(CLASSES)(image)
        labels = method.class_embeddings_for(image, CLASSES)
        enhanced = wrapped.enhanced_logits(image, labels[:, 3:], wrapped.attributes.vectors[3:])
    torch.testing.assert_close(got[:, :3], own[:, :3])
    torch.testing.assert_close(got[:, 3:], enhanced)
    assert not torch.allclose(got[:, 3:], own[:, 3:])
