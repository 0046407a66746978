"""Data-parallel context for `torchrun` launches (NCCL on GPUs, gloo on CPU).

Besides the process group this holds what makes a job on several processes equal to one process: BatchNorm
statistics over the whole global batch (`sync_batchnorms`), and sums of evaluation counts over ranks that each
scored a shard of the test images (`all_reduce_sum`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import Tensor, nn


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job; a single process is rank 0 of 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistContext:
    """Join the process group `torchrun` describes through WORLD_SIZE/RANK/LOCAL_RANK; no-op otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank)


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def is_main_process() -> bool:
    """Rank 0 of an initialised process group, or a single process: the one that prints and writes."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def all_reduce_sum(ctx: DistContext, tensor: Tensor) -> Tensor:
    """The sum of `tensor` over every rank (a copy; the tensor itself when there is one process)."""
    if not ctx.enabled:
        return tensor
    summed = tensor.clone()
    dist.all_reduce(summed, op=dist.ReduceOp.SUM)
    return summed


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch, summed over every rank.

    A data-parallel step then normalises exactly as one process with the whole batch would, gradients included
    (the reductions are differentiable). `nn.SyncBatchNorm` does the same but refuses CPU tensors, which gloo
    jobs (and the tests) use; this one works on any backend. Outside a training forward with more than one
    process it is plain BatchNorm, and its state dict has BatchNorm's keys.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: Tensor) -> Tensor:
        synced = self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if not synced:
            return super().forward(input)
        dims = [d for d in range(input.dim()) if d != 1]
        x = input.float()
        shape = [1, -1] + [1] * (input.dim() - 2)
        count = torch.tensor(float(x.numel() // x.shape[1]), device=x.device)
        total = dist_fn.all_reduce(torch.cat([x.sum(dims), count.view(1)]))
        n = total[-1]
        mean = total[:-1] / n
        centred = x - mean.view(shape)
        var = dist_fn.all_reduce((centred * centred).sum(dims)) / n
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            assert self.num_batches_tracked is not None
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = var * (n / (n - 1).clamp(min=1))
                self.running_mean.mul_(1 - factor).add_(factor * mean.to(self.running_mean.dtype))
                self.running_var.mul_(1 - factor).add_(factor * unbiased.to(self.running_var.dtype))
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(input.dtype)


def sync_batchnorms(module: nn.Module) -> int:
    """Turn every BatchNorm below `module` into a `GlobalBatchNorm` in place, sharing its parameters and buffers
    (so an optimizer and a checkpoint see the same tensors under the same names); returns how many."""
    converted = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, GlobalBatchNorm):
            synced = GlobalBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                     child.track_running_stats)
            if child.affine:
                synced.weight, synced.bias = child.weight, child.bias
            synced.running_mean, synced.running_var = child.running_mean, child.running_var
            synced.num_batches_tracked = child.num_batches_tracked
            synced.train(child.training)
            setattr(module, name, synced)
            converted += 1
        else:
            converted += sync_batchnorms(child)
    return converted


def has_batchnorm(module: nn.Module) -> bool:
    """Whether `module` normalises over its (micro-)batch anywhere."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())
