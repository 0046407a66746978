"""Official MaPLe checkpoints (trainers/maple.py, scripts/maple/*.sh): every learned tensor is mapped one to one, the
frozen CLIP copy and the class-list buffers are left out, the imported model gives the official forward's logits
on the file's tensors, export → import is the identity and exports the file's tensors bit for bit, the scripts'
folders are where exports go, and bad files are refused in one sentence."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import Tensor
from typer.testing import CliRunner

from sempt_cli.cli.app import app
from sempt_cli.errors import SemptError, WeightsError
from sempt_cli.interop.convert import ImportResult, export_official, import_teacher
from sempt_cli.interop.official import dataset_from_path, detect_layout, run_from_path
from sempt_cli.methods.maple import LEARNER, MAPLE_LAYOUT, MODEL_NAME, MaPLe, maple_folder
from sempt_cli.methods.promptsrc import PROMPTSRC_TEACHER
from sempt_cli.models import DEMO_STUDENT, LoadedClip, load_learned
from sempt_cli.models.official_layout import Geometry
from sempt_cli.pipeline.runs import load_teacher
from tests.blocks import block_inputs
from tests.interop.conftest import run_paths
from tests.interop.fakes import CONTEXT, save_dassl, widths
from tests.methods.test_maple import official_forward

DEMO_MAPLE = {"model.backbone": DEMO_STUDENT, "model.pretrained": "demo", "data.dataset": "demo"}
"""MaPLe's demo runs use the demo student (its ViT-B/16 stand-in); the demo world is never guessed from folders."""

DEPTH, LENGTH = 3, 2


def _quiet() -> Console:
    return Console(file=io.StringIO(), width=400)


def maple_state(clip: LoadedClip, depth: int, *, length: int = LENGTH, num_classes: int = 20, frozen: bool = True,
                seed: int = 5) -> dict[str, Tensor]:
    """A MaPLe `CustomCLIP.state_dict()` as PREC fp16 saves it: `ctx` and `proj` in fp16 (`self.proj.half()`), the
    deep text prompts and their projections in fp32, the fp16 `token_prefix`/`token_suffix` buffers of the training
    classes and the fp16 frozen CLIP (`image_encoder.*`, `text_encoder.*`, `logit_scale`)."""
    g = torch.Generator().manual_seed(seed)
    vision, text = widths(clip)

    def linear(out: int, into: int) -> tuple[Tensor, Tensor]:
        bound = 1 / into**0.5
        return (torch.rand(out, into, generator=g) - 0.5) * 2 * bound, (torch.rand(out, generator=g) - 0.5) * 2 * bound

    weight, bias = linear(vision, text)
    state = {f"{LEARNER}ctx": torch.randn(length, text, generator=g).half(),
             f"{LEARNER}proj.weight": weight.half(), f"{LEARNER}proj.bias": bias.half()}
    for index in range(depth - 1):
        state[f"{LEARNER}compound_prompts_text.{index}"] = torch.randn(length, text, generator=g) * 0.02
        weight, bias = linear(vision, text)
        state[f"{LEARNER}compound_prompt_projections.{index}.weight"] = weight
        state[f"{LEARNER}compound_prompt_projections.{index}.bias"] = bias
    state[f"{LEARNER}token_prefix"] = torch.randn(num_classes, 1, text, generator=g).half()
    state[f"{LEARNER}token_suffix"] = torch.randn(num_classes, CONTEXT - 1 - length, text, generator=g).half()
    if frozen:
        for key, value in clip.model.state_dict().items():
            if key.startswith("visual."):
                state["image_encoder." + key[len("visual."):]] = value.half()
            elif key.startswith(("transformer.", "positional_embedding", "ln_final.", "text_projection")):
                state["text_encoder." + key] = value.half()
            elif key == "logit_scale":
                state[key] = value.half()
    return state


def learned(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The file's learned tensors: the prompt learner without its class-list buffers."""
    return {k: v for k, v in state.items() if k.startswith(LEARNER) and "token_" not in k}


@pytest.fixture(scope="module")
def official_maple(root: Path, demo_student: LoadedClip) -> tuple[Path, dict[str, Tensor]]:
    state = maple_state(demo_student, DEPTH)
    return save_dassl(root / "maple" / "seed1" / MODEL_NAME / "model.pth.tar-5", state, epoch=5), state


@pytest.fixture(scope="module")
def imported_maple(root: Path, official_maple: tuple[Path, dict[str, Tensor]],
                   demo_student: LoadedClip) -> ImportResult:
    """Imported with no --method: the file's keys say MaPLe (although it holds `prompt_learner.ctx` too)."""
    return import_teacher(official_maple[0], overrides={**DEMO_MAPLE, **run_paths(root)}, env={}, clip=demo_student,
                          console=_quiet())


# ------------------------------------------------------------------------------------------------- the table


def test_maple_names_are_the_officials() -> None:
    """trainers/maple.py on ViT-B/16: ctx, proj, 8 deep text prompts and their 8 projections (PROMPT_DEPTH 9)."""
    geometry = Geometry({"vision": 9, "text": 9}, {"vision": 2, "text": 2}, {"vision": 768, "text": 512})
    names = MAPLE_LAYOUT.official_names(geometry)
    expected = {f"{LEARNER}ctx", f"{LEARNER}proj.weight", f"{LEARNER}proj.bias"}
    expected |= {f"{LEARNER}compound_prompts_text.{i}" for i in range(8)}
    expected |= {f"{LEARNER}compound_prompt_projections.{i}.{part}" for i in range(8) for part in ("weight", "bias")}
    assert set(names.values()) == expected and all(ours == official for ours, official in names.items())
    assert geometry.settings() == {"prompts.vision_depth": 9, "prompts.vision_length": 2, "prompts.text_depth": 9,
                                   "prompts.text_length": 2}
    assert MAPLE_LAYOUT.frozen_name("image_encoder.transformer.resblocks.3.attn.in_proj_weight") == \
        "visual.transformer.resblocks.3.attn.in_proj_weight"
    assert MAPLE_LAYOUT.frozen_name("text_encoder.ln_final.weight") == "ln_final.weight"
    assert MAPLE_LAYOUT.frozen_name(f"{LEARNER}proj.weight") is None
    assert {f"{LEARNER}token_prefix", f"{LEARNER}token_suffix"} == set(MAPLE_LAYOUT.dropped)


def test_geometry_is_read_off_the_tensors(demo_student: LoadedClip) -> None:
    geometry = MAPLE_LAYOUT.geometry(maple_state(demo_student, 4, length=3, frozen=False))
    assert (geometry.depths, geometry.lengths, geometry.widths) == (
        {"vision": 4, "text": 4}, {"vision": 3, "text": 3}, {"vision": 128, "text": 96})
    shallow = MAPLE_LAYOUT.geometry(maple_state(demo_student, 1, frozen=False))  # PROMPT_DEPTH 1: shallow MaPLe
    assert shallow.depths == {"vision": 1, "text": 1}


@pytest.mark.parametrize(
    ("dataset", "setting", "shots", "seed", "epoch", "expected"),
    [
        ("oxford_flowers", "base2novel", 16, 1, 5,
         "base2new/train_base/oxford_flowers/shots_16/MaPLe/vit_b16_c2_ep5_batch4_2ctx/seed1"),
        ("imagenet", "cross-dataset", 16, 3, 2,
         "imagenet/MaPLe/vit_b16_c2_ep5_batch4_2ctx_cross_datasets_16shots/seed3"),
        ("dtd", "few-shot", 4, 2, 5, "few_shot/dtd/shots_4/MaPLe/vit_b16_c2_ep5_batch4_2ctx/seed2"),
    ],
)
def test_export_folders_are_the_scripts_model_dirs(
    dataset: str, setting: str, shots: int, seed: int, epoch: int, expected: str,
) -> None:
    """base2new_train_maple.sh / xd_train_maple.sh write `output/...`; the test scripts read
    `<dir>/MultiModalPromptLearner/model.pth.tar-<load-epoch>` (5 and 2)."""
    path = maple_folder(dataset, setting, shots, seed, epoch)
    assert path == Path("output") / expected / MODEL_NAME / f"model.pth.tar-{epoch}"
    assert dataset_from_path(path) == (dataset, setting)  # so its import needs no --setting
    assert run_from_path(path) == ({"data.shots": shots, "data.seed": seed} if setting != "cross-dataset"
                                   else {"data.seed": seed})  # `16shots` is not a shots folder of its own


# ------------------------------------------------------------------------------------------------- import


def test_every_tensor_lands_and_the_model_gives_the_official_logits(
    root: Path, official_maple: tuple[Path, dict[str, Tensor]], imported_maple: ImportResult,
    demo_student: LoadedClip,
) -> None:
    """The teacher rebuilt from its sidecar alone (as `sempt eval` does) against the official forward re-stated on
    the file's own tensors and the same CLIP weights."""
    state = official_maple[1]
    method = load_teacher(imported_maple.checkpoint, "cpu", {"paths.cache_dir": str(root / "cache")})
    assert isinstance(method, MaPLe) and method.prompt_learner.depth == DEPTH
    ours = dict(method.prompt_learner.named_parameters())
    for key, value in learned(state).items():
        assert torch.equal(ours[key.removeprefix(LEARNER)].detach(), value.float()), key
    classnames = load_learned(imported_maple.checkpoint).metadata["train_classnames"]
    images, labels = torch.randn(2, 3, 48, 48), torch.tensor([0, 3])
    seen = block_inputs(method.backbone.visual.transformer.resblocks, lambda: method.image_embeddings(images))
    deep = F.linear(state[f"{LEARNER}compound_prompts_text.1"], state[f"{LEARNER}compound_prompt_projections.1.weight"],
                    state[f"{LEARNER}compound_prompt_projections.1.bias"])
    torch.testing.assert_close(seen[2][0, -LENGTH:], deep)  # block 2 gets the projection of deep text prompt 1
    with torch.no_grad():
        logits = method.logits(method.image_embeddings(images), method.class_embeddings(classnames))
        tensors = {key.removeprefix(LEARNER): value.float() for key, value in learned(state).items()}
        expected, _ = official_forward(demo_student, tensors, classnames, images, labels)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-5)


def test_sidecar_settings_and_report(official_maple: tuple[Path, dict[str, Tensor]],
                                     imported_maple: ImportResult) -> None:
    state = official_maple[1]
    ckpt = load_learned(imported_maple.checkpoint)
    meta = ckpt.metadata
    assert (meta["kind"], meta["method"], meta["backbone"], meta["dataset"]) == ("teacher", "maple", DEMO_STUDENT,
                                                                                   "demo")
    prompts = meta["settings"]["prompts"]
    assert (prompts["vision_depth"], prompts["text_depth"], prompts["vision_length"], prompts["text_length"]) == \
        (DEPTH, DEPTH, LENGTH, LENGTH)
    assert meta["imported_from"]["layout"] == "MaPLe" and meta["imported_from"]["epoch"] == 5
    assert imported_maple.checkpoint.parent.name.startswith("maple-base2novel-official-")
    assert len(ckpt.tensors) == imported_maple.tensors == len(learned(state)) == 3 + 3 * (DEPTH - 1)
    frozen = [k for k in state if k.startswith(("image_encoder.", "text_encoder.")) or k == "logit_scale"]
    assert imported_maple.frozen == len(frozen) > 0
    assert imported_maple.dropped == len(frozen) + 2  # + token_prefix, token_suffix
    assert imported_maple.warnings == []  # the frozen copy is the demo student's weights, rounded to fp16
    assert all(t.dtype == torch.float32 for t in ckpt.tensors.values())


def test_bad_files_are_refused_in_one_sentence(
    root: Path, official_maple: tuple[Path, dict[str, Tensor]], imported_maple: ImportResult,
    official_teacher: tuple[Path, dict[str, Tensor]], demo_student: LoadedClip,
) -> None:
    expected = load_learned(imported_maple.checkpoint).tensors
    state = dict(official_maple[1])
    del state[f"{LEARNER}compound_prompt_projections.1.bias"]
    with pytest.raises(WeightsError, match=r"lacks tensors .*compound_prompt_projections\.1\.bias"):
        MAPLE_LAYOUT.to_ours(state, expected, source="ckpt")
    cocoop = dict(official_maple[1], **{f"{LEARNER}meta_net.linear1.weight": torch.zeros(6, 96)})
    with pytest.raises(WeightsError, match=r"does not know where to put: prompt_learner\.meta_net\.linear1\.weight"):
        MAPLE_LAYOUT.to_ours(cocoop, expected, source="ckpt")
    wrong = dict(official_maple[1], **{f"{LEARNER}proj.weight": torch.zeros(100, 96)})
    with pytest.raises(WeightsError, match=r"proj\.weight is \(100, 96\) but the model expects \(128, 96\)"):
        MAPLE_LAYOUT.to_ours(wrong, expected, source="ckpt")
    deeper = maple_state(demo_student, 4, frozen=False)  # a fourth layer: more than the student's 3 text blocks
    path = save_dassl(root / "maple-too-deep" / "model.pth.tar-5", deeper, epoch=5)
    with pytest.raises(SemptError, match="exceeds the 3 blocks"):
        import_teacher(path, overrides={**DEMO_MAPLE, **run_paths(root)}, env={}, clip=demo_student, console=_quiet())

    overrides = {**DEMO_MAPLE, **run_paths(root)}
    with pytest.raises(WeightsError, match="is a MaPLe checkpoint, not a PromptSRC/IVLP one") as error:
        import_teacher(official_maple[0], method="promptsrc", overrides=overrides, env={})
    assert "--method maple" in str(error.value) and "\n" not in error.value.message
    with pytest.raises(WeightsError, match="is a PromptSRC/IVLP checkpoint, not a MaPLe one"):
        import_teacher(official_teacher[0], method="maple", overrides=overrides, env={})
    # both families' files hold prompt_learner.ctx: each is told apart by what accounts for all its tensors
    assert detect_layout(official_maple[1]) is MAPLE_LAYOUT
    assert detect_layout(official_teacher[1]) is PROMPTSRC_TEACHER


# ------------------------------------------------------------------------------------------------- export


def test_export_is_the_official_layout_bit_for_bit_and_imports_back_identically(
    root: Path, official_maple: tuple[Path, dict[str, Tensor]], imported_maple: ImportResult,
    demo_student: LoadedClip,
) -> None:
    exported = export_official(imported_maple.checkpoint)
    assert exported.path == imported_maple.checkpoint.parent / "official" / "output" / "base2new" / "train_base" / \
        "demo" / "shots_16" / "MaPLe" / "vit_b16_c2_ep5_batch4_2ctx" / "seed1" / MODEL_NAME / "model.pth.tar-5"
    assert (exported.layout, exported.epoch, exported.tensors) == ("MaPLe", 5, imported_maple.tensors)
    state = torch.load(exported.path, map_location="cpu", weights_only=True)["state_dict"]
    original = learned(official_maple[1])
    assert set(state) == set(original)  # no class-list buffers, no frozen CLIP
    for key, value in original.items():  # fp32 out; the file's own dtype (fp16 ctx and proj) back bit for bit
        assert state[key].dtype == torch.float32 and torch.equal(state[key].to(value.dtype), value), key

    again = import_teacher(exported.path, overrides={**DEMO_MAPLE, **run_paths(root)}, env={}, clip=demo_student,
                           console=_quiet())
    first, second = load_learned(imported_maple.checkpoint), load_learned(again.checkpoint)
    assert first.tensors.keys() == second.tensors.keys()
    assert all(torch.equal(first.tensors[k], second.tensors[k]) for k in first.tensors)


def test_cli_imports_and_exports_maple(tmp_path: Path, official_maple: tuple[Path, dict[str, Tensor]]) -> None:
    runner = CliRunner()
    flags = ["--backbone", DEMO_STUDENT, "--pretrained", "demo", "--dataset", "demo",
             "--output-dir", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache")]
    wide = {"COLUMNS": "500"}
    imported = runner.invoke(app, ["interop", "import-teacher", str(official_maple[0]), *flags], env=wide)
    assert imported.exit_code == 0, imported.output
    assert "Imported MaPLe checkpoint" in imported.output
    [checkpoint] = (tmp_path / "runs" / "teachers" / "demo").glob("maple-base2novel-official-*/model.safetensors")
    exported = runner.invoke(app, ["interop", "export", str(checkpoint), "--out", str(tmp_path / "MaPLe.pth.tar")],
                             env=wide)
    assert exported.exit_code == 0, exported.output
    assert "official MaPLe checkpoint" in exported.output and (tmp_path / "MaPLe.pth.tar").is_file()
