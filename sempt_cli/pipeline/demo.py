"""`run_demo`: the whole pipeline on the built-in demo world, on a CPU, in minutes.

Demo numbers measure our code on a synthetic miniature; they say nothing about the real benchmarks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from sempt_cli.engine.runtime import resolve_runtime
from sempt_cli.models.factory import DEMO_STUDENT, DEMO_TEACHER
from sempt_cli.pipeline.backbone import load_backbone
from sempt_cli.pipeline.data import prepare_data
from sempt_cli.pipeline.distill import distill, resolve_distill_settings
from sempt_cli.pipeline.embed import embed_classes
from sempt_cli.pipeline.teacher import build_method, evaluate_protocol, image_size, resolve_with_preset, train_teacher
from sempt_cli.settings import load_settings


@dataclass
class DemoReport:
    """Rows of (model, metrics) in the order they were measured."""

    rows: list[tuple[str, dict[str, float]]] = field(default_factory=list)

    def table(self) -> Table:
        table = Table(title="Demo world, base-to-novel (synthetic data: not comparable to paper numbers)")
        for column in ("model", "base", "novel", "HM"):
            table.add_column(column, justify="right" if column != "model" else "left")
        for name, metrics in self.rows:
            table.add_row(name, *(f"{metrics[k]:.1f}" for k in ("base", "novel", "hm")))
        return table


def zero_shot(backbone: str, overrides: Mapping[str, Any], console: Console | None = None) -> dict[str, float]:
    """Zero-shot base/novel accuracy of a frozen demo CLIP."""
    settings = load_settings({**overrides, "model.backbone": backbone}).settings
    runtime = resolve_runtime(settings.model)
    clip = load_backbone(settings.model, runtime.device, settings.paths.cache_dir)
    prepared = prepare_data(settings)
    method = build_method("zeroshot", clip, prepared.full.classnames, settings)
    return evaluate_protocol(method, prepared, settings, runtime, image_size(clip), console)


def run_demo(overrides: Mapping[str, Any] | None = None, console: Console | None = None) -> DemoReport:
    """Zero-shot teacher and student; a PromptSRC teacher trained on the base classes and its class vectors;
    a PromptKD student distilled from it on all unlabelled training images."""
    console = console or Console(stderr=True)
    overrides = {"data.dataset": "demo", **(overrides or {})}
    report = DemoReport()
    for label, backbone in (("zero-shot teacher CLIP", DEMO_TEACHER), ("zero-shot student CLIP", DEMO_STUDENT)):
        report.rows.append((label, zero_shot(backbone, overrides, console)))
    resolved = resolve_with_preset("promptsrc", {**overrides, "model.backbone": DEMO_TEACHER})
    teacher = train_teacher("promptsrc", resolved, console=console)
    report.rows.append(("PromptSRC teacher (trained on base)", teacher.metrics))
    vectors = embed_classes(teacher.checkpoint, resolved.settings, console=console)
    console.print(f"Teacher class vectors for all {len(vectors.classnames)} classes cached at {vectors.path}")
    student_settings = resolve_distill_settings("promptkd", teacher.checkpoint, {**overrides, "sempt.enabled": False})
    student = distill("promptkd", teacher.checkpoint, student_settings, console=console)
    report.rows.append(("PromptKD student (distilled, unlabelled)", student.metrics))
    return report
