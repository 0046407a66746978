"""Official MMRL checkpoints (spec/mmrl.md §1.2–§1.5, §6.15): every tensor lands where the spec says, EuroSAT's
d_r = 2048 and the start layer come from the shapes, `prompt_embeddings` and the frozen CLIP are left out (the
latter checked), export → import is the identity, and a pickled payload is refused unrun."""

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
from sempt_cli.data.demo import ensure_demo_world
from sempt_cli.errors import SettingsError, WeightsError
from sempt_cli.interop.convert import ImportResult, export_official, import_student, import_teacher
from sempt_cli.interop.dassl import read_dassl_checkpoint
from sempt_cli.interop.official import dataset_from_path, run_from_path
from sempt_cli.methods.mmrl import MMRL, MMRL_TEACHER, mmrl_folder
from sempt_cli.models import DEMO_STUDENT, LoadedClip, load_clip, load_learned, save_learned
from sempt_cli.models.official_layout import RepresentationGeometry
from sempt_cli.pipeline.evaluation import evaluate_checkpoint
from sempt_cli.pipeline.runs import load_teacher
from sempt_cli.settings import load_settings
from tests.blocks import block_inputs
from tests.interop.conftest import run_paths
from tests.interop.fakes import mmrl_state, save_dassl
from tests.interop.test_safety import Payload

DEMO_MMRL = {"model.backbone": DEMO_STUDENT, "model.pretrained": "demo", "data.dataset": "demo"}
"""MMRL's demo runs use the demo student (4 vision / 3 text blocks, `mmrl_demo_overrides`)."""

START = 2  # the demo preset's start layer: 3 vision and 2 text aligners on the demo student
REP_DIM = 48  # neither the preset's 512 nor 2048: the import can only have read it off the tensors
TOKENS = 3
SPACE = "representation_learner.compound_rep_tokens"


def _quiet() -> Console:
    return Console(file=io.StringIO(), width=400)


def _aligner(state: dict[str, Tensor], tower: str, index: int) -> tuple[Tensor, Tensor]:
    prefix = f"{SPACE}_{'r2vproj' if tower == 'vision' else 'r2tproj'}.{index}"
    return state[f"{prefix}.weight"], state[f"{prefix}.bias"]


@pytest.fixture(scope="module")
def official_mmrl(root: Path, demo_student: LoadedClip) -> tuple[Path, dict[str, Tensor]]:
    """An MMRL run of the demo student as the official code saves it (whole CustomCLIP, AdamW in the scheduler)."""
    state = mmrl_state(demo_student, START, rep_dim=REP_DIM, tokens=TOKENS)
    path = root / "mmrl" / "seed1" / "MultiModalRepresentationLearner" / "model.pth.tar-10"
    return save_dassl(path, state, epoch=10), state


@pytest.fixture(scope="module")
def imported_mmrl(root: Path, official_mmrl: tuple[Path, dict[str, Tensor]], demo_student: LoadedClip) -> ImportResult:
    """Imported with no --method: the file's keys say MMRL."""
    return import_teacher(official_mmrl[0], overrides={**DEMO_MMRL, **run_paths(root)}, env={}, clip=demo_student,
                          console=_quiet())


def _assert_tokens_enter_where_the_spec_says(method: MMRL, state: dict[str, Tensor], start: int) -> None:
    """Official aligner i (REP_LAYERS[i] = start + i, 1-based) gives positions 1..K entering that block, in both
    towers; blocks before the start see the plain sequence."""
    clip = method.backbone
    tokens = state[SPACE].float()
    size = int(clip.visual.image_size[0] if isinstance(clip.visual.image_size, tuple) else clip.visual.image_size)
    vision = block_inputs(clip.visual.transformer.resblocks,
                           lambda: method.image_embeddings(torch.randn(2, 3, size, size)))
    text = block_inputs(clip.transformer.resblocks, lambda: method.class_embeddings(["zorp", "blick"]))
    for tower, seen in (("vision", vision), ("text", text)):
        plain = seen[start - 2].shape[1]  # the block before the start: no representation tokens yet
        for index in range(len(seen) - start + 1):
            block = start - 1 + index  # 0-based index of the 1-based block start + index
            weight, bias = _aligner(state, tower, index)
            expected = F.linear(tokens, weight.float(), bias.float())
            assert seen[block].shape[1] == plain + tokens.shape[0], (tower, block)
            torch.testing.assert_close(seen[block][0, 1 : 1 + tokens.shape[0]], expected, msg=f"{tower} {block}")


# ------------------------------------------------------------------------------------------------- the table


def test_mmrl_names_are_the_specs() -> None:
    """Spec §1.5 / trainers/mmrl.py: compound_rep_tokens, the r2vproj/r2tproj ModuleLists, image_encoder.proj_rep."""
    geometry = RepresentationGeometry({"vision": 7, "text": 7}, {"vision": 5, "text": 5},
                                      {"vision": 768, "text": 512}, rep_dim=512)
    names = MMRL_TEACHER.official_names(geometry)
    expected = {SPACE, "image_encoder.proj_rep"} | {
        f"{SPACE}_{proj}.{i}.{part}" for proj in ("r2vproj", "r2tproj") for i in range(7) for part in ("weight", "bias")
    }
    assert set(names.values()) == expected and len(names) == 30
    assert names["space.tokens"] == SPACE and names["proj_rep"] == "image_encoder.proj_rep"
    assert names["space.vision.1.weight"] == f"{SPACE}_r2vproj.1.weight"  # REP_LAYERS[1] = block 7
    assert names["space.text.6.bias"] == f"{SPACE}_r2tproj.6.bias"
    placed = geometry.placed({"vision": 12, "text": 12}, "file")
    assert placed.settings() == {"mmrl.num_tokens": 5, "mmrl.rep_dim": 512, "mmrl.start_layer": 6}
    assert "vision blocks 6..12, text blocks 6..12" in placed.describe()
    assert MMRL_TEACHER.frozen_name("image_encoder.proj_rep") is None  # learned, under the frozen image prefix
    assert MMRL_TEACHER.frozen_name("image_encoder.proj") == "visual.proj"
    assert MMRL_TEACHER.frozen_name("text_encoder.text_projection") == "text_projection"
    assert MMRL_TEACHER.frozen_name("text_encoder.transformer.resblocks.5.mlp.c_fc.weight") == \
        "transformer.resblocks.5.mlp.c_fc.weight"
    assert "prompt_embeddings" in MMRL_TEACHER.dropped


@pytest.mark.parametrize(
    ("dataset", "setting", "shots", "seed", "epochs", "expected"),
    [
        ("eurosat", "base2novel", 16, 1, 10, "base2new/train_base/eurosat/shots_16/MMRL/vit_b16/seed1"),
        ("imagenet", "base2novel", 16, 2, 5, "base2new/train_base/imagenet/shots_16/MMRL/vit_b16_imagenet/seed2"),
        ("dtd", "few-shot", 2, 3, 50, "few_shot/dtd/shots_2/MMRL/vit_b16_few_shot/seed3"),
        ("imagenet", "few-shot", 4, 1, 5, "few_shot/imagenet/shots_4/MMRL/vit_b16_imagenet/seed1"),
        ("imagenet", "cross-dataset", 16, 1, 1,
         "base2new/train_base/imagenet/shots_16/MMRL/vit_b16_cross_datasets/seed1"),
    ],
)
def test_export_folders_are_the_scripts_model_dirs_and_read_back(
    dataset: str, setting: str, shots: int, seed: int, epochs: int, expected: str,
) -> None:
    """scripts/mmrl/*.sh write `output/...` and `--model-dir` reads `<dir>/MultiModalRepresentationLearner/`."""
    path = mmrl_folder(dataset, setting, shots, seed, epochs)
    assert path == Path("output") / expected / "MultiModalRepresentationLearner" / f"model.pth.tar-{epochs}"
    assert dataset_from_path(path) == (dataset, setting)  # cross-dataset despite its base2new folder
    assert run_from_path(path) == {"data.shots": shots, "data.seed": seed}


# ------------------------------------------------------------------------------------------------- import


def test_every_mmrl_tensor_lands_where_the_spec_says(
    root: Path, official_mmrl: tuple[Path, dict[str, Tensor]], imported_mmrl: ImportResult,
) -> None:
    """By parameter and by what enters each block of the teacher rebuilt from its sidecar alone (as `sempt eval`
    does)."""
    state = official_mmrl[1]
    method = load_teacher(imported_mmrl.checkpoint, "cpu", {"paths.cache_dir": str(root / "cache")})
    assert isinstance(method, MMRL) and method.first_block == START - 1
    assert torch.equal(method.space.tokens.detach(), state[SPACE])
    assert torch.equal(method.proj_rep.detach(), state["image_encoder.proj_rep"])
    assert (len(method.space.vision), len(method.space.text)) == (3, 2)  # demo student: 4 / 3 blocks from block 2
    for tower, aligners in (("vision", method.space.vision), ("text", method.space.text)):
        for index, linear in enumerate(aligners):
            weight, bias = _aligner(state, tower, index)
            assert torch.equal(linear.weight.detach(), weight) and torch.equal(linear.bias.detach(), bias)
    _assert_tokens_enter_where_the_spec_says(method, state, START)


def test_mmrl_sidecar_settings_and_report(
    official_mmrl: tuple[Path, dict[str, Tensor]], imported_mmrl: ImportResult,
) -> None:
    state = official_mmrl[1]
    ckpt = load_learned(imported_mmrl.checkpoint)
    meta = ckpt.metadata
    assert (meta["kind"], meta["method"], meta["backbone"], meta["dataset"]) == ("teacher", "mmrl", DEMO_STUDENT,
                                                                                   "demo")
    assert meta["train_classnames"] == meta["classnames"][:20]  # base2novel: the base classes
    space = meta["settings"]["mmrl"]
    assert (space["rep_dim"], space["num_tokens"], space["start_layer"]) == (REP_DIM, TOKENS, START)
    assert meta["imported_from"]["layout"] == "MMRL" and meta["imported_from"]["epoch"] == 10
    assert imported_mmrl.checkpoint.parent.name.startswith("mmrl-base2novel-official-")
    learned = {k for k in state if k.startswith("representation_learner.") or k == "image_encoder.proj_rep"}
    assert len(ckpt.tensors) == imported_mmrl.tensors == len(learned) == 1 + 1 + 2 * (3 + 2)
    frozen = [k for k in state if k.startswith(("image_encoder.", "text_encoder.")) and k != "image_encoder.proj_rep"]
    assert imported_mmrl.frozen == len(frozen) > 0  # the frozen CLIP copy, compared and counted
    assert imported_mmrl.dropped == len(frozen) + 1  # + prompt_embeddings
    assert imported_mmrl.warnings == []  # the frozen copy is the demo student's own weights
    assert all(t.dtype == torch.float32 for t in ckpt.tensors.values())


def test_prompt_embeddings_are_dropped_whatever_their_class_count(
    root: Path, official_mmrl: tuple[Path, dict[str, Tensor]], imported_mmrl: ImportResult, demo_student: LoadedClip,
) -> None:
    """The buffer is [C, 77, width] of the training classes (20 here, vs the 40 the demo has in all): the official
    load_model deletes it and so does the import; it is in neither our checkpoint nor the export."""
    state = official_mmrl[1]
    assert state["prompt_embeddings"].shape == (20, 77, 96)
    mapped = MMRL_TEACHER.to_ours(state, load_learned(imported_mmrl.checkpoint).tensors, source="ckpt")
    assert set(mapped) == set(load_learned(imported_mmrl.checkpoint).tensors)  # learned tensors only
    other = dict(state, prompt_embeddings=torch.randn(7, 77, 96))
    path = save_dassl(root / "mmrl-7-classes" / "model.pth.tar-10", other, epoch=10)
    again = import_teacher(path, overrides={**DEMO_MMRL, **run_paths(root)}, env={}, clip=demo_student,
                           console=_quiet())
    first, second = load_learned(imported_mmrl.checkpoint).tensors, load_learned(again.checkpoint).tensors
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    exported = torch.load(export_official(again.checkpoint).path, weights_only=True)["state_dict"]
    assert "prompt_embeddings" not in exported


def test_eurosat_wide_space_and_start_layer_on_the_official_b16(root: Path) -> None:
    """The official shapes: ViT-B/16, REP_LAYERS 6..12 (7 aligners per tower), d_r = 2048 for EuroSAT (spec §4.4),
    18,762,496 learned parameters (§1.5); the aligner of layer 7 feeds block 7. The backbone is guessed from the
    aligners' widths (768/512), dataset, setting, shots and seed from the scripts' folders, and the older
    `MultiModalPromptLearner` folder name is fine."""
    torch.manual_seed(0)
    b16 = load_clip("ViT-B-16-quickgelu", None)
    state = mmrl_state(b16, 6, rep_dim=2048, num_classes=5, frozen=False)
    assert state[f"{SPACE}_r2vproj.6.weight"].shape == (768, 2048) and state["image_encoder.proj_rep"].shape == (768,
                                                                                                                  512)
    folder = root / "output" / "base2new" / "train_base" / "eurosat" / "shots_16" / "MMRL" / "vit_b16" / "seed2"
    path = save_dassl(folder / "MultiModalPromptLearner" / "model.pth.tar-10", state, epoch=10)
    result = import_teacher(path, overrides={"model.pretrained": "none", **run_paths(root)}, env={}, clip=b16,
                            console=_quiet())
    settings = result.settings
    assert settings.model.backbone == "ViT-B-16-quickgelu"
    assert (settings.data.dataset, settings.data.setting, settings.data.shots, settings.data.seed) == \
        ("eurosat", "base2novel", 16, 2)
    assert (settings.mmrl.rep_dim, settings.mmrl.num_tokens, settings.mmrl.start_layer) == (2048, 5, 6)
    assert settings.mmrl.reg_weight == 0.01  # the rest is EuroSAT's preset (trainers/config.py)
    assert "vision blocks 6..12, text blocks 6..12" in result.geometry.describe()
    ckpt = load_learned(result.checkpoint)
    assert sum(t.numel() for t in ckpt.tensors.values()) == 18_762_496
    assert len(ckpt.metadata["train_classnames"]) == 5  # EuroSAT base classes
    method = MMRL(b16, ckpt.metadata["train_classnames"], settings)
    method.load_trainable_state(ckpt.tensors)
    assert torch.equal(method.space.vision[1].weight.detach(), state[f"{SPACE}_r2vproj.1.weight"])  # layer 7
    _assert_tokens_enter_where_the_spec_says(method, state, 6)


def test_the_file_decides_the_space_over_presets_and_flags(root: Path, demo_student: LoadedClip) -> None:
    """A EuroSAT folder makes the preset's d_r 2048, but the file's 48 wins; a flag that disagrees is refused."""
    state = mmrl_state(demo_student, START, rep_dim=REP_DIM, frozen=False, seed=4)
    path = save_dassl(root / "eurosat" / "MultiModalRepresentationLearner" / "model.pth.tar-10", state, epoch=10)
    base = {"model.backbone": DEMO_STUDENT, "model.pretrained": "demo", **run_paths(root)}
    result = import_teacher(path, overrides=base, env={}, clip=demo_student, console=_quiet())
    assert result.settings.data.dataset == "eurosat" and result.settings.mmrl.rep_dim == REP_DIM
    with pytest.raises(SettingsError, match=r"mmrl\.rep_dim = 2048 was given"):
        import_teacher(path, overrides={**base, "mmrl.rep_dim": "2048"}, env={}, clip=demo_student, console=_quiet())
    with pytest.raises(SettingsError, match=r"mmrl\.start_layer = 3 was given"):
        import_teacher(path, overrides={**base, "mmrl.start_layer": "3"}, env={}, clip=demo_student,
                       console=_quiet())


def test_gaps_strangers_and_wrong_shapes_are_named(
    root: Path, official_mmrl: tuple[Path, dict[str, Tensor]], imported_mmrl: ImportResult, demo_student: LoadedClip,
) -> None:
    expected = load_learned(imported_mmrl.checkpoint).tensors
    state = dict(official_mmrl[1])
    del state[f"{SPACE}_r2tproj.0.bias"]
    with pytest.raises(WeightsError, match=rf"lacks tensors .*{SPACE}_r2tproj\.0\.bias"):
        MMRL_TEACHER.to_ours(state, expected, source="ckpt")
    mmrlpp = dict(official_mmrl[1])  # MMRL++'s shared residual aligners (trainers/mmrlpp.py)
    mmrlpp["representation_learner.srra_r2vproj.weight"] = torch.zeros(128, REP_DIM)
    with pytest.raises(WeightsError, match=r"does not know where to put: representation_learner\.srra_r2vproj"):
        MMRL_TEACHER.to_ours(mmrlpp, expected, source="ckpt")
    wrong = dict(official_mmrl[1], **{"image_encoder.proj_rep": torch.zeros(128, 512)})
    with pytest.raises(WeightsError, match=r"proj_rep is \(128, 512\) but the model expects \(128, 96\)"):
        MMRL_TEACHER.to_ours(wrong, expected, source="ckpt")
    extra = dict(official_mmrl[1])  # a fourth vision aligner: one more block than the demo student has after 1
    extra[f"{SPACE}_r2vproj.3.weight"] = torch.zeros(128, REP_DIM)
    extra[f"{SPACE}_r2vproj.3.bias"] = torch.zeros(128)
    path = save_dassl(root / "mmrl-uneven" / "model.pth.tar-10", extra, epoch=10)
    with pytest.raises(WeightsError, match="4 vision aligners and 2 text aligners, which do not fit"):
        import_teacher(path, overrides={**DEMO_MMRL, **run_paths(root)}, env={}, clip=demo_student, console=_quiet())


def test_frozen_clip_of_another_backbone_is_reported(root: Path, demo_student: LoadedClip) -> None:
    torch.manual_seed(6)
    other = load_clip(DEMO_STUDENT, None)  # same architecture, random weights
    path = save_dassl(root / "mmrl-other" / "model.pth.tar-10", mmrl_state(other, START), epoch=10)
    result = import_teacher(path, overrides={**DEMO_MMRL, **run_paths(root)}, env={}, clip=demo_student,
                            console=_quiet())
    assert len(result.warnings) == 1 and "differ from sempt-demo-student" in result.warnings[0]
    state = mmrl_state(demo_student, START)
    state["text_encoder.positional_embedding"] = torch.zeros(64, 96)  # another context length
    path = save_dassl(root / "mmrl-other-arch" / "model.pth.tar-10", state, epoch=10)
    with pytest.raises(WeightsError, match="trained on another backbone"):
        import_teacher(path, overrides={**DEMO_MMRL, **run_paths(root)}, env={}, clip=demo_student, console=_quiet())


def test_files_of_other_families_are_told_apart(
    root: Path, official_mmrl: tuple[Path, dict[str, Tensor]], official_teacher: tuple[Path, dict[str, Tensor]],
    imported_teacher: ImportResult,
) -> None:
    with pytest.raises(WeightsError, match="is an MMRL checkpoint, not a PromptSRC/IVLP one") as error:
        import_teacher(official_mmrl[0], method="promptsrc", overrides={**DEMO_MMRL, **run_paths(root)}, env={})
    assert "--method mmrl" in str(error.value)
    with pytest.raises(WeightsError, match="is a PromptSRC/IVLP checkpoint, not an MMRL one") as error:
        import_teacher(official_teacher[0], method="mmrl", overrides={**DEMO_MMRL, **run_paths(root)}, env={})
    assert "--method promptsrc" in str(error.value)
    with pytest.raises(WeightsError, match="is an MMRL checkpoint, not a PromptKD student one"):
        import_student(official_mmrl[0], imported_teacher.checkpoint, overrides=run_paths(root), env={})


def test_a_pickled_payload_in_an_mmrl_file_is_refused_without_running(
    tmp_path: Path, official_mmrl: tuple[Path, dict[str, Tensor]],
) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "MultiModalRepresentationLearner" / "model.pth.tar-10"
    path.parent.mkdir()
    torch.save({"state_dict": official_mmrl[1], "epoch": 10, "optimizer": None,
                "scheduler": {"successor": Payload(marker)}}, path)
    with pytest.raises(WeightsError, match="will not unpickle it") as error:
        import_teacher(path, overrides={**DEMO_MMRL, **run_paths(tmp_path)}, env={}, console=_quiet())
    assert "leave_marker" in error.value.message and "arbitrary code" in error.value.message
    assert not marker.exists()
    ckpt = read_dassl_checkpoint(official_mmrl[0])  # the real file, AdamW in its scheduler, reads fine
    assert ckpt.epoch == 10 and set(ckpt.state_dict) == set(official_mmrl[1])


# ------------------------------------------------------------------------------------------------- export


def test_mmrl_export_is_the_official_layout_and_imports_back_identically(
    root: Path, official_mmrl: tuple[Path, dict[str, Tensor]], imported_mmrl: ImportResult, demo_student: LoadedClip,
) -> None:
    exported = export_official(imported_mmrl.checkpoint)
    assert exported.path == imported_mmrl.checkpoint.parent / "official" / "output" / "base2new" / "train_base" / \
        "demo" / "shots_16" / "MMRL" / "vit_b16" / "seed1" / "MultiModalRepresentationLearner" / "model.pth.tar-10"
    assert (exported.layout, exported.epoch, exported.tensors) == ("MMRL", 10, imported_mmrl.tensors)
    payload = torch.load(exported.path, map_location="cpu", weights_only=True)  # no allow-list needed
    assert payload["optimizer"] is None and payload["scheduler"] is None
    state, original = payload["state_dict"], official_mmrl[1]
    learned = {k for k in original if k.startswith("representation_learner.") or k == "image_encoder.proj_rep"}
    assert set(state) == learned  # no prompt_embeddings, no frozen CLIP
    for key in learned:
        assert torch.equal(state[key], original[key]), key

    again = import_teacher(exported.path, overrides={**DEMO_MMRL, **run_paths(root)}, env={}, clip=demo_student,
                           console=_quiet())
    first, second = load_learned(imported_mmrl.checkpoint), load_learned(again.checkpoint)
    assert first.tensors.keys() == second.tensors.keys()
    assert all(torch.equal(first.tensors[k], second.tensors[k]) for k in first.tensors)
    assert {k: v for k, v in first.metadata.items() if k != "imported_from"} == \
        {k: v for k, v in second.metadata.items() if k != "imported_from"}


def test_a_trained_mmrl_run_exports_to_its_setting_folder(tmp_path: Path, imported_mmrl: ImportResult) -> None:
    """A sidecar without `imported_from` (a `train-teacher --method mmrl` run) takes the epoch from its settings;
    a few-shot run goes where scripts/mmrl/few_shot.sh writes; a SemPT variant has no official layout."""
    ckpt = load_learned(imported_mmrl.checkpoint)
    meta = {k: v for k, v in ckpt.metadata.items() if k != "imported_from"}
    meta["settings"] = {**meta["settings"], "train": {**meta["settings"]["train"], "epochs": 50},
                        "data": {**meta["settings"]["data"], "shots": 4, "seed": 3}}
    meta = {**meta, "dataset": "dtd", "setting": "few-shot"}
    run = save_learned(tmp_path / "run" / "model", ckpt.tensors, meta)
    (tmp_path / "MMRL").mkdir()  # the official repository: the scripts' relative path goes inside it
    exported = export_official(run, tmp_path / "MMRL")
    assert exported.path == tmp_path / "MMRL" / "output" / "few_shot" / "dtd" / "shots_4" / "MMRL" / \
        "vit_b16_few_shot" / "seed3" / "MultiModalRepresentationLearner" / "model.pth.tar-50"
    sempt = save_learned(tmp_path / "sempt" / "model", {**ckpt.tensors, "fusion.0.weight": torch.zeros(2, 2)}, meta)
    with pytest.raises(WeightsError, match=r"no place for: fusion\.0\.weight"):
        export_official(sempt)
    variant = save_learned(tmp_path / "variant" / "model", ckpt.tensors, {**meta, "variant": "w/ SemPT"})
    with pytest.raises(WeightsError, match="mmrl w/ SemPT, which has no official counterpart"):
        export_official(variant)  # even where SemPT adds no tensor of its own


# ------------------------------------------------------------------------------------------------- use


def test_sempt_eval_scores_an_imported_mmrl_teacher(root: Path, imported_mmrl: ImportResult) -> None:
    ensure_demo_world(root / "cache")
    settings = load_settings({**run_paths(root), "eval.results_dir": str(root / "records"), "data.workers": 0,
                              "data.eval_batch_size": 500}, env={}).settings
    record = evaluate_checkpoint(imported_mmrl.checkpoint, settings, console=_quiet())
    result = record.results["demo"]
    assert result.status == "ok" and {"base", "novel", "hm"} <= set(result.metrics)


def test_cli_imports_mmrl_through_interop_and_train_teacher(
    tmp_path: Path, official_mmrl: tuple[Path, dict[str, Tensor]],
) -> None:
    runner = CliRunner()
    flags = ["--backbone", DEMO_STUDENT, "--pretrained", "demo", "--dataset", "demo",
             "--output-dir", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache")]
    wide = {"COLUMNS": "500"}
    interop = runner.invoke(app, ["interop", "import-teacher", str(official_mmrl[0]), *flags], env=wide)
    assert interop.exit_code == 0, interop.output
    assert "Imported MMRL checkpoint" in interop.output and "1 class-list buffer." in interop.output
    trained = runner.invoke(app, ["train-teacher", "--method", "mmrl", "--import-official", str(official_mmrl[0]),
                                  *flags], env=wide)
    assert trained.exit_code == 0, trained.output
    line = next(line for line in trained.output.splitlines() if line.startswith("Checkpoint: "))
    checkpoint = Path(line.removeprefix("Checkpoint: ").strip())
    assert checkpoint.parent.name.startswith("mmrl-base2novel-official-")
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == ["model.json", "model.safetensors"]  # no training
    exported = runner.invoke(app, ["interop", "export", str(checkpoint), "--out", str(tmp_path / "MMRL.pth.tar")],
                             env=wide)
    assert exported.exit_code == 0, exported.output
    assert "official MMRL checkpoint" in exported.output and (tmp_path / "MMRL.pth.tar").is_file()
