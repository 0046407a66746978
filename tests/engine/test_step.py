"""How the training step runs (`train.compile`, `train.read_every`): a compiled step trains like the eager one,
resumes exactly, is one setting away from eager, still stops on a non-finite loss, and a run says where its time
went. torch.compile runs with the "aot_eager" backend here (the same graph capture and AOTAutograd as inductor,
without compiling C++, so the tests stay fast); `test_inductor_step_matches_eager` compiles for real."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console
from torchvision import transforms as T

from sempt_cli.engine import step as step_module
from sempt_cli.engine.loader import SeededImageDataset
from sempt_cli.engine.runtime import Runtime, seed_everything
from sempt_cli.engine.step import LossReader, resolve_compile
from sempt_cli.engine.trainer import Trainer
from sempt_cli.errors import SemptError, SettingsError
from sempt_cli.protocol import Batch, LossOutput
from sempt_cli.settings import load_settings
from tests.engine.toy import ToyMethod, make_samples

CPU = Runtime(torch.device("cpu"), None)
AUG = T.Compose([T.RandomResizedCrop(8, scale=(0.3, 1.0)), T.RandomHorizontalFlip(), T.ToTensor()])


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory):
    return make_samples(tmp_path_factory.mktemp("toy"))


@pytest.fixture(autouse=True)
def aot_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(step_module, "BACKEND", "aot_eager")
    torch._dynamo.reset()


class Exploding(ToyMethod):
    """The toy whose loss becomes infinite from optimizer step `at` on (counted in forward calls)."""

    name = "toy-exploding"

    def __init__(self, classnames: list[str], at: int) -> None:
        super().__init__(classnames)
        self.at, self.calls = at, 0

    def training_loss(self, batch: Batch) -> LossOutput:
        self.calls += 1
        output = super().training_loss(batch)
        if self.calls >= self.at:
            output = LossOutput(output.total * float("inf"), output.parts)
        return output


def _trainer(samples, run_dir: Path, *, compile: str = "off", read_every: int = 1, epochs: int = 3,
             method: ToyMethod | None = None, console: Console | None = None, **extra: Any) -> Trainer:
    settings = load_settings(
        {"data.batch_size": 4, "data.workers": 0, "train.epochs": epochs, "train.lr": 0.5,
         "train.checkpoint_every": 2, "train.compile": compile, "train.read_every": read_every, **extra},
        env={},
    ).settings
    seed_everything(0)
    method = method or ToyMethod(["c0", "c1", "c2"])
    dataset = SeededImageDataset(samples, AUG, seed=settings.data.seed)
    return Trainer(method, dataset, settings, run_dir, CPU, console=console)


def _state(trainer: Trainer) -> dict[str, torch.Tensor]:
    method = trainer.method
    assert isinstance(method, ToyMethod) and method.aggregate is not None
    return {**{k: v.detach().clone() for k, v in method.trainable_state().items()}, "aggregate": method.aggregate}


def test_compiled_step_trains_like_the_eager_step(samples, tmp_path: Path) -> None:
    eager = _trainer(samples, tmp_path / "eager")
    compiled = _trainer(samples, tmp_path / "compiled", compile="compile", read_every=3)
    assert compiled.loss_module is not compiled.loss_module._orig_mod  # type: ignore[attr-defined]
    eager_result, compiled_result = eager.fit(), compiled.fit()
    assert compiled_result.steps == eager_result.steps == 12
    assert compiled_result.last_losses.keys() == {"ce"}
    assert compiled_result.last_losses["ce"] == pytest.approx(eager_result.last_losses["ce"], rel=1e-5)
    start = ToyMethod(["c0", "c1", "c2"])
    for name, value in _state(eager).items():
        torch.testing.assert_close(_state(compiled)[name], value, rtol=1e-5, atol=1e-6)
        if name == "classes":
            assert not torch.allclose(value, start.classes.detach())  # training did move them


def test_resume_with_the_compiled_step_is_exact(samples, tmp_path: Path) -> None:
    full = _trainer(samples, tmp_path / "full", compile="compile", read_every=5)
    full.fit()
    _trainer(samples, tmp_path / "resumed", compile="compile", read_every=5).fit(stop_after_steps=3)
    _trainer(samples, tmp_path / "resumed", compile="compile", read_every=5).fit(stop_after_steps=6)
    resumed = _trainer(samples, tmp_path / "resumed", compile="compile", read_every=5)
    assert resumed.fit().resumed_from_step == 9
    for name, value in _state(full).items():
        torch.testing.assert_close(_state(resumed)[name], value, rtol=0, atol=0)


def test_eager_is_one_setting_and_auto_is_eager_on_cpu(samples, tmp_path: Path) -> None:
    off = _trainer(samples, tmp_path / "off", compile="off")
    auto = _trainer(samples, tmp_path / "auto", compile="auto")
    assert off.step_mode == "off" and not hasattr(off.loss_module, "_orig_mod")
    assert resolve_compile("auto", torch.device("cpu")) == "off"
    assert resolve_compile("auto", torch.device("cuda", 0)) == "cuda-graphs"
    assert auto.settings.train.compile == "auto" and auto.step_mode == "off"
    on = _trainer(samples, tmp_path / "on", compile="compile")
    assert on.step_mode == "compile" and hasattr(on.loss_module, "_orig_mod")
    with pytest.raises(SettingsError, match="needs a CUDA device"):
        _trainer(samples, tmp_path / "graphs", compile="cuda-graphs")


@pytest.mark.parametrize("compile", ["off", "compile"])
def test_a_non_finite_loss_stops_the_run_at_the_next_read_and_is_never_checkpointed(
    samples, tmp_path: Path, compile: str,
) -> None:
    method = Exploding(["c0", "c1", "c2"], at=3)
    trainer = _trainer(samples, tmp_path / "run", compile=compile, read_every=4, method=method)
    with pytest.raises(SemptError, match=r"^The loss became inf at step 3; lower --lr"):
        trainer.fit()
    # checkpoint_every = 2: step 2 was saved; the read before step 4's checkpoint found step 3 and stopped the run
    state = torch.load(trainer.state_path, weights_only=True)
    assert state["position"][2] == 2
    assert all(bool(torch.isfinite(v).all()) for v in state["trainable"].values())


def test_loss_reader_reads_every_pending_step_at_once_and_names_the_first_bad_one() -> None:
    reader = LossReader()
    reader.add(1, torch.tensor(2.0), {"a": torch.tensor(1.0), "b": 0.5})
    reader.add(2, torch.tensor(3.0), {"a": torch.tensor(4.0), "b": 0.25})
    assert reader.pending == 2
    assert reader.read_steps() == [(1, {"a": 1.0, "b": 0.5}), (2, {"a": 4.0, "b": 0.25})] and reader.pending == 0
    assert reader.read() == {"a": 4.0, "b": 0.25} and reader.read_steps() == []
    reader.add(3, torch.tensor(math.nan), {"a": torch.tensor(1.0)})
    reader.add(4, torch.tensor(math.inf), {"a": torch.tensor(1.0)})
    with pytest.raises(SemptError, match="became nan at step 3"):
        reader.read()


def test_each_epoch_says_where_its_time_went(samples, tmp_path: Path) -> None:
    out = io.StringIO()
    _trainer(samples, tmp_path / "run", epochs=2, console=Console(file=out, width=200)).fit()
    lines = [line for line in out.getvalue().splitlines() if "waiting for data" in line]
    assert [line.split(":")[0].strip() for line in lines] == ["epoch 1/2", "epoch 2/2"]
    assert all("img/s" in line and "steps" in line for line in lines)


@pytest.mark.slow
def test_inductor_step_matches_eager(samples, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real backend (C++ kernels generated and compiled on CPU: about half a minute)."""
    monkeypatch.setattr(step_module, "BACKEND", "inductor")
    eager = _trainer(samples, tmp_path / "eager", epochs=1)
    compiled = _trainer(samples, tmp_path / "compiled", compile="compile", epochs=1)
    eager.fit(), compiled.fit()
    for name, value in {k: v.detach() for k, v in eager.method.trainable_state().items()}.items():
        torch.testing.assert_close(compiled.method.trainable_state()[name].detach(), value, rtol=1e-5, atol=1e-6)


def test_the_step_settings_do_not_change_which_run_resumes() -> None:
    """A compiled step agrees with the eager one up to rounding: toggling it resumes the same run folder."""
    from sempt_cli.pipeline.runs import run_key

    keys = {run_key("promptkd", load_settings({"train.compile": mode, "train.read_every": every}, env={}).settings,
                    None, ("model", "data", "train"))
            for mode, every in (("auto", 10), ("off", 1), ("compile", 50))}
    assert len(keys) == 1
    assert run_key("promptkd", load_settings({"train.epochs": 3}, env={}).settings, None, ("train",)) != \
        run_key("promptkd", load_settings({"train.epochs": 4}, env={}).settings, None, ("train",))
