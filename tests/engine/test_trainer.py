"""The shared training loop: exact resume, accumulation, DDP equivalence, deterministic augmentation."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torchvision import transforms as T

from sempt_cli.engine.distributed import DistContext, init_distributed
from sempt_cli.engine.loader import EpochBatches, SeededImageDataset
from sempt_cli.engine.runtime import Runtime, seed_everything
from sempt_cli.engine.trainer import Trainer
from sempt_cli.settings import load_settings
from tests.engine.toy import ToyMethod, make_samples

CPU = Runtime(torch.device("cpu"), None)
AUG = T.Compose([T.RandomResizedCrop(8, scale=(0.3, 1.0)), T.RandomHorizontalFlip(), T.ToTensor()])


def _train(samples, run_dir: Path, *, batch: int = 4, accum: int = 1, epochs: int = 3,
           stop_after: int | None = None, dist: DistContext | None = None) -> ToyMethod:
    settings = load_settings(
        {"data.batch_size": batch, "data.workers": 0, "train.grad_accum_steps": accum, "train.epochs": epochs,
         "train.lr": 0.5, "train.checkpoint_every": 2},
        env={},
    ).settings
    seed_everything(0)
    method = ToyMethod(["c0", "c1", "c2"])
    dataset = SeededImageDataset(samples, AUG, seed=settings.data.seed)
    trainer = Trainer(method, dataset, settings, run_dir, CPU, dist=dist)
    trainer.fit(stop_after_steps=stop_after)
    return method


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


def _ddp_worker(rank: int, port: int, samples, run_dir: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    ctx = init_distributed()
    method = _train(samples, Path(run_dir), epochs=2, dist=ctx)
    if rank == 0:
        torch.save(_params(method), out)
    torch.distributed.destroy_process_group()


def test_two_process_ddp_equals_single_process(samples, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp.pt"
    mp.spawn(_ddp_worker, args=(port, samples, str(tmp_path / "ddp"), str(out)), nprocs=2, join=True)
    ddp = torch.load(out, weights_only=True)
    single = _params(_train(samples, tmp_path / "single", epochs=2))
    for name in single:
        torch.testing.assert_close(ddp[name], single[name], rtol=1e-5, atol=1e-6)
