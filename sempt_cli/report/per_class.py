"""Per-class results between two models: which classes gain or lose, and (on the demo world) what makes them hard.

`sempt eval A/model.safetensors B/model.safetensors --per-class` compares the first model (or the first group
of seeds) with the second. Per class and view (base, novel, all), accuracy is pooled over seeds (correct over
total, so every test image weighs the same), and Δ = second − first. The table lists the classes that gain and
lose most per view. On the demo world each class also shows what can make it hard, from the world's ground
truth: how few attributes separate it from its nearest other class, and how often its name was spelled in the
demo CLIPs' pre-training corpus; a summary gives the mean Δ per split (base/novel classes) and per level of
each, and their rank correlations with Δ.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from sempt_cli.errors import SemptError
from sempt_cli.report.records import Group
from sempt_cli.report.tables import TableView

VIEWS = ("base", "novel", "all", "accuracy")


@dataclass(frozen=True)
class ClassChange:
    """One class in one view: pooled accuracy of both models (%) and what is known about its difficulty."""

    view: str
    classname: str
    split: str
    first: float
    second: float
    images: int
    neighbour_distance: int | None = None
    neighbours: tuple[str, ...] = ()
    mentions: int | None = None

    @property
    def delta(self) -> float:
        return self.second - self.first


@dataclass
class PerClassComparison:
    dataset: str
    first: str
    second: str
    seeds: tuple[list[int], list[int]]
    changes: dict[str, list[ClassChange]] = field(default_factory=dict)


def pooled(group: Group, dataset: str) -> dict[str, dict[str, list[int]]]:
    """view → class → [correct, total] summed over the group's seeds."""
    out: dict[str, dict[str, list[int]]] = {}
    for record in group.records:
        result = record.results.get(dataset)
        if result is None or result.status != "ok":
            continue
        if not result.per_class:
            raise SemptError(f"The evaluation record {record.path or record.key} has no per-class results "
                             "(it was written before they existed).", "Evaluate again with --no-reuse.")
        for view, classes in result.per_class.items():
            target = out.setdefault(view, {})
            for name, (correct, total) in classes.items():
                cell = target.setdefault(name, [0, 0])
                cell[0] += correct
                cell[1] += total
    return out


def compare_per_class(groups: Sequence[Group], dataset: str | None = None) -> PerClassComparison:
    """Δ per class and view between exactly two models (groups of seeds), first → second."""
    if len(groups) != 2:
        raise SemptError(f"--per-class compares two models, and these checkpoints form {len(groups)}.",
                         "Pass the checkpoints (one or more seeds) of exactly two models.")
    first, second = groups
    shared = [d for d in first.datasets if d in second.datasets]
    if dataset is None:
        if not shared:
            raise SemptError("The two models were not scored on a common dataset.")
        dataset = shared[0]
    a, b = pooled(first, dataset), pooled(second, dataset)
    difficulty = _demo_difficulty() if dataset == "demo" else {}
    base_names = set(a.get("base", {})) | set(b.get("base", {}))
    comparison = PerClassComparison(dataset, first.title, second.title, (first.seeds, second.seeds))
    for view in (v for v in VIEWS if v in a and v in b):
        rows = []
        for name, (correct_a, total_a) in a[view].items():
            if name not in b[view]:
                continue
            correct_b, total_b = b[view][name]
            known = difficulty.get(name, (None, (), None))
            rows.append(ClassChange(view, name, "base" if name in base_names else "novel",
                                    100.0 * correct_a / max(total_a, 1), 100.0 * correct_b / max(total_b, 1),
                                    total_a, *known))
        comparison.changes[view] = sorted(rows, key=lambda r: (r.delta, r.classname))
    return comparison


def _demo_difficulty() -> dict[str, tuple[int, tuple[str, ...], int]]:
    from sempt_cli.data.demo import name_mentions, nearest_neighbours
    from sempt_cli.models.demo_clip import CORPUS_SEED, CORPUS_SIZE

    mentions = name_mentions(CORPUS_SIZE, CORPUS_SEED)
    return {name: (distance, tuple(close), mentions[name])
            for name, (distance, close) in nearest_neighbours().items()}


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); 0 when either side is constant."""
    def ranks(values: Sequence[float]) -> list[float]:
        order = sorted(range(len(values)), key=lambda i: values[i])
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out

    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    norm = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return 0.0 if norm == 0 else cov / norm


def _mean(values: Sequence[float]) -> str:
    return f"{sum(values) / len(values):+.2f} ({len(values)})" if values else "—"


def summary_view(comparison: PerClassComparison) -> TableView:
    """Mean Δ per view for base and novel classes, by nearest-neighbour distance and by how often the name was
    seen in pre-training (lower/upper half), and the rank correlations of Δ with both (demo world only)."""
    demo = any(r.mentions is not None for rows in comparison.changes.values() for r in rows)
    columns = ["view", "base classes", "novel classes"]
    if demo:
        columns += ["1 attr. from a neighbour", "≥ 2 attr.", "rare name", "frequent name",
                    "ρ(Δ, distance)", "ρ(Δ, mentions)"]
    rows = []
    for view, changes in comparison.changes.items():
        cells = [view, _mean([r.delta for r in changes if r.split == "base"]),
                 _mean([r.delta for r in changes if r.split == "novel"])]
        if demo:
            deltas = [r.delta for r in changes]
            median = sorted(r.mentions or 0 for r in changes)[len(changes) // 2]
            cells += [_mean([r.delta for r in changes if r.neighbour_distance == 1]),
                      _mean([r.delta for r in changes if (r.neighbour_distance or 0) >= 2]),
                      _mean([r.delta for r in changes if (r.mentions or 0) < median]),
                      _mean([r.delta for r in changes if (r.mentions or 0) >= median]),
                      f"{spearman(deltas, [float(r.neighbour_distance or 0) for r in changes]):+.2f}",
                      f"{spearman(deltas, [float(r.mentions or 0) for r in changes]):+.2f}"]
        rows.append(("", cells))
    notes = [f"Mean Δ accuracy per class (points; number of classes in brackets), {comparison.second} − "
             f"{comparison.first} on {comparison.dataset}; accuracy pooled over seeds {_seeds(comparison.seeds[0])} "
             f"({comparison.first}) and {_seeds(comparison.seeds[1])} ({comparison.second})."]
    if demo:
        notes.append("Distance: the fewest attributes in which another class differs. Rare/frequent: below/at or "
                     "above the median number of pre-training captions that spell the name. ρ: Spearman.")
    return TableView(f"Per class: {comparison.second} vs {comparison.first}", columns, rows, notes)


def changes_view(comparison: PerClassComparison, view: str, top: int = 5) -> TableView:
    """The `top` classes that lose most and gain most in one view."""
    changes = comparison.changes[view]
    shown = changes[:top] + [r for r in changes[-top:] if r not in changes[:top]]
    demo = any(r.mentions is not None for r in changes)
    columns = ["class", "split", comparison.first, comparison.second, "Δ"]
    if demo:
        columns += ["nearest (attributes apart)", "name in corpus"]
    rows = []
    for r in shown:
        cells = [r.classname, r.split, f"{r.first:.1f}", f"{r.second:.1f}", f"{r.delta:+.1f}"]
        if demo:
            cells += [f"{', '.join(r.neighbours[:3])}{' …' if len(r.neighbours) > 3 else ''} ({r.neighbour_distance})",
                      str(r.mentions)]
        rows.append(("", cells))
    notes = [f"The {top} classes that lose most and the {top} that gain most in the {view} view "
             f"({len(changes)} classes; {changes[0].images if changes else 0} test images per class, pooled over "
             "seeds)."]
    return TableView(f"{view}: largest losses and gains per class", columns, rows, notes)


def _seeds(seeds: list[int]) -> str:
    return ",".join(str(s) for s in seeds) or "—"
