"""Export writes the official layout (plain tensors, where the official code reads them); export → import is the
identity."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from rich.console import Console
from torch import Tensor

from sempt_cli.errors import WeightsError
from sempt_cli.interop.convert import ImportResult, export_official, import_student, import_teacher
from sempt_cli.models import LoadedClip, load_learned, save_learned
from tests.interop.conftest import DEMO, run_paths
from tests.interop.fakes import save_dassl, student_state


def _plain_load(path: Path) -> dict[str, object]:
    """How a reader with no allow-list sees the file: tensors, ints and None only, or this raises."""
    return torch.load(path, map_location="cpu", weights_only=True)


def test_teacher_export_is_the_official_layout_and_imports_back_identically(
    root: Path, official_teacher: tuple[Path, dict[str, Tensor]], imported_teacher: ImportResult,
    demo_teacher: LoadedClip,
) -> None:
    exported = export_official(imported_teacher.checkpoint)
    assert exported.path == imported_teacher.checkpoint.parent / "official" / "teacher_model" / "Demo" / \
        "VLPromptLearner" / "model-best.pth.tar"
    payload = _plain_load(exported.path)
    assert payload["epoch"] == 20 and payload["optimizer"] is None and payload["scheduler"] is None
    state = payload["state_dict"]
    assert isinstance(state, dict)
    original = official_teacher[1]
    learned = {k for k in original if "VPT" in k or k == "prompt_learner.ctx"}
    assert set(state) == learned  # no token_prefix/suffix (the official loaders delete them), no frozen copy
    for key in learned:
        assert torch.equal(state[key], original[key].float()), key

    again = import_teacher(exported.path, overrides={**DEMO, **run_paths(root)}, env={}, clip=demo_teacher,
                           console=Console(file=io.StringIO()))
    first, second = load_learned(imported_teacher.checkpoint), load_learned(again.checkpoint)
    assert first.tensors.keys() == second.tensors.keys()
    for key, value in first.tensors.items():
        assert torch.equal(second.tensors[key], value), key
    assert {k: v for k, v in first.metadata.items() if k != "imported_from"} == \
        {k: v for k, v in second.metadata.items() if k != "imported_from"}


def test_student_export_round_trips_convs_and_batchnorm(
    tmp_path: Path, root: Path, imported_teacher: ImportResult, demo_student: LoadedClip,
) -> None:
    original = student_state(demo_student, 3, teacher_dim=128, seed=11)
    path = save_dassl(tmp_path / "VLPromptLearner" / "model-best.pth.tar", original)
    quiet = Console(file=io.StringIO())
    first = import_student(path, imported_teacher.checkpoint, overrides=run_paths(tmp_path), env={},
                           clip=demo_student, console=quiet)
    (tmp_path / "official-repo").mkdir()
    into_folder = export_official(first.checkpoint, tmp_path / "official-repo")  # a folder: the official path in it
    assert into_folder.path == tmp_path / "official-repo" / "VLPromptLearner" / "model-best.pth.tar"
    as_file = export_official(first.checkpoint, tmp_path / "student.pth.tar")
    assert as_file.path == tmp_path / "student.pth.tar" and as_file.path.is_file()
    state = _plain_load(into_folder.path)["state_dict"]
    assert isinstance(state, dict)
    assert set(state) == {k for k in original if "VPT" in k}
    assert state["VPT_image_trans.conv1.3.weight"].shape == (128, 128, 1, 1)
    for key, value in original.items():
        if key in state:
            assert torch.equal(state[key], value.float() if value.is_floating_point() else value), key
    second = import_student(into_folder.path, imported_teacher.checkpoint, overrides=run_paths(tmp_path), env={},
                            clip=demo_student, console=quiet)
    a, b = load_learned(first.checkpoint).tensors, load_learned(second.checkpoint).tensors
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_what_has_no_official_layout_is_refused(tmp_path: Path, imported_teacher: ImportResult) -> None:
    ckpt = load_learned(imported_teacher.checkpoint)
    coop = save_learned(tmp_path / "coop" / "model", ckpt.tensors, {**ckpt.metadata, "method": "coop"})
    with pytest.raises(WeightsError, match="no official checkpoint layout for coop teachers"):
        export_official(coop)
    extra = save_learned(tmp_path / "sempt" / "model", {**ckpt.tensors, "fusion.0.weight": torch.zeros(2, 2)},
                         ckpt.metadata)
    with pytest.raises(WeightsError, match=r"no place for: fusion\.0\.weight"):
        export_official(extra)
