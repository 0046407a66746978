"""`run_few_shot`: the few-shot protocol end to end (SemPT Fig. 4): a supervised baseline with and without SemPT,
trained on 1/2/4/8/16 shots of all classes per seed, then scored and aggregated like `sempt eval`.

Every training is an ordinary run (`train_teacher` under the method's few-shot preset), so an interrupted sweep
resumes where it stopped, finished runs are reused, and evaluation records are reused when identical. In the
few-shot setting every class is seen, so SemPT's hybrid rule scores all of them against T_lbl: what SemPT changes
here is training (its L_enh term), exactly as in the paper's Fig. 4.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from sempt_cli.errors import SettingsError
from sempt_cli.methods import get_method
from sempt_cli.pipeline.evaluation import EvalReport, evaluate_runs
from sempt_cli.pipeline.runs import resolve_with_preset
from sempt_cli.pipeline.teacher import train_teacher
from sempt_cli.report.paper import BASE2NOVEL_DATASETS
from sempt_cli.settings import STANDARD_SHOTS, load_settings

SEEDS = (1, 2, 3)


@dataclass(frozen=True)
class FewShotPlan:
    """Which runs a sweep consists of: datasets × variants (SemPT off/on) × shots × seeds."""

    baseline: str
    datasets: tuple[str, ...]
    shots: tuple[int, ...] = STANDARD_SHOTS
    seeds: tuple[int, ...] = SEEDS
    variants: tuple[bool, ...] = (False, True)

    def __post_init__(self) -> None:
        method = get_method(self.baseline)
        if not method.supervised:
            raise SettingsError(f"The few-shot protocol trains with labels; {self.baseline} does not.")
        if not (self.datasets and self.shots and self.seeds and self.variants):
            raise SettingsError("A few-shot sweep needs at least one dataset, shot count, seed and variant.")

    @property
    def size(self) -> int:
        return len(self.datasets) * len(self.variants) * len(self.shots) * len(self.seeds)


def few_shot_datasets(names: Sequence[str] | None) -> tuple[str, ...]:
    """`all` (or nothing) means the papers' 11 datasets; otherwise the given dataset keys."""
    if not names or [n.lower() for n in names] == ["all"]:
        return tuple(BASE2NOVEL_DATASETS)
    return tuple(names)


def run_few_shot(
    plan: FewShotPlan,
    overrides: Mapping[str, Any],
    *,
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    console: Console | None = None,
    command: Sequence[str] | None = None,
) -> EvalReport:
    """Train every run of `plan` (or resume, or reuse it), then evaluate all of them; `overrides` are the user's
    flags and apply to every run (a flag for shots, seed, dataset or SemPT would be overridden by the plan)."""
    console = console or Console(stderr=True)
    checkpoints: list[Path] = []
    runs = itertools.product(plan.datasets, plan.variants, plan.shots, plan.seeds)
    for done, (dataset, sempt, shots, seed) in enumerate(runs, start=1):
        label = f"{plan.baseline}{' w/ SemPT' if sempt else ''} · {dataset} · {shots} shot · seed {seed}"
        console.rule(f"[bold]few-shot {done}/{plan.size}[/] {label}")
        run = {**overrides, "data.dataset": dataset, "data.setting": "few-shot", "data.shots": shots,
               "data.seed": seed, "sempt.enabled": sempt}
        resolved = resolve_with_preset(plan.baseline, run, config_file=config_file, env=env)
        checkpoints.append(train_teacher(plan.baseline, resolved, sempt=sempt, console=console).checkpoint)
    settings = load_settings(overrides, config_file=config_file, env=env).settings
    return evaluate_runs(checkpoints, settings, setting="few-shot", console=console, command=command)
