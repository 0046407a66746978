"""MMA against a minimal re-statement of the official forward (ZjjConan/Multi-Modal-Adapter: `clip/model.py`
`ModifiedResidualAttentionBlock` and `VisionTransformer.forward`, `trainers/mmadapter.py` `TextEncoder`,
`AdapterLearner`, `CustomCLIP`, and `clip/gsl.py`) on the same open_clip weights: logits, loss and the adapters'
gradients; the official trainable part; where the adapters sit; presets; SemPT on top; and the CLI end to end."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typer.testing import CliRunner

import sempt_cli.methods.mma as mma_module
from sempt_cli.cli.app import app
from sempt_cli.errors import SemptError
from sempt_cli.methods.mma import MMA
from sempt_cli.methods.sempt import AttributeBank, SemPT
from sempt_cli.models import DEMO_STUDENT, LoadedClip
from sempt_cli.models.checkpoint import load_learned
from sempt_cli.protocol import Batch
from sempt_cli.settings import Settings, fields, load_settings
from tests.blocks import block_outputs

CLASSES = ["cat", "dog", "bird"]


def settings(**values: object) -> Settings:
    return load_settings({"data.dataset": "oxford_pets", **values}, env={}).settings


# ---------------------------------------------------------------------- the official code, restated
class OfficialGradientScaleLayer(torch.autograd.Function):
    """clip/gsl.py."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None]:
        return grad_output * ctx.scale, None


def gsl(x: Tensor, scale: float) -> Tensor:
    return OfficialGradientScaleLayer.apply(x, scale)


class OfficialAdapterLearner(nn.Module):
    """`AdapterLearner._build_adapter` for the three adapter lists (None outside ADAPTER_START..ADAPTER_END)."""

    def __init__(self, text_width: int, vision_width: int, text_layers: int, vision_layers: int,
                 start: int, end: int, dim: int) -> None:
        super().__init__()
        self.text_adapter = self.build(text_width, text_layers, start, end, dim)
        self.visual_adapter = self.build(vision_width, vision_layers, start, end, dim)
        self.shared_adapter = self.build(dim, vision_layers, start, end, dim)

    @staticmethod
    def build(d_model: int, n_layers: int, start: int, end: int, mid_dim: int) -> nn.ModuleList:
        adapter: list[nn.Module | None] = [None] * (n_layers + 1)
        for i in range(start, end + 1):
            if mid_dim == d_model:
                adapter[i] = nn.Sequential(nn.Linear(d_model, mid_dim), nn.ReLU())
            else:
                adapter[i] = nn.Sequential(OrderedDict([
                    ("down", nn.Sequential(nn.Linear(d_model, mid_dim), nn.ReLU())),
                    ("up", nn.Linear(mid_dim, d_model)),
                ]))
        return nn.ModuleList(adapter)


def official_block(block: nn.Module, x: Tensor, seq_adapter: Any, shared_adapter: Any, scale: float,
                   attn_mask: Tensor | None = None) -> Tensor:
    """`ModifiedResidualAttentionBlock.forward` with an adapter function (batch-first here, as open_clip is)."""
    if seq_adapter is not None:
        y = gsl(x, scale)
        y = block.ln_1(y)
        y = seq_adapter.down(y)
        if shared_adapter is not None:
            y = shared_adapter(y)
        y = seq_adapter.up(y) * scale
        y = gsl(y, 1.0 / scale)
    else:
        y = 0
    h = block.ln_1(x)
    x = x + block.attn(h, h, h, need_weights=False, attn_mask=attn_mask)[0]
    return x + block.mlp(block.ln_2(x)) + y


def official_image_features(visual: nn.Module, images: Tensor, learner: OfficialAdapterLearner,
                            scale: float) -> Tensor:
    """`VisionTransformer.forward([image, visual_adapter_func])`."""
    x = visual.conv1(images)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = visual.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
    seq_adapter, shared_adapter = learner.visual_adapter[0], learner.shared_adapter[0]
    if seq_adapter is not None:
        y = seq_adapter.down(visual.ln_pre(x))
        if shared_adapter is not None:
            y = shared_adapter(y)
        x = visual.ln_pre(x) + seq_adapter.up(y) * scale
    else:
        x = visual.ln_pre(x)
    for index, block in enumerate(visual.transformer.resblocks):
        x = official_block(block, x, learner.visual_adapter[index + 1], learner.shared_adapter[index + 1], scale)
    return visual.ln_post(x[:, 0, :]) @ visual.proj


def official_text_features(model: nn.Module, tokenized: Tensor, learner: OfficialAdapterLearner,
                           scale: float) -> Tensor:
    """`AdapterLearner.forward` (the index-0 adapter on the token embeddings) then `TextEncoder.forward`."""
    with torch.no_grad():
        embedding = model.token_embedding(tokenized)  # a buffer in the official code
    if learner.text_adapter[0] is not None:
        token_embedding = learner.text_adapter[0].down(embedding)
        token_embedding = learner.shared_adapter[0](token_embedding)
        embedding = embedding + scale * learner.text_adapter[0].up(token_embedding)
    x = embedding + model.positional_embedding
    for index, block in enumerate(model.transformer.resblocks):
        x = official_block(block, x, learner.text_adapter[index + 1], learner.shared_adapter[index + 1], scale,
                           attn_mask=model.attn_mask)
    x = model.ln_final(x)
    return x[torch.arange(x.shape[0]), tokenized.argmax(dim=-1)] @ model.text_projection


def official_learner(method: MMA, clip: LoadedClip, start: int, end: int, dim: int) -> OfficialAdapterLearner:
    """The official modules holding the method's weights: the state-dict keys must match one to one."""
    model = clip.model
    learner = OfficialAdapterLearner(
        int(model.token_embedding.weight.shape[1]), int(model.visual.conv1.out_channels),
        len(model.transformer.resblocks), len(model.visual.transformer.resblocks), start, end, dim,
    )
    learner.load_state_dict({k: v.detach().clone() for k, v in method.trainable_state().items()}, strict=True)
    return learner


def official_logits(clip: LoadedClip, learner: OfficialAdapterLearner, images: Tensor, scale: float) -> Tensor:
    """`CustomCLIP.forward`: the fixed "a photo of a {class}." prompts, CLIP's logit scale."""
    tokenized = clip.tokenizer([f"a photo of a {name}." for name in CLASSES])
    text = F.normalize(official_text_features(clip.model, tokenized, learner, scale), dim=-1)
    image = F.normalize(official_image_features(clip.model.visual, images, learner, scale), dim=-1)
    return clip.model.logit_scale.exp() * image @ text.t()


def equivalence(clip: LoadedClip, images: Tensor, start: int, end: int, scale: float) -> None:
    method = MMA(clip, CLASSES, settings(**{"mma.start_layer": start, "mma.end_layer": end, "mma.scale": scale}))
    learner = official_learner(method, clip, start, end, 32)
    labels = torch.tensor([0, 2, 1, 0][: images.shape[0]])

    loss = method.training_loss(Batch(images, labels, torch.arange(len(labels))))
    loss.total.backward()
    with torch.no_grad():
        ours = method.logits(method.image_embeddings(images), method.class_embeddings(CLASSES))
        frozen = method.logits(F.normalize(clip.model.encode_image(images), dim=-1), F.normalize(
            clip.model.encode_text(clip.tokenizer([f"a photo of a {n}." for n in CLASSES])), dim=-1))
    logits = official_logits(clip, learner, images, scale)
    official_loss = F.cross_entropy(logits, labels)
    official_loss.backward()

    torch.testing.assert_close(ours, logits.detach(), rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(loss.total.detach(), official_loss.detach(), rtol=1e-5, atol=1e-6)
    assert (ours - frozen).abs().max() > 1e-3  # the adapters change the logits beyond the tolerance
    grads = dict(learner.named_parameters())
    for name, param in method.named_parameters():
        if not param.requires_grad:
            assert param.grad is None, name  # the backbone stays frozen
            continue
        official = grads[name].grad
        assert param.grad is not None and official is not None, name
        scale_of = official.abs().max()
        assert scale_of > 0, name
        torch.testing.assert_close(param.grad, official, rtol=1e-4, atol=1e-4 * float(scale_of), msg=name)


# ---------------------------------------------------------------------- equivalence
def test_logits_loss_and_adapter_gradients_equal_the_official_code_on_vit_b16(b16: LoadedClip) -> None:
    torch.manual_seed(0)
    equivalence(b16, torch.randn(2, 3, 224, 224), start=5, end=12, scale=0.001)  # vit_b16_ep5.yaml


@pytest.mark.parametrize(("start", "end", "scale"), [(0, 3, 0.001), (1, 2, 0.25)])
def test_embedding_level_adapters_and_other_scales_equal_the_official_code(
    demo_student: LoadedClip, start: int, end: int, scale: float
) -> None:
    torch.manual_seed(0)
    equivalence(demo_student, torch.randn(4, 3, 48, 48), start=start, end=end, scale=scale)


def test_gradient_scaling_gives_the_adapters_one_over_s_times_their_true_gradient(
    demo_student: LoadedClip, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `gsl` does, checked against autograd without it: the adapters' gradients are 1/s × the true ones."""
    method = MMA(demo_student, CLASSES, settings(**{"mma.start_layer": 2, "mma.end_layer": 3, "mma.scale": 0.01}))
    batch = Batch(torch.randn(2, 3, 48, 48), torch.tensor([0, 1]), torch.arange(2))
    method.training_loss(batch).total.backward()
    scaled = {name: p.grad.clone() for name, p in method.named_parameters() if p.grad is not None}
    method.zero_grad()
    monkeypatch.setattr(mma_module, "gradient_scale", lambda x, scale: x)  # plain autograd: the true gradients
    method.training_loss(batch).total.backward()
    for name, param in method.named_parameters():
        if param.grad is not None:
            tolerance = 1e-4 * float(scaled[name].abs().max())
            torch.testing.assert_close(scaled[name], param.grad / 0.01, rtol=1e-4, atol=tolerance, msg=name)


# ---------------------------------------------------------------------- structure
def trainable_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def test_trainable_part_on_vit_b16_is_the_official_one(b16: LoadedClip) -> None:
    method = MMA(b16, CLASSES, settings())
    official = OfficialAdapterLearner(512, 768, 12, 12, 5, 12, 32)
    assert trainable_count(method) == trainable_count(official) == 674_560  # 8 × (33 312 + 49 952 + 1 056)
    assert set(method.trainable_state()) == set(official.state_dict())  # the official key names
    for name, param in method.named_parameters():  # kaiming_normal(fan_out, relu) weights, zero biases
        if param.requires_grad and name.endswith("bias"):
            assert not param.any(), name
        elif param.requires_grad:
            std = (2.0 / param.shape[0]) ** 0.5
            assert abs(float(param.detach().std()) - std) < 0.1 * std, name


def test_adapters_sit_exactly_in_blocks_start_to_end_of_both_towers(b16: LoadedClip) -> None:
    method = MMA(b16, CLASSES, settings())  # official 5..12: 0-based blocks 4..11
    out: dict[str, Any] = {}

    def towers() -> Iterator[tuple[str, nn.ModuleList, Any]]:
        yield "vision", b16.model.visual.transformer.resblocks, lambda hooks: method.vision.forward_features(
            torch.randn(1, 3, 224, 224), before_block=hooks[:1], after_block=hooks[1:], return_layers=True)
        prompts = method.text.class_prompts(CLASSES[:1])
        yield "text", b16.model.transformer.resblocks, lambda hooks: method.text.forward_features(
            prompts, before_block=hooks[:1], after_block=hooks[1:], return_layers=True)

    adapters = {"vision": method.visual_adapter, "text": method.text_adapter}
    for tower, blocks, run in towers():
        hooks = method._hooks(adapters[tower], blocks, embeddings=tower == "vision")
        raw = block_outputs(blocks, lambda: out.__setitem__(tower, run(hooks)))  # noqa: B023
        adapted = [int((layer - plain).abs().max() > 0) for layer, plain in zip(out[tower].layers, raw, strict=True)]
        assert adapted == [0] * 4 + [1] * 8, tower


def test_layer_ranges_beyond_the_backbone_are_refused(demo_student: LoadedClip) -> None:
    with pytest.raises(SemptError, match="do not fit"):
        MMA(demo_student, CLASSES, settings(**{"mma.start_layer": 2, "mma.end_layer": 4}))  # 3 text blocks
    with pytest.raises(SemptError, match="do not fit"):
        MMA(demo_student, CLASSES, settings(**{"mma.start_layer": 3, "mma.end_layer": 2}))


def test_settings_have_their_own_flags() -> None:
    known = fields()  # refuses flags two settings share
    assert [known[f"mma.{name}"].flag for name in ("start_layer", "end_layer", "adapter_dim", "scale")] == [
        "--mma-start-layer", "--mma-end-layer", "--mma-adapter-dim", "--mma-scale"]


def test_presets_follow_the_official_configs() -> None:
    def preset(backbone: str = "ViT-B-16-quickgelu", **values: object) -> dict[str, Any]:
        return MMA.presets(settings(**values), backbone)

    b2n = preset(**{"data.dataset": "stanford_cars"})  # vit_b16_ep5.yaml, base2new_train.sh
    assert (b2n["train.optimizer"], b2n["train.lr"], b2n["train.epochs"], b2n["train.warmup_epochs"]) == (
        "sgd", 0.0015, 5, 0)
    assert (b2n["data.batch_size"], b2n["data.shots"], b2n["data.subsample"]) == (16, 16, "base")
    imagenet = preset(**{"data.dataset": "imagenet"})  # vit_b16_ep5_imnet.yaml
    assert (imagenet["data.batch_size"], imagenet["data.subsample"]) == (128, "base")
    for setting in ("cross-dataset", "cross-domain"):  # xd_train.sh: all ImageNet classes
        cross = preset(**{"data.dataset": "imagenet", "data.setting": setting})
        assert (cross["data.batch_size"], cross["data.subsample"], cross["train.epochs"]) == (128, "all", 5)
    assert preset(**{"data.setting": "few-shot"})["data.subsample"] == "all"
    demo = preset("sempt-demo-teacher", **{"data.dataset": "demo"})
    assert (demo["model.backbone"], demo["mma.start_layer"], demo["mma.end_layer"]) == (DEMO_STUDENT, 2, 3)
    assert (demo["train.lr"], demo["train.epochs"], demo["data.batch_size"]) == (0.05, 5, 16)


# ---------------------------------------------------------------------- SemPT on top
def test_sempt_on_mma_trains_the_adapters_and_the_fusion(demo_student: LoadedClip) -> None:
    mma = MMA(demo_student, CLASSES, settings(**{"mma.start_layer": 2, "mma.end_layer": 3}))
    novel = ["fish", "horse"]
    vectors = F.normalize(torch.randn(5, 6, int(demo_student.model.visual.output_dim)), dim=-1)
    wrapped = SemPT(mma, settings().sempt, AttributeBank(CLASSES + novel, vectors), CLASSES)
    batch = Batch(torch.randn(4, 3, 48, 48), torch.tensor([0, 1, 2, 0]), torch.arange(4))
    loss = wrapped.training_loss(batch)
    loss.total.backward()
    assert {"ce_lbl", "ce_enh"} <= set(loss.parts)
    assert wrapped.fusion.fc1.weight.grad is not None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mma.parameters() if p.requires_grad)
    wrapped.eval()
    with torch.no_grad():
        images = wrapped.image_embeddings(torch.randn(2, 3, 48, 48))
        torch.testing.assert_close(wrapped.classifier(CLASSES)(images), mma.classifier(CLASSES)(images))
        expected = wrapped.enhanced_logits(images, mma.class_embeddings(novel), vectors[3:])
        torch.testing.assert_close(wrapped.classifier(novel)(images), expected)


# ---------------------------------------------------------------------- the CLI on the demo world
@pytest.mark.slow
def test_train_eval_and_distill_with_sempt_through_the_cli(demo_cache: Path, tmp_path: Path) -> None:
    common = ["--dataset", "demo", "--workers", "0", "--cache-dir", str(demo_cache), "--output-dir",
              str(tmp_path / "runs")]  # the demo presets: 5 epochs of batch 16 on the demo student
    results = ["--results-dir", str(tmp_path / "records"), "--cache-dir", str(demo_cache), "--workers", "0"]
    runner = CliRunner()
    trained = runner.invoke(app, ["train-teacher", "--method", "mma", *common])
    assert trained.exit_code == 0, trained.output
    wrapped = runner.invoke(app, ["distill", "--baseline", "mma", *common])
    assert wrapped.exit_code == 0, wrapped.output
    checkpoints = sorted((tmp_path / "runs").rglob("model.safetensors"))
    variants = {load_learned(path).metadata.get("variant") or "": path for path in checkpoints}
    assert set(variants) == {"", "w/ SemPT"}, variants
    for variant, checkpoint in variants.items():
        meta = load_learned(checkpoint).metadata
        assert (meta["method"], meta["backbone"]) == ("mma", DEMO_STUDENT)
        table = runner.invoke(app, ["eval", str(checkpoint), *results])
        assert table.exit_code == 0, table.output
        assert "HM" in table.output and ("MMA w/ SemPT" in table.output) == bool(variant), table.output
