"""Our results next to the papers' (`results/paper/`), per dataset, with deltas; as rich, markdown, CSV or JSON.

Every table row says whose number it is: `ours: PromptKD (ViT-B/16, student)` for an evaluated model (mean ±
population std over seeds), `paper: PromptKD (SemPT Table 1)` for a published one, with Δ = ours − paper.
Paper rows are only shown where the comparison means something: same protocol, same backbone, OpenAI weights,
a real dataset. Demo-world results are labelled as not comparable and get no paper rows.

When a number is printed in both papers (PromptKD's own tables and SemPT's copy), SemPT's table is the source
and the copy is not repeated; methods only one paper reports come from that paper.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sempt_cli.data.registry import DATASETS
from sempt_cli.errors import SemptError, SettingsError
from sempt_cli.report.paper import AVERAGE, AVERAGED_OVER, PaperNumber, load_paper_numbers
from sempt_cli.report.records import Group, Stat, metrics_for

PAPER_TITLES: dict[str, str] = {"sempt": "SemPT", "promptkd": "PromptKD", "dpt": "DPT"}
PAPER_PRIORITY: tuple[str, ...] = ("sempt", "promptkd", "dpt")
PAPER_FEW_SHOTS = 16
"""The papers' few-shot tables (DPT Tables 1–2) and SemPT's quoted Fig. 4 average are 16-shot numbers."""
SETTING_TITLES: dict[str, str] = {
    "base2novel": "Base-to-novel", "cross-dataset": "Cross-dataset", "cross-domain": "Cross-domain",
    "few-shot": "Few-shot",
}
METRIC_TITLES: dict[str, str] = {"base": "Base", "novel": "Novel", "hm": "HM", "all": "All", "accuracy": "Acc."}
LONG_COLUMNS: tuple[str, ...] = (
    "kind", "row", "method", "backbone", "setting", "shots", "dataset", "metric", "value", "std", "seeds", "delta",
    "source", "versus", "note",
)
TABLE_FORMAT = "sempt.eval-table/1"


def dataset_title(key: str) -> str:
    """'Flowers102' for 'oxford_flowers'; the papers' column names."""
    if key == AVERAGE:
        return "Average"
    info = DATASETS.get(key)
    return info.display_name if info is not None else key


@dataclass
class PaperRow:
    """One method's published numbers from one paper table, for the datasets being compared."""

    method: str
    paper: str
    table: str
    backbone: str
    cells: dict[str, dict[str, PaperNumber]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        where = f"Fig. {self.table[3:]}" if self.table.startswith("fig") else f"Table {self.table}"
        return f"paper: {self.method} ({PAPER_TITLES.get(self.paper, self.paper)} {where})"

    def value(self, dataset: str, metric: str) -> PaperNumber | None:
        return self.cells.get(dataset, {}).get(metric)


def _table_order(table: str) -> tuple[int, str]:
    match = re.match(r"(\d+)(.*)", table)
    return (int(match.group(1)), match.group(2)) if match else (10**6, table)


def paper_rows(
    numbers: Sequence[PaperNumber],
    setting: str,
    backbone: str,
    datasets: Sequence[str],
    methods: Sequence[str] | None = None,
) -> list[PaperRow]:
    """The published rows for `setting` and `backbone` restricted to `datasets` (+ Average), in the papers' row
    order; each (method, dataset, metric) comes from one source only (SemPT first, then PromptKD)."""
    wanted = {*datasets, AVERAGE}
    pool = [n for n in numbers if n.setting == setting and n.backbone == backbone and n.dataset in wanted]
    if methods is not None:
        chosen = {m.lower() for m in methods}
        pool = [n for n in pool if n.method.lower() in chosen]
    pool.sort(key=lambda n: (PAPER_PRIORITY.index(n.paper) if n.paper in PAPER_PRIORITY else 99,
                             _table_order(n.table)))
    covered: set[tuple[str, str, str]] = set()
    rows: dict[tuple[str, str, str], PaperRow] = {}
    for n in pool:
        if (n.method, n.dataset, n.metric) in covered:
            continue  # the same number copied into the other paper
        covered.add((n.method, n.dataset, n.metric))
        row = rows.setdefault((n.method, n.paper, n.table), PaperRow(n.method, n.paper, n.table, n.backbone))
        row.cells.setdefault(n.dataset, {})[n.metric] = n
    return list(rows.values())


def check_methods(numbers: Sequence[PaperNumber], methods: Sequence[str]) -> None:
    """Refuse a `--compare` name that no paper table uses (a typo would otherwise just show no rows)."""
    known = {n.method.lower(): n.method for n in numbers if n.setting != "ablation"}
    unknown = [m for m in methods if m.lower() not in known]
    if unknown:
        raise SettingsError(
            f"No paper reports a method called {', '.join(repr(m) for m in unknown)}; "
            f"known: {', '.join(sorted(set(known.values())))}."
        )


@dataclass
class Comparison:
    """One 'ours' row and the paper rows it is compared with."""

    group: Group
    paper: list[PaperRow]
    notes: list[str]

    @property
    def metrics(self) -> tuple[str, ...]:
        return metrics_for(self.group.setting)

    @property
    def columns(self) -> list[str]:
        """Datasets scored by us, plus the papers' Average when every dataset it needs was scored."""
        return self.group.datasets + ([AVERAGE] if self.group.average() is not None else [])

    def ours(self, dataset: str, metric: str) -> Stat | float | None:
        if dataset == AVERAGE:
            average = self.group.average()
            return None if average is None else average.get(metric)
        return self.group.cells.get(dataset, {}).get(metric)

    def delta(self, row: PaperRow, dataset: str, metric: str) -> float | None:
        """ours − paper, where both exist."""
        ours, theirs = self.ours(dataset, metric), row.value(dataset, metric)
        if ours is None or theirs is None:
            return None
        return _mean(ours) - theirs.value


def _mean(value: Stat | float) -> float:
    return value.mean if isinstance(value, Stat) else float(value)


def build_comparisons(
    groups: Sequence[Group],
    numbers: Sequence[PaperNumber] | None = None,
    compare: Sequence[str] | None = None,
) -> list[Comparison]:
    """Pair every group with the paper rows that may be shown next to it, and the notes a reader needs.

    `numbers` defaults to `results/paper/`; `compare` restricts the paper methods (None = all, [] = none).
    """
    loaded: list[PaperNumber] | None = list(numbers) if numbers is not None else None
    unavailable = ""
    out = []
    for group in groups:
        notes: list[str] = []
        rows: list[PaperRow] = []
        if not group.comparable:
            notes.append(group.comparability_note)
        elif group.setting == "few-shot" and group.shots != PAPER_FEW_SHOTS:
            notes.append(f"The papers tabulate few-shot results at {PAPER_FEW_SHOTS} shots only (SemPT: Fig. 4).")
        elif compare is None or compare:
            if loaded is None and not unavailable:
                try:
                    loaded = load_paper_numbers()
                except SemptError as exc:
                    unavailable = f"Paper numbers unavailable: {exc}"
            if loaded is not None:
                if compare:
                    check_methods(loaded, compare)
                rows = paper_rows(loaded, group.setting, group.paper_backbone or "", group.datasets, compare)
                if not rows:
                    notes.append(f"The papers report no {group.setting} numbers for these datasets with "
                                 f"{group.paper_backbone}.")
            else:
                notes.append(unavailable)
        out.append(Comparison(group, rows, notes + _standard_notes(group, bool(rows))))
    return out


def _standard_notes(group: Group, has_paper: bool) -> list[str]:
    notes = [f"{name} skipped: {message}" for name, message in group.skipped.items()]
    seeds = group.seeds
    if len(seeds) > 1:
        how = "; HM from the mean base and mean novel accuracy" if group.setting == "base2novel" else ""
        notes.append(f"ours: mean ± population std over seeds {', '.join(map(str, seeds))} (n = seeds per cell){how}.")
    if group.setting == "base2novel":
        notes.append("All = accuracy with base and novel classes competing (an extra; the papers do not report it).")
    if group.average() is not None:
        members = AVERAGED_OVER[group.setting]
        hm = "; HM of the averaged base and novel" if group.setting == "base2novel" else ""
        notes.append(f"Average over the {len(members)} datasets as in the papers{hm}.")
    if has_paper:
        notes.append("Δ = ours − paper in percentage points; paper values as printed.")
    return notes


# ------------------------------------------------------------------------------------------------- table views


@dataclass
class TableView:
    """A rendered-agnostic table: a title, column headers, rows of (kind, cells), and notes under it."""

    title: str
    columns: list[str]
    rows: list[tuple[str, list[str]]]
    notes: list[str] = field(default_factory=list)


def format_value(value: Stat | float | None) -> str:
    """A table cell: '—' for nothing, 'mean ± std (n)' over several seeds (n: how many; a mean of 2 seeds is not
    one of 3), else the value, two decimals."""
    if value is None:
        return "—"
    if isinstance(value, Stat):
        return f"{value.mean:.2f} ± {value.std:.2f} (n={value.n})" if value.n > 1 else f"{value.mean:.2f}"
    return f"{value:.2f}"


def _fmt_delta(delta: float | None) -> str:
    return "—" if delta is None else f"{delta:+.2f}"


def table_views(comparisons: Sequence[Comparison]) -> list[TableView]:
    """Base-to-novel: one table per dataset (the layout of SemPT Table 1); cross-dataset/-domain and few-shot:
    datasets as columns, paper cells 'value (Δ)' (Tables 2-3). A row of ours that has paper rows gets its own
    tables (its Δs are against it alone); rows without paper rows (demo, few-shot, other weights) share one."""
    views: list[TableView] = []
    for setting in SETTING_TITLES:
        of_setting = [c for c in comparisons if c.group.setting == setting]
        batches = [[c] for c in of_setting if c.paper]
        shared = [c for c in of_setting if not c.paper]
        if shared:
            batches.append(sorted(shared, key=lambda c: (c.group.kind != "zeroshot", c.group.method,
                                                         c.group.backbone, c.group.shots)))
        for batch in batches:
            views.extend(_base2novel_views(batch) if setting == "base2novel" else [_accuracy_view(batch)])
    return views


def _notes(batch: Sequence[Comparison]) -> list[str]:
    return list(dict.fromkeys(note for c in batch for note in c.notes))


def _title(batch: Sequence[Comparison], *parts: str) -> str:
    setting = SETTING_TITLES[batch[0].group.setting]
    who = [batch[0].group.label] if len(batch) == 1 else []
    return " · ".join([setting, *parts, *who])


def _base2novel_views(batch: Sequence[Comparison]) -> list[TableView]:
    paper = batch[0].paper if len(batch) == 1 else []
    metrics = batch[0].metrics
    compared = [m for m in metrics if m != "all"]
    views = []
    for dataset in dict.fromkeys(d for c in batch for d in c.columns):
        rows = [p for p in paper if dataset in p.cells]
        columns = ["", *(METRIC_TITLES[m] for m in metrics)] + [f"Δ{METRIC_TITLES[m]}" for m in compared if rows]
        table_rows = []
        for comparison in batch:
            if dataset in comparison.columns:
                cells = [comparison.group.label, *(format_value(comparison.ours(dataset, m)) for m in metrics)]
                table_rows.append(("ours", cells + [""] * (len(columns) - len(cells))))
        flags = []
        for row in rows:
            cells = [row.label]
            for metric in metrics:
                number = row.value(dataset, metric)
                cells.append(_paper_cell(number))
                if number is not None and number.flagged:
                    flags.append(f"* {PAPER_TITLES.get(row.paper, row.paper)} Table {row.table}, "
                                 f"{number.flag_note()}; Δ is against the printed value.")
            cells += [_fmt_delta(batch[0].delta(row, dataset, m)) for m in compared]
            table_rows.append(("paper", cells))
        views.append(TableView(_title(batch, dataset_title(dataset)), columns, table_rows, flags))
    if not views:  # every dataset skipped: still say so
        views.append(TableView(_title(batch), [""], [("ours", [c.group.label]) for c in batch]))
    views[-1].notes = views[-1].notes + _notes(batch)
    return views


def _paper_cell(number: PaperNumber | None) -> str:
    """The value as printed; a flagged one (inconsistent with its own table) with its recomputed value beside."""
    if number is None:
        return "—"
    return f"{number.formatted()}* ({number.recomputed:.2f})" if number.recomputed is not None else \
        number.formatted()


def _accuracy_view(batch: Sequence[Comparison]) -> TableView:
    columns = list(dict.fromkeys(d for c in batch for d in c.columns))
    rows = [("ours", [c.group.label, *(format_value(c.ours(d, "accuracy")) for d in columns)]) for c in batch]
    paper = batch[0].paper if len(batch) == 1 else []
    for row in paper:
        cells = [row.label]
        for dataset in columns:
            number = row.value(dataset, "accuracy")
            delta = batch[0].delta(row, dataset, "accuracy")
            cells.append("—" if number is None else number.formatted() + ("" if delta is None else f" ({delta:+.2f})"))
        rows.append(("paper", cells))
    notes = _notes(batch) + (["Paper cells: published value (Δ)."] if paper else [])
    return TableView(_title(batch, "accuracy (%)"), ["", *(dataset_title(d) for d in columns)], rows, notes)


# ---------------------------------------------------------------------------------------------------- renderers


def rich_table(view: TableView) -> Any:
    """A rich `Table`: ours rows bold, paper rows plain, notes as the caption."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(view.title), caption=escape("\n".join(view.notes)) or None, caption_justify="left",
                  title_justify="left")
    label_width = min(24, max((len(cells[0]) for _, cells in view.rows), default=0))  # never squeezed away
    for i, column in enumerate(view.columns):
        table.add_column(column, justify="left" if i == 0 else "right", no_wrap=i > 0,
                         min_width=label_width if i == 0 else None)
    for kind, cells in view.rows:
        table.add_row(*(escape(cell) for cell in cells), style="bold cyan" if kind == "ours" else None)
    return table


def rich_tables(comparisons: Sequence[Comparison]) -> list[Any]:
    return [rich_table(view) for view in table_views(comparisons)]


def markdown_table(view: TableView) -> str:
    """GitHub-flavoured markdown: a heading, a pipe table (ours rows in bold) and the notes as a quote."""
    lines = [f"### {view.title}", ""]
    lines.append("| " + " | ".join(c or " " for c in view.columns) + " |")
    lines.append("|" + "|".join([":---"] + ["---:"] * (len(view.columns) - 1)) + "|")
    for kind, cells in view.rows:
        shown = [f"**{cells[0]}**" if kind == "ours" else cells[0], *cells[1:]]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in shown) + " |")
    if view.notes:
        lines.append("")
        lines.extend(f"> {note}  " for note in view.notes)
    return "\n".join(lines)


def to_markdown(comparisons: Sequence[Comparison]) -> str:
    return "\n\n".join(markdown_table(view) for view in table_views(comparisons)) + "\n"


def long_rows(comparisons: Sequence[Comparison]) -> list[dict[str, Any]]:
    """Tidy rows (one number per row) with provenance, for CSV and JSON."""
    out: list[dict[str, Any]] = []
    for comparison in comparisons:
        group = comparison.group
        backbone = group.paper_backbone or group.backbone
        base = {"method": group.title, "backbone": backbone, "setting": group.setting, "shots": group.shots}
        sources = ";".join(str(r.path) if r.path else r.key for r in group.records)
        caveat = "" if group.comparable else group.comparability_note
        for dataset in comparison.columns:
            for metric in comparison.metrics:
                value = comparison.ours(dataset, metric)
                if value is None:
                    continue
                stat = value if isinstance(value, Stat) else None
                out.append({
                    "kind": "ours", "row": group.label, **base, "dataset": dataset, "metric": metric,
                    "value": round(_mean(value), 4), "std": None if stat is None else round(stat.std, 4),
                    "seeds": ";".join(map(str, stat.seeds if stat else group.seeds)), "delta": None,
                    "source": f"records: {sources}" if stat else f"mean over {len(AVERAGED_OVER[group.setting])} "
                    "datasets of the rows above", "versus": None, "note": caveat,
                })
        for dataset, message in group.skipped.items():
            out.append({"kind": "ours", "row": group.label, **base, "dataset": dataset, "metric": None, "value": None,
                        "std": None, "seeds": None, "delta": None, "source": None, "versus": None,
                        "note": f"skipped: {message}"})
        for row in comparison.paper:
            for dataset in comparison.columns:
                for metric in comparison.metrics:
                    number = row.value(dataset, metric)
                    if number is None:
                        continue
                    delta = comparison.delta(row, dataset, metric)
                    out.append({
                        "kind": "paper", "row": row.label, "method": row.method, "backbone": row.backbone,
                        "setting": group.setting, "shots": None, "dataset": dataset, "metric": metric,
                        "value": number.value, "std": None, "seeds": None,
                        "delta": None if delta is None else round(delta, 4), "source": number.source,
                        "versus": group.label, "note": number.flag_note(),
                    })
    return out


def to_csv(comparisons: Sequence[Comparison]) -> str:
    """Long-format CSV with LONG_COLUMNS; `versus` says which ours row a paper row's delta is against, `note`
    why an ours row is not comparable to the papers or why a dataset was skipped."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(LONG_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in long_rows(comparisons):
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buffer.getvalue()


def to_json(comparisons: Sequence[Comparison]) -> str:
    """The long rows plus, per ours row, its notes, comparability and records."""
    groups = [{
        "row": c.group.label, "setting": c.group.setting, "method": c.group.method, "kind": c.group.kind,
        "backbone": c.group.backbone, "shots": c.group.shots, "comparable_to_paper": c.group.comparable,
        "seeds": c.group.seeds, "notes": c.notes,
        "records": [str(r.path) if r.path else r.key for r in c.group.records],
    } for c in comparisons]
    return json.dumps({"format": TABLE_FORMAT, "groups": groups, "rows": long_rows(comparisons)}, indent=2) + "\n"


def render(comparisons: Sequence[Comparison], fmt: str) -> str:
    """Text output for the machine formats and markdown (`table` is printed with rich by the CLI)."""
    if fmt == "markdown":
        return to_markdown(comparisons)
    if fmt == "csv":
        return to_csv(comparisons)
    if fmt == "json":
        return to_json(comparisons)
    raise ValueError(f"no text renderer for format {fmt!r}")


# ------------------------------------------------------------------------------------------------ seed spread


HEADLINE = {"base2novel": "hm"}
"""The metric a gap is judged on: HM in base-to-novel, accuracy elsewhere."""


def spread_warnings(comparisons: Sequence[Comparison]) -> list[str]:
    """Sentences for every gap a table reports that is smaller than the seed spread behind it: a method's gain from
    SemPT (the row with it against the same row without it) and ours − paper; gaps over a single seed have no
    spread to judge and are not checked."""
    warnings: list[str] = []
    by_key = {(c.group.kind, c.group.method, c.group.backbone, c.group.setting, c.group.shots, c.group.variant): c
              for c in comparisons}
    for comparison in comparisons:
        group = comparison.group
        metric = HEADLINE.get(group.setting, "accuracy")
        if group.variant:
            plain = by_key.get((group.kind, group.method, group.backbone, group.setting, group.shots, ""))
            for dataset in group.datasets:
                ours, theirs = group.cells.get(dataset, {}).get(metric), None
                if plain is not None:
                    theirs = plain.group.cells.get(dataset, {}).get(metric)
                if ours is None or theirs is None or max(ours.n, theirs.n) < 2:
                    continue
                gap, spread = ours.mean - theirs.mean, max(ours.std, theirs.std)
                if spread > abs(gap):
                    warnings.append(
                        f"{dataset_title(dataset)}: {group.title} − {plain.group.title if plain else ''} = {gap:+.2f} "
                        f"{METRIC_TITLES[metric]}, smaller than the seed spread (std up to {spread:.2f}, "
                        f"n = {ours.n}/{theirs.n} seeds).")
        for row in comparison.paper:
            if row.method.lower() != group.title.lower():
                continue
            for dataset in group.datasets:
                stat = group.cells.get(dataset, {}).get(metric)
                delta = comparison.delta(row, dataset, metric)
                if stat is None or delta is None or stat.n < 2:
                    continue
                if stat.std > abs(delta):
                    warnings.append(
                        f"{dataset_title(dataset)}: {group.title} is {delta:+.2f} {METRIC_TITLES[metric]} from the "
                        f"paper, within its seed spread (std {stat.std:.2f}, n = {stat.n} seeds).")
    return warnings
