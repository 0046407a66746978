"""Learned-state checkpoints: safetensors + JSON sidecar, verified on load, never the frozen backbone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from sempt_cli.errors import WeightsError
from sempt_cli.interop.official import import_official_prompts
from sempt_cli.io import sha256_file
from sempt_cli.models import (
    LoadedClip,
    PromptedTextTower,
    PromptedVisionTower,
    PromptSpec,
    checkpoint_paths,
    learned_state_dict,
    load_learned,
    load_learned_into,
    save_learned,
)


class Student(nn.Module):
    """A PromptKD-shaped module: frozen prompted tower + trainable projector with BatchNorm."""

    def __init__(self, loaded: LoadedClip, depth: int = 2) -> None:
        super().__init__()
        self.image = PromptedVisionTower(loaded.model.visual, PromptSpec(depth, 4))
        self.projector = nn.Sequential(nn.Linear(96, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Linear(128, 128))


def test_round_trip_with_metadata(tmp_path: Path) -> None:
    tensors = {"a.prompt": torch.randn(4, 8), "b.bias": torch.arange(3.0), "c.steps": torch.tensor(7)}
    meta = {"backbone": "ViT-B-16-quickgelu", "classes": ["cat", "dog"], "settings": {"lr": 0.0025}, "path": tmp_path}
    written = save_learned(tmp_path / "run" / "model", tensors, meta)
    assert written == tmp_path / "run" / "model.safetensors"
    sidecar = json.loads((tmp_path / "run" / "model.json").read_text())
    assert sidecar["sha256"] == sha256_file(written) and sidecar["tensors"]["a.prompt"]["shape"] == [4, 8]
    assert {"sempt", "torch", "open_clip"} <= set(sidecar["versions"])
    for name in ("model", "model.safetensors", "model.json"):
        loaded = load_learned(tmp_path / "run" / name)
        assert loaded.metadata == {**meta, "path": str(tmp_path)}
        assert loaded.sha256 == sidecar["sha256"]
        for key, value in tensors.items():
            torch.testing.assert_close(loaded.tensors[key], value)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["model.json", "model.safetensors"]


def test_dotted_names_keep_their_dots() -> None:
    assert checkpoint_paths("runs/x/model.ep20") == (
        Path("runs/x/model.ep20.safetensors"),
        Path("runs/x/model.ep20.json"),
    )


def test_hash_mismatch_and_missing_files(tmp_path: Path) -> None:
    path = save_learned(tmp_path / "ckpt", {"w": torch.ones(3)}, {})
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="sha256"):
        load_learned(tmp_path / "ckpt")
    path.unlink()
    with pytest.raises(WeightsError, match="incomplete"):
        load_learned(tmp_path / "ckpt")
    (tmp_path / "other.safetensors").write_bytes(b"")
    (tmp_path / "other.json").write_text('{"format": "something else"}')
    with pytest.raises(WeightsError, match="not a sempt checkpoint"):
        load_learned(tmp_path / "other")


def _with_consistent_sidecar(path: Path, data: bytes) -> None:
    """Replace a checkpoint's tensor file and update its sidecar's hash to match, as a careful forger would."""
    path.write_bytes(data)
    sidecar = path.with_suffix(".json")
    fields = json.loads(sidecar.read_text())
    fields["sha256"] = sha256_file(path)
    sidecar.write_text(json.dumps(fields))


@pytest.mark.parametrize("damage", ["bad header", "truncated", "header length 2^40"])
def test_corrupt_tensor_file_with_a_consistent_sidecar_names_the_file(tmp_path: Path, damage: str) -> None:
    import struct

    path = save_learned(tmp_path / "ckpt", {"w": torch.ones(3)}, {})
    data = path.read_bytes()
    forged = {"bad header": struct.pack("<Q", 16) + b"{not json at all}" + data[8:],
              "truncated": data[: len(data) - 5],
              "header length 2^40": struct.pack("<Q", 2**40) + data[8:]}[damage]
    _with_consistent_sidecar(path, forged)
    with pytest.raises(WeightsError, match=r"Checkpoint .*ckpt\.safetensors is not a readable safetensors file"):
        load_learned(tmp_path / "ckpt")


def test_non_finite_learned_tensors_are_refused(tmp_path: Path) -> None:
    save_learned(tmp_path / "nan", {"w": torch.full((3,), float("nan")), "ok": torch.ones(2)}, {})
    with pytest.raises(WeightsError, match=r"nan\.safetensors holds NaN or infinite values \(in w\)"):
        load_learned(tmp_path / "nan")
    save_learned(tmp_path / "inf", {"w": torch.tensor([1.0, float("inf")]), "steps": torch.tensor(3)}, {})
    with pytest.raises(WeightsError, match=r"inf\.safetensors holds NaN or infinite values \(in w\)"):
        load_learned(tmp_path / "inf")


def test_key_and_shape_mismatches_are_named(tmp_path: Path) -> None:
    save_learned(tmp_path / "ckpt", {"prompts.tokens.0": torch.zeros(4, 8), "extra": torch.zeros(1)}, {})
    expected = {"prompts.tokens.0": torch.zeros(2, 8), "prompts.tokens.1": torch.zeros(2, 8)}
    with pytest.raises(WeightsError) as info:
        load_learned(tmp_path / "ckpt", expected=expected)
    text = str(info.value)
    assert "missing prompts.tokens.1" in text and "unexpected extra" in text
    assert "prompts.tokens.0 is (4, 8) but the model expects (2, 8)" in text


def test_learned_state_excludes_the_backbone_and_keeps_bn_stats(student: LoadedClip) -> None:
    state = learned_state_dict(Student(student))
    assert set(state) == {
        "image.prompts.tokens.0",
        "image.prompts.tokens.1",
        "projector.0.weight",
        "projector.0.bias",
        "projector.1.weight",
        "projector.1.bias",
        "projector.1.running_mean",
        "projector.1.running_var",
        "projector.1.num_batches_tracked",
        "projector.3.weight",
        "projector.3.bias",
    }


def test_load_into_restores_outputs(tmp_path: Path, student: LoadedClip) -> None:
    model = student.model
    trained = Student(student)
    text = PromptedTextTower(model, PromptSpec(2, 4))
    x = torch.randn(3, 3, 48, 48)
    with torch.no_grad():
        for p in [*trained.image.trainable_parameters(), *text.trainable_parameters()]:
            p.add_(torch.randn_like(p))
        trained.projector(trained.image(x))  # train-mode BN: updates the running stats
    trained.eval()
    save_learned(tmp_path / "student", learned_state_dict(trained), {"backbone": "sempt-demo-student"})
    save_learned(tmp_path / "text", learned_state_dict(text), {})

    fresh = Student(student).eval()
    ckpt = load_learned_into(fresh, tmp_path / "student")
    fresh_text = PromptedTextTower(model, PromptSpec(2, 4))
    load_learned_into(fresh_text, tmp_path / "text")
    assert ckpt.metadata == {"backbone": "sempt-demo-student"}
    prompts = text.class_prompts(["cat", "dog"])
    with torch.no_grad():
        torch.testing.assert_close(fresh.projector(fresh.image(x)), trained.projector(trained.image(x)))
        torch.testing.assert_close(fresh_text(prompts), text(prompts))
    with pytest.raises(WeightsError, match="does not fit"):
        load_learned_into(Student(student, depth=3), tmp_path / "student")


def test_import_official_promptsrc_prompts(teacher: LoadedClip) -> None:
    vision = PromptedVisionTower(teacher.model.visual, PromptSpec(3, 4))
    text = PromptedTextTower(teacher.model, PromptSpec(3, 4))
    official = {
        "prompt_learner.ctx": torch.randn(4, 128).half(),  # the official ctx is fp16 (spec §1.4)
        "image_encoder.VPT": torch.randn(4, 192),
        "image_encoder.transformer.resblocks.1.VPT_shallow": torch.randn(4, 192),
        "image_encoder.transformer.resblocks.2.VPT_shallow": torch.randn(4, 192),
        "text_encoder.transformer.resblocks.1.VPT_shallow": torch.randn(4, 128),
        "text_encoder.transformer.resblocks.2.VPT_shallow": torch.randn(4, 128),
        "image_encoder.conv1.weight": torch.randn(1),  # backbone copies are ignored
    }
    used = import_official_prompts(official, vision=vision, text=text)
    assert len(used) == 6 and "image_encoder.conv1.weight" not in used
    torch.testing.assert_close(text.prompts.tokens[0].detach(), official["prompt_learner.ctx"].float())
    torch.testing.assert_close(
        vision.prompts.tokens[2].detach(), official["image_encoder.transformer.resblocks.2.VPT_shallow"]
    )
    deeper = PromptedVisionTower(teacher.model.visual, PromptSpec(4, 4))
    with pytest.raises(WeightsError, match=r"resblocks\.3\.VPT_shallow"):
        import_official_prompts(official, vision=deeper)


def _v1_sidecar(kind: str) -> dict[str, object]:
    """Metadata as sempt wrote it before run records were typed (no record_version)."""
    meta: dict[str, object] = {
        "kind": kind, "method": "promptsrc" if kind == "teacher" else "promptkd", "backbone": "sempt-demo-teacher",
        "backbone_identity": "sempt-demo-teacher@abc", "dataset": "demo", "setting": "base2novel",
        "classnames": ["a", "b", "c", "d"], "num_base": 2, "settings": {"data": {"seed": 1}}, "sempt_version": "0.1.0",
    }
    if kind == "teacher":
        meta |= {"pretrained": "demo", "train_classnames": ["a", "b"], "seen_classnames": ["a", "b"]}
    else:
        meta |= {"teacher_checkpoint": "runs/t/model.safetensors", "teacher_sha256": "f" * 64}
    return meta


def test_old_sidecars_are_migrated_to_run_records_on_read(tmp_path: Path) -> None:
    teacher = save_learned(tmp_path / "teacher" / "model", {"w": torch.zeros(1)}, _v1_sidecar("teacher"))
    student = save_learned(tmp_path / "student" / "model", {"w": torch.zeros(1)}, _v1_sidecar("student"))
    old_teacher, old_student = load_learned(teacher).record, load_learned(student).record
    assert old_teacher.train_classnames == old_teacher.seen_classnames == ["a", "b"]
    assert old_student.train_classnames == ["a", "b", "c", "d"]  # a student distils on every class
    assert old_student.teacher_sha256 == "f" * 64 and old_teacher.variant == ""
    again = save_learned(tmp_path / "again" / "model", {"w": torch.zeros(1)}, old_teacher)
    assert load_learned(again).record == old_teacher  # written and read in one place, losslessly


def test_a_sidecar_that_is_no_run_record_is_one_sentence(tmp_path: Path) -> None:
    broken = _v1_sidecar("teacher")
    del broken["dataset"]
    path = save_learned(tmp_path / "model", {"w": torch.zeros(1)}, broken)
    with pytest.raises(WeightsError, match=r"model\.safetensors is not a valid sempt run record: dataset"):
        _ = load_learned(path).record
