"""The numbers SemPT, PromptKD and DPT publish, as tidy rows with provenance, and the checks that keep them honest.

The CSVs under `results/paper/` were transcribed from PDF extractions whose tables are partly scrambled
(wrong block captions, duplicated or shifted rows; see `results/paper/README.md`). A transcription slip is
invisible by eye, so `cross_check` re-derives every relation the papers' tables obey (HM from base and
novel, Average rows from the per-dataset values, the same number in two tables) within the rounding the
printed precision allows. The number of decimals written in a CSV `value` is the precision assumed.

A printed HM that is not 2·B·N/(B+N) of its own printed base and novel (the papers' slips, README F1) is kept as
printed, because a reader who looks the number up in the paper must find the same number, and is flagged with
the HM recomputed from the printed base and novel in the `recomputed` column, shown beside it in every table.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sempt_cli.errors import SemptError

COLUMNS: tuple[str, ...] = (
    "paper", "table", "setting", "method", "backbone", "dataset", "metric", "value", "source", "recomputed",
)
PAPERS: tuple[str, ...] = ("sempt", "promptkd", "dpt")
SETTINGS: tuple[str, ...] = ("base2novel", "cross-dataset", "cross-domain", "few-shot", "ablation")
METRICS: tuple[str, ...] = ("base", "novel", "hm", "accuracy")
BACKBONES: tuple[str, ...] = ("ViT-B/16", "ViT-B/32", "ViT-L/14")
AVERAGE = "average"

BASE2NOVEL_DATASETS: tuple[str, ...] = (
    "imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
    "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101",
)
DOMAIN_SHIFT_DATASETS: tuple[str, ...] = ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")
DATASETS: tuple[str, ...] = (*BASE2NOVEL_DATASETS, *DOMAIN_SHIFT_DATASETS, AVERAGE)

AVERAGED_OVER: dict[str, tuple[str, ...]] = {
    "base2novel": BASE2NOVEL_DATASETS,
    "cross-dataset": tuple(d for d in BASE2NOVEL_DATASETS if d != "imagenet"),
    "cross-domain": DOMAIN_SHIFT_DATASETS,
    "few-shot": BASE2NOVEL_DATASETS,
}
"""What each setting's Average row is the arithmetic mean of (the source dataset is never in it). The
base-to-novel Average HM is HM(mean base, mean novel), not a mean of HMs, so only base and novel are averaged."""

PAPER_DIR: Path = Path(__file__).resolve().parents[2] / "results" / "paper"
"""Where the CSVs live: the repository's `results/paper/` (one source of truth; a wheel does not ship them)."""

_EPS = 1e-9


@dataclass(frozen=True)
class PaperNumber:
    """One published number and where it was printed."""

    paper: str
    table: str
    setting: str
    method: str
    backbone: str
    dataset: str
    metric: str
    value: float
    source: str
    decimals: int = 2
    """Decimals as written in the CSV: the printed precision that rounding tolerances are derived from."""
    recomputed: float | None = None
    """For a printed HM that contradicts its printed base and novel: 2·B·N/(B+N) of those, to two decimals."""

    @property
    def flagged(self) -> bool:
        """The printed value is the paper's, but inconsistent with its own table (see `recomputed`)."""
        return self.recomputed is not None

    def flag_note(self) -> str:
        """What a reader should know beside a flagged value; empty for the others."""
        if self.recomputed is None:
            return ""
        return (f"{self.method} {self.dataset}: printed HM {self.formatted()} is not 2·B·N/(B+N) of the printed "
                f"base and novel, which give {self.recomputed:.2f}")

    @property
    def half_unit(self) -> float:
        """The largest rounding error a value printed with `decimals` decimals can carry."""
        return 0.5 * 10.0 ** (-self.decimals)

    @property
    def key(self) -> tuple[str, str, str, str, str, str, str]:
        """Identity of the number; no two rows may share it."""
        return (self.paper, self.table, self.setting, self.method, self.backbone, self.dataset, self.metric)

    def formatted(self) -> str:
        """The value with its printed precision."""
        return f"{self.value:.{self.decimals}f}"

    def label(self) -> str:
        """Short human reference used in violation messages."""
        return f"{self.paper} Table {self.table} {self.method!r} {self.dataset} {self.metric}={self.formatted()}"


@dataclass(frozen=True)
class CheckSummary:
    """Violations per kind of check, and how many relations each verified (so a check cannot silently stop)."""

    schema: list[str] = field(default_factory=list)
    hm: list[str] = field(default_factory=list)
    averages: list[str] = field(default_factory=list)
    agreement: list[str] = field(default_factory=list)
    hm_checked: int = 0
    averages_checked: int = 0
    agreements_checked: int = 0

    @property
    def violations(self) -> list[str]:
        """All violations, schema first."""
        return [*self.schema, *self.hm, *self.averages, *self.agreement]


def _decimals(text: str) -> int:
    return len(text.split(".", 1)[1]) if "." in text else 0


def _read_csv(path: Path) -> list[PaperNumber]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise SemptError(
                f"{path} has columns {reader.fieldnames}, expected {list(COLUMNS)}.",
                hint="Paper CSVs must use exactly the documented long format.",
            )
        rows: list[PaperNumber] = []
        for line, row in enumerate(reader, start=2):
            text = (row["value"] or "").strip()
            recomputed_text = (row["recomputed"] or "").strip()
            try:
                value = float(text)
                recomputed = float(recomputed_text) if recomputed_text else None
            except ValueError:
                raise SemptError(f"{path}:{line}: value {text!r} or recomputed {recomputed_text!r} is not a "
                                 "number.") from None
            rows.append(
                PaperNumber(
                    paper=row["paper"], table=row["table"], setting=row["setting"], method=row["method"],
                    backbone=row["backbone"], dataset=row["dataset"], metric=row["metric"], value=value,
                    source=row["source"], decimals=_decimals(text), recomputed=recomputed,
                )
            )
    return rows


def load_paper_numbers(paper: str | None = None, directory: Path | None = None) -> list[PaperNumber]:
    """All transcribed numbers (optionally of one paper), in file and row order.

    `directory` defaults to the repository's `results/paper/`; tests pass a copy to corrupt it.
    """
    folder = PAPER_DIR if directory is None else Path(directory)
    files = sorted(folder.glob("*.csv")) if folder.is_dir() else []
    if not files:
        raise SemptError(
            f"No paper-number CSVs found in {folder}.",
            hint="They live in the repository's results/paper/; run from a source checkout of sempt.",
        )
    numbers = [n for path in files for n in _read_csv(path)]
    return numbers if paper is None else [n for n in numbers if n.paper == paper]


def lookup(
    paper: str,
    table: str | int,
    method: str,
    dataset: str,
    metric: str,
    setting: str | None = None,
    numbers: Sequence[PaperNumber] | None = None,
) -> float | None:
    """The published value, or None where the paper has none (or it was left out as unverifiable)."""
    pool = load_paper_numbers(paper) if numbers is None else numbers
    hits = [
        n for n in pool
        if n.paper == paper and n.table == str(table) and n.method == method and n.dataset == dataset
        and n.metric == metric and (setting is None or n.setting == setting)
    ]
    if len({n.key for n in hits}) > 1:
        raise ValueError(f"{paper} Table {table} {method} {dataset} {metric} is ambiguous; pass setting=.")
    return hits[0].value if hits else None


def harmonic_mean(base: float, novel: float) -> float:
    """HM = 2·B·N/(B+N), the CoCoOp convention every base-to-novel table uses."""
    return 0.0 if base + novel == 0 else 2.0 * base * novel / (base + novel)


def hm_tolerance(base: PaperNumber, novel: PaperNumber, hm: PaperNumber) -> float:
    """Worst-case |HM(B,N) − H| from rounding alone: first-order error propagation of B and N plus H's own."""
    b, n = base.value, novel.value
    if b + n == 0:
        return hm.half_unit + _EPS
    d_b, d_n = 2 * n * n / (b + n) ** 2, 2 * b * b / (b + n) ** 2
    return d_b * base.half_unit + d_n * novel.half_unit + hm.half_unit + _EPS


def _vocabulary(numbers: Sequence[PaperNumber]) -> list[str]:
    out: list[str] = []
    allowed = {"paper": PAPERS, "setting": SETTINGS, "metric": METRICS, "dataset": DATASETS, "backbone": BACKBONES}
    for n in numbers:
        for column, vocab in allowed.items():
            if getattr(n, column) not in vocab:
                out.append(f"{n.label()}: {column} {getattr(n, column)!r} is not one of {list(vocab)}")
        if not n.table.strip() or not n.method.strip():
            out.append(f"{n.label()}: empty table or method")
        if not n.source.strip():
            out.append(f"{n.label()}: empty source")
        if not (math.isfinite(n.value) and 0.0 <= n.value <= 100.0):
            out.append(f"{n.label()}: value outside [0, 100]")
        if n.flagged and n.metric != "hm":
            out.append(f"{n.label()}: only an HM can be flagged with a recomputed value")
    return out


def _duplicates(numbers: Sequence[PaperNumber]) -> list[str]:
    seen: dict[tuple[str, ...], PaperNumber] = {}
    out: list[str] = []
    for n in numbers:
        if n.key in seen:
            out.append(f"{n.label()}: duplicate row (also {seen[n.key].source!r})")
        seen.setdefault(n.key, n)
    return out


def _hm_checks(numbers: Sequence[PaperNumber]) -> tuple[list[str], int]:
    cells: dict[tuple[str, ...], dict[str, PaperNumber]] = defaultdict(dict)
    for n in numbers:
        if n.metric in ("base", "novel", "hm"):
            cells[n.key[:6]][n.metric] = n
    out: list[str] = []
    checked = 0
    for cell in cells.values():
        if not {"base", "novel", "hm"} <= cell.keys():
            continue
        b, v, h = cell["base"], cell["novel"], cell["hm"]
        expected, tol = harmonic_mean(b.value, v.value), hm_tolerance(b, v, h)
        checked += 1
        if h.recomputed is not None:  # a printed slip: the flag must be needed and its value right
            if abs(expected - h.value) <= tol:
                out.append(f"{h.label()}: flagged as inconsistent, but it is the HM of base {b.formatted()} and "
                           f"novel {v.formatted()} [{h.source}]")
            elif abs(expected - h.recomputed) > 0.005 + _EPS:
                out.append(f"{h.label()}: recomputed {h.recomputed:.2f}, but the HM of base {b.formatted()} and "
                           f"novel {v.formatted()} is {expected:.3f} [{h.source}]")
        elif abs(expected - h.value) > tol:
            out.append(
                f"{h.label()}: HM of base {b.formatted()} and novel {v.formatted()} is {expected:.3f} "
                f"(allowed ±{tol:.3f}) [{h.source}]"
            )
    return out, checked


def _average_checks(numbers: Sequence[PaperNumber]) -> tuple[list[str], int]:
    groups: dict[tuple[str, ...], dict[str, PaperNumber]] = defaultdict(dict)
    for n in numbers:
        if n.setting in AVERAGED_OVER and n.metric != "hm":
            groups[(n.paper, n.table, n.setting, n.method, n.backbone, n.metric)][n.dataset] = n
    out: list[str] = []
    checked = 0
    for (_, _, setting, _, _, _), cells in groups.items():
        members = AVERAGED_OVER[setting]
        average = cells.get(AVERAGE)
        if average is None or not all(d in cells for d in members):
            continue  # incomplete: the README lists what is missing and why
        parts = [cells[d] for d in members]
        mean = sum(p.value for p in parts) / len(parts)
        tol = sum(p.half_unit for p in parts) / len(parts) + average.half_unit + _EPS
        checked += 1
        if abs(mean - average.value) > tol:
            out.append(
                f"{average.label()}: mean of the {len(parts)} per-dataset values is {mean:.4f} "
                f"(allowed ±{tol:.3f}) [{average.source}]"
            )
    return out, checked


def _agreement_checks(numbers: Sequence[PaperNumber]) -> tuple[list[str], int]:
    groups: dict[tuple[str, ...], list[PaperNumber]] = defaultdict(list)
    for n in numbers:
        groups[(n.setting, n.method, n.backbone, n.dataset, n.metric)].append(n)
    out: list[str] = []
    checked = 0
    for group in groups.values():
        first = group[0]
        for other in group[1:]:
            if (other.paper, other.table) == (first.paper, first.table):
                continue  # a duplicate, reported by _duplicates
            checked += 1
            if abs(other.value - first.value) > first.half_unit + other.half_unit + _EPS:
                out.append(f"{other.label()} disagrees with {first.label()} [{other.source} vs {first.source}]")
    return out, checked


def run_checks(numbers: Iterable[PaperNumber]) -> CheckSummary:
    """Every cross-check, with how many relations each verified."""
    pool = list(numbers)
    hm, hm_n = _hm_checks(pool)
    avg, avg_n = _average_checks(pool)
    agree, agree_n = _agreement_checks(pool)
    return CheckSummary(
        schema=[*_vocabulary(pool), *_duplicates(pool)], hm=hm, averages=avg, agreement=agree,
        hm_checked=hm_n, averages_checked=avg_n, agreements_checked=agree_n,
    )


def cross_check(numbers: Iterable[PaperNumber]) -> list[str]:
    """Human-readable violations of the tables' own arithmetic and of cross-table agreement; empty = all good.

    Tolerances are the worst case that printing to the stated decimals can explain: for an Average, the
    mean of the parts' half-units plus the Average's (±0.01 at two decimals); for HM, the first-order
    propagation of B's and N's half-units plus H's (about ±0.01 at two decimals); for the same number in
    two tables, the two half-units.
    """
    return run_checks(numbers).violations
