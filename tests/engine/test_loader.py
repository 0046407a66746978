"""The run-long loader (`EpochLoader`: persistent workers, pinned memory, prefetching) yields exactly the views of
the per-epoch loader: each view stays a function of (seed, epoch, index), which the teacher-feature cache needs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision import transforms as T

from sempt_cli.engine.loader import EpochBatches, EpochLoader, SeededImageDataset, make_loader
from tests.engine.toy import make_samples

AUG = T.Compose([T.RandomResizedCrop(8, scale=(0.3, 1.0)), T.RandomHorizontalFlip(), T.ToTensor()])


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory):
    return make_samples(tmp_path_factory.mktemp("toy"))


@pytest.mark.parametrize("workers", [0, 2])
def test_persistent_workers_give_the_views_of_the_per_epoch_loader(samples, workers: int) -> None:
    batches = EpochBatches(num_items=len(samples), batch_size=4, seed=1)
    run_long = EpochLoader(SeededImageDataset(samples, AUG, seed=1), workers)
    reference = SeededImageDataset(samples, AUG, seed=1)
    seen = []
    for epoch in (1, 2, 3):  # the same workers serve every epoch
        plan = batches.plan(epoch)
        reference.set_epoch(epoch)
        expected = list(make_loader(reference, plan, 0))
        got = list(run_long.epoch(epoch, plan))
        assert len(got) == len(expected) == batches.steps_per_epoch
        for (images, labels, indices), (want, want_labels, want_indices) in zip(got, expected, strict=True):
            assert torch.equal(indices, want_indices) and torch.equal(labels, want_labels)
            assert torch.equal(images, want)
        seen.append(torch.cat([images for images, _, _ in got]))
    assert not torch.equal(seen[0], seen[1])  # another epoch, other views
    if workers:
        processes = list(run_long.loader._iterator._workers)  # the same workers served all three epochs
        assert all(p.is_alive() for p in processes)
        run_long.close()
        for process in processes:
            process.join(timeout=10)
        assert not any(p.is_alive() for p in processes)


def test_a_pair_key_is_the_view_of_that_epoch(samples, tmp_path: Path) -> None:
    dataset = SeededImageDataset(samples, AUG, seed=3)
    dataset.set_epoch(5)
    view = dataset[4][0]
    dataset.set_epoch(1)
    assert torch.equal(dataset[(5, 4)][0], view)
    assert not torch.equal(dataset[(6, 4)][0], view)
