"""One engine for every method: training loop, evaluation, caches, runtime (device, precision, DDP)."""
