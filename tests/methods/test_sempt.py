"""SemPT's SA / FE / UTIA against hand-built tensors, and wrapped around a real PromptKD student."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from sempt_cli.errors import SemptError
from sempt_cli.methods.promptkd import PromptKD, TeacherSignals
from sempt_cli.methods.sempt import (
    AttributeBank,
    AttributeFusion,
    Calibration,
    SemPT,
    enhanced_embeddings_naive,
    enhanced_logits,
    fit_calibration,
    semantic_weights,
)
from sempt_cli.models import DEMO_STUDENT, LoadedClip, load_clip
from sempt_cli.protocol import Batch
from sempt_cli.settings import SemptHyperParameters, load_settings


def unit(*shape: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape), dim=-1)


# ------------------------------------------------------------------------------------------------ SA


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_weights_sum_to_one_over_exactly_the_top_k_descriptions(top_k: int) -> None:
    image, attributes = unit(5, 16), unit(7, 6, 16)
    weights = semantic_weights(image, attributes, top_k, tau=0.05)
    assert weights.shape == (5, 7, 6)
    torch.testing.assert_close(weights.sum(-1), torch.ones(5, 7))
    assert ((weights > 0).sum(-1) == top_k).all()
    scores = torch.einsum("bd,nsd->bns", image, attributes)
    chosen = weights > 0
    # every selected description scores at least as high as every unselected one
    lowest_chosen = scores.masked_fill(~chosen, float("inf")).amin(-1)
    highest_other = scores.masked_fill(chosen, float("-inf")).amax(-1)
    assert (lowest_chosen >= highest_other).all()


def test_weights_are_the_softmax_of_the_selected_scores() -> None:
    image = F.normalize(torch.tensor([[1.0, 0.0, 0.0]]), dim=-1)
    attributes = F.normalize(torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.6, 0.8, 0.0], [-1.0, 0.0, 0.0]]]),
                             dim=-1)
    weights = semantic_weights(image, attributes, top_k=2, tau=0.1)[0, 0]
    expected = torch.softmax(torch.tensor([1.0, 0.6]) / 0.1, dim=0)
    torch.testing.assert_close(weights, torch.tensor([expected[0], 0.0, expected[1], 0.0]))


# ------------------------------------------------------------------------------------------------ FE


@pytest.mark.parametrize("kind", ["mlp", "linear"])
@pytest.mark.parametrize("chunk_elements", [1 << 24, 40])
def test_factorised_equals_naive(kind: str, chunk_elements: int) -> None:
    dim, classes = 12, 9
    fusion = AttributeFusion(dim, kind)
    image, labels, attributes = unit(4, dim), unit(classes, dim), unit(classes, 5, dim)
    naive = enhanced_embeddings_naive(image, labels, attributes, fusion, alpha=0.3, top_k=2, tau=0.01)
    expected = 50.0 * torch.einsum("bd,bnd->bn", image, naive)
    got = enhanced_logits(image, labels, attributes, fusion, alpha=0.3, top_k=2, tau=0.01, scale=50.0,
                          chunk_elements=chunk_elements)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_factorised_gradients_equal_naive_gradients_with_chunking() -> None:
    dim, classes = 8, 11
    image_leaf = torch.randn(3, dim, requires_grad=True)
    labels, attributes = unit(classes, dim), unit(classes, 4, dim)
    fusion = AttributeFusion(dim)
    twin = copy.deepcopy(fusion)
    naive = 10 * torch.einsum(
        "bd,bnd->bn", F.normalize(image_leaf, dim=-1),
        enhanced_embeddings_naive(F.normalize(image_leaf, dim=-1), labels, attributes, fusion, 0.5, 2, 0.1),
    )
    (naive**2).sum().backward()
    naive_grads = [image_leaf.grad.clone()] + [p.grad.clone() for p in fusion.parameters()]
    image_leaf.grad = None
    chunked = enhanced_logits(F.normalize(image_leaf, dim=-1), labels, attributes, twin, alpha=0.5, top_k=2,
                              tau=0.1, scale=10.0, chunk_elements=3 * 8 * 2)  # 2 classes per chunk: checkpointed
    (chunked**2).sum().backward()
    got = [image_leaf.grad] + [p.grad for p in twin.parameters()]
    for a, b in zip(got, naive_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_alpha_zero_makes_the_enhanced_embeddings_the_label_embeddings() -> None:
    dim = 10
    image, labels, attributes = unit(3, dim), unit(6, dim), unit(6, 4, dim)
    enhanced = enhanced_embeddings_naive(image, labels, attributes, AttributeFusion(dim), alpha=0.0, top_k=2, tau=0.01)
    torch.testing.assert_close(enhanced, labels.expand(3, 6, dim))
    logits = enhanced_logits(image, labels, attributes, AttributeFusion(dim), alpha=0.0, top_k=2, tau=0.01, scale=1.0)
    torch.testing.assert_close(logits, image @ labels.t())


def test_enhanced_embeddings_depend_on_the_image_and_are_unit_length() -> None:
    dim = 10
    labels, attributes = unit(6, dim), unit(6, 5, dim)
    fusion = AttributeFusion(dim)
    enhanced = enhanced_embeddings_naive(unit(2, dim), labels, attributes, fusion, alpha=0.5, top_k=2, tau=0.01)
    torch.testing.assert_close(enhanced.norm(dim=-1), torch.ones(2, 6))
    assert not torch.allclose(enhanced[0], enhanced[1])


# ------------------------------------------------------------------------------------------------ UTIA


@pytest.fixture(scope="module")
def student_clip() -> LoadedClip:
    torch.manual_seed(3)
    return load_clip(DEMO_STUDENT, None)


CLASSES = [f"class{i}" for i in range(6)]
TEACHER_DIM = 24


def build_student(clip: LoadedClip, sempt: dict | None = None, seen: tuple[str, ...] = ()) -> tuple[SemPT, PromptKD]:
    """A PromptKD student (fixed teacher signals) with SemPT on top; the same seed gives the same weights."""
    settings = load_settings({"model.backbone": DEMO_STUDENT, "prompts.vision_depth": 2, **(sempt or {})},
                             env={}).settings
    generator = torch.Generator().manual_seed(7)
    vectors = F.normalize(torch.randn(len(CLASSES), TEACHER_DIM, generator=generator), dim=-1)
    teacher_images = F.normalize(torch.randn(64, TEACHER_DIM, generator=generator), dim=-1)
    signals = TeacherSignals(lambda: vectors, lambda batch: teacher_images[batch.indices])
    torch.manual_seed(11)
    base = PromptKD(copy.deepcopy(clip), CLASSES, settings, teacher=signals)
    bank = AttributeBank(CLASSES, F.normalize(torch.randn(len(CLASSES), 4, TEACHER_DIM, generator=generator), dim=-1))
    hyper = SemptHyperParameters(num_descriptions=4, **{k.removeprefix("sempt."): v for k, v in (sempt or {}).items()})
    return SemPT(base, hyper, bank, seen), base


def train_steps(method: torch.nn.Module, steps: int = 3) -> None:
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.05, momentum=0.9,
                                weight_decay=5e-4)
    method.train()
    generator = torch.Generator().manual_seed(5)
    for step in range(steps):
        images = torch.rand(4, 3, 48, 48, generator=generator)
        batch = Batch(images, torch.zeros(4, dtype=torch.long), torch.arange(4 * step, 4 * step + 4))
        optimizer.zero_grad()
        method.training_loss(batch).total.backward()
        optimizer.step()


def test_beta_zero_trains_exactly_like_the_baseline(student_clip: LoadedClip) -> None:
    wrapped, _ = build_student(student_clip, {"sempt.beta": 0.0})
    _, baseline = build_student(student_clip)
    before = {k: v.clone() for k, v in baseline.trainable_state().items()}
    train_steps(wrapped)
    train_steps(baseline)
    after = baseline.trainable_state()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # training moved the baseline at all
    for name, value in after.items():
        assert torch.equal(wrapped.trainable_state()[name], value), name


def test_positive_beta_changes_training_and_trains_the_fusion(student_clip: LoadedClip) -> None:
    wrapped, _ = build_student(student_clip, {"sempt.beta": 0.6})
    _, baseline = build_student(student_clip)
    fusion_before = {k: v.clone() for k, v in wrapped.fusion.state_dict().items()}
    train_steps(wrapped)
    train_steps(baseline)
    assert not torch.equal(wrapped.trainable_state()["projector.fc2.weight"],
                           baseline.trainable_state()["projector.fc2.weight"])
    assert any(not torch.equal(v, wrapped.fusion.state_dict()[k]) for k, v in fusion_before.items())


def test_loss_mixes_the_baselines_own_loss_against_both_embeddings(student_clip: LoadedClip) -> None:
    wrapped, base = build_student(student_clip, {"sempt.beta": 0.25})
    wrapped.eval()  # BatchNorm in eval mode: both forward passes below see identical features
    batch = Batch(torch.rand(3, 3, 48, 48), torch.zeros(3, dtype=torch.long), torch.arange(3))
    with torch.no_grad():
        loss = wrapped.training_loss(batch)
        step = base.training_forward(batch)
        label = step.head_loss(base.logits(step.image_embeddings, step.class_embeddings)).total
        enhanced = step.head_loss(wrapped.enhanced_logits(step.image_embeddings, step.class_embeddings,
                                                           wrapped.attributes.vectors)).total
    torch.testing.assert_close(loss.total, 0.75 * label + 0.25 * enhanced)
    assert set(loss.parts) == {"kd_lbl", "kd_enh"}


@pytest.mark.parametrize("rule", ["hybrid", "label", "enhanced"])
def test_inference_uses_label_embeddings_for_seen_and_enhanced_for_unseen(student_clip: LoadedClip, rule: str) -> None:
    seen = tuple(CLASSES[:3])
    wrapped, base = build_student(student_clip, {"sempt.inference": rule, "sempt.alpha": 0.7}, seen=seen)
    wrapped.eval()
    with torch.no_grad():
        image = wrapped.image_embeddings(torch.rand(2, 3, 48, 48))
        got = wrapped.classifier(CLASSES)(image)
        labels = base.class_embeddings(CLASSES)
        plain = base.logits(image, labels)
        enhanced = wrapped.logit_scale() * torch.einsum("bd,bnd->bn", image, enhanced_embeddings_naive(
            image, labels, wrapped.attributes.vectors, wrapped.fusion, 0.7, 2, 0.01))
    use_enhanced = {"hybrid": [False] * 3 + [True] * 3, "label": [False] * 6, "enhanced": [True] * 6}[rule]
    for column, enhanced_column in enumerate(use_enhanced):
        expected = enhanced[:, column] if enhanced_column else plain[:, column]
        torch.testing.assert_close(got[:, column], expected, rtol=1e-5, atol=1e-4)
    assert not torch.allclose(enhanced, plain)  # the two rules are distinguishable here


def test_calibrated_rule_maps_the_unseen_logits_and_leaves_the_seen_ones(student_clip: LoadedClip) -> None:
    seen = tuple(CLASSES[:3])
    hybrid, _ = build_student(student_clip, {"sempt.alpha": 0.7}, seen=seen)
    calibrated, _ = build_student(student_clip, {"sempt.alpha": 0.7, "sempt.inference": "calibrated"}, seen=seen)
    calibrated.calibration = Calibration(2.5, 1.25)
    hybrid.eval()
    calibrated.eval()
    with torch.no_grad():
        image = hybrid.image_embeddings(torch.rand(3, 3, 48, 48))
        plain = hybrid.classifier(CLASSES)(image)
        got = calibrated.classifier(CLASSES)(image)
        torch.testing.assert_close(got[:, :3], plain[:, :3])
        torch.testing.assert_close(got[:, 3:], 2.5 * plain[:, 3:] + 1.25)
        for block in (CLASSES[:3], CLASSES[3:]):  # base and novel views: the groups do not compete, nothing moves
            torch.testing.assert_close(calibrated.classifier(block)(image), hybrid.classifier(block)(image))


def test_calibrated_rule_without_a_fit_says_so(student_clip: LoadedClip) -> None:
    wrapped, _ = build_student(student_clip, {"sempt.inference": "calibrated"}, seen=tuple(CLASSES[:3]))
    assert wrapped.needs_calibration
    with pytest.raises(SemptError, match="calibration"):
        wrapped.classifier(CLASSES)
    wrapped.classifier(CLASSES[3:])  # no competition between the groups: no calibration needed


def test_fit_calibration_matches_mean_and_spread_not_a_regression() -> None:
    generator = torch.Generator().manual_seed(1)
    reference = 8 + 2 * torch.randn(50, 5, generator=generator)
    enhanced = 0.5 * reference - 3 + 0.6 * torch.randn(50, 5, generator=generator)  # correlated, other scale
    fitted = fit_calibration(reference, enhanced)
    mapped = fitted.apply(enhanced.double())
    assert abs(float(mapped.mean()) - float(reference.double().mean())) < 1e-9
    assert abs(float(mapped.std(unbiased=False)) - float(reference.double().std(unbiased=False))) < 1e-9
    slope = float(torch.linalg.lstsq(torch.stack([enhanced.flatten(), torch.ones(250)], 1).double(),
                                     reference.flatten().double()[:, None]).solution[0])
    assert fitted.scale > slope  # a regression would shrink the spread by the correlation
    assert Calibration.from_tensors(fitted.to_tensors()) == fitted
    with pytest.raises(SemptError, match="constant"):
        fit_calibration(reference, torch.ones_like(reference))


def test_scoring_only_seen_classes_needs_no_descriptions(student_clip: LoadedClip) -> None:
    """Hybrid inference on seen classes never touches T_atr (no attribute file is needed for them)."""
    wrapped, base = build_student(student_clip, seen=tuple(CLASSES))
    wrapped.attributes = None
    image = F.normalize(torch.randn(2, TEACHER_DIM), dim=-1)
    expected = base.logits(image, base.class_embeddings(CLASSES[:2]))
    torch.testing.assert_close(wrapped.classifier(CLASSES[:2])(image), expected)


def test_checkpoint_keeps_the_baseline_keys_and_round_trips(student_clip: LoadedClip) -> None:
    wrapped, base = build_student(student_clip)
    state = wrapped.trainable_state()
    assert set(base.trainable_state()) < set(state)
    assert {k for k in state if k not in base.trainable_state()} == {
        "sempt.fusion.fc1.weight", "sempt.fusion.fc1.bias", "sempt.fusion.fc2.weight", "sempt.fusion.fc2.bias"}
    other, _ = build_student(student_clip)
    torch.nn.init.zeros_(other.fusion.fc1.weight)
    other.load_trainable_state(state)
    for name, value in other.trainable_state().items():
        assert torch.equal(value, state[name]), name


def test_top_k_must_leave_a_choice() -> None:
    with pytest.raises(ValueError, match="smaller than num_descriptions"):
        SemptHyperParameters(top_k=6, num_descriptions=6)
