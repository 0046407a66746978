"""Official files are read with weights_only=True: a pickled payload is refused before it runs; the optimizer and
scheduler objects every Dassl file carries are received by inert stand-ins, not by torch's classes."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor

from sempt_cli.cli.app import main
from sempt_cli.errors import WeightsError
from sempt_cli.interop.dassl import read_dassl_checkpoint
from tests.interop.fakes import save_dassl


def leave_marker(path: str) -> None:
    """What the payload would do if it were ever unpickled: leave a file behind."""
    Path(path).write_text("the payload ran")


class Payload:
    """A module-level object whose unpickling calls `leave_marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return leave_marker, (self.marker,)


@pytest.mark.parametrize("where", ["top level", "inside the scheduler state"])
def test_a_pickled_payload_is_refused_without_running(
    tmp_path: Path, official_teacher: tuple[Path, dict[str, Tensor]], where: str,
) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / f"{where.replace(' ', '-')}.pth.tar"
    state = official_teacher[1]
    if where == "top level":
        torch.save({"state_dict": state, "epoch": 20, "optimizer": None, "scheduler": None,
                    "extra": Payload(marker)}, path)
    else:
        torch.save({"state_dict": state, "epoch": 20, "optimizer": None,
                    "scheduler": {"successor": Payload(marker)}}, path)
    with pytest.raises(WeightsError, match="will not unpickle it") as error:
        read_dassl_checkpoint(path)
    assert str(path) in error.value.message and "arbitrary code" in error.value.message
    assert "leave_marker" in error.value.message  # the global it would have called is named
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the control: the payload is live, so the refusal is what saved us
    assert marker.read_text() == "the payload ran"


def test_the_cli_refuses_in_one_sentence(tmp_path: Path, official_teacher: tuple[Path, dict[str, Tensor]],
                                         monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "teacher_model" / "OxfordPets" / "VLPromptLearner" / "model-best.pth.tar"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": official_teacher[1], "epoch": 20, "evil": Payload(marker)}, path)
    monkeypatch.setattr(sys, "argv", ["sempt", "interop", "import-teacher", str(path)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert exit_info.value.code == 2 and "Error:" in err and "Traceback" not in err
    assert "will not unpickle" in err and not marker.exists()


def test_dassl_optimizer_and_scheduler_objects_are_never_built(
    tmp_path: Path, official_teacher: tuple[Path, dict[str, Tensor]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = save_dassl(tmp_path / "model.pth.tar-20", official_teacher[1])
    with pytest.raises(pickle.UnpicklingError):  # why stand-ins are needed at all: plain weights_only refuses
        torch.load(path, map_location="cpu", weights_only=True)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch optimizer or scheduler code ran while reading a checkpoint")

    monkeypatch.setattr(torch.optim.Optimizer, "__setstate__", refuse)
    monkeypatch.setattr(torch.optim.lr_scheduler.LRScheduler, "__init__", refuse)
    ckpt = read_dassl_checkpoint(path)
    assert ckpt.epoch == 20 and set(ckpt.state_dict) == set(official_teacher[1])
    for key, value in official_teacher[1].items():
        assert torch.equal(ckpt.state_dict[key], value), key


def test_unreadable_files_are_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="does not exist"):
        read_dassl_checkpoint(tmp_path / "missing.pth.tar")
    broken = tmp_path / "broken.pth.tar"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="not a weights-only PyTorch checkpoint"):
        read_dassl_checkpoint(broken)
    broken.write_bytes(b"PK\x03\x04 a damaged zip")
    with pytest.raises(WeightsError, match="not a readable PyTorch checkpoint"):
        read_dassl_checkpoint(broken)
    torch.save({"state_dict": {"a": 1}}, tmp_path / "odd.pth.tar")
    with pytest.raises(WeightsError, match="no state dict of tensors"):
        read_dassl_checkpoint(tmp_path / "odd.pth.tar")
