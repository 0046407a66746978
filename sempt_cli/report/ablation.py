"""An ablation grid beside SemPT Table 4: a table (rich / markdown) and a PNG plot.

Ours: mean ± std over seeds per grid value (base, novel, HM and the all-classes extra). Paper: the row of SemPT
Table 4(a–e) for the same value, averaged over the paper's 11 datasets, with its source; Δ = ours − paper, shown
only when the run is comparable (the demo world never is: its numbers measure our code, not the benchmark).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sempt_cli.report.paper import PaperNumber, load_paper_numbers
from sempt_cli.report.records import EvalRecord, Stat
from sempt_cli.report.tables import TableView, format_value


@dataclass(frozen=True)
class Grid:
    """One of SemPT Table 4's ablations: which setting it varies, the paper's grid, and the paper's row names."""

    param: str
    table: str
    setting: str
    values: tuple[str, ...]
    parse: Callable[[str], Any]
    paper_row: Callable[[str], str]
    title: str
    eval_only: bool = False


@dataclass
class GridPoint:
    """One value of the grid: its students (one per seed), their evaluations, and the seed statistics."""

    value: str
    paper_method: str
    checkpoints: list[Path] = field(default_factory=list)
    records: list[EvalRecord] = field(default_factory=list)
    stats: dict[str, Stat] = field(default_factory=dict)


@dataclass
class AblationResult:
    grid: Grid
    dataset: str
    seeds: list[int]
    points: list[GridPoint]
    path: Path
    comparable: bool
    note: str


METRICS = ("base", "novel", "hm")
PAPER_DATASET = "average"


def paper_values(result: AblationResult) -> dict[str, dict[str, PaperNumber]]:
    """value → metric → SemPT Table 4 number, for the grid values the paper reports."""
    numbers = [n for n in load_paper_numbers("sempt") if n.table == result.grid.table and n.dataset == PAPER_DATASET]
    out: dict[str, dict[str, PaperNumber]] = {}
    for point in result.points:
        hits = {n.metric: n for n in numbers if n.method == point.paper_method}
        if hits:
            out[point.value] = hits
    return out


def ablation_view(result: AblationResult) -> TableView:
    grid, paper = result.grid, paper_values(result)
    columns = [grid.param, "base", "novel", "HM", "all", "paper base", "paper novel", "paper HM"]
    if result.comparable:
        columns.append("Δ HM")
    rows = []
    for point in result.points:
        cells = [point.value, *(format_value(point.stats.get(m)) for m in (*METRICS, "all"))]
        published = paper.get(point.value, {})
        cells += [published[m].formatted() if m in published else "—" for m in METRICS]
        if result.comparable:
            hm = point.stats.get("hm")
            cells.append(f"{hm.mean - published['hm'].value:+.2f}" if hm and "hm" in published else "—")
        rows.append(("ours", cells))
    seeds = ", ".join(str(s) for s in result.seeds)
    notes = [f"Ours (base, novel, HM, all): PromptKD w/ SemPT on {result.dataset}, seeds {seeds} ({grid.setting} "
             "varied; mean ± std).",
             f"Paper: SemPT Table {grid.table} ({grid.title}), average over its 11 datasets (ViT-B/16 student)."]
    if result.note:
        notes.append(result.note)
    missing = [p.value for p in result.points if p.value not in paper]
    if missing:
        notes.append(f"The paper has no row for {', '.join(missing)}.")
    title = f"Ablation: {grid.title} — beside SemPT Table {grid.table}"
    return TableView(title, columns, rows, notes)


def ablation_plot(result: AblationResult, path: Path) -> Path:
    """Base / novel / HM (and ours' all-classes extra) against the grid value: ours (± std) on the left, the
    paper's on the right (the demo world's scale is not the benchmarks', so they do not share an axis)."""
    from sempt_cli.report.plots import new_figure, save_png

    paper = paper_values(result)
    labels = [p.value for p in result.points]
    figure = new_figure(9.0, 3.4)
    ours_axes, paper_axes = figure.subplots(1, 2, sharex=True)
    positions = list(range(len(labels)))
    for metric, marker in zip((*METRICS, "all"), "os^D", strict=True):
        stats = [p.stats.get(metric) for p in result.points]
        shown = [(x, s) for x, s in zip(positions, stats, strict=True) if s is not None]
        if shown:
            ours_axes.errorbar([x for x, _ in shown], [s.mean for _, s in shown], yerr=[s.std for _, s in shown],
                               marker=marker, capsize=3, label=metric.upper() if metric == "hm" else metric)
        published = [(x, paper[v][metric].value) for x, v in zip(positions, labels, strict=True)
                     if metric in paper.get(v, {})]
        if published:
            paper_axes.plot([x for x, _ in published], [y for _, y in published], marker=marker, linestyle="--",
                            label=metric.upper() if metric == "hm" else metric)
    ours_axes.set_title(f"ours ({result.dataset}, {len(result.seeds)} seed(s))")
    paper_axes.set_title(f"SemPT Table {result.grid.table} (11-dataset average)")
    for axes in (ours_axes, paper_axes):
        axes.set_xticks(positions, labels)
        axes.set_xlabel(result.grid.param)
        axes.set_ylabel("accuracy (%)")
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize="small")
    figure.suptitle(result.grid.title)
    return save_png(figure, path)
