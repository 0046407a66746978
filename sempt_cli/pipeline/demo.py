"""`run_demo`: the whole pipeline on the built-in demo world, on a CPU, in minutes.

Demo numbers measure our code on a synthetic miniature; they say nothing about the real benchmarks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape

from sempt_cli.models.factory import DEMO_STUDENT, DEMO_TEACHER
from sempt_cli.pipeline.distill import distill, resolve_distill_settings
from sempt_cli.pipeline.embed import embed_classes
from sempt_cli.pipeline.evaluation import EvalReport, evaluate_runs, evaluate_zeroshot
from sempt_cli.pipeline.runs import resolve_with_preset
from sempt_cli.pipeline.teacher import train_teacher
from sempt_cli.report.records import aggregate
from sempt_cli.settings import load_settings


def run_demo(overrides: Mapping[str, Any] | None = None, console: Console | None = None,
             seeds: Sequence[int] | None = None) -> EvalReport:
    """train-teacher → embed → distill → eval on the demo world, with both zero-shot demo CLIPs as references:
    a PromptSRC teacher trained on the base classes, its class vectors for all classes, two students distilled
    from it on all unlabelled training images — PromptKD and PromptKD w/ SemPT (the demo world's ground-truth
    attribute file) — and an evaluation record for each; with several `seeds`, all of it per seed, and the
    tables show mean ± std."""
    console = console or Console(stderr=True)
    overrides = {"data.dataset": "demo", **(overrides or {})}
    checkpoints = []
    runs: list[int | None] = list(seeds) if seeds else [None]
    for seed in runs:
        seeded = overrides if seed is None else {**overrides, "data.seed": seed}
        resolved = resolve_with_preset("promptsrc", {**seeded, "model.backbone": DEMO_TEACHER})
        teacher = train_teacher("promptsrc", resolved, console=console)
        vectors = embed_classes(teacher.checkpoint, resolved.settings, console=console)
        console.print(f"Teacher class vectors for all {len(vectors.classnames)} classes cached at "
                      f"{escape(str(vectors.path))}")
        checkpoints.append(teacher.checkpoint)
        for sempt in (False, True):
            student = resolve_distill_settings("promptkd", teacher.checkpoint, {**seeded, "sempt.enabled": sempt})
            checkpoints.append(distill("promptkd", teacher.checkpoint, student, console=console).checkpoint)
    settings = load_settings(overrides).settings
    records = [
        evaluate_zeroshot(load_settings({**overrides, "model.backbone": backbone}).settings, console=console)
        for backbone in (DEMO_TEACHER, DEMO_STUDENT)
    ]
    records += evaluate_runs(checkpoints, settings, console=console).records
    return EvalReport(records, aggregate(records, settings.eval.round_per_seed))
