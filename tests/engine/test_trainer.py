"""The shared training loop: exact resume, accumulation, DDP equivalence (BatchNorm included), deterministic
augmentation, model selection, per-method parameter groups, and what a `torchrun` job evaluates and prints."""

from __future__ import annotations

import contextlib
import io
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from rich.console import Console
from torchvision import transforms as T

from sempt_cli.engine.distributed import DistContext, init_distributed
from sempt_cli.engine.evaluate import View, score_views
from sempt_cli.engine.loader import EpochBatches, SeededImageDataset
from sempt_cli.engine.runtime import Runtime, seed_everything
from sempt_cli.engine.schedule import epoch_learning_rate
from sempt_cli.engine.trainer import EpochSelection, Trainer, build_optimizer
from sempt_cli.errors import SemptError
from sempt_cli.methods.sempt import SemPT
from sempt_cli.protocol import ParameterGroup
from sempt_cli.settings import SemptHyperParameters, load_settings
from tests.engine.toy import ToyBatchNormMethod, ToyMethod, make_samples

CPU = Runtime(torch.device("cpu"), None)
AUG = T.Compose([T.RandomResizedCrop(8, scale=(0.3, 1.0)), T.RandomHorizontalFlip(), T.ToTensor()])
TEST = T.Compose([T.Resize(8), T.CenterCrop(8), T.ToTensor()])
VIEWS = [View("first", 0, 2), View("all", 0, 3)]


class ToyGroups(ToyMethod):
    """The toy with its class vectors in a group of their own (a fifth of the rate, no weight decay); it records
    the optimizer's learning rates at the start of every epoch."""

    name = "toy-groups"

    def __init__(self, classnames: list[str]) -> None:
        super().__init__(classnames)
        self.optimizer: torch.optim.Optimizer | None = None
        self.rates: dict[int, list[float]] = {}

    def parameter_groups(self) -> list[ParameterGroup]:
        return [ParameterGroup("encoder", list(self.encoder.parameters())),
                ParameterGroup("classes", [self.classes], lr=0.1, weight_decay=0.0)]

    def on_epoch_start(self, epoch: int) -> None:
        assert self.optimizer is not None
        self.rates[epoch] = [group["lr"] for group in self.optimizer.param_groups]


def _trainer(samples, run_dir: Path, *, batch: int = 4, accum: int = 1, epochs: int = 3,
             dist: DistContext | None = None, batchnorm: bool = False, select: str = "last",
             selection: EpochSelection | None = None, console: Console | None = None,
             groups: bool = False) -> Trainer:
    settings = load_settings(
        {"data.batch_size": batch, "data.workers": 0, "train.grad_accum_steps": accum, "train.epochs": epochs,
         "train.lr": 0.5, "train.checkpoint_every": 2, "train.select": select},
        env={},
    ).settings
    seed_everything(0)
    method = (ToyGroups if groups else ToyBatchNormMethod if batchnorm else ToyMethod)(["c0", "c1", "c2"])
    dataset = SeededImageDataset(samples, AUG, seed=settings.data.seed)
    trainer = Trainer(method, dataset, settings, run_dir, CPU, dist=dist, console=console, selection=selection)
    if isinstance(method, ToyGroups):
        method.optimizer = trainer.optimizer
    return trainer


def _train(samples, run_dir: Path, *, stop_after: int | None = None, **options: Any) -> ToyMethod:
    trainer = _trainer(samples, run_dir, **options)
    trainer.fit(stop_after_steps=stop_after)
    assert isinstance(trainer.method, ToyMethod)
    return trainer.method


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory):
    return make_samples(tmp_path_factory.mktemp("toy"))


def _params(method: ToyMethod) -> dict[str, torch.Tensor]:
    state = {k: v.clone() for k, v in method.trainable_state().items()}
    state["aggregate"] = method.aggregate.clone()
    return state


def test_training_changes_parameters_and_resume_is_exact(samples, tmp_path: Path) -> None:
    untouched = ToyMethod(["c0", "c1", "c2"])
    full = _params(_train(samples, tmp_path / "full"))
    assert not torch.equal(full["classes"], untouched.classes.detach())
    # interrupt twice: mid-epoch (step 3 of 4) and again at another point, then finish
    _train(samples, tmp_path / "resumed", stop_after=3)
    _train(samples, tmp_path / "resumed", stop_after=5)
    resumed = _params(_train(samples, tmp_path / "resumed"))
    for name in full:
        torch.testing.assert_close(resumed[name], full[name], rtol=0, atol=0)


def test_gradient_accumulation_matches_full_batch(samples, tmp_path: Path) -> None:
    full = _params(_train(samples, tmp_path / "a1", accum=1, epochs=2))
    accumulated = _params(_train(samples, tmp_path / "a2", accum=2, epochs=2))
    for name in full:
        torch.testing.assert_close(accumulated[name], full[name], rtol=1e-5, atol=1e-6)


def test_augmentation_is_a_function_of_seed_epoch_index(samples) -> None:
    dataset = SeededImageDataset(samples, AUG, seed=1)
    dataset.set_epoch(2)
    first = dataset[5][0]
    torch.manual_seed(123)  # the caller's RNG must not matter ...
    assert torch.equal(dataset[5][0], first)
    dataset.set_epoch(3)  # ... but the epoch must
    assert not torch.equal(dataset[5][0], first)


def test_epoch_plan_shards_the_global_batch() -> None:
    single = EpochBatches(num_items=18, batch_size=4, seed=1).plan(epoch=2)
    ranks = [EpochBatches(num_items=18, batch_size=4, seed=1, world_size=2, rank=r).plan(epoch=2) for r in (0, 1)]
    assert len(single) == 4  # drop_last: 18 // 4
    for step, (whole,) in enumerate(single):
        assert ranks[0][step][0] + ranks[1][step][0] == whole
    assert EpochBatches(18, 4, seed=1).plan(3) != single


def test_one_batch_of_8_equals_two_micro_batches_of_4(samples, tmp_path: Path) -> None:
    """Where the README's claim is made (no BatchNorm): accumulation does not change the update."""
    console = Console(file=io.StringIO(), width=300)
    whole = _params(_train(samples, tmp_path / "b8", batch=8, epochs=1))
    split = _params(_train(samples, tmp_path / "b4x2", batch=8, accum=2, epochs=1, console=console))
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], rtol=1e-5, atol=1e-6)
    assert "BatchNorm" not in console.file.getvalue()  # type: ignore[attr-defined]


def test_accumulation_with_batchnorm_warns_at_run_start(samples, tmp_path: Path) -> None:
    """Where it is not (BatchNorm normalises over each micro-batch): the run says so before it trains."""
    console = Console(file=io.StringIO(), width=300)
    _train(samples, tmp_path / "bn", batch=8, accum=2, epochs=1, batchnorm=True, console=console)
    text = " ".join(console.file.getvalue().split())  # type: ignore[attr-defined]
    assert "toy-bn has BatchNorm" in text and "micro-batches of 4 images, not the 8 of a step" in text
    quiet = Console(file=io.StringIO(), width=300)
    _train(samples, tmp_path / "bn1", batch=8, epochs=1, batchnorm=True, console=quiet)
    assert "BatchNorm" not in quiet.file.getvalue()  # type: ignore[attr-defined]


def test_official_best_keeps_the_best_epoch_and_resumes_exactly(samples, tmp_path: Path) -> None:
    def run(run_dir: Path, stops: tuple[int, ...]) -> tuple[Trainer, Any, list[dict[str, torch.Tensor]], str]:
        scores = iter([10.0, 30.0, 30.0, 20.0])  # epoch 2 is best; epoch 3 ties it and loses (Dassl: strictly >)
        seen: list[dict[str, torch.Tensor]] = []
        holder: dict[str, Trainer] = {}

        def score() -> float:
            assert not holder["t"].method.training  # scored in eval mode
            seen.append({k: v.clone() for k, v in holder["t"].method.trainable_state().items()})
            return next(scores)

        console = Console(file=io.StringIO(), width=300)
        for stop in stops:  # interruptions: the selection state survives them
            holder["t"] = _trainer(samples, run_dir, epochs=4, select="official-best",
                                   selection=EpochSelection(score, "toy accuracy"), console=console)
            holder["t"].fit(stop_after_steps=stop)
        holder["t"] = trainer = _trainer(samples, run_dir, epochs=4, select="official-best",
                                         selection=EpochSelection(score, "toy accuracy"), console=console)
        result = trainer.fit()
        return trainer, result, seen, " ".join(console.file.getvalue().split())  # type: ignore[attr-defined]

    trainer, result, seen, text = run(tmp_path / "once", ())
    assert result.selected_epoch == 2 and result.epoch_scores == {1: 10.0, 2: 30.0, 3: 30.0, 4: 20.0}
    assert len(seen) == 4 and trainer.method.training
    for name, value in trainer.method.trainable_state().items():
        assert torch.equal(value, seen[1][name]), name
    assert "--select official-best keeps the epoch with the best toy accuracy" in text
    assert "selected on test data" in text
    last = _train(samples, tmp_path / "last", epochs=4)
    assert not torch.equal(last.classes, trainer.method.classes)

    resumed, again, _, _ = run(tmp_path / "resumed", (6, 3))  # 4 steps an epoch: stops in epochs 2 and 3
    assert again.selected_epoch == 2 and again.epoch_scores == result.epoch_scores
    for name, value in trainer.method.trainable_state().items():
        assert torch.equal(resumed.method.trainable_state()[name], value), name


def test_official_best_needs_a_way_to_score(samples, tmp_path: Path) -> None:
    from sempt_cli.errors import SettingsError

    with pytest.raises(SettingsError, match="official-best"):
        _trainer(samples, tmp_path, select="official-best")


# ------------------------------------------------------------------------------------------------ parameter groups


def test_each_parameter_group_follows_the_schedule_at_its_own_rate(samples, tmp_path: Path) -> None:
    trainer = _trainer(samples, tmp_path / "groups", epochs=4, groups=True)
    trainer.fit()
    method = trainer.method
    assert isinstance(method, ToyGroups)
    groups = trainer.optimizer.param_groups
    assert [g["name"] for g in groups] == ["encoder", "classes"]
    assert [g["weight_decay"] for g in groups] == [5e-4, 0.0]
    assert groups[1]["params"] == [method.classes]
    assert method.rates[1] == [1e-5, 1e-5]  # the constant warm-up
    assert method.rates[2] == pytest.approx([0.5, 0.1])  # each group's own peak once the cosine starts
    for epoch in (2, 3, 4):
        encoder, classes = method.rates[epoch]
        expected = epoch_learning_rate(epoch, base_lr=0.5, epochs=4, warmup_epochs=1, warmup_lr=1e-5)
        assert encoder == pytest.approx(expected) and classes / encoder == pytest.approx(0.2)
    assert method.rates[2][0] > method.rates[3][0] > method.rates[4][0]


def test_resume_with_parameter_groups_is_exact(samples, tmp_path: Path) -> None:
    def run(run_dir: Path, stops: tuple[int, ...]) -> tuple[dict[str, torch.Tensor], dict[int, list[float]]]:
        rates: dict[int, list[float]] = {}
        for stop in (*stops, None):
            trainer = _trainer(samples, run_dir, epochs=3, groups=True)
            trainer.fit(stop_after_steps=stop)
            assert isinstance(trainer.method, ToyGroups)
            rates |= trainer.method.rates
        return _params(trainer.method), rates

    full, full_rates = run(tmp_path / "full", ())
    resumed, resumed_rates = run(tmp_path / "resumed", (3, 5))
    assert resumed_rates == full_rates
    for name in full:
        torch.testing.assert_close(resumed[name], full[name], rtol=0, atol=0)


def test_a_checkpoint_with_other_groups_is_refused_in_our_words(samples, tmp_path: Path) -> None:
    _train(samples, tmp_path, stop_after=3)
    with pytest.raises(SemptError, match="other optimizer parameter groups"):
        _trainer(samples, tmp_path, groups=True).fit()


def test_a_default_method_is_one_group_at_the_train_rates_with_or_without_sempt() -> None:
    """Today's optimizer; SemPT's fusion joins that group, in `parameters()` order (older checkpoints resume)."""
    train = load_settings({"train.lr": 0.5}, env={}).settings.train
    method = ToyMethod(["c0", "c1", "c2"])
    for candidate in (method, SemPT(method, SemptHyperParameters(beta=0.5), None, seen=(), dim=8)):
        optimizer, schedules = build_optimizer(candidate, train)
        (group,) = optimizer.param_groups
        assert group["params"] == list(candidate.parameters())
        assert (group["lr"], group["weight_decay"], group["momentum"]) == (0.5, 5e-4, 0.9)
        assert [(s.peak_lr, s.warmup_epochs) for s in schedules] == [(0.5, 1)]


def test_groups_must_hold_each_trainable_parameter_once() -> None:
    train = load_settings({}, env={}).settings.train
    method = ToyGroups(["c0", "c1", "c2"])
    method.parameter_groups = lambda: [ParameterGroup("encoder", list(method.encoder.parameters()))]  # type: ignore[method-assign]
    with pytest.raises(SemptError, match="missing: classes"):
        build_optimizer(method, train)
    method.parameter_groups = lambda: [ParameterGroup("all", list(method.parameters())),  # type: ignore[method-assign]
                                       ParameterGroup("again", [method.classes])]
    with pytest.raises(SemptError, match="exactly once"):
        build_optimizer(method, train)


def _counting(method: ToyMethod) -> list[int]:
    """Record how many images each call of `method.image_embeddings` encodes."""
    seen: list[int] = []
    encode = method.image_embeddings

    def counted(images: torch.Tensor) -> torch.Tensor:
        seen.append(len(images))
        return encode(images)

    method.image_embeddings = counted  # type: ignore[method-assign]
    return seen


def _ddp_worker(rank: int, port: int, samples, root: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    ctx = init_distributed()
    results: dict[str, Any] = {}
    plain = _trainer(samples, Path(root) / "ddp", epochs=2, dist=ctx)
    plain.fit()
    results["find_unused"] = bool(plain.loss_module.find_unused_parameters)
    results["toy"] = _params(plain.method)  # type: ignore[arg-type]
    bn = _trainer(samples, Path(root) / "ddp-bn", batch=8, epochs=2, dist=ctx, batchnorm=True)
    bn.fit()
    results["bn"] = _params(bn.method)  # type: ignore[arg-type]
    grouped = _trainer(samples, Path(root) / "ddp-groups", epochs=2, dist=ctx, groups=True)
    grouped.fit()
    results["groups"] = _params(grouped.method)  # type: ignore[arg-type]
    results["group_rates"] = [[g["name"], g["lr"]] for g in grouped.optimizer.param_groups]
    seen = _counting(plain.method)  # type: ignore[arg-type]
    counts, _ = score_views(plain.method, samples, ["c0", "c1", "c2"], VIEWS, TEST, CPU, batch_size=5, dist=ctx)
    results["counts"], results["encoded"] = counts, sum(seen)
    from sempt_cli.cli.render import print_run

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        print_run("toy", {"all": 50.0}, Path("model.safetensors"))
    results["printed"] = printed.getvalue()
    torch.save(results, f"{out}.{rank}")
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def ddp(samples, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """One 2-process gloo job (CPU) that trains, evaluates and prints; what each rank saw."""
    root = tmp_path_factory.mktemp("ddp")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = root / "ranks"
    mp.spawn(_ddp_worker, args=(port, samples, str(root), str(out)), nprocs=2, join=True)
    return [torch.load(f"{out}.{rank}", weights_only=True) for rank in (0, 1)]


def test_two_process_ddp_equals_single_process(ddp, samples, tmp_path: Path) -> None:
    single = _params(_train(samples, tmp_path / "single", epochs=2))
    for name in single:
        torch.testing.assert_close(ddp[0]["toy"][name], single[name], rtol=1e-5, atol=1e-6)
    assert ddp[0]["find_unused"] is False  # every toy parameter gets a gradient: no extra traversal


def test_two_process_ddp_keeps_the_methods_parameter_groups(ddp, samples, tmp_path: Path) -> None:
    """The groups come from the method, not from the DDP wrapper around it."""
    single = _trainer(samples, tmp_path / "single-groups", epochs=2, groups=True)
    single.fit()
    assert ddp[0]["group_rates"] == [[g["name"], g["lr"]] for g in single.optimizer.param_groups]
    assert [name for name, _ in ddp[0]["group_rates"]] == ["encoder", "classes"]
    for name, value in _params(single.method).items():  # type: ignore[arg-type]
        torch.testing.assert_close(ddp[0]["groups"][name], value, rtol=1e-5, atol=1e-6)


def test_two_process_batchnorm_equals_one_process_with_the_whole_batch(ddp, samples, tmp_path: Path) -> None:
    """Each rank's forward sees 4 of the step's 8 images; its BatchNorm still normalises over all 8."""
    single = _params(_train(samples, tmp_path / "single-bn", batch=8, epochs=2, batchnorm=True))
    assert "bn.running_var" in single
    for rank in (0, 1):
        for name in single:
            torch.testing.assert_close(ddp[rank]["bn"][name], single[name], rtol=1e-4, atol=1e-5)


def test_torchrun_evaluates_each_image_once_and_prints_on_rank_0(ddp, samples, tmp_path: Path) -> None:
    method = _train(samples, tmp_path / "single", epochs=2)
    seen = _counting(method)
    counts, _ = score_views(method, samples, ["c0", "c1", "c2"], VIEWS, TEST, CPU, batch_size=5)
    assert sum(seen) == len(samples)
    assert ddp[0]["counts"] == ddp[1]["counts"] == counts  # summed over ranks: the same totals everywhere
    assert ddp[0]["encoded"] + ddp[1]["encoded"] == len(samples)
    assert ddp[0]["encoded"] == ddp[1]["encoded"] == len(samples) // 2
    assert "toy" in ddp[0]["printed"] and ddp[1]["printed"] == ""
