"""PNG figures where people would rather look than read: few-shot curves per dataset (SemPT Fig. 4 style) and
per-dataset base-to-novel HM bars, ours next to the papers.

matplotlib is imported only here and only when a figure is drawn (its object API, no pyplot global state), so
every other command starts without it. Files are written atomically like every other artefact.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sempt_cli.data import DEMO_KEY
from sempt_cli.errors import SemptError
from sempt_cli.io import atomic_write_bytes
from sempt_cli.report.paper import AVERAGE
from sempt_cli.report.records import Group, Stat
from sempt_cli.report.tables import Comparison, PaperRow, dataset_title
from sempt_cli.settings import STANDARD_SHOTS

PLOT_METHODS: tuple[str, ...] = (
    "CLIP", "PromptSRC", "PromptKD", "PromptKD w/ SemPT", "PromptKD teacher", "MMRL", "MMRL w/ SemPT", "DPT",
)
"""Paper methods drawn next to ours by default (all of them would make the bars unreadable); `methods=`
(the CLI's --compare) draws exactly the named ones instead."""


def new_figure(width: float, height: float) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        raise SemptError("Plots need matplotlib, which is not installed.",
                         "Install it (pip install matplotlib) or leave out --plots.") from None
    return Figure(figsize=(width, height), dpi=150, layout="constrained")


def save_png(figure: Any, path: Path) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def write_plots(comparisons: Sequence[Comparison], folder: Path, methods: Sequence[str] | None = None) -> list[Path]:
    """Every figure the comparisons support; returns the files written."""
    paper = {row.label: row for c in comparisons if c.group.setting == "few-shot" for row in _plotted_rows(c, methods)}
    return [*few_shot_curves([c.group for c in comparisons], folder, list(paper.values())),
            *hm_bars(comparisons, folder, methods)]


def few_shot_curves(groups: Sequence[Group], folder: Path, paper: Sequence[PaperRow] = ()) -> list[Path]:
    """Accuracy vs shots (1/2/4/8/16, log scale) per dataset, one line per model with ± std error bars and
    zero-shot CLIP as a dashed level; plus the average over the datasets every line covers, if there are two.
    The papers' 16-shot numbers (`paper`) are stars at 16 shots."""
    few = [g for g in groups if g.setting == "few-shot"]
    lines: dict[str, dict[int, Group]] = {}
    levels: dict[str, Group] = {}
    for group in few:
        backbone = group.paper_backbone or group.backbone
        if group.kind == "zeroshot":
            levels[f"{group.title} zero-shot ({backbone})"] = group
        else:
            lines.setdefault(group.model_name, {})[group.shots] = group
    if not lines:
        return []
    datasets = list(dict.fromkeys(d for g in few for d in g.datasets))

    def value(group: Group, dataset: str) -> tuple[float, float] | None:
        if dataset == AVERAGE:
            if not all(d in group.cells for d in common):
                return None
            return sum(group.cells[d]["accuracy"].mean for d in common) / len(common), 0.0
        stat = group.cells.get(dataset, {}).get("accuracy")
        return None if stat is None else (stat.mean, stat.std)

    common = [d for d in datasets if all(d in g.cells for g in few if g.kind != "zeroshot")]
    panels = datasets + ([AVERAGE] if len(common) >= 2 else [])
    demo = any(not g.comparable and "Demo" in g.comparability_note for g in few)
    written = []
    for dataset in panels:
        figure = new_figure(4.6, 3.6)
        axes = figure.add_subplot()
        for name, by_shots in lines.items():
            points = [(s, v) for s, g in sorted(by_shots.items()) if (v := value(g, dataset)) is not None]
            if points:
                axes.errorbar([s for s, _ in points], [v[0] for _, v in points], yerr=[v[1] for _, v in points],
                              marker="o", capsize=3, label=name)
        for row in paper:
            published = row.value(dataset, "accuracy")
            if published is not None:
                axes.plot([16], [published.value], marker="*", markersize=11, linestyle="none", label=row.label)
        for name, group in levels.items():
            level = value(group, dataset)
            if level is not None:
                axes.axhline(level[0], linestyle="--", color="gray", label=name)
        axes.set_xscale("log", base=2)
        axes.set_xticks(list(STANDARD_SHOTS), [str(s) for s in STANDARD_SHOTS])
        axes.set_xlabel("Shots per class")
        axes.set_ylabel("Accuracy (%)")
        title = dataset_title(dataset) if dataset != AVERAGE else f"Average over {len(common)} datasets"
        axes.set_title(title + (" (demo world)" if demo and dataset != DEMO_KEY else ""))
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
        written.append(save_png(figure, Path(folder) / f"fewshot-{dataset}.png"))
    return written


def _mean(value: Stat | float | None) -> float | None:
    return value.mean if isinstance(value, Stat) else value


def _plotted_rows(comparison: Comparison, methods: Sequence[str] | None) -> list[PaperRow]:
    wanted = {m.lower() for m in (methods if methods is not None else PLOT_METHODS)}
    return [row for row in comparison.paper if row.method.lower() in wanted]


def hm_bars(comparisons: Sequence[Comparison], folder: Path, methods: Sequence[str] | None = None) -> list[Path]:
    """Grouped bars of base-to-novel HM per dataset (and Average). A row of ours with paper rows gets its own
    figure, ours first, then the papers' methods (PLOT_METHODS unless `methods` names others); rows without
    paper rows (demo, other weights) share one figure."""
    b2n = [c for c in comparisons if c.group.setting == "base2novel" and c.columns]
    batches = [[c] for c in b2n if c.paper]
    shared = [c for c in b2n if not c.paper]
    if shared:
        batches.append(sorted(shared, key=lambda c: (c.group.kind != "zeroshot", c.group.method, c.group.backbone)))
    written = []
    for batch in batches:
        columns = list(dict.fromkeys(d for c in batch for d in c.columns))
        series: list[tuple[str, list[float | None], list[float]]] = []
        for comparison in batch:
            ours = [comparison.ours(d, "hm") for d in columns]
            series.append((comparison.group.label, [_mean(v) for v in ours],
                           [v.std if isinstance(v, Stat) else 0.0 for v in ours]))
        for row in _plotted_rows(batch[0], methods) if len(batch) == 1 else []:
            numbers = [row.value(d, "hm") for d in columns]
            series.append((row.label, [None if n is None else n.value for n in numbers], [0.0] * len(columns)))
        written.append(_bars(series, columns, len(batch), batch, Path(folder)))
    return written


def _bars(series: list[tuple[str, list[float | None], list[float]]], columns: list[str], num_ours: int,
          batch: Sequence[Comparison], folder: Path) -> Path:
    width_in = min(13.0, max(5.0, 1.5 + 0.22 * len(columns) * (len(series) + 1)))
    figure = new_figure(width_in, 4.2)
    axes = figure.add_subplot()
    width = 0.8 / len(series)
    for i, (label, values, errors) in enumerate(series):
        xs = [c + (i - (len(series) - 1) / 2) * width for c in range(len(columns))]
        kept = [(x, v, e) for x, v, e in zip(xs, values, errors, strict=True) if v is not None]
        ours = i < num_ours
        axes.bar([x for x, _, _ in kept], [v for _, v, _ in kept], width=width, label=label,
                 yerr=[e for _, _, e in kept] if ours else None, capsize=2,
                 edgecolor="black" if ours else None, linewidth=0.6)
    axes.set_xticks(range(len(columns)), [dataset_title(d) for d in columns],
                    rotation=30 if len(columns) > 3 else 0, ha="right" if len(columns) > 3 else "center")
    axes.set_ylabel("HM (%)")
    present = [v for _, values, _ in series for v in values if v is not None]
    if present:
        axes.set_ylim(max(0.0, min(present) - 10.0), min(100.0, max(present) + 5.0))
    first = batch[0].group
    who = first.label.removeprefix("ours: ") if len(batch) == 1 else "ours"
    notes = {c.group.comparability_note.split(":")[0] for c in batch if not c.group.comparable}
    suffix = "".join(f" — {note}" for note in sorted(notes))
    axes.set_title(f"Base-to-novel HM · {who}{suffix}", fontsize=9)
    axes.grid(axis="y", alpha=0.3)
    columns_of_legend = 1 if width_in < 8 else min(3, len(series))  # long labels: one per line when narrow
    figure.legend(loc="outside lower center", ncol=columns_of_legend, fontsize=7, frameon=False)
    name = f"hm-{first.slug}.png" if len(batch) == 1 else "hm-base2novel-ours.png"
    return save_png(figure, folder / name)
