"""`sempt interop ...` and `sempt train-teacher --import-official`: same library calls, run folders, no training."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch import Tensor
from typer.testing import CliRunner

from sempt_cli.cli.app import app
from sempt_cli.interop.convert import ImportResult
from sempt_cli.models import LoadedClip, load_learned
from tests.interop.fakes import save_dassl, student_state

runner = CliRunner()
WIDE = {"COLUMNS": "500"}  # rich would wrap long paths at 80 columns


def _flags(out: Path, cache: Path) -> list[str]:
    return ["--backbone", "sempt-demo-teacher", "--pretrained", "demo", "--dataset", "demo",
            "--output-dir", str(out), "--cache-dir", str(cache)]


@pytest.fixture
def demo_student_file(tmp_path: Path, demo_student: LoadedClip) -> Path:
    return save_dassl(tmp_path / "student" / "VLPromptLearner" / "model-best.pth.tar",
                      student_state(demo_student, 3, teacher_dim=128))


def _checkpoint_line(output: str) -> Path:
    line = next(line for line in output.splitlines() if line.startswith("Checkpoint: "))
    return Path(line.removeprefix("Checkpoint: ").strip())


def test_train_teacher_import_official_trains_nothing(
    tmp_path: Path, official_teacher: tuple[Path, dict[str, Tensor]], imported_teacher: ImportResult,
) -> None:
    result = runner.invoke(app, ["train-teacher", "--import-official", str(official_teacher[0]),
                                 *_flags(tmp_path / "runs", tmp_path / "cache")], env=WIDE)
    assert result.exit_code == 0, result.output
    checkpoint = _checkpoint_line(result.output)
    assert checkpoint.parent.parent == tmp_path / "runs" / "teachers" / "demo"
    assert checkpoint.parent.name.startswith("promptsrc-base2novel-official-")
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == ["model.json", "model.safetensors"]  # no training
    assert f"sempt eval {checkpoint}" in result.output
    same = load_learned(imported_teacher.checkpoint).tensors  # the library import of the same file
    assert load_learned(checkpoint).tensors.keys() == same.keys()


def test_interop_commands_import_teacher_and_student_and_export(
    tmp_path: Path, official_teacher: tuple[Path, dict[str, Tensor]], demo_student_file: Path,
) -> None:
    flags = _flags(tmp_path / "runs", tmp_path / "cache")
    teacher = runner.invoke(app, ["interop", "import-teacher", str(official_teacher[0]), "--method", "ivlp", *flags],
                            env=WIDE)
    assert teacher.exit_code == 0, teacher.output
    teacher_ckpt = _checkpoint_line(teacher.output)
    assert load_learned(teacher_ckpt).metadata["method"] == "ivlp"

    student = runner.invoke(app, ["interop", "import-student", str(demo_student_file), "--teacher", str(teacher_ckpt),
                                  "--output-dir", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache")],
                            env=WIDE)
    assert student.exit_code == 0, student.output
    student_ckpt = _checkpoint_line(student.output)
    assert student_ckpt.parent.parent == tmp_path / "runs" / "students" / "demo"

    (tmp_path / "PromptKD").mkdir()
    exported = runner.invoke(app, ["interop", "export", str(student_ckpt), "--out", str(tmp_path / "PromptKD")],
                             env=WIDE)
    assert exported.exit_code == 0, exported.output
    assert (tmp_path / "PromptKD" / "VLPromptLearner" / "model-best.pth.tar").is_file()


def test_unknown_method_is_refused(tmp_path: Path, official_teacher: tuple[Path, dict[str, Tensor]]) -> None:
    result = runner.invoke(app, ["interop", "import-teacher", str(official_teacher[0]), "--method", "coop",
                                 *_flags(tmp_path, tmp_path)])
    assert result.exit_code != 0 and "not 'coop'" in str(result.exception)
