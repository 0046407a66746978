"""Training logs a user can watch while a run trains: `metrics.jsonl` and TensorBoard event files in the run folder.

Why both: `metrics.jsonl` is plain text any script reads (one JSON object per line: a `step` line per optimizer
step with the loss parts and learning rates, an `epoch` line per epoch with its timing and, where the run scores
epochs, the score); TensorBoard is what users of the official Dassl-based code watch, under the same tags
(`train/<loss name>`, `train/lr`, per-epoch `eval/...`), plus `perf/images_per_s` and `perf/loading_share`.

Resume must stay exact and the logs must not lie about it: a run killed after its last checkpoint logged steps it
will train again. On resume the JSON log is cut back to the checkpoint's step (rewritten atomically; a torn last
line from a `kill -9` is dropped with it) and appended to from there, and the TensorBoard writer is opened with
`purge_step`, so TensorBoard's reader discards the old events from that step on. A resumed run therefore reads as
one continuous run with every step once.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from sempt_cli.io import atomic_write_text

JSONL_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every complete line of a `metrics.jsonl` (a torn last line, from a killed run, is skipped)."""
    if not path.is_file():
        return []
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            if line.strip():
                lines.append(json.loads(line))
    return lines


class TrainingLog:
    """The logs of one run (main process only; `enabled=False` makes every call a no-op)."""

    def __init__(self, run_dir: Path, resume_step: int, *, tensorboard: bool, enabled: bool = True) -> None:
        self.enabled = enabled
        self.path = run_dir / JSONL_FILE
        self._file: IO[str] | None = None
        self._writer: Any = None
        if not enabled:
            return
        kept = [line for line in read_jsonl(self.path) if int(line.get("step", 0)) <= resume_step]
        atomic_write_text(self.path, "".join(json.dumps(line) + "\n" for line in kept))
        self._file = self.path.open("a", encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

            self._writer = SummaryWriter(str(run_dir / TENSORBOARD_DIR),
                                         purge_step=resume_step + 1 if resume_step else None)

    def _write(self, entry: Mapping[str, Any]) -> None:
        assert self._file is not None
        self._file.write(json.dumps(entry) + "\n")
        self._file.flush()

    def step(self, step: int, epoch: int, losses: Mapping[str, float], rates: Mapping[str, float]) -> None:
        """One optimizer step: its loss parts and every parameter group's learning rate (the first is `lr`)."""
        if not self.enabled:
            return
        first = next(iter(rates.values()))
        self._write({"kind": "step", "step": step, "epoch": epoch, "lr": first, "lr_groups": dict(rates),
                     "losses": dict(losses)})
        if self._writer is not None:
            for name, value in losses.items():
                self._writer.add_scalar(f"train/{name}", value, step)
            self._writer.add_scalar("train/lr", first, step)
            if len(rates) > 1:
                for group, rate in rates.items():
                    self._writer.add_scalar(f"train/lr/{group}", rate, step)

    def epoch(self, step: int, epoch: int, images: int, seconds: float, loading_seconds: float,
              scores: Mapping[str, float] | None = None) -> None:
        """One finished epoch: throughput, the share of its time spent waiting for images, and its scores."""
        if not self.enabled:
            return
        rate = images / max(seconds, 1e-9)
        share = loading_seconds / max(seconds, 1e-9)
        self._write({"kind": "epoch", "step": step, "epoch": epoch, "images": images, "seconds": round(seconds, 4),
                     "images_per_s": rate, "loading_share": share, "eval": dict(scores or {})})
        if self._writer is not None:
            self._writer.add_scalar("perf/images_per_s", rate, step)
            self._writer.add_scalar("perf/loading_share", share, step)
            for name, value in (scores or {}).items():
                self._writer.add_scalar(f"eval/{name}", value, step)
            self._writer.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
