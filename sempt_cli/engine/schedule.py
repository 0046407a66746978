"""Learning-rate schedule and Gaussian prompt-aggregation weights, exactly as Dassl/PromptSRC define them."""

from __future__ import annotations

import math


def epoch_learning_rate(epoch: int, *, base_lr: float, epochs: int, warmup_epochs: int, warmup_lr: float) -> float:
    """LR for 1-based `epoch`: Dassl's ConstantWarmupScheduler around CosineAnnealingLR(T_max=epochs).

    The cosine restarts its count after the warm-up (WARMUP_RECOUNT), stepped once per epoch, so with one
    warm-up epoch: epoch 1 → warmup_lr, epoch e ≥ 2 → base_lr · ½(1 + cos(π (e − 2) / epochs)). It never reaches 0.
    """
    if epoch <= warmup_epochs:
        return warmup_lr
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - 1 - warmup_epochs) / epochs))


def gaussian_aggregation_weights(epochs: int, mean: float, std: float) -> list[float]:
    """PromptSRC's GPA weights w_k ∝ N(k; mean, std) for epochs k = 1..E, normalised to sum to 1."""
    density = [math.exp(-0.5 * ((k - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi)) for k in range(1, epochs + 1)]
    total = sum(density)
    return [value / total for value in density]
