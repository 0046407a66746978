"""DPT (VPT / VLP / DPT variants) on a tiny random open_clip ViT: CAVPT's placement and attention, the K-way
auxiliary loss, the general-knowledge warm-up, presets, the official per-part learning rates, and SemPT on top."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

import sempt_cli.methods.dpt  # noqa: F401  (registers the method)
from sempt_cli.engine.trainer import build_optimizer
from sempt_cli.errors import SemptError
from sempt_cli.methods.dpt import DPT, ClassAwarePrompts, DualVisionPrompts, class_aware_loss
from sempt_cli.methods.sempt import AttributeBank, SemPT
from sempt_cli.models import DEMO_STUDENT, DEMO_TEACHER, LoadedClip
from sempt_cli.models.prompted import DeepPrompts
from sempt_cli.pipeline.runs import resolve_with_preset
from sempt_cli.protocol import Batch, get_method
from sempt_cli.settings import SemptHyperParameters, Settings, load_settings

CLASSES = [f"class{i}" for i in range(6)]
BLOCKS, TOKENS, EMBED = 4, 37, 96  # the demo student: 4 vision blocks, CLS + 6x6 patches, 96-d embeddings
DEEP = 3  # visual prompt length used below


@pytest.fixture(scope="module")
def clip(demo_student: LoadedClip) -> LoadedClip:
    return demo_student


def build(clip: LoadedClip, variant: str = "dpt", classes: list[str] = CLASSES, **overrides: object) -> DPT:
    values = {"model.backbone": DEMO_STUDENT, "dpt.variant": variant, "prompts.vision_depth": BLOCKS,
              "prompts.vision_length": DEEP, "prompts.text_depth": 0 if variant == "vpt" else 1,
              "prompts.text_length": 4, **overrides}
    settings = load_settings(values, env={}).settings
    torch.manual_seed(11)
    return DPT(copy.deepcopy(clip), classes, settings)


def images(n: int = 2, seed: int = 5) -> torch.Tensor:
    return torch.rand(n, 3, 48, 48, generator=torch.Generator().manual_seed(seed))


def batch(epoch: int, labels: tuple[int, ...] = (0, 1, 2, 3)) -> Batch:
    n = len(labels)
    return Batch(images(n), torch.tensor(labels), torch.arange(n), epoch=epoch)


def trainable(method: torch.nn.Module) -> set[str]:
    return {name for name, p in method.named_parameters() if p.requires_grad}


def test_registered_under_dpt() -> None:
    assert get_method("dpt") is DPT


# ------------------------------------------------------------------------------------------------ CAVPT


@pytest.mark.parametrize(("layers", "length"), [(1, 10), (1, 4), (2, 4)])
def test_cavpt_inserts_k_n_tokens_at_the_configured_blocks(clip: LoadedClip, layers: int, length: int) -> None:
    method = build(clip, **{"dpt.cavpt_layers": layers, "dpt.cavpt_length": length})
    k = min(length, len(CLASSES))  # K_N is capped at the number of candidate classes
    source = method.prompt_source
    assert source.layers == list(range(BLOCKS - layers, BLOCKS))
    x = images()
    top = method.top_classes(method.zero_shot_image(x), method.frozen_text)
    assert top.shape == (2, k) and all(len(set(row.tolist())) == k for row in top)
    lengths: list[int] = []
    seen: dict[int, torch.Tensor] = {}

    def before(index: int, h: torch.Tensor) -> None:
        lengths.append(h.shape[1])
        seen[index] = h

    def after(index: int, h: torch.Tensor) -> None:
        seen[-index - 1] = h  # block outputs under negative keys

    with torch.no_grad():
        raw = method.text(method.prompts.train)
        with source.conditioned(raw[top]):
            out = method.vision.forward_features(x, before_block=[before], after_block=[after])
        first = BLOCKS - layers
        assert lengths == [TOKENS + DEEP] * first + [TOKENS + k] * layers
        assert out.num_prompts == k
        # the tokens entering the first CAVPT block are CAVPT's output on the previous block's image tokens
        expected, _ = source.cavpt[str(first)](raw[top], seen[-first][:, :TOKENS])
        torch.testing.assert_close(seen[first][:, TOKENS:], expected)
        torch.testing.assert_close(seen[first][:, :TOKENS], seen[-first][:, :TOKENS])


def test_cavpt_attends_over_class_patch_and_its_prompt_tokens() -> None:
    module = ClassAwarePrompts(embed_dim=8, width=16, num_prompts=3, attn_dim=4, num_classes=5)
    text, tokens = torch.randn(2, 4, 8), torch.randn(2, 7, 16)  # 4 classes; CLS + 6 patches
    with torch.no_grad():
        queries = module.query(text)
        weights = module.attention(queries, module.keys(tokens))
        assert weights.shape == (2, 4, 7 + 3)  # keys/values: CLS + patches + the block's visual prompts
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4))
        base, logits = module(text, tokens, classify=True)
        assert base.shape == (2, 4, 16) and logits is not None and logits.shape == (2, 4, 5)
        for position in (0, 5):  # the class token, a patch
            changed = tokens.clone()
            changed[:, position] += 1.0
            assert not torch.allclose(module(text, changed)[0], base)
        module.prompts[1] += 1.0
        assert not torch.allclose(module(text, tokens)[0], base)
        # Eq. 7: LN(o + q), with o the attention output
        module.prompts[1] -= 1.0
        attended = module.w_v(module.attention(queries, module.keys(tokens)) @ module.keys(tokens))
        torch.testing.assert_close(base, module.norm(attended + queries))


def test_previous_prompt_outputs_are_not_keys_but_image_tokens_are() -> None:
    """At a CAVPT block the trailing deep-prompt outputs of the block below leave the sequence (Eq. 10) and are not
    among the keys; the class and patch tokens are."""
    cavpt = ClassAwarePrompts(embed_dim=8, width=16, num_prompts=2, attn_dim=4, num_classes=5)
    source = DualVisionPrompts(DeepPrompts(1, 3, 16), {1: cavpt})
    text = torch.randn(2, 4, 8)
    x = torch.randn(2, 7 + 3, 16)  # 7 image tokens, 3 prompt outputs of block 0

    def run(x: torch.Tensor) -> torch.Tensor:
        """One pass as the tower asks: layer 0 (input level), then block 1 (which the prompts precede)."""
        assert source(0, x[:, :7]).shape == (3, 16)  # layer 0: the deep prompts
        out = source(1, x)
        assert out is not None and out.shape == (2, 4, 16)
        return out

    with torch.no_grad(), source.conditioned(text):
        base = run(x)
        prompts_changed = x.clone()
        prompts_changed[:, 7:] += 5.0
        torch.testing.assert_close(run(prompts_changed), base)
        patch_changed = x.clone()
        patch_changed[:, 3] += 5.0
        assert not torch.allclose(run(patch_changed), base)
    with pytest.raises(SemptError, match="candidate classes"):
        source(1, x)  # outside `conditioned`: no text features


@pytest.mark.parametrize("detach", [True, False])
def test_keys_are_detached_from_the_visual_tokens_as_configured(detach: bool) -> None:
    module = ClassAwarePrompts(8, 16, 2, 4, 5, detach=detach)
    tokens = torch.randn(2, 7, 16, requires_grad=True)
    module(torch.randn(2, 3, 8), tokens)[0].sum().backward()
    assert (tokens.grad is None) == detach
    assert module.prompts.grad is not None


def test_vision_without_candidates_is_refused(clip: LoadedClip) -> None:
    method = build(clip)
    with pytest.raises(SemptError, match="image_embeddings_among"):
        method.vision(images())


def test_more_cavpt_blocks_than_the_backbone_has_is_refused(clip: LoadedClip) -> None:
    with pytest.raises(SemptError, match="cavpt_layers"):
        build(clip, **{"dpt.cavpt_layers": BLOCKS + 1})


# ------------------------------------------------------------------------------------------------ Eq. 8


def test_aux_loss_classifies_only_the_query_of_the_ground_truth_class() -> None:
    logits = torch.randn(3, 4, 7, requires_grad=True)  # B=3 images, K_N=4 queries, K=7 classes
    top = torch.tensor([[2, 0, 5, 1], [3, 4, 6, 0], [1, 2, 3, 4]])
    labels = torch.tensor([5, 0, 6])  # GT at query 2 and 3; image 2's GT is not among its top-K_N
    loss = class_aware_loss([logits], top, labels)
    expected = F.cross_entropy(torch.stack([logits[0, 2], logits[1, 3]]), torch.tensor([5, 0]))
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert logits.grad is not None
    touched = logits.grad.abs().sum(-1) > 0
    assert touched.tolist() == [[False, False, True, False], [False, False, False, True], [False] * 4]
    with torch.no_grad():
        others = logits.clone()
        others[0, [0, 1, 3]] = torch.randn(3, 7) * 10
        others[1, :3] = torch.randn(3, 7) * 10
        others[2] = torch.randn(4, 7) * 10
        torch.testing.assert_close(class_aware_loss([others], top, labels), loss.detach())
        gt_changed = logits.clone()
        gt_changed[0, 2, 5] -= 3.0
        assert class_aware_loss([gt_changed], top, labels) > loss


def test_aux_loss_averages_over_blocks_and_is_zero_without_a_hit() -> None:
    first, second = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    top, labels = torch.tensor([[0, 1, 2], [4, 3, 2]]), torch.tensor([1, 0])
    rows = torch.stack([first[0, 1], second[0, 1]])
    torch.testing.assert_close(class_aware_loss([first, second], top, labels),
                               F.cross_entropy(rows, torch.tensor([1, 1])))
    assert class_aware_loss([first], top, torch.tensor([3, 0])).item() == 0.0
    assert class_aware_loss([], top, labels).item() == 0.0


def test_table_vi_parameter_count() -> None:
    """Table VI: DPT on ViT-B/32 has 1,136,384 parameters = CAVPT in the last block (without its K-way head)
    + 11 blocks of 10 visual prompts (768-d) + 16 text tokens (512-d): the architecture read from the paper."""
    cavpt = ClassAwarePrompts(embed_dim=512, width=768, num_prompts=10, attn_dim=32, num_classes=1)
    head = cavpt.classifier.weight.numel()
    deep = DeepPrompts(11, 10, 768)
    total = sum(p.numel() for p in cavpt.parameters()) - head + sum(p.numel() for p in deep.parameters()) + 16 * 512
    assert total == 1_136_384


# ------------------------------------------------------------------------------------------------ training


@pytest.mark.parametrize(
    ("variant", "expected"),
    [("vpt", {f"vision.prompts.deep.tokens.{i}" for i in range(4)}),
     ("vlp", {f"vision.prompts.deep.tokens.{i}" for i in range(4)} | {"text.prompts.tokens.0"}),
     ("dpt", {f"vision.prompts.deep.tokens.{i}" for i in range(3)} | {"text.prompts.tokens.0"}
      | {f"vision.prompts.cavpt.3.{n}" for n in ("prompts", "query.weight", "query.bias", "w_q.weight", "w_k.weight",
                                                  "w_v.weight", "norm.weight", "norm.bias", "aux_norm.weight",
                                                  "aux_norm.bias", "classifier.weight")})],
)
def test_only_prompts_train_and_the_frozen_backbone_gets_no_gradient(
    clip: LoadedClip, variant: str, expected: set[str]
) -> None:
    method = build(clip, variant)
    assert trainable(method) == expected
    assert set(method.trainable_state()) == expected
    method.training_loss(batch(epoch=1)).total.backward()
    assert all(p.grad is None for p in method.backbone.parameters())
    for name, p in method.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_warm_up_is_eq_12_then_plain_cross_entropy(clip: LoadedClip) -> None:
    method = build(clip)
    scale = method.logit_scale()
    with torch.no_grad():
        step = batch(epoch=30)  # the last guided epoch
        loss = method.training_loss(step)
        text = method.class_embeddings(CLASSES)
        image = method.image_embeddings(step.images)
        zero_shot = method.zero_shot_image(step.images)
        ce = F.cross_entropy(scale * image @ text.t(), step.labels)
        coop = F.cross_entropy(scale * zero_shot @ text.t(), step.labels)
        vpt = F.cross_entropy(scale * image @ method.frozen_text.t(), step.labels)
        later = method.training_loss(batch(epoch=31))
    assert set(loss.parts) == {"ce", "ca", "coop", "vpt"}
    for name, value in (("ce", ce), ("coop", coop), ("vpt", vpt)):
        assert float(loss.parts[name]) == pytest.approx(float(value), rel=1e-5), name
    expected = float(0.1 * loss.parts["ce"] + loss.parts["coop"] + loss.parts["vpt"] + 0.3 * loss.parts["ca"])
    assert float(loss.total) == pytest.approx(expected, rel=1e-5)
    assert set(later.parts) == {"ce", "ca"}
    assert float(later.total) == pytest.approx(float(later.parts["ce"] + 0.3 * later.parts["ca"]), rel=1e-5)


@pytest.mark.parametrize(("variant", "parts"), [("vpt", {"ce"}), ("vlp", {"ce", "coop", "vpt"})])
def test_variants_loss_terms(clip: LoadedClip, variant: str, parts: set[str]) -> None:
    method = build(clip, variant)
    with torch.no_grad():
        assert set(method.training_loss(batch(epoch=1)).parts) == parts
        assert set(method.training_loss(batch(epoch=31)).parts) == {"ce"}


def test_guidance_and_aux_weights_are_settings(clip: LoadedClip) -> None:
    method = build(clip, **{"dpt.guidance_epochs": 0, "dpt.aux_weight": 0.0})
    with torch.no_grad():
        loss = method.training_loss(batch(epoch=1))
    assert set(loss.parts) == {"ce"} and float(loss.total) == pytest.approx(float(loss.parts["ce"]))


def test_training_steps_and_image_embeddings_among(clip: LoadedClip) -> None:
    method = build(clip)
    before = {k: v.clone() for k, v in method.trainable_state().items()}
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    method.train()
    for epoch in (1, 31):
        optimizer.zero_grad()
        method.training_loss(batch(epoch)).total.backward()
        optimizer.step()
    assert all(not torch.equal(before[k], v) for k, v in method.trainable_state().items())
    method.eval()
    x = images(3, seed=9)
    with torch.no_grad():
        first = method.image_embeddings_among(x, CLASSES[:3])
        assert first.shape == (3, EMBED)
        torch.testing.assert_close(first.norm(dim=-1), torch.ones(3))
        assert not torch.allclose(first, method.image_embeddings_among(x, CLASSES[3:]))  # class-aware
        torch.testing.assert_close(method.image_embeddings(x), method.image_embeddings_among(x, CLASSES))
        logits = method.classifier(CLASSES[:3])(first)
        assert logits.shape == (3, 3) and torch.isfinite(logits).all()


def test_evaluation_reuses_text_features_until_a_prompt_changes(clip: LoadedClip) -> None:
    method = build(clip)
    with torch.no_grad():
        cached = method.class_embeddings(CLASSES[1:4])
        torch.testing.assert_close(method.class_embeddings(CLASSES[1:4]), cached)
        method.text.prompts.tokens[0].add_(0.5)  # an optimizer step or a loaded checkpoint does this in place
        after = method.class_embeddings(CLASSES[1:4])
    fresh = F.normalize(method.text(method.text.class_prompts(CLASSES[1:4])), dim=-1).detach()
    assert not torch.allclose(after, cached)
    torch.testing.assert_close(after, fresh)


def test_checkpoint_round_trip(clip: LoadedClip) -> None:
    method, other = build(clip), build(clip)
    with torch.no_grad():
        for p in method.parameters():
            if p.requires_grad:
                p.add_(0.1)
    other.load_trainable_state(method.trainable_state())
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(other.image_embeddings_among(x, CLASSES[:4]),
                                   method.image_embeddings_among(x, CLASSES[:4]))


def test_variant_sides(clip: LoadedClip) -> None:
    vpt, vlp, dpt = (build(clip, variant) for variant in ("vpt", "vlp", "dpt"))
    assert (vpt.image_side_needs_classes, vlp.image_side_needs_classes, dpt.image_side_needs_classes) == (
        False, False, True)
    assert vpt.text is None
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(vpt.class_embeddings(CLASSES[:3]), vpt.frozen_class_embeddings(CLASSES[:3]))
        torch.testing.assert_close(vlp.image_embeddings_among(x, CLASSES[:2]), vlp.image_embeddings_among(x, CLASSES))
    assert vpt.train_classnames == CLASSES


# ------------------------------------------------------------------------------------------------ presets


def settings_for(backbone: str = "ViT-B-16", **values: object) -> Settings:
    return load_settings({"model.backbone": backbone, **values}, env={}).settings


@pytest.mark.parametrize(
    ("variant", "dataset", "shots", "epochs"),
    [("dpt", "eurosat", 16, 100), ("dpt", "caltech101", 16, 60), ("dpt", "oxford_pets", 16, 60),
     ("vlp", "caltech101", 16, 100), ("dpt", "caltech101", 8, 100), ("dpt", "dtd", 1, 60), ("vlp", "dtd", 2, 100),
     ("dpt", "imagenet", 16, 20), ("dpt", "imagenet", 1, 20), ("vpt", "dtd", 16, 200), ("vpt", "dtd", 4, 100),
     ("vpt", "dtd", 1, 50), ("vpt", "imagenet", 16, 50)],
)
def test_few_shot_presets_follow_section_iv_a(variant: str, dataset: str, shots: int, epochs: int) -> None:
    settings = settings_for(**{"data.setting": "few-shot", "data.dataset": dataset, "data.shots": shots,
                               "dpt.variant": variant})
    preset = DPT.presets(settings, "ViT-B-16")
    imagenet = dataset == "imagenet"
    assert preset["train.epochs"] == epochs
    assert preset["train.lr"] == 0.01 and preset["data.batch_size"] == 32 and preset["train.optimizer"] == "sgd"
    assert preset["train.warmup_epochs"] == (1 if imagenet else 10) and preset["train.warmup_lr"] == 1e-5
    assert (preset["prompts.vision_depth"], preset["prompts.vision_length"]) == (12, 10)
    assert preset["prompts.text_depth"] == (0 if variant == "vpt" else 1)
    assert (preset["prompts.text_length"], preset["prompts.ctx_init"]) == (16, None)
    assert preset.get("dpt.guidance_epochs") == (None if variant == "vpt" else 10 if imagenet else 30)
    assert preset.get("dpt.text_lr") == (None if variant == "vpt" else 0.002)  # official trainers/DPT.py, VLP.py
    assert preset.get("dpt.text_warmup_epochs") == (None if variant == "vpt" else 1)
    assert preset["data.subsample"] == "all" and "data.shots" not in preset  # few-shot: the user's shots
    resolved = load_settings({"data.setting": "few-shot", "data.dataset": dataset}, env={}, preset=preset).settings
    assert resolved.prompts.ctx_init is None and resolved.train.epochs == epochs


def test_other_settings_presets() -> None:
    domain = DPT.presets(settings_for(**{"data.setting": "cross-domain", "data.dataset": "imagenet"}), "ViT-B-16")
    assert (domain["data.shots"], domain["train.epochs"], domain["dpt.guidance_epochs"]) == (1, 20, 10)  # §IV-C
    b2n = DPT.presets(settings_for(**{"data.setting": "base2novel", "data.dataset": "dtd"}), "ViT-B-16")
    assert (b2n["data.shots"], b2n["data.subsample"], b2n["train.epochs"]) == (16, "base", 100)
    cross = DPT.presets(settings_for(**{"data.setting": "cross-dataset", "data.dataset": "imagenet"}), "ViT-B-16")
    assert (cross["data.shots"], cross["data.subsample"], cross["train.epochs"]) == (16, "all", 20)
    assert DPT.presets(settings_for("ViT-L-14"), "ViT-L-14")["prompts.vision_depth"] == 24


@pytest.mark.parametrize(("backbone", "blocks"), [(DEMO_STUDENT, 4), (DEMO_TEACHER, 6)])
def test_demo_presets_fit_the_tiny_clips(backbone: str, blocks: int) -> None:
    preset = DPT.presets(settings_for(backbone, **{"data.setting": "few-shot"}), backbone)
    assert preset["prompts.vision_depth"] == blocks
    assert (preset["train.epochs"], preset["dpt.guidance_epochs"], preset["train.warmup_epochs"]) == (10, 3, 1)
    assert (preset["data.batch_size"], preset["data.crop_scale_min"]) == (16, 0.8)
    vpt = DPT.presets(settings_for(backbone, **{"data.setting": "few-shot", "dpt.variant": "vpt"}), backbone)
    assert vpt["train.epochs"] == 10 and "dpt.guidance_epochs" not in vpt


# ------------------------------------------------------------------------------------------------ learning rates


def preset_dpt(clip: LoadedClip, **overrides: object) -> tuple[DPT, Settings]:
    """DPT on the demo student with its preset beneath `overrides`, as `train-teacher --method dpt` builds it."""
    settings = resolve_with_preset("dpt", {"model.backbone": DEMO_STUDENT, **overrides}, env={}).settings
    return DPT(copy.deepcopy(clip), CLASSES, settings), settings


def rates(method: torch.nn.Module, settings: Settings, epochs: tuple[int, ...]) -> dict[str, list[float]]:
    """Each optimizer group's learning rate per epoch, by group name."""
    optimizer, schedules = build_optimizer(method, settings.train)
    assert [g["name"] for g in optimizer.param_groups] == [s.name for s in schedules]
    return {s.name: [s.lr(epoch, settings.train) for epoch in epochs] for s in schedules}


def test_preset_gives_text_prompts_0_002_and_vision_prompts_0_01(clip: LoadedClip) -> None:
    method, settings = preset_dpt(clip)
    optimizer, _ = build_optimizer(method, settings.train)
    names = {id(p): name for name, p in method.named_parameters()}
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert list(groups) == ["vision", "text"]
    assert {names[id(p)] for p in groups["text"]["params"]} == {"text.prompts.tokens.0"}
    assert {names[id(p)] for p in groups["vision"]["params"]} == trainable(method) - {"text.prompts.tokens.0"}
    assert (groups["vision"]["lr"], groups["text"]["lr"]) == (0.01, 0.002)
    assert groups["vision"]["weight_decay"] == groups["text"]["weight_decay"] == 5e-4
    epochs = settings.train.epochs
    schedule = rates(method, settings, tuple(range(1, epochs + 1)))
    assert schedule["vision"][0] == schedule["text"][0] == 1e-5  # warm-up: Dassl's constant LR for both
    assert (schedule["vision"][1], schedule["text"][1]) == pytest.approx((0.01, 0.002))  # the demo: 1 warm-up epoch
    for vision, text in zip(schedule["vision"][1:], schedule["text"][1:], strict=True):
        assert text / vision == pytest.approx(0.2)  # the same cosine at each group's own peak


def test_text_prompts_have_their_own_warm_up(clip: LoadedClip) -> None:
    """The full-size recipe: ten warm-up epochs for the visual side, one for the text context (trainers/DPT.py)."""
    method, settings = preset_dpt(clip, **{"train.warmup_epochs": 10, "train.epochs": 100})
    schedule = rates(method, settings, (1, 2, 10, 11))
    assert schedule["text"] == pytest.approx([1e-5, 0.002, 0.002 * 0.5 * (1 + math.cos(math.pi * 8 / 100)),
                                              0.002 * 0.5 * (1 + math.cos(math.pi * 9 / 100))])
    assert schedule["vision"] == pytest.approx([1e-5, 1e-5, 1e-5, 0.01])


def test_text_rate_is_a_setting_and_lr_moves_the_visual_side(clip: LoadedClip) -> None:
    method, settings = preset_dpt(clip, **{"train.lr": 0.02, "dpt.text_lr": 0.004})
    assert rates(method, settings, (2,)) == {"vision": [0.02], "text": [0.004]}
    vpt, settings = preset_dpt(clip, **{"dpt.variant": "vpt"})
    assert list(rates(vpt, settings, (2,))) == ["vision"]


# ------------------------------------------------------------------------------------------------ SemPT on DPT


def test_sempt_wraps_dpt_unchanged(clip: LoadedClip) -> None:
    base_classes = CLASSES[:3]
    method = build(clip, classes=base_classes)
    generator = torch.Generator().manual_seed(7)
    bank = AttributeBank(CLASSES, F.normalize(torch.randn(len(CLASSES), 4, EMBED, generator=generator), dim=-1))
    wrapped = SemPT(method, SemptHyperParameters(num_descriptions=4, beta=0.6), bank, seen=base_classes)
    assert wrapped.image_side_needs_classes
    loss = wrapped.training_loss(batch(epoch=1, labels=(0, 1, 2, 1)))
    assert set(loss.parts) == {"ce_lbl", "ce_enh", "ca", "coop", "vpt"}
    loss.total.backward()
    assert all(p.grad is not None for p in wrapped.fusion.parameters())
    assert method.prompt_source.cavpt["3"].query.weight.grad is not None
    assert all(p.grad is None for p in method.backbone.parameters())
    wrapped.eval()
    x = images(3)
    with torch.no_grad():
        features = wrapped.image_embeddings_among(x, CLASSES)
        torch.testing.assert_close(features, method.image_embeddings_among(x, CLASSES))
        logits = wrapped.classifier(CLASSES)(features)
        assert logits.shape == (3, 6) and torch.isfinite(logits).all()
        plain = method.classifier(CLASSES)(features)
        torch.testing.assert_close(logits[:, :3], plain[:, :3])  # seen classes: DPT's own rule
        assert not torch.allclose(logits[:, 3:], plain[:, 3:])  # unseen: attribute-enhanced


@pytest.mark.parametrize("beta", [0.6, 0.0])
def test_sempt_on_dpt_keeps_both_groups_and_adds_its_fusion(clip: LoadedClip, beta: float) -> None:
    method, settings = preset_dpt(clip)
    plain = {g["name"]: (g["lr"], g["params"]) for g in build_optimizer(method, settings.train)[0].param_groups}
    wrapped = SemPT(method, SemptHyperParameters(beta=beta), None, seen=CLASSES, dim=EMBED)
    optimizer, _ = build_optimizer(wrapped, settings.train)
    groups = {g["name"]: (g["lr"], g["params"]) for g in optimizer.param_groups}
    fusion = list(wrapped.fusion.parameters()) if beta > 0 else []  # β = 0: nothing trains the fusion
    assert groups == {"vision": (0.01, plain["vision"][1] + fusion), "text": plain["text"]}
    assert plain["text"][0] == 0.002
