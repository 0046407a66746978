"""Importing official checkpoints: every tensor lands where the spec says, the depth-9 trap, sidecars `sempt eval`
scores unchanged."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from rich.console import Console
from torch import Tensor, nn

from sempt_cli.data.demo import ensure_demo_world
from sempt_cli.errors import SettingsError, WeightsError
from sempt_cli.interop.convert import ImportResult, _a, import_student, import_teacher
from sempt_cli.methods.promptkd import FeatureProjector
from sempt_cli.models import DEMO_TEACHER, LoadedClip, load_clip, load_learned
from sempt_cli.pipeline.evaluation import evaluate_checkpoint
from sempt_cli.pipeline.runs import load_teacher
from sempt_cli.settings import load_settings
from tests.interop.conftest import DEMO, TEACHER_DEPTHS, run_paths
from tests.interop.fakes import save_dassl, student_state, teacher_state


def _quiet() -> Console:
    return Console(file=io.StringIO(), width=400)


def test_every_prompt_lands_on_the_block_the_spec_says(
    root: Path, official_teacher: tuple[Path, dict[str, Tensor]], imported_teacher: ImportResult,
) -> None:
    """By parameter and by forward hooks on the teacher rebuilt from its sidecar alone (as `sempt eval` does)."""
    state = official_teacher[1]
    method = load_teacher(imported_teacher.checkpoint, "cpu", {"paths.cache_dir": str(root / "cache")})
    vision, text = method.vision, method.text  # type: ignore[attr-defined]
    assert (vision.prompts.depth, text.prompts.depth) == TEACHER_DEPTHS
    block3 = state["image_encoder.transformer.resblocks.3.VPT_shallow"]
    assert torch.equal(vision.prompts.tokens[3].detach(), block3)
    assert torch.equal(text.prompts.tokens[0].detach(), state["prompt_learner.ctx"].float())  # fp16 in the file

    seen: dict[str, Tensor] = {}

    def vision_hook(index: int, x: Tensor) -> None:
        seen[f"vision.{index}"] = x[:, -4:].detach().clone()  # the trailing prompt tokens entering block `index`

    def text_hook(index: int, x: Tensor) -> None:
        seen[f"text.{index}"] = x[:, 1:5].detach().clone()  # the context slots entering block `index`

    handle = vision.visual.ln_pre.register_forward_pre_hook(
        lambda _module, args: seen.__setitem__("vision.input", args[0][:, -4:].detach().clone()))
    with torch.no_grad():
        vision.forward_features(torch.randn(2, 3, 48, 48), before_block=[vision_hook])
        text.forward_features(text.class_prompts(["zorp", "blick"]), before_block=[text_hook])
    handle.remove()
    assert torch.equal(seen["vision.input"][0], state["image_encoder.VPT"])  # appended before ln_pre
    for block in range(1, TEACHER_DEPTHS[0]):
        deep = state[f"image_encoder.transformer.resblocks.{block}.VPT_shallow"]
        assert torch.equal(seen[f"vision.{block}"][1], deep)
    last = state[f"image_encoder.transformer.resblocks.{TEACHER_DEPTHS[0] - 1}.VPT_shallow"]
    assert not torch.equal(seen[f"vision.{TEACHER_DEPTHS[0]}"][0], last)  # past the depth, outputs flow on
    ctx_in = state["prompt_learner.ctx"].float() + text.positional_embedding[1:5].detach()
    torch.testing.assert_close(seen["text.0"][0], ctx_in)  # layer 0 gets the positional embedding
    for block in range(1, TEACHER_DEPTHS[1]):
        assert torch.equal(seen[f"text.{block}"][1], state[f"text_encoder.transformer.resblocks.{block}.VPT_shallow"])


def test_teacher_sidecar_has_the_metadata_of_a_trained_teacher(
    imported_teacher: ImportResult, official_teacher: tuple[Path, dict[str, Tensor]],
) -> None:
    ckpt = load_learned(imported_teacher.checkpoint)
    meta = ckpt.record  # the same typed run record a trained teacher has
    assert (meta.kind, meta.method, meta.backbone, meta.dataset) == ("teacher", "promptsrc", DEMO_TEACHER, "demo")
    assert meta.backbone_identity is not None and meta.backbone_identity.startswith(f"{DEMO_TEACHER}@")
    assert len(meta.classnames) == 40 and meta.num_base == 20
    assert meta.train_classnames == meta.seen_classnames == meta.classnames[:20]  # base2novel: base
    assert meta.settings["prompts"]["vision_depth"] == 5 and meta.settings["prompts"]["text_depth"] == 4
    assert meta.imported_from is not None
    assert meta.imported_from["epoch"] == 20 and meta.imported_from["path"] == str(official_teacher[0])
    assert set(ckpt.tensors) == {f"vision.prompts.tokens.{i}" for i in range(5)} | \
        {f"text.prompts.tokens.{i}" for i in range(4)}
    assert all(t.dtype == torch.float32 for t in ckpt.tensors.values())


def test_a_shallow_teacher_is_imported_at_its_own_depth_loudly(root: Path, demo_teacher: LoadedClip) -> None:
    """Spec §5.7: PromptKD builds its teacher 9 deep; a depth-3 file must not leave random prompts behind."""
    state = teacher_state(demo_teacher, 3, 3, seed=7)
    path = save_dassl(root / "shallow" / "model.pth.tar-20", state)
    output = io.StringIO()
    result = import_teacher(path, overrides={**DEMO, **run_paths(root)}, env={}, clip=demo_teacher,
                            console=Console(file=output, width=400))
    assert len(result.warnings) == 1 and "builds its teacher 9 deep" in result.warnings[0]
    assert "vision blocks 3..8, text blocks 3..8" in result.warnings[0]
    assert "Warning:" in output.getvalue() and "keeps no random prompt" in output.getvalue()
    assert result.geometry.depths == {"vision": 3, "text": 3}
    assert (result.settings.prompts.vision_depth, result.settings.prompts.text_depth) == (3, 3)
    tensors = load_learned(result.checkpoint).tensors
    assert len(tensors) == 6  # no prompt set beyond what the file holds
    assert torch.equal(tensors["vision.prompts.tokens.2"], state["image_encoder.transformer.resblocks.2.VPT_shallow"])


@pytest.fixture(scope="module")
def b16() -> LoadedClip:
    """Randomly initialised OpenAI ViT-B/16 architecture: the official B/16 shapes, no weights needed."""
    torch.manual_seed(0)
    return load_clip("ViT-B-16-quickgelu", None)


def test_full_depth_official_b16_teacher_is_silent_and_guessed_from_folders(root: Path, b16: LoadedClip) -> None:
    state = teacher_state(b16, 9, 9, frozen=False)
    assert state["image_encoder.VPT"].shape == (4, 768) and state["prompt_learner.ctx"].shape == (4, 512)
    path = save_dassl(root / "teacher_model" / "OxfordPets" / "VLPromptLearner" / "model-best.pth.tar", state)
    result = import_teacher(path, overrides={"model.pretrained": "none", **run_paths(root)}, env={}, clip=b16,
                            console=_quiet())
    assert result.warnings == []
    assert result.settings.model.backbone == "ViT-B-16-quickgelu"  # guessed from the prompt widths 768/512
    meta = load_learned(result.checkpoint).metadata
    assert (meta["dataset"], meta["setting"], meta["num_base"]) == ("oxford_pets", "base2novel", 19)
    assert len(meta["train_classnames"]) == 19


def test_cross_dataset_teacher_and_a_student_on_a_target(root: Path, b16: LoadedClip) -> None:
    state = teacher_state(b16, 3, 3, frozen=False)
    path = save_dassl(root / "teacher_model" / "ImageNet-xd" / "VLPromptLearner_large" / "model.pth.tar-20", state)
    teacher = import_teacher(path, overrides={"model.pretrained": "none", **run_paths(root)}, env={}, clip=b16,
                             console=_quiet())
    meta = load_learned(teacher.checkpoint).metadata
    assert (meta["dataset"], meta["setting"]) == ("imagenet", "cross-dataset")  # from the folder name alone
    assert len(meta["train_classnames"]) == 1000  # cross-dataset teachers see every ImageNet class
    assert len(teacher.warnings) == 1  # the depth-3 cross teacher is the very case of the trap
    # PromptKD's cross students learn on a target's images from this teacher (the B/16 teacher embeds in 512-d)
    student_file = save_dassl(root / "xd-student" / "model-best.pth.tar", student_state(b16, 3, 512, frozen=False))
    student = import_student(student_file, teacher.checkpoint, env={}, clip=b16, console=_quiet(),
                             overrides={"data.dataset": "oxford_pets", "model.pretrained": "none", **run_paths(root)})
    meta = load_learned(student.checkpoint).metadata
    assert (meta["dataset"], meta["setting"], len(meta["classnames"])) == ("oxford_pets", "cross-dataset", 37)
    assert student.settings.prompts.vision_depth == 3


def test_frozen_weights_of_another_clip_are_reported(root: Path, demo_teacher: LoadedClip) -> None:
    torch.manual_seed(5)
    other = load_clip(DEMO_TEACHER, None)  # same architecture, random weights
    path = save_dassl(root / "other" / "model.pth.tar-20", teacher_state(other, *TEACHER_DEPTHS))
    result = import_teacher(path, overrides={**DEMO, **run_paths(root)}, env={}, clip=demo_teacher, console=_quiet())
    assert any("differ from sempt-demo-teacher" in w for w in result.warnings)
    state = teacher_state(demo_teacher, *TEACHER_DEPTHS)
    state["image_encoder.positional_embedding"] = torch.zeros(50, 192)  # another input resolution
    path = save_dassl(root / "other-arch" / "model.pth.tar-20", state)
    with pytest.raises(WeightsError, match="trained on another backbone"):
        import_teacher(path, overrides={**DEMO, **run_paths(root)}, env={}, clip=demo_teacher, console=_quiet())


def test_missing_prompts_and_conflicting_flags_fail(root: Path, official_teacher: tuple[Path, dict[str, Tensor]],
                                                   demo_teacher: LoadedClip) -> None:
    state = dict(official_teacher[1])
    del state["image_encoder.transformer.resblocks.2.VPT_shallow"]
    path = save_dassl(root / "gap" / "model.pth.tar-20", state)
    with pytest.raises(WeightsError, match=r"lacks .*image_encoder\.transformer\.resblocks\.2\.VPT_shallow"):
        import_teacher(path, overrides={**DEMO, **run_paths(root)}, env={}, clip=demo_teacher, console=_quiet())
    with pytest.raises(SettingsError, match=r"prompts\.vision_depth = 9 was given"):
        import_teacher(official_teacher[0], overrides={**DEMO, **run_paths(root), "prompts.vision_depth": "9"},
                       env={}, clip=demo_teacher, console=_quiet())
    with pytest.raises(SettingsError, match="Pass --dataset"):
        import_teacher(official_teacher[0], overrides={**DEMO, **run_paths(root), "data.dataset": None}, env={},
                       clip=demo_teacher, console=_quiet())


@pytest.fixture(scope="module")
def official_student(root: Path, demo_student: LoadedClip) -> tuple[Path, dict[str, Tensor]]:
    state = student_state(demo_student, 3, teacher_dim=128)  # the demo teacher embeds in 128 dimensions
    return save_dassl(root / "student" / "VLPromptLearner" / "model-best.pth.tar", state), state


@pytest.fixture(scope="module")
def imported_student(root: Path, official_student: tuple[Path, dict[str, Tensor]], imported_teacher: ImportResult,
                     demo_student: LoadedClip) -> ImportResult:
    return import_student(official_student[0], imported_teacher.checkpoint, overrides=run_paths(root), env={},
                          clip=demo_student, console=_quiet())


def test_student_projector_computes_what_the_official_convs_compute(
    official_student: tuple[Path, dict[str, Tensor]], imported_student: ImportResult, imported_teacher: ImportResult,
) -> None:
    state = official_student[1]
    ckpt = load_learned(imported_student.checkpoint)
    conv = state["VPT_image_trans.conv1.0.weight"]
    assert conv.shape == (128, 96, 1, 1) and torch.equal(ckpt.tensors["projector.fc1.weight"], conv[:, :, 0, 0].float())
    assert ckpt.tensors["projector.bn.num_batches_tracked"].item() == 1234
    block2 = state["image_encoder.transformer.resblocks.2.VPT_shallow"]
    assert torch.equal(ckpt.tensors["vision.prompts.tokens.2"], block2)
    official = nn.Sequential(nn.Conv2d(96, 128, 1), nn.BatchNorm2d(128), nn.ReLU(), nn.Conv2d(128, 128, 1))
    official.load_state_dict({k.removeprefix("VPT_image_trans.conv1."): v.float() for k, v in state.items()
                              if k.startswith("VPT_image_trans.")})
    ours = FeatureProjector(96, 128)
    ours.load_state_dict({k.removeprefix("projector."): v for k, v in ckpt.tensors.items()
                          if k.startswith("projector.")})
    x = torch.randn(5, 96)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), official.eval()(x[:, :, None, None]).flatten(1))
    meta = ckpt.metadata
    assert meta["kind"] == "student" and meta["teacher_sha256"] == load_learned(imported_teacher.checkpoint).sha256
    assert meta["settings"]["sempt"]["enabled"] is False and meta["classnames"] == \
        load_learned(imported_teacher.checkpoint).metadata["classnames"]


def test_family_names_are_read_out_with_the_right_article() -> None:
    """An initialism is read letter by letter, a name that is a word as a word."""
    assert [_a(name) for name in ("MMRL", "SRC", "PromptKD student", "Ocelot", "Mongoose", "Falcon")] == \
        ["an MMRL", "an SRC", "a PromptKD student", "an Ocelot", "a Mongoose", "a Falcon"]


def test_files_of_the_other_kind_are_told_apart(root: Path, official_teacher: tuple[Path, dict[str, Tensor]],
                                                official_student: tuple[Path, dict[str, Tensor]],
                                                imported_teacher: ImportResult, demo_teacher: LoadedClip) -> None:
    with pytest.raises(WeightsError, match="is a PromptKD student checkpoint") as error:
        import_teacher(official_student[0], overrides={**DEMO, **run_paths(root)}, env={}, clip=demo_teacher)
    assert "import-student" in str(error.value)
    with pytest.raises(WeightsError, match="is a PromptSRC/IVLP checkpoint"):
        import_student(official_teacher[0], imported_teacher.checkpoint, overrides=run_paths(root), env={})
    with pytest.raises(SettingsError, match="classifies its teacher's classes"):
        import_student(official_student[0], imported_teacher.checkpoint, env={},
                       overrides={**run_paths(root), "data.dataset": "oxford_pets"})
    state = dict(official_student[1])
    del state["VPT_image_trans.conv1.1.running_var"]
    path = save_dassl(root / "no-bn-stats" / "model-best.pth.tar", state)
    with pytest.raises(WeightsError, match=r"lacks .*VPT_image_trans\.conv1\.1\.running_var"):
        import_student(path, imported_teacher.checkpoint, overrides=run_paths(root), env={}, console=_quiet())


@pytest.mark.slow
def test_sempt_eval_scores_imported_checkpoints_unchanged(root: Path, imported_teacher: ImportResult,
                                                          imported_student: ImportResult) -> None:
    ensure_demo_world(root / "cache")
    settings = load_settings({**run_paths(root), "eval.results_dir": str(root / "records"), "data.workers": 0,
                              "data.eval_batch_size": 500}, env={}).settings
    for checkpoint in (imported_teacher.checkpoint, imported_student.checkpoint):
        record = evaluate_checkpoint(checkpoint, settings, console=_quiet())
        result = record.results["demo"]
        assert result.status == "ok" and {"base", "novel", "hm"} <= set(result.metrics)
