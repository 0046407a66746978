"""MaPLe (Khattak et al., CVPR 2023): multi-modal prompt learning with coupled vision-language prompts.

The official code is `trainers/maple.py` and the `ResidualAttentionBlock_MaPLe` / `VisionTransformer_MaPLe`
classes of `clip/model.py` (muzairkhattak/multimodal-prompt-learning, copied unchanged into PromptKD). Only the
text prompts are free parameters; the vision prompts are projections of them:

* text: `ctx` [n, W_t] replaces the context slots 1..n of "{ctx_init} {class}." at the input (it gets the
  positional embedding); before block i = 1..depth−1, `compound_prompts_text[i−1]` replaces them again. With
  N_CTX 2 and CTX_INIT "a photo of a", `ctx` starts as the embeddings of "a photo" and "of a {class}." stays
  fixed text; the deep text prompts start at N(0, 0.02²).
* vision: `proj(ctx)` [n, W_v] is appended after the patch tokens (no positional embedding) and passes through
  `ln_pre`; before block i = 1..depth−1 the trailing n tokens are replaced by
  `compound_prompt_projections[i−1](compound_prompts_text[i−1])`; from block `depth` on they flow on. Only the
  class token is pooled. These are exactly the IVLP positions of `models/prompted.py`, so the towers run MaPLe
  through their `prompts=` seam, each fed by the one prompt learner (`MultiModalPrompts`).
* `proj` and the projections are Linear W_t → W_v (512 → 768 on ViT-B/16) with PyTorch's default init; the
  depth−1 projections are deep copies of one Linear, so they start equal (the official `_get_clones`).
* loss: cross-entropy of `logit_scale.exp() · cos(image, text)` with CLIP's frozen logit scale.

Trainable parameters on ViT-B/16 at depth 9, n = 2: 1,024 + 393,984 + 8 × (1,024 + 393,984) = 3,555,072 (the
paper's 3.55 M).

Presets (official configs, `configs/trainers/MaPLe/`):

* base-to-novel `vit_b16_c2_ep5_batch4_2ctx.yaml`: SGD lr 0.0035, 5 epochs, batch 4, cosine with one warm-up
  epoch at a constant 1e-5, N_CTX 2, PROMPT_DEPTH 9, CTX_INIT "a photo of a", 16 shots of the base classes;
* cross-dataset and cross-domain `vit_b16_c2_ep5_batch4_2ctx_cross_datasets.yaml` (trained once on ImageNet's
  1000 classes, 16 shots): lr 0.0026, 2 epochs, PROMPT_DEPTH 3;
* few-shot: the authors give no config (MaPLe's paper has no few-shot experiment; the original repository has
  only the two configs above). We use the base-to-novel config on all classes. PromptKD's copy adds a
  `vit_b16_c2_ep20_batch8_2ctx.yaml` that no script uses; it is not a preset here;
* the demo world: the demo student (4 vision / 3 text blocks) stands in for ViT-B/16 as for MMRL, depth 3,
  batch 16, lr 0.01.

Interop (`sempt interop import-teacher | export`, `MAPLE_LAYOUT`): the released base-to-novel checkpoints
(`<dataset>/base/seed<k>/MultiModalPromptLearner/model.pth.tar-5`) and the scripts' own outputs import as MaPLe
runs (depth and length read off the tensors, the backbone guessed from the widths: 768/512 is ViT-B/16) and
export back to the folders the official test scripts read. Our learned tensors carry the official names, so the
mapping is one to one.

Prompt geometry is the `prompts` section: MaPLe has one depth and one length for both towers, so
`prompts.vision_depth` must equal `prompts.text_depth` and `prompts.vision_length` equal `prompts.text_length`
(the presets set both; a mismatch is refused in one sentence).

Deliberate differences from the official code (README methods table, docs/coming-from-official.md):

* precision: fp32 master weights under the engine's autocast (`model.precision`). The official PREC fp16 trains
  fp16 `ctx` and `proj` (`self.proj.half()`) with fp32 deep prompts and projections whose outputs are cast to
  fp16; its PREC fp32 does not run at all (an fp16 `proj` on fp32 `ctx`). `--precision fp16` comes closest: the
  frozen CLIP in the official fp16 layout, fp16 activations, the projections under fp16 autocast;
* the projection widths are read from the backbone (W_t → W_v) instead of the hard-coded 512 → 768, so other
  backbones and the demo CLIPs work; on ViT-B/16 they are the same;
* the context initialisation uses `ctx_init` when it has at least n words (the official code: when n ≤ 4); both
  hold for "a photo of a" with n = 2;
* text runs only up to the last EOT token (exact under the causal mask, spec §6.3);
* model selection: the last epoch (`train.select last`), as the released checkpoints (`model.pth.tar-5`) and the
  test scripts (`--load-epoch 5`) use; PromptKD's copy of the base-to-novel config says FINAL_MODEL best_val,
  which with its datasets' val = test selects on the test split (`--select official-best` does that).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sempt_cli.engine.cache import TensorCache
from sempt_cli.errors import SettingsError
from sempt_cli.methods.common import DEMO_BATCH_AND_CROPS, PerClassList
from sempt_cli.models.factory import DEMO_STUDENT, LoadedClip
from sempt_cli.models.official_layout import Geometry, Layout, TensorRule
from sempt_cli.models.prompted import PROMPT_STD, PromptedTextTower, PromptedVisionTower, PromptSpec
from sempt_cli.presets import Presets, Rule
from sempt_cli.protocol import Batch, Method, TrainingForward, cross_entropy_head, register_method
from sempt_cli.settings import Settings

MAPLE_PRESETS = Presets(
    Rule({"train.optimizer": "sgd", "train.lr": 0.0035, "train.epochs": 5, "data.batch_size": 4,
          "train.warmup_epochs": 1, "train.warmup_lr": 1e-5,
          "prompts.vision_depth": 9, "prompts.text_depth": 9, "prompts.vision_length": 2, "prompts.text_length": 2,
          "prompts.ctx_init": "a photo of a", "data.shots": 16, "data.subsample": "base"}),
    Rule({"train.lr": 0.0026, "train.epochs": 2, "prompts.vision_depth": 3, "prompts.text_depth": 3,
          "data.subsample": "all"}, when={"data.setting": ("cross-dataset", "cross-domain")}),
    Rule({"data.subsample": "all"}, when={"data.setting": "few-shot"}),
    Rule({"model.backbone": DEMO_STUDENT, "train.lr": 0.01}, when={"demo": True}),
    DEMO_BATCH_AND_CROPS,
    Rule({"prompts.vision_depth": 3, "prompts.text_depth": 3},
         when={"demo": True, "preset:prompts.text_depth": lambda depth: depth > 3}),
)
"""The official MaPLe configs (module docstring); on the demo world the student CLIP at depth 3 (its 3 text
blocks), CPU-sized batches and crops."""


class MultiModalPrompts(nn.Module):
    """MaPLe's prompt learner: the text prompts of every layer and the Linear maps that make the vision prompts.

    Parameter names are the official `MultiModalPromptLearner`'s (`ctx`, `proj`, `compound_prompts_text.{i}`,
    `compound_prompt_projections.{i}`), so the official checkpoint layout maps one to one."""

    def __init__(self, depth: int, length: int, text_width: int, vision_width: int,
                 device: torch.device | None = None) -> None:
        super().__init__()
        self.depth = depth
        self.ctx = nn.Parameter(torch.empty(length, text_width, device=device).normal_(std=PROMPT_STD))
        self.proj = nn.Linear(text_width, vision_width, device=device)
        self.compound_prompts_text = nn.ParameterList(
            nn.Parameter(torch.empty(length, text_width, device=device).normal_(std=PROMPT_STD))
            for _ in range(depth - 1)
        )
        single = nn.Linear(text_width, vision_width, device=device)
        self.compound_prompt_projections = nn.ModuleList(copy.deepcopy(single) for _ in range(depth - 1))

    def text(self, layer: int) -> Tensor | None:
        """The text prompts of tower layer `layer` (0 = input level, i = before block i); None past the depth."""
        if layer == 0:
            return self.ctx
        return self.compound_prompts_text[layer - 1] if layer < self.depth else None

    def vision(self, layer: int) -> Tensor | None:
        """The vision prompts of `layer`: the text prompts of the same layer, projected into the vision width."""
        if layer == 0:
            return self.proj(self.ctx)
        if layer < self.depth:
            return self.compound_prompt_projections[layer - 1](self.compound_prompts_text[layer - 1])
        return None


class PromptFeed(nn.Module):
    """A tower's `prompts=` source that reads its tokens from a module the tower does not own, so that the prompt
    learner's parameters are registered once (on the method, under their official names) and both towers read
    the same tensors."""

    def __init__(self, read: Callable[[int], Tensor | None] | None = None) -> None:
        super().__init__()
        self.read: Callable[[int], Tensor | None] = read or _nothing

    def forward(self, layer: int, x: Tensor) -> Tensor | None:
        return self.read(layer)


MODEL_NAME = "MultiModalPromptLearner"
"""The name MaPLe's trainer registers its model under: the folder its checkpoints sit in."""

CONFIGS = {"base2novel": "vit_b16_c2_ep5_batch4_2ctx", "cross-dataset": "vit_b16_c2_ep5_batch4_2ctx_cross_datasets"}
"""The MaPLe config (`configs/trainers/MaPLe/<cfg>.yaml`) per setting; cross-domain uses the cross-dataset model."""

LEARNER = "prompt_learner."
CTX, PROJ = f"{LEARNER}ctx", f"{LEARNER}proj"
DEEP_TEXT, DEEP_PROJECTION = f"{LEARNER}compound_prompts_text", f"{LEARNER}compound_prompt_projections"
_DEEP_INDEX = re.compile(rf"(?:{re.escape(DEEP_TEXT)}|{re.escape(DEEP_PROJECTION)})\.(\d+)(?:\.weight|\.bias)?$")


def maple_folder(dataset: str, setting: str, shots: int, seed: int, epoch: int) -> Path:
    """Where MaPLe's scripts write (and `--model-dir` reads) a model, relative to its repository root:
    `scripts/maple/base2new_train_maple.sh` writes `output/base2new/train_base/<dataset>/shots_<k>/MaPLe/<cfg>/
    seed<s>`, which `base2new_test_maple.sh` loads at `--load-epoch 5`; `xd_train_maple.sh` writes
    `output/<dataset>/MaPLe/<cfg>_<k>shots/seed<s>`, which `xd_test_maple.sh` loads at `--load-epoch 2`.
    Few-shot has no official script; we put such runs in `output/few_shot/<dataset>/shots_<k>/MaPLe/<cfg>/seed<s>`
    with the base-to-novel config, whose hyper-parameters they use."""
    if setting in ("cross-dataset", "cross-domain"):
        run = Path("output") / dataset / "MaPLe" / f"{CONFIGS['cross-dataset']}_{shots}shots" / f"seed{seed}"
    else:
        task = Path("few_shot") if setting == "few-shot" else Path("base2new") / "train_base"
        run = Path("output") / task / dataset / f"shots_{shots}" / "MaPLe" / CONFIGS["base2novel"] / f"seed{seed}"
    return run / MODEL_NAME / f"model.pth.tar-{epoch}"


@dataclass(frozen=True)
class CoupledPromptLayout(Layout):
    """MaPLe's checkpoint layout. Its names are ours (`prompt_learner.*`, `MultiModalPrompts`), so every rule is
    one to one; what the generic per-tower stacks cannot say is that one depth and one length serve both towers,
    the vision side being the projections: depth = 1 + the deep prompt sets, length and text width from `ctx`
    [n, W_t], vision width from `proj.weight` [W_v, W_t]."""

    def geometry(self, keys_and_shapes: Mapping[str, Tensor], *, official: bool = True) -> Geometry:
        deep = [int(match.group(1)) for key in keys_and_shapes if (match := _DEEP_INDEX.match(key))]
        depth = max([2 + index for index in deep] + [1 if CTX in keys_and_shapes else 0])
        ctx, proj = keys_and_shapes.get(CTX), keys_and_shapes.get(f"{PROJ}.weight")
        length, text_width = tuple(ctx.shape) if ctx is not None and ctx.dim() == 2 else (0, 0)
        vision_width = int(proj.shape[0]) if proj is not None and proj.dim() == 2 else 0
        towers = ("vision", "text")
        return Geometry(dict.fromkeys(towers, depth), dict.fromkeys(towers, int(length)),
                        {"vision": vision_width, "text": int(text_width)})

    def rules(self, geometry: Geometry) -> list[TensorRule]:
        depth = geometry.depths.get("text", 0)
        names = [CTX, f"{PROJ}.weight", f"{PROJ}.bias"] if depth else []
        for index in range(depth - 1):
            names += [f"{DEEP_TEXT}.{index}", f"{DEEP_PROJECTION}.{index}.weight", f"{DEEP_PROJECTION}.{index}.bias"]
        return [TensorRule(name, name) for name in names]


MAPLE_LAYOUT = CoupledPromptLayout(
    name="MaPLe",
    kind="teacher",
    methods=("maple",),
    stacks=(),
    marker=f"{PROJ}.",
    folder=lambda place: maple_folder(place.dataset, place.setting, place.shots, place.seed, place.epoch),
    frozen=(("image_encoder.", "visual."), ("text_encoder.", ""), ("logit_scale", "logit_scale")),
    dropped=(f"{LEARNER}token_prefix", f"{LEARNER}token_suffix"),
    hint="Pass the --backbone it was trained on (ViT-B-16-quickgelu for the official MaPLe).",
)
"""MaPLe's `CustomCLIP` (trainers/maple.py) as Dassl saves it: the `MultiModalPromptLearner` (`ctx` [n, 512] and
`proj` in fp16 under PREC fp16, the deep text prompts [n, 512] and their `Linear(512, 768)` projections in fp32),
its `token_prefix`/`token_suffix` buffers, which `MaPLe.load_model` deletes, and the whole frozen CLIP
(`image_encoder.*` = the visual tower, `text_encoder.*` = transformer, positional embedding, ln_final and
text_projection, `logit_scale`). Files of PromptSRC/IVLP also hold `prompt_learner.ctx`; `proj` tells them apart."""


def _nothing(layer: int) -> Tensor | None:
    return None


def _geometry(settings: Settings) -> tuple[int, int]:
    """(depth, length) of MaPLe's coupled prompts, refusing a vision geometry that differs from the text one."""
    prompts = settings.prompts
    if prompts.vision_depth != prompts.text_depth:
        raise SettingsError(
            f"MaPLe couples its prompts, so the vision and text prompt depths must be equal "
            f"(got {prompts.vision_depth} and {prompts.text_depth}).", "Pass --vision-depth and --text-depth together.")
    if prompts.vision_length != prompts.text_length:
        raise SettingsError(
            f"MaPLe couples its prompts, so the vision and text prompt lengths must be equal "
            f"(got {prompts.vision_length} and {prompts.text_length}).",
            "Pass --vision-length and --text-length together.")
    if prompts.text_depth < 1:
        raise SettingsError("MaPLe needs a prompt depth of at least 1 (the input-level prompts).")
    return prompts.text_depth, prompts.text_length


@register_method
class MaPLe(Method):
    """Coupled deep vision-language prompts: the vision prompts are linear projections of the text prompts."""

    name = "maple"
    title = "MaPLe"
    description = "Multi-modal prompt learning: deep text prompts projected into the vision tower (CVPR'23)."
    preset_table = MAPLE_PRESETS
    official_layout = MAPLE_LAYOUT
    settings_sections = ("prompts",)

    def __init__(
        self, clip: LoadedClip, train_classnames: Sequence[str], settings: Settings, cache: TensorCache | None = None
    ) -> None:
        super().__init__(train_classnames)
        depth, length = _geometry(settings)
        self.backbone = clip.model
        self.backbone.requires_grad_(False)
        device = self.backbone.logit_scale.device
        spec, text_feed, vision_feed = PromptSpec(depth, length), PromptFeed(), PromptFeed()
        self.vision = PromptedVisionTower(self.backbone.visual, spec, prompts=vision_feed)
        self.text = PromptedTextTower(self.backbone, spec, ctx_init=settings.prompts.ctx_init,
                                      tokenizer=clip.tokenizer, prompts=text_feed)
        self.prompt_learner = MultiModalPrompts(depth, length, self.text.width, self.vision.width, device=device)
        text_feed.read, vision_feed.read = self.prompt_learner.text, self.prompt_learner.vision
        if self.text.ctx_init_vectors is not None:  # "a photo of a": ctx starts as the embeddings of its first words
            with torch.no_grad():
                self.prompt_learner.ctx.copy_(self.text.ctx_init_vectors)
        self.prompts = PerClassList(self.text.class_prompts, self.train_classnames)

    # ------------------------------------------------------------------ protocol
    def logit_scale(self) -> Tensor:
        return self.backbone.logit_scale.exp()

    def image_embeddings(self, images: Tensor) -> Tensor:
        return F.normalize(self.vision(images), dim=-1)

    def class_embeddings(self, classnames: Sequence[str]) -> Tensor:
        return F.normalize(self.text.encode(self.prompts(classnames)), dim=-1)

    def training_forward(self, batch: Batch) -> TrainingForward:
        text = self.class_embeddings(self.train_classnames)
        image = self.image_embeddings(batch.images)

        return TrainingForward(image, text, cross_entropy_head(batch.labels))
