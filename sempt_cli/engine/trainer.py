"""The training loop every method shares: deterministic batches, AMP, accumulation, DDP, exact resume.

Determinism is what makes resume exact and caches possible: the image order of epoch e is a permutation
seeded by (seed, e), and each augmented view is a pure function of (seed, e, image index) (see
`sempt_cli.engine.loader`). A resumable checkpoint therefore only needs the trainable state, the optimizer,
the method's extra state (e.g. aggregation sums) and the position (epoch, step); re-running the same command
after an interruption — even `kill -9` — continues where the last checkpoint left off and ends with the same
parameters as an uninterrupted run.

The optimizer step sees `data.batch_size` images however they are split: across `world_size` processes and
`grad_accum_steps` micro-batches. Losses that are per-image means therefore train identically either way. A
BatchNorm normalises over what one forward sees: across processes its statistics are summed over every rank
(`GlobalBatchNorm`), so several processes train as one; across accumulated micro-batches they cannot be, so a
run that accumulates with a BatchNorm method (PromptKD's projector) says so at its start.

The optimizer has one parameter group per `Method.parameter_groups()` entry (one unless a method's official
code gives parts of it their own rates, as DPT's does): each follows the same warm-up + cosine schedule at its own
peak rate and warm-up length, and the optimizer state, groups included, is part of the resumable checkpoint.

Model selection (`train.select`): `last` keeps the final parameters; `official-best` scores the model after
every epoch with the caller's `EpochSelection` (the official PromptKD protocol: base-class accuracy on the test
split) and keeps the best epoch, as Dassl's `best_val` does.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

from sempt_cli.engine import step as stepping
from sempt_cli.engine.distributed import DistContext, barrier, has_batchnorm, sync_batchnorms
from sempt_cli.engine.loader import EpochBatches, EpochLoader, SeededImageDataset
from sempt_cli.engine.runtime import Runtime, preserved_rng
from sempt_cli.engine.schedule import epoch_learning_rate
from sempt_cli.engine.trainlog import TrainingLog
from sempt_cli.errors import SemptError, SettingsError
from sempt_cli.io import atomic_open, atomic_write_json
from sempt_cli.protocol import Batch, LossOutput, Method
from sempt_cli.settings import Settings, TrainSettings

STATE_FILE = "train-state.pt"
PROGRESS_FILE = "progress.json"


class _LossModule(nn.Module):
    """DDP wraps a module whose forward is the loss, so gradients of the method's parameters are averaged."""

    def __init__(self, method: Method) -> None:
        super().__init__()
        self.method = method

    def forward(self, batch: Batch) -> LossOutput:
        return self.method.training_loss(batch)


@dataclass
class TrainResult:
    """What a finished (or resumed-and-finished) run reports; with `official-best` selection, which epoch was
    kept and every epoch's selection score."""

    epochs: int
    steps: int
    resumed_from_step: int
    seconds: float
    finished: bool
    last_losses: dict[str, float] = field(default_factory=dict)
    selected_epoch: int | None = None
    epoch_scores: dict[int, float] = field(default_factory=dict)


@dataclass(frozen=True)
class EpochSelection:
    """How `train.select = official-best` scores a model after an epoch: `score()` (higher is better; every rank
    calls it) and what it measures, for the run's warning."""

    score: Callable[[], float]
    describe: str


@dataclass
class _Position:
    epoch: int = 1
    step: int = 0
    global_step: int = 0


class Trainer:
    """Trains `method` on `dataset` with the optimisation settings of `settings`, checkpointing into `run_dir`."""

    def __init__(
        self,
        method: Method,
        dataset: SeededImageDataset,
        settings: Settings,
        run_dir: Path,
        runtime: Runtime,
        dist: DistContext | None = None,
        console: Console | None = None,
        selection: EpochSelection | None = None,
    ) -> None:
        self.method = method
        self.dataset = dataset
        self.settings = settings
        self.run_dir = run_dir
        self.runtime = runtime
        self.dist = dist or DistContext()
        self.console = console or Console(stderr=True)
        train = settings.train
        parts = self.dist.world_size * train.grad_accum_steps
        if settings.data.batch_size % parts:
            raise SettingsError(
                f"data.batch_size = {settings.data.batch_size} cannot be split evenly over "
                f"{self.dist.world_size} process(es) × {train.grad_accum_steps} accumulation step(s)."
            )
        self.batches = EpochBatches(
            num_items=len(dataset), batch_size=settings.data.batch_size, seed=settings.data.seed,
            world_size=self.dist.world_size, rank=self.dist.rank, micro_batches=train.grad_accum_steps,
        )
        if self.dist.enabled:
            sync_batchnorms(method)  # before the optimizer and DDP see the modules; parameters are shared
        self.notes = self._notes(settings, selection)
        self.selection = selection if settings.train.select == "official-best" else None
        self._scores: dict[int, float] = {}
        self._best: tuple[int, dict[str, torch.Tensor]] | None = None
        self.step_mode = stepping.resolve_compile(train.compile, runtime.device)
        self._optimizer_options = stepping.fused_optimizer_options(runtime.device)
        self.optimizer, self.schedules = build_optimizer(  # the method itself, never the DDP wrapper
            method, train, self._optimizer_options)
        self.reader = stepping.LossReader()
        self.loader = EpochLoader(dataset, settings.data.workers)
        self.last_clock: stepping.EpochClock | None = None
        self.scaler = torch.amp.GradScaler(enabled=runtime.uses_grad_scaler)
        module: nn.Module = _LossModule(method)
        if self.dist.enabled:
            device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
            module = nn.parallel.DistributedDataParallel(  # the extra graph traversal only where it is needed
                module, device_ids=device_ids, find_unused_parameters=method.unused_parameters)
        self._ddp = module if isinstance(module, nn.parallel.DistributedDataParallel) else None
        self.loss_module = stepping.compile_step(module, self.step_mode)  # shares the method's parameters

    def _notes(self, settings: Settings, selection: EpochSelection | None) -> list[str]:
        """Warnings a run prints at its start: where its result is not what a plain run would give."""
        notes = []
        train, batch = settings.train, settings.data.batch_size
        if train.grad_accum_steps > 1 and has_batchnorm(self.method):
            micro = batch // train.grad_accum_steps
            notes.append(
                f"{self.method.name} has BatchNorm, which normalises over what one forward sees: with "
                f"--grad-accum-steps {train.grad_accum_steps} its statistics come from micro-batches of {micro} "
                f"images, not the {batch} of a step, so results differ from --grad-accum-steps 1 "
                "(several GPUs do not change them: BatchNorm is synchronised over processes)."
            )
        if train.select == "official-best":
            if selection is None:
                raise SettingsError(
                    "train.select = 'official-best' is not available for this run; use --select last."
                )
            notes.append(
                f"--select official-best keeps the epoch with the best {selection.describe}, as the official "
                "PromptKD code does: these results are selected on test data (--select last for a clean protocol)."
            )
        return notes

    # ------------------------------------------------------------------ checkpoints
    @property
    def state_path(self) -> Path:
        return self.run_dir / STATE_FILE

    def _save_state(self, position: _Position) -> None:
        if not self.dist.is_main:
            return
        state = {
            "position": [position.epoch, position.step, position.global_step],
            "trainable": {k: v.detach().cpu() for k, v in self.method.trainable_state().items()},
            "extra": {k: v.detach().cpu() for k, v in self.method.extra_state().items()},
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "selection": {
                "scores": [[epoch, score] for epoch, score in sorted(self._scores.items())],
                "best_epoch": None if self._best is None else self._best[0],
                "best": {} if self._best is None else self._best[1],
            },
        }
        with atomic_open(self.state_path, "wb") as handle:
            torch.save(state, handle)
        atomic_write_json(
            self.run_dir / PROGRESS_FILE,
            {"epoch": position.epoch, "step_in_epoch": position.step, "global_step": position.global_step,
             "steps_per_epoch": self.batches.steps_per_epoch, "epochs": self.settings.train.epochs},
        )

    def _load_state(self) -> _Position:
        if not self.state_path.is_file():
            return _Position()
        try:
            state = torch.load(self.state_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a truncated file cannot exist (atomic writes), so this is a foreign file
            raise SemptError(
                f"Cannot resume from {self.state_path} ({exc.__class__.__name__}).",
                hint="Delete the run folder to start over.",
            ) from None
        self.method.load_trainable_state(state["trainable"])
        self.method.load_extra_state(state["extra"])
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError:  # torch's words for other parameter groups (a checkpoint from before they changed)
            raise SemptError(
                f"Cannot resume from {self.state_path}: it was saved with other optimizer parameter groups.",
                hint="Delete the run folder to start over.",
            ) from None
        for group in self.optimizer.param_groups:  # a checkpoint from another device: this device's kernels
            if "fused" in group:
                group["fused"] = self._optimizer_options.get("fused")
        self.scaler.load_state_dict(state["scaler"])
        selection = state.get("selection") or {}
        self._scores = {int(epoch): float(score) for epoch, score in selection.get("scores", [])}
        best_epoch = selection.get("best_epoch")
        self._best = None if best_epoch is None else (int(best_epoch), dict(selection["best"]))
        epoch, step, global_step = (int(v) for v in state["position"])
        return _Position(epoch, step, global_step)

    # ------------------------------------------------------------------ loop
    def fit(self, stop_after_steps: int | None = None) -> TrainResult:
        """Train to the end (resuming if a checkpoint exists). `stop_after_steps` simulates an interruption."""
        train = self.settings.train
        position = self._load_state()
        resumed_from = position.global_step
        if self.dist.is_main:
            for note in self.notes:
                self.console.print(f"[yellow]Warning:[/] {note}")
        if resumed_from and self.dist.is_main:
            self.console.print(
                f"[bold]Resuming[/] {self.method.name} from epoch {position.epoch}, "
                f"step {position.step}/{self.batches.steps_per_epoch} ({escape(str(self.state_path))})"
            )
        started = time.perf_counter()
        steps_this_run = 0
        last: dict[str, float] = {}
        total_steps = train.epochs * self.batches.steps_per_epoch
        log = TrainingLog(self.run_dir, position.global_step, tensorboard=train.tensorboard, enabled=self.dist.is_main)
        named_rates: dict[str, float] = {}

        def read() -> dict[str, float]:
            """The pending steps' losses from the device: each logged as its own step line; the last returned."""
            for step, losses in self.reader.read_steps():
                log.step(step, position.epoch, losses, named_rates)
            return self.reader.last

        with self._progress() as progress, contextlib.closing(log):
            task = progress.add_task("train", total=total_steps, completed=position.global_step, info="")
            self.method.train()
            while position.epoch <= train.epochs:
                rates = [schedule.lr(position.epoch, train) for schedule in self.schedules]
                for group, rate in zip(self.optimizer.param_groups, rates, strict=True):
                    group["lr"] = rate
                lr = "/".join(f"{rate:.2e}" for rate in rates)
                named_rates = {schedule.name: rate for schedule, rate in zip(self.schedules, rates, strict=True)}
                self.dataset.set_epoch(position.epoch)
                self.method.on_epoch_start(position.epoch)
                plan = self.batches.plan(position.epoch)[position.step:]
                loader = self.loader.epoch(position.epoch, plan)
                clock = self.last_clock = stepping.EpochClock()  # for callers that report where time went
                tick = epoch_started = time.perf_counter()
                steps_this_epoch = 0
                for micro_batches in clock.batches(_group(loader, self.batches.micro_batches, position.epoch)):
                    with clock.step(self.settings.data.batch_size):
                        self._optimizer_step(micro_batches, position.global_step + 1)
                        if (position.global_step + 1) % train.read_every == 0:
                            last = read()  # the one host synchronisation of these steps
                    position.step += 1
                    position.global_step += 1
                    steps_this_run += 1
                    steps_this_epoch += 1
                    images = self.settings.data.batch_size
                    rate = images / max(time.perf_counter() - tick, 1e-9)
                    tick = time.perf_counter()
                    info = " ".join(f"{k}={v:.4g}" for k, v in last.items())
                    progress.update(task, advance=1, info=f"ep {position.epoch} lr={lr} {info} {rate:.0f} img/s")
                    mid_epoch = position.step < self.batches.steps_per_epoch
                    if mid_epoch and position.global_step % train.checkpoint_every == 0:
                        last = read()  # never checkpoint a non-finite step
                        self._save_state(position)
                    if stop_after_steps is not None and steps_this_run >= stop_after_steps:
                        last = read()
                        self._save_state(position)
                        barrier(self.dist)
                        return TrainResult(position.epoch, position.global_step, resumed_from,
                                           time.perf_counter() - started, False, last)
                with clock.step(0):
                    last = read()
                if self.dist.is_main:
                    self.console.print(clock.describe(position.epoch, train.epochs))
                self.method.on_epoch_end(position.epoch, train.epochs)
                if position.epoch < train.epochs:  # the last epoch is scored after on_train_end (its GPA model)
                    self._consider(position.epoch)
                scores = {"selection": self._scores[position.epoch]} if position.epoch in self._scores else {}
                log.epoch(position.global_step, position.epoch, steps_this_epoch * self.settings.data.batch_size,
                          time.perf_counter() - epoch_started, clock.waiting, scores)
                position.epoch += 1
                position.step = 0
                self._save_state(position)
        self.loader.close()
        self.method.on_train_end()
        selected = None
        if self.selection is not None:
            if train.epochs not in self._scores:
                self._consider(train.epochs)
            assert self._best is not None
            selected = self._best[0]
            self.method.load_trainable_state(self._best[1], source=f"the best epoch ({selected})")
            if self.dist.is_main:
                self.console.print(f"Selected epoch {selected} of {train.epochs} "
                                   f"({self.selection.describe} {self._scores[selected]:.2f})")
        barrier(self.dist)
        return TrainResult(train.epochs, position.global_step, resumed_from, time.perf_counter() - started, True, last,
                           selected, dict(self._scores))

    def _consider(self, epoch: int) -> None:
        """Score the model after `epoch` and keep its parameters if it beats every earlier epoch (ties keep the
        earlier one, as Dassl's `curr_result > best_result`)."""
        if self.selection is None:
            return
        self.method.eval()  # BatchNorm's running statistics, as at test time
        with preserved_rng():  # scoring must not change what training draws next
            score = float(self.selection.score())
        self.method.train()
        self._scores[epoch] = score
        if self._best is None or score > self._scores[self._best[0]]:
            self._best = (epoch, {k: v.detach().cpu().clone() for k, v in self.method.trainable_state().items()})

    def _optimizer_step(self, micro_batches: Sequence[Batch], global_step: int) -> None:
        """One optimizer step; its loss and parts go to `self.reader` (read back every `train.read_every` steps,
        where a non-finite loss stops the run before anything is checkpointed)."""
        parts: dict[str, torch.Tensor | float] = {}
        total: torch.Tensor | None = None
        for i, batch in enumerate(micro_batches):
            batch = batch.to(self.runtime.device)
            sync = i == len(micro_batches) - 1
            context: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
            if self.dist.enabled and not sync:
                assert self._ddp is not None  # wrapped in __init__ (the compiled step shares its parameters)
                context = self._ddp.no_sync()
            with context:
                stepping.begin_step(self.step_mode)
                with self.runtime.autocast():
                    output: LossOutput = self.loss_module(batch)
                loss = output.total.float() / len(micro_batches)
                self.scaler.scale(loss).backward()
            total = loss.detach() if total is None else total + loss.detach()
            stepping.sum_parts(parts, output.parts, 1 / len(micro_batches))
        assert total is not None
        self.reader.add(global_step, total, parts)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

    def _progress(self) -> Progress:
        return Progress(
            TextColumn("[bold blue]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
            console=self.console, disable=not self.dist.is_main, transient=False,
        )


@dataclass(frozen=True)
class GroupSchedule:
    """One optimizer group's resolved peak rate and warm-up: the shared schedule shape at its own scale."""

    name: str
    peak_lr: float
    warmup_epochs: int

    def lr(self, epoch: int, train: TrainSettings) -> float:
        return epoch_learning_rate(epoch, base_lr=self.peak_lr, epochs=train.epochs,
                                   warmup_epochs=self.warmup_epochs, warmup_lr=train.warmup_lr)


def build_optimizer(
    method: Method, train: TrainSettings, options: dict[str, Any] | None = None,
) -> tuple[torch.optim.Optimizer, list[GroupSchedule]]:
    """`train.optimizer` (with extra constructor `options`, e.g. `fused=True` on CUDA) over
    `method.parameter_groups()` (frozen parameters and empty groups dropped, rates left to
    `train` resolved), and each group's schedule, in the optimizer's group order.

    The groups must hold every trainable parameter exactly once: a forgotten one would silently stay frozen."""
    groups: list[dict[str, Any]] = []
    schedules: list[GroupSchedule] = []
    for group in method.parameter_groups():
        params = [p for p in group.params if p.requires_grad]
        if not params:
            continue
        peak = train.lr if group.lr is None else group.lr
        decay = train.weight_decay if group.weight_decay is None else group.weight_decay
        warmup = train.warmup_epochs if group.warmup_epochs is None else group.warmup_epochs
        groups.append({"params": params, "lr": peak, "weight_decay": decay, "name": group.name})
        schedules.append(GroupSchedule(group.name, peak, warmup))
    trainable = {id(p): name for name, p in method.named_parameters() if p.requires_grad}
    if not trainable:
        raise SemptError(f"Method {method.name} has no trainable parameters with these settings.")
    grouped = [id(p) for group in groups for p in group["params"]]
    if len(grouped) != len(set(grouped)) or set(grouped) != set(trainable):
        missing = sorted(name for key, name in trainable.items() if key not in grouped)
        raise SemptError(f"The parameter groups of method {method.name} must hold each trainable parameter exactly "
                         f"once{'; missing: ' + ', '.join(missing) if missing else ''}.")
    optimizer: torch.optim.Optimizer
    if train.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay,
                                    **(options or {}))
    else:
        optimizer = torch.optim.AdamW(groups, lr=train.lr, weight_decay=train.weight_decay, **(options or {}))
    return optimizer, schedules


def _group(loader: Iterable[Any], size: int, epoch: int) -> Iterator[list[Batch]]:
    """Yield lists of `size` consecutive micro-batches (one optimizer step each)."""
    bucket: list[Batch] = []
    for images, labels, indices in loader:
        bucket.append(Batch(images, labels, indices, epoch))
        if len(bucket) == size:
            yield bucket
            bucket = []

