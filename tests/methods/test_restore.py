"""RESTORE: feature shift, its consistency loss and the surgery coefficients against hand-built tensors and against
open_clip's own block outputs; a training step; RESTORE inside SemPT."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from sempt_cli.methods.promptsrc import IVLP
from sempt_cli.methods.restore import Restore, Surgery, feature_shift_loss, paired_layers, shift_norms
from sempt_cli.methods.sempt import AttributeBank, SemPT
from sempt_cli.models import DEMO_STUDENT, DEMO_TEACHER, LoadedClip
from sempt_cli.protocol import Batch
from sempt_cli.settings import SemptHyperParameters, Settings, load_settings
from tests.blocks import block_outputs

CLASSES = ["cat", "dog", "tabby cat", "golden retriever", "airplane", "sports car"]


@pytest.fixture(scope="module")
def student_clip(demo_student: LoadedClip) -> LoadedClip:
    return demo_student


def settings_for(**values: Any) -> Settings:
    flags = {"model.backbone": DEMO_STUDENT, "prompts.vision_depth": 2, "prompts.text_depth": 2}
    return load_settings(flags | {k.replace("__", "."): v for k, v in values.items()}, env={}).settings


def build(clip: LoadedClip, seed: int = 11, **values: Any) -> Restore:
    """RESTORE on a copy of `clip`; the same seed gives the same prompts (and the same IVLP prompts)."""
    torch.manual_seed(seed)
    return Restore(copy.deepcopy(clip), CLASSES, settings_for(**values))


def images(batch: int = 2, seed: int = 5) -> Tensor:
    return torch.rand(batch, 3, 48, 48, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------ formulas by hand


def test_shift_norms_by_hand() -> None:
    prompted = torch.tensor([[[4.0, 4.0], [0.0, 2.0], [9.0, 9.0]],
                             [[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]]])
    reference = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]],
                              [[1.0, 1.0], [1.0, 1.0], [0.0, 3.0]]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    # sample 0: Ω tokens (3, 4), (0, 0), masked out -> ‖Ω‖² = 25 over 2 tokens, ‖ref‖² = 1 + 4 = 5
    # sample 1: Ω tokens (0, 0), (0, 0), (1, -2) -> ‖Ω‖² = 5 over 3 tokens, ‖ref‖² = 2 + 2 + 9 = 13
    torch.testing.assert_close(shift_norms(prompted, reference, mask, "frobenius"),
                               torch.tensor([5.0, math.sqrt(5.0)]))
    torch.testing.assert_close(shift_norms(prompted, reference, mask, "rms"),
                               torch.tensor([math.sqrt(25 / 2), math.sqrt(5 / 3)]))
    torch.testing.assert_close(shift_norms(prompted, reference, mask, "relative"),
                               torch.tensor([math.sqrt(25 / 5), math.sqrt(5 / 13)]))
    # no mask: every token counts (sample 0: 25 + 0 + 16 + 16 = 57 over 3 tokens)
    torch.testing.assert_close(shift_norms(prompted, reference, None, "rms"),
                               torch.tensor([math.sqrt(57 / 3), math.sqrt(5 / 3)]))


def test_unshifted_samples_have_norm_zero_and_a_finite_gradient() -> None:
    prompted = torch.ones(2, 3, 4, requires_grad=True)
    norms = shift_norms(prompted, torch.ones(2, 3, 4), None, "relative")
    assert torch.equal(norms, torch.zeros(2))
    norms.sum().backward()
    assert torch.isfinite(prompted.grad).all()


def test_feature_shift_loss_by_hand() -> None:
    vision = torch.tensor([[0.1, 0.3], [0.3, 0.5]])  # 2 images x 2 layers
    text = torch.tensor([[0.0, 0.2], [0.3, 0.2], [0.3, 0.5]])  # 3 classes x 2 layers
    # modality means per layer: vision (0.2, 0.4), text (0.2, 0.3) -> 0² + 0.1²
    torch.testing.assert_close(feature_shift_loss(vision, text), torch.tensor(0.01))
    # labels (2, 0): layer 0 ((0.1-0.3)² + (0.3-0.0)²)/2 = 0.065; layer 1 ((0.3-0.5)² + (0.5-0.2)²)/2 = 0.065
    torch.testing.assert_close(feature_shift_loss(vision, text, torch.tensor([2, 0])), torch.tensor(0.13))


@pytest.mark.parametrize(("vision", "text", "expected_vision", "expected_text"), [
    (12, 12, list(range(12)), list(range(12))),
    (24, 12, list(range(1, 24, 2)), list(range(12))),
    (6, 4, [1, 2, 4, 5], [0, 1, 2, 3]),
    (4, 3, [1, 2, 3], [0, 1, 2]),
    (3, 4, [0, 1, 2], [1, 2, 3]),
])
def test_layers_pair_at_the_same_relative_depth(vision: int, text: int, expected_vision: list[int],
                                                expected_text: list[int]) -> None:
    assert paired_layers(vision, text) == (expected_vision, expected_text)


def test_surgery_block_by_hand() -> None:
    surgery = Surgery(2, ratio=1.0)
    with torch.no_grad():
        surgery.up.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        surgery.down.weight.copy_(torch.tensor([[1.0, 1.0], [0.0, 3.0]]))
    x = torch.tensor([[1.0, 3.0], [1.0, 3.0], [5.0, 5.0]])
    # LN([1, 3]) = (-1, 1); W_up -> (-1, 2); ReLU -> (0, 2); W_down -> (0·1 + 2·1, 0·0 + 2·3) = (2, 6)
    # LN([5, 5]) = (0, 0) -> Surgery = (0, 0)
    out = surgery(x, torch.tensor([0.5, 0.0, 2.0]))
    torch.testing.assert_close(out, torch.tensor([[2.0, 6.0], [1.0, 3.0], [5.0, 5.0]]), atol=1e-4, rtol=0)


def test_surgery_starts_at_zero_so_restore_starts_as_ivlp(student_clip: LoadedClip) -> None:
    restore = build(student_clip)
    torch.manual_seed(11)
    ivlp = IVLP(copy.deepcopy(student_clip), CLASSES, settings_for())
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(restore.image_embeddings(x), ivlp.image_embeddings(x))
        torch.testing.assert_close(restore.class_embeddings(CLASSES), ivlp.class_embeddings(CLASSES))
        assert restore.encode_images(x).alpha.gt(0).all()  # the coefficient is live, the adapter output is zero


# ------------------------------------------------------------------------------------------ feature shift on towers


@pytest.mark.parametrize("reference", ["frozen", "block"])
def test_shift_is_exactly_zero_without_prompts(student_clip: LoadedClip, reference: str) -> None:
    method = build(student_clip, prompts__vision_depth=0, prompts__text_depth=0, restore__shift_reference=reference,
                   restore__surgery_zero_init=False)
    with torch.no_grad():
        image, text = method.encode_images(images()), method.encode_text(method.text.class_prompts(CLASSES))
        plain_image = method.backbone.encode_image(images())
    assert image.shifts.shape == (2, 4) and text.shifts.shape == (len(CLASSES), 3)
    assert torch.equal(image.shifts, torch.zeros_like(image.shifts))
    assert torch.equal(text.shifts, torch.zeros_like(text.shifts))
    assert torch.equal(image.alpha, torch.zeros(2)) and torch.equal(text.alpha, torch.zeros(len(CLASSES)))
    torch.testing.assert_close(image.features, plain_image)  # α = 0: the (random) surgery has no effect


def test_zero_valued_prompts_are_not_absent(student_clip: LoadedClip) -> None:
    """Zero vision prompts are still extra tokens that take attention; zero text prompts overwrite words."""
    method = build(student_clip)
    with torch.no_grad():
        for parameter in [*method.vision.prompts.parameters(), *method.text.prompts.parameters()]:
            parameter.zero_()
        image, text = method.encode_images(images()), method.encode_text(method.prompts.train)
    assert (image.shifts > 0).all() and (text.shifts > 0).all()


@pytest.mark.parametrize(("reference", "zero"), [("frozen", True), ("block", False)])
def test_untrained_ctx_init_text_prompt(student_clip: LoadedClip, reference: str, zero: bool) -> None:
    """Depth-1 text prompts initialised from "a photo of a" equal the frozen template: no deviation from CLIP;
    the literal Eq. 6 reading still sees the effect of having context words at all."""
    method = build(student_clip, prompts__text_depth=1, restore__shift_reference=reference)
    with torch.no_grad():
        shifts = method.encode_text(method.prompts.train).shifts
    assert torch.equal(shifts, torch.zeros_like(shifts)) == zero
    assert zero or (shifts > 0).all()


def test_frozen_shift_is_relative_to_open_clips_own_blocks(student_clip: LoadedClip) -> None:
    """Ω_l against the hooked outputs of open_clip's encode_image / encode_text, over CLS + patches (prompt tokens
    excluded) and over the tokens after the context slots up to EOT (SOS and padding excluded)."""
    method = build(student_clip)
    model, x = method.backbone, images()
    prompts = method.prompts.train
    with torch.no_grad():
        got_image, got_text = method.encode_images(x), method.encode_text(prompts)
        prompted_image = method.vision.forward_features(x, return_layers=True).layers
        prompted_text = method.text.forward_features(prompts, return_layers=True).layers
    frozen_image = block_outputs(model.visual.transformer.resblocks, lambda: model.encode_image(x))
    frozen_text = block_outputs(model.transformer.resblocks, lambda: model.encode_text(prompts.token_ids))
    tokens = frozen_image[0].shape[1]
    assert prompted_image[0].shape[1] == tokens + 4  # four trailing vision prompts left out
    for layer, (p, r) in enumerate(zip(prompted_image, frozen_image, strict=True)):
        for b in range(2):
            expected = torch.linalg.norm(p[b, :tokens] - r[b]) / torch.linalg.norm(r[b])
            torch.testing.assert_close(got_image.shifts[b, layer], expected)
    for layer, (p, r) in enumerate(zip(prompted_text, frozen_text, strict=True)):
        for c in range(len(CLASSES)):
            real = slice(1 + 4, int(prompts.eot_index[c]) + 1)
            expected = torch.linalg.norm(p[c, real] - r[c, real]) / torch.linalg.norm(r[c, real])
            torch.testing.assert_close(got_text.shifts[c, layer], expected)


def test_block_reading_agrees_with_frozen_reading_on_the_first_vision_block(student_clip: LoadedClip) -> None:
    """Block 0 sees the unprompted embedding in both readings; later blocks differ."""
    frozen, block = build(student_clip), build(student_clip, restore__shift_reference="block")
    with torch.no_grad():
        a, b = frozen.encode_images(images()).shifts, block.encode_images(images()).shifts
    torch.testing.assert_close(a[:, 0], b[:, 0])
    assert not torch.allclose(a[:, 1:], b[:, 1:])


def test_surgery_coefficients_follow_eq_11(student_clip: LoadedClip) -> None:
    method = build(student_clip, restore__gamma=0.3, restore__beta=0.7, restore__surgery_zero_init=False)
    x = images()
    with torch.no_grad():
        image, text = method.encode_images(x), method.encode_text(method.prompts.train)
        raw_image, raw_text = method.vision(x), method.text(method.prompts.train)
        torch.testing.assert_close(image.alpha, 0.3 * image.shifts.sum(1))
        torch.testing.assert_close(text.alpha, 0.7 * text.shifts.sum(1))
        torch.testing.assert_close(image.features,
                                   raw_image + image.alpha[:, None] * method.vision_surgery.delta(raw_image))
        torch.testing.assert_close(text.features,
                                   raw_text + text.alpha[:, None] * method.text_surgery.delta(raw_text))
    assert not torch.allclose(image.features, raw_image)


@pytest.mark.parametrize("detach", [True, False])
def test_alpha_is_detached_by_default(student_clip: LoadedClip, detach: bool) -> None:
    method = build(student_clip, restore__detach_alpha=detach)
    assert method.encode_images(images()).alpha.requires_grad != detach


def test_embeddings_are_per_image_and_work_for_any_class_list(student_clip: LoadedClip) -> None:
    method = build(student_clip, restore__surgery_zero_init=False)
    x = images(3)
    novel = ["zebra", "a very long class name of a small striped animal", "cat"]
    with torch.no_grad():
        batch = method.image_embeddings(x)
        alone = method.image_embeddings(x[1:2])
        classes = method.class_embeddings(novel)
        subset = method.class_embeddings(novel[2:])
    torch.testing.assert_close(batch[1:2], alone, rtol=1e-4, atol=1e-5)  # α from the image's own shift
    torch.testing.assert_close(classes[2:], subset, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(classes.norm(dim=-1), torch.ones(3))
    assert method.logits(batch, classes).shape == (3, 3)


# ------------------------------------------------------------------------------------------ training


def test_training_step_trains_prompts_and_surgery_only(student_clip: LoadedClip) -> None:
    method = build(student_clip)
    method.train()
    trainable = {name for name, p in method.named_parameters() if p.requires_grad}
    assert trainable and all(name.split(".")[0] in {"vision", "text", "vision_surgery", "text_surgery"}
                             and (".prompts." in name or "surgery" in name) for name in trainable)
    batch = Batch(images(4), torch.tensor([0, 1, 2, 3]), torch.arange(4))
    step = method.training_forward(batch)
    assert step.extra is not None and step.extra.parts["fs"] > 0
    step.extra.total.backward(retain_graph=True)  # L_fs alone reaches both modalities' prompts
    assert method.vision.prompts.tokens[1].grad.abs().sum() > 0
    assert method.text.prompts.tokens[1].grad.abs().sum() > 0
    method.zero_grad()
    before = {k: v.clone() for k, v in method.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1)
    loss = method.training_loss(batch)
    assert set(loss.parts) == {"ce", "fs"}
    loss.total.backward()
    frozen = [p for p in method.parameters() if not p.requires_grad]
    assert frozen and all(p.grad is None for p in frozen)
    assert method.vision_surgery.down.weight.grad.abs().sum() > 0
    optimizer.step()
    after = method.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".prompts." in k or "surgery" in k for k in changed)


@pytest.mark.parametrize("pairing", ["modality-mean", "label"])
def test_training_loss_pairs_layers_and_weights_l_fs(student_clip: LoadedClip, pairing: str) -> None:
    """The student has 4 vision and 3 text blocks: vision blocks 1, 2, 3 meet text blocks 0, 1, 2."""
    method = build(student_clip, restore__fs_weight=2.5, restore__fs_pairing=pairing)
    method.eval()
    labels = [5, 0, 5]
    batch = Batch(images(3), torch.tensor(labels), torch.arange(3))
    with torch.no_grad():
        step = method.training_forward(batch)
        image, text = method.encode_images(batch.images).shifts, method.encode_text(method.prompts.train).shifts
    expected = 0.0
    for v, t in zip([1, 2, 3], [0, 1, 2], strict=True):
        if pairing == "label":
            expected += sum(float(image[b, v] - text[y, t]) ** 2 for b, y in enumerate(labels)) / 3
        else:
            expected += float(image[:, v].mean() - text[:, t].mean()) ** 2
    assert step.extra is not None
    assert float(step.extra.parts["fs"]) == pytest.approx(expected, rel=1e-4)
    assert float(step.extra.total) == pytest.approx(2.5 * expected, rel=1e-4)


def test_no_surgery_leaves_the_adapters_out(student_clip: LoadedClip) -> None:
    with_surgery, without = build(student_clip), build(student_clip, restore__surgery=False)
    extra = set(with_surgery.trainable_state()) - set(without.trainable_state())
    assert extra == {"vision_surgery.norm.weight", "vision_surgery.norm.bias", "vision_surgery.up.weight",
                     "vision_surgery.down.weight", "text_surgery.norm.weight", "text_surgery.norm.bias",
                     "text_surgery.up.weight", "text_surgery.down.weight"}
    method = build(student_clip, restore__surgery=False, restore__surgery_zero_init=False)
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(method.encode_images(x).features, method.vision(x))


def test_restore_works_inside_sempt(student_clip: LoadedClip) -> None:
    base = build(student_clip)
    generator = torch.Generator().manual_seed(7)
    bank = AttributeBank(CLASSES, F.normalize(torch.randn(len(CLASSES), 4, 96, generator=generator), dim=-1))
    wrapped = SemPT(base, SemptHyperParameters(num_descriptions=4, beta=0.5), bank, seen=CLASSES[:3])
    batch = Batch(images(2), torch.tensor([0, 4]), torch.arange(2))
    loss = wrapped.training_loss(batch)
    assert set(loss.parts) == {"ce_lbl", "ce_enh", "fs"}
    loss.total.backward()
    assert base.vision.prompts.tokens[0].grad is not None and wrapped.fusion.fc1.weight.grad is not None
    with torch.no_grad():
        logits = wrapped.classifier(CLASSES)(wrapped.image_embeddings(images(2)))
    assert logits.shape == (2, len(CLASSES)) and torch.isfinite(logits).all()


# ------------------------------------------------------------------------------------------ presets


@pytest.mark.parametrize(("setting", "backbone", "expected"), [
    ("base2novel", "ViT-B-16", {"train.epochs": 10, "train.lr": 0.0035, "data.batch_size": 4,
                                "prompts.vision_depth": 9, "restore.fs_weight": 1.0, "data.subsample": "base"}),
    ("cross-dataset", "ViT-B-16", {"train.epochs": 4, "prompts.text_depth": 3, "data.subsample": "all"}),
    ("cross-domain", "ViT-B-16", {"train.epochs": 4, "prompts.vision_depth": 3}),
    ("few-shot", "ViT-B-16", {"train.epochs": 50, "data.subsample": "all"}),
    ("base2novel", "ViT-L-14", {"train.lr": 0.007, "data.batch_size": 8}),
    ("few-shot", DEMO_TEACHER, {"train.epochs": 10, "prompts.vision_depth": 4, "prompts.text_depth": 3,
                                "data.batch_size": 16}),
])
def test_presets(setting: str, backbone: str, expected: dict[str, Any]) -> None:
    preset = Restore.presets(load_settings({"data.setting": setting}, env={}).settings, backbone)
    assert {k: preset[k] for k in expected} == expected
    assert not any(k.startswith("promptsrc.") for k in preset)
    load_settings(preset, env={})  # every key is a valid setting


def test_restore_settings_are_part_of_the_run_key() -> None:
    """Ablations (--no-surgery, --shift-reference block, ...) must not reuse each other's trained runs."""
    from sempt_cli.pipeline.runs import run_key, run_sections

    keys = {run_key("restore", load_settings(flags, env={}).settings, None, run_sections("restore", False))
            for flags in ({}, {"restore.surgery": False}, {"restore.shift_reference": "block"}, {"restore.gamma": 0.2})}
    assert len(keys) == 4
