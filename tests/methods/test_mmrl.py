"""MMRL against spec/mmrl.md: trainable part, token positions and sequence lengths, gradients, losses,
decoupled inference, presets, and SemPT on top."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sempt_cli.methods.mmrl import MMRL, REG_WEIGHTS
from sempt_cli.methods.sempt import AttributeBank, SemPT
from sempt_cli.models import LoadedClip
from sempt_cli.protocol import Batch
from sempt_cli.settings import Settings, load_settings
from tests.blocks import block_inputs

CLASSES = ["cat", "dog", "bird"]


def settings(**values: object) -> Settings:
    return load_settings({"data.dataset": "oxford_pets", **values}, env={}).settings


@pytest.fixture()
def tiny_mmrl(demo_student: LoadedClip) -> MMRL:
    return MMRL(demo_student, CLASSES, settings(**{"mmrl.start_layer": 2}))


def trainable_count(method: MMRL) -> int:
    return sum(p.numel() for p in method.parameters() if p.requires_grad)


def test_trainable_part_on_vit_b16_matches_the_spec(b16: LoadedClip) -> None:
    assert trainable_count(MMRL(b16, CLASSES, settings())) == 4_992_256  # spec §1.5
    assert trainable_count(MMRL(b16, CLASSES, settings(**{"mmrl.rep_dim": 2048}))) == 18_762_496  # EuroSAT


def test_tokens_enter_block_6_after_cls_and_replace_afterwards(b16: LoadedClip) -> None:
    torch.manual_seed(0)
    method = MMRL(b16, CLASSES, settings())
    vision_tokens, text_tokens = method.space()
    seen = block_inputs(b16.model.visual.transformer.resblocks,
                        lambda: method.image_embeddings(torch.randn(1, 3, 224, 224)))
    assert [x.shape[1] for x in seen] == [197] * 5 + [202] * 7  # spec §1.3, checked empirically there
    for block in range(5, 12):  # positions 1..5 hold R_v of this block, whatever the previous block wrote
        torch.testing.assert_close(seen[block][0, 1:6], vision_tokens[block - 5].detach())
    assert not torch.allclose(seen[6][0, 6:], seen[5][0, 6:])  # patches flow on

    method.text.truncate = False  # the official 77 positions
    seen = block_inputs(method.text.transformer.resblocks, lambda: method.class_embeddings(CLASSES[:1]))
    assert [x.shape[1] for x in seen] == [77] * 5 + [82] * 7  # spec §1.4
    for block in range(5, 12):
        torch.testing.assert_close(seen[block][0, 1:6], text_tokens[block - 5].detach())


def test_truncated_text_with_shifted_eot_equals_the_full_77_positions(tiny_mmrl: MMRL) -> None:
    with torch.no_grad():
        truncated = tiny_mmrl.class_embeddings(CLASSES)
        tiny_mmrl.text.truncate = False
        full = tiny_mmrl.class_embeddings(CLASSES)
    torch.testing.assert_close(truncated, full, atol=1e-5, rtol=1e-5)


def test_aligners_start_identical_and_only_trainable_parts_get_gradients(tiny_mmrl: MMRL) -> None:
    first, *others = tiny_mmrl.space.vision
    assert all(torch.equal(first.weight, other.weight) for other in others)  # deep copies of one Linear (§6.3)
    batch = Batch(torch.randn(4, 3, 48, 48), torch.tensor([0, 1, 2, 0]), torch.arange(4))
    tiny_mmrl.training_loss(batch).total.backward()
    with_grad = {name for name, p in tiny_mmrl.named_parameters() if p.grad is not None}
    assert with_grad == {name for name, p in tiny_mmrl.named_parameters() if p.requires_grad}
    assert with_grad and all(name.startswith(("space.", "proj_rep")) for name in with_grad)
    assert all(p.grad is None for p in tiny_mmrl.backbone.parameters())


def test_loss_is_the_weighted_sum_of_both_heads_and_both_regularisers(tiny_mmrl: MMRL) -> None:
    tiny_mmrl.reg_weight = 3.0
    batch = Batch(torch.randn(4, 3, 48, 48), torch.tensor([0, 1, 2, 0]), torch.arange(4))
    torch.manual_seed(5)
    loss = tiny_mmrl.training_loss(batch)
    with torch.no_grad():
        text = tiny_mmrl.class_embeddings(CLASSES)
        both = tiny_mmrl.image_embeddings(batch.images)
        class_feature, representation = both[:, : tiny_mmrl.dim], both[:, tiny_mmrl.dim :]
        frozen_image = F.normalize(tiny_mmrl.backbone.encode_image(batch.images), dim=-1)
        frozen_text = F.normalize(tiny_mmrl.backbone.encode_text(tiny_mmrl.text.tokenizer(
            [f"a photo of a {name}, a type of pet." for name in CLASSES])), dim=-1)
    expected = (
        0.7 * F.cross_entropy(100 * class_feature @ text.t(), batch.labels)
        + 0.3 * F.cross_entropy(100 * representation @ text.t(), batch.labels)
        + 3.0 * (1 - (class_feature * frozen_image).sum(-1).mean())
        + 3.0 * (1 - (text * frozen_text).sum(-1).mean())
    )
    torch.testing.assert_close(loss.total.detach(), expected, atol=1e-4, rtol=1e-4)


def test_decoupled_inference_fuses_only_the_training_classes_on_the_training_data(tiny_mmrl: MMRL) -> None:
    tiny_mmrl.eval()
    with torch.no_grad():
        images = tiny_mmrl.image_embeddings(torch.randn(3, 3, 48, 48))
        class_part, rep_part = images[:, : tiny_mmrl.dim], images[:, tiny_mmrl.dim :]
        novel = ["fish", "horse"]
        cases = {  # (classes, in_domain) → fused?
            (tuple(CLASSES), True): True,  # base-to-novel base / few-shot / the cross-dataset source
            (tuple(novel), True): False,  # novel classes
            (tuple(CLASSES + novel), True): False,  # all classes competing
            (tuple(CLASSES), False): False,  # ImageNet-V2/-Sketch: the same names, other images
        }
        for (names, in_domain), fused in cases.items():
            text = tiny_mmrl.class_embeddings(list(names))
            expected = 100 * class_part @ text.t()
            if fused:
                expected = 0.7 * expected + 0.3 * 100 * rep_part @ text.t()
            got = tiny_mmrl.classifier(list(names), in_domain=in_domain)(images)
            torch.testing.assert_close(got, expected, msg=f"{names}, in_domain={in_domain}")


def test_presets_follow_the_official_configs() -> None:
    b2n = MMRL.presets(settings(**{"data.dataset": "stanford_cars"}), "ViT-B-16-quickgelu")
    assert (b2n["mmrl.reg_weight"], b2n["data.batch_size"], b2n["train.epochs"]) == (7.0, 4, 10)
    assert b2n["mmrl.rep_dim"] == 512
    assert (b2n["train.optimizer"], b2n["train.lr"], b2n["train.weight_decay"]) == ("adamw", 1e-3, 5e-4)
    eurosat = MMRL.presets(settings(**{"data.dataset": "eurosat", "data.setting": "few-shot"}), "ViT-B-16-quickgelu")
    assert (eurosat["mmrl.rep_dim"], eurosat["mmrl.reg_weight"], eurosat["train.epochs"]) == (2048, 0.01, 50)
    cross = MMRL.presets(settings(**{"data.dataset": "imagenet", "data.setting": "cross-dataset"}),
                         "ViT-B-16-quickgelu")
    assert (cross["mmrl.reg_weight"], cross["train.epochs"], cross["train.warmup_epochs"], cross["mmrl.rep_dim"]) \
        == (0.2, 1, 0, 512)
    imagenet = MMRL.presets(settings(**{"data.dataset": "imagenet"}), "ViT-B-16-quickgelu")
    assert (imagenet["mmrl.reg_weight"], imagenet["data.batch_size"], imagenet["train.epochs"]) == (0.5, 32, 5)
    assert len(REG_WEIGHTS) == 11


def test_sempt_on_mmrl_scores_unseen_classes_with_the_class_feature(tiny_mmrl: MMRL) -> None:
    torch.manual_seed(0)
    novel = ["fish", "horse"]
    vectors = F.normalize(torch.randn(5, 6, tiny_mmrl.dim), dim=-1)
    hyper = settings().sempt
    wrapped = SemPT(tiny_mmrl, hyper, AttributeBank(CLASSES + novel, vectors), CLASSES)
    batch = Batch(torch.randn(4, 3, 48, 48), torch.tensor([0, 1, 2, 0]), torch.arange(4))
    loss = wrapped.training_loss(batch)
    loss.total.backward()
    assert {"ce_c_lbl", "ce_c_enh", "ce_r", "cos_i", "cos_t"} <= set(loss.parts)
    assert wrapped.fusion.fc1.weight.grad is not None
    wrapped.eval()
    with torch.no_grad():
        images = wrapped.image_embeddings(torch.randn(2, 3, 48, 48))
        seen = wrapped.classifier(CLASSES)(images)
        torch.testing.assert_close(seen, tiny_mmrl.classifier(CLASSES)(images))  # base: MMRL's fused rule
        unseen = wrapped.classifier(novel)(images)
        expected = wrapped.enhanced_logits(images[:, : tiny_mmrl.dim], tiny_mmrl.class_embeddings(novel), vectors[3:])
        torch.testing.assert_close(unseen, expected)
