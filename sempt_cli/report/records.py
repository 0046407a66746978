"""Evaluation records (one JSON file per model × evaluation) and their statistics over seeds.

Why records: scoring a ViT-L/14 teacher on ImageNet and ten transfer targets takes hours, so every evaluation
is written down atomically after each dataset, with everything needed to trust it later (settings, versions,
checkpoint hashes, timings, the command). A content key names the evaluation, so an identical re-run reuses
the record, an interrupted one resumes, and `sempt eval RECORD.json` re-renders without recomputing.

Aggregation follows `spec/datasets.md` §7: per dataset the mean over seeds and the *population* standard
deviation (ddof 0, `np.std`), and base-to-novel HM = HM(mean base, mean novel), never a mean of HMs. The
per-seed values are kept as measured (full precision); CoOp's `parse_test_res.py` averages values already
rounded to 0.1 (its logs print one decimal), which `round_per_seed=True` reproduces. The two conventions
differ by at most 0.05 in a mean.

This module imports no torch: rendering and re-aggregating records is instant.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from sempt_cli.errors import SemptError, SettingsError
from sempt_cli.protocol import get_method
from sempt_cli.report.paper import AVERAGED_OVER, harmonic_mean

RECORD_FORMAT = "sempt.eval/1"
ModelKind = Literal["teacher", "student", "zeroshot"]
Status = Literal["ok", "skipped"]

BASE2NOVEL_METRICS: tuple[str, ...] = ("base", "novel", "hm", "all")
ACCURACY_METRICS: tuple[str, ...] = ("accuracy",)

def method_title(name: str) -> str:
    """How a method key is printed: its plug-in's `title`, the papers' spelling, so 'ours: PromptKD' sits next to
    'paper: PromptKD' (the key itself for records of a method whose plug-in is not installed here)."""
    try:
        return get_method(name).display_title()
    except SettingsError:
        return name


def is_baseline(name: str) -> bool:
    """Supervised baselines (MMRL, ...) are compared as themselves: tables do not call their runs teachers."""
    try:
        return get_method(name).role == "baseline"
    except SettingsError:
        return False


PAPER_BACKBONES: dict[str, str] = {
    "ViT-B-16": "ViT-B/16", "ViT-B-16-quickgelu": "ViT-B/16", "ViT-L-14": "ViT-L/14", "ViT-L-14-quickgelu": "ViT-L/14",
    "ViT-B-32": "ViT-B/32", "ViT-B-32-quickgelu": "ViT-B/32",
}
"""open_clip names of the architectures the papers report, and how the papers' tables spell them."""


def paper_backbone(backbone: str) -> str | None:
    """The papers' name for an open_clip backbone (`ViT-B/16`), or None when no paper reports it."""
    return PAPER_BACKBONES.get(backbone)


def metrics_for(setting: str) -> tuple[str, ...]:
    """Metric names an evaluation setting produces: base/novel/HM/all-classes, or one accuracy."""
    return BASE2NOVEL_METRICS if setting == "base2novel" else ACCURACY_METRICS


@dataclass
class DatasetResult:
    """One dataset of one evaluation: metrics in percent, exact counts per scored view, or why it was skipped."""

    dataset: str
    status: Status
    metrics: dict[str, float] = field(default_factory=dict)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    num_classes: int = 0
    unreadable: int = 0
    seconds: float = 0.0
    message: str = ""
    per_class: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    """view → class name → [correct, total] (records written before per-class results have none)."""


@dataclass
class ModelInfo:
    """What was evaluated. `config_hash` covers every model setting except seed, dataset and placement, so
    checkpoints that differ in anything but the seed are never averaged together."""

    kind: ModelKind
    method: str
    backbone: str
    pretrained: str | None
    shots: int
    seed: int
    config_hash: str
    train_dataset: str | None = None
    train_setting: str | None = None
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    teacher_checkpoint: str | None = None
    teacher_sha256: str | None = None
    backbone_identity: str | None = None
    variant: str = ""
    """What the method name alone does not say, e.g. 'w/ SemPT' (the sidecar's `variant`, set by the training
    pipeline; the settings' `sempt.enabled` is not evidence, since the baselines ignore it)."""


@dataclass
class EvalRecord:
    """One evaluation of one model under one setting, as stored under `results/runs/`."""

    key: str
    setting: str
    model: ModelInfo
    datasets: list[str]
    results: dict[str, DatasetResult] = field(default_factory=dict)
    comparable: bool = False
    comparability_note: str = ""
    paper_backbone: str | None = None
    data_root: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    timings: dict[str, Any] = field(default_factory=dict)
    command: list[str] | None = None
    path: Path | None = None
    reused: bool = False

    @property
    def complete(self) -> bool:
        """Every planned dataset has been scored (skipped ones count as done until their data appears)."""
        return all(name in self.results for name in self.datasets)

    def to_json(self) -> dict[str, Any]:
        payload = {"format": RECORD_FORMAT, **asdict(self)}
        payload.pop("path")
        payload.pop("reused")
        return json.loads(json.dumps(payload, default=str))

    @classmethod
    def from_json(cls, payload: dict[str, Any], path: Path | None = None) -> EvalRecord:
        if payload.get("format") != RECORD_FORMAT:
            raise SemptError(f"{path or 'This file'} is not a sempt evaluation record (format {RECORD_FORMAT}).")
        data = {k: v for k, v in payload.items() if k != "format"}
        data["model"] = ModelInfo(**data["model"])
        data["results"] = {name: DatasetResult(**r) for name, r in data.get("results", {}).items()}
        return cls(**data, path=path)


def is_record_file(path: Path) -> bool:
    """True for a JSON file in the evaluation-record format (checkpoint sidecars are JSON too)."""
    if path.suffix != ".json" or not path.is_file():
        return False
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("format") == RECORD_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def load_record(path: Path) -> EvalRecord:
    """Read a record; a damaged file is a one-sentence error, not a traceback."""
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        return EvalRecord.from_json(payload, path)
    except SemptError:
        raise
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise SemptError(f"The evaluation record {path} cannot be read ({exc}).",
                         "Delete it and evaluate again.") from None


# ------------------------------------------------------------------------------------------------ statistics


@dataclass(frozen=True)
class Stat:
    """Mean ± population std over seeds, with the per-seed values it was computed from."""

    mean: float
    std: float
    values: tuple[float, ...]
    seeds: tuple[int, ...]

    @property
    def n(self) -> int:
        return len(self.values)


def round_to_tenth(value: float) -> float:
    """Round half away from zero to 0.1, as `f'{x:.1f}'` prints the Dassl log (up to binary representation)."""
    return math.floor(value * 10 + 0.5) / 10 if value >= 0 else -math.floor(-value * 10 + 0.5) / 10


def seed_stat(values: Sequence[float], seeds: Sequence[int] | None = None) -> Stat:
    """Mean and population standard deviation (ddof 0), the statistics CoOp's `parse_test_res.py` reports."""
    if not values:
        raise ValueError("no values to aggregate")
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    return Stat(mean, std, tuple(values), tuple(seeds or range(len(values))))


def seed_metrics(per_seed: Sequence[dict[str, float]], seeds: Sequence[int], setting: str,
                 round_per_seed: bool = False) -> dict[str, Stat]:
    """Aggregate one dataset's per-seed metrics; HM is recomputed from the mean base and mean novel accuracy,
    its std is the population std of the per-seed HMs (for information; the papers print none)."""
    prepared = [dict(m) for m in per_seed]
    if round_per_seed:
        prepared = [{k: round_to_tenth(v) for k, v in m.items()} for m in prepared]
    out: dict[str, Stat] = {}
    for metric in metrics_for(setting):
        if metric == "hm":
            continue
        out[metric] = seed_stat([m[metric] for m in prepared], seeds)
    if setting == "base2novel":
        per_seed_hm = [harmonic_mean(m["base"], m["novel"]) for m in prepared]
        spread = seed_stat(per_seed_hm, seeds)
        out["hm"] = Stat(harmonic_mean(out["base"].mean, out["novel"].mean), spread.std, spread.values, spread.seeds)
    return out


@dataclass
class Group:
    """One 'ours' row of the tables: one model family (kind, method, backbone, weights) under one setting and
    shot count, over datasets (columns) and seeds (averaged)."""

    kind: ModelKind
    method: str
    backbone: str
    pretrained: str | None
    setting: str
    shots: int
    comparable: bool
    comparability_note: str
    paper_backbone: str | None
    variant: str = ""
    cells: dict[str, dict[str, Stat]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    records: list[EvalRecord] = field(default_factory=list)

    @property
    def title(self) -> str:
        """The method as the papers spell it ('PromptKD', 'PromptKD w/ SemPT')."""
        return " ".join(filter(None, (method_title(self.method), self.variant)))

    @property
    def model_name(self) -> str:
        """'PromptKD (ViT-B/16, student)', 'MMRL (ViT-B/16)': supervised baselines are not called teachers."""
        backbone = self.paper_backbone or self.backbone
        role = "" if self.kind == "teacher" and is_baseline(self.method) else f", {self.kind}"
        return f"{self.title} ({backbone}{role})"

    @property
    def label(self) -> str:
        """'ours: PromptKD (ViT-B/16, student)' — the row name in every table."""
        shown = self.kind != "zeroshot" and self.shots > 0 and (self.setting == "few-shot" or self.shots != 16)
        shots = f", {self.shots}-shot" if shown else ""
        return f"ours: {self.model_name[:-1]}{shots})"

    @property
    def slug(self) -> str:
        """File-name form of the group, for figures."""
        who = self.method if self.method == self.kind else f"{self.method}-{self.kind}"
        who += "-sempt" if self.variant else ""
        raw = f"{self.setting}-{who}-{self.backbone}-{self.shots}shot"
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in raw)

    @property
    def datasets(self) -> list[str]:
        """Scored datasets in evaluation order."""
        return list(self.cells)

    @property
    def seeds(self) -> list[int]:
        return sorted({s for cell in self.cells.values() for stat in cell.values() for s in stat.seeds})

    def average(self) -> dict[str, float] | None:
        """The papers' Average column, only when every dataset it averages over was scored (a partial average
        would not be comparable): arithmetic means of the per-dataset means; base-to-novel HM = HM(mean B,
        mean N) as CoCoOp defines it."""
        members = AVERAGED_OVER.get(self.setting)
        if members is None or not all(d in self.cells for d in members):
            return None
        out = {}
        for metric in metrics_for(self.setting):
            if metric != "hm":
                out[metric] = sum(self.cells[d][metric].mean for d in members) / len(members)
        if self.setting == "base2novel":
            out["hm"] = harmonic_mean(out["base"], out["novel"])
        return out


def _group_key(record: EvalRecord) -> tuple[Any, ...]:
    m = record.model
    return (m.kind, m.method, m.variant, m.backbone, m.pretrained, record.setting, m.shots)


def aggregate(records: Iterable[EvalRecord], round_per_seed: bool = False) -> list[Group]:
    """Group records into table rows and average each dataset over seeds.

    The same evaluation given twice counts once; two different evaluations of one dataset with the same seed,
    or seeds of one dataset whose models differ in other settings, are an error rather than a silent average.
    """
    unique: dict[str, EvalRecord] = {}
    for record in records:
        unique.setdefault(record.key, record)
    groups: dict[tuple[Any, ...], Group] = {}
    per_cell: dict[tuple[tuple[Any, ...], str], list[tuple[EvalRecord, DatasetResult]]] = {}
    for record in unique.values():
        key = _group_key(record)
        m = record.model
        group = groups.get(key)
        if group is None:
            group = groups[key] = Group(
                m.kind, m.method, m.backbone, m.pretrained, record.setting, m.shots, record.comparable,
                record.comparability_note, record.paper_backbone, m.variant,
            )
        group.records.append(record)
        if not record.comparable and group.comparable:
            group.comparable, group.comparability_note = False, record.comparability_note
        for name in record.datasets:
            result = record.results.get(name)
            if result is None:
                group.skipped.setdefault(name, "not evaluated yet (interrupted evaluation); run it again")
            elif result.status == "skipped":
                group.skipped.setdefault(name, result.message)
            else:
                per_cell.setdefault((key, name), []).append((record, result))
    for (key, name), entries in per_cell.items():
        _check_cell(name, entries)
        group = groups[key]
        entries.sort(key=lambda e: e[0].model.seed)
        group.cells[name] = seed_metrics([r.metrics for _, r in entries], [rec.model.seed for rec, _ in entries],
                                         group.setting, round_per_seed)
        group.skipped.pop(name, None)
    for group in groups.values():  # columns in evaluation order
        order = [d for r in group.records for d in r.datasets]
        group.cells = {d: group.cells[d] for d in dict.fromkeys(order) if d in group.cells}
    return list(groups.values())


def _check_cell(dataset: str, entries: Sequence[tuple[EvalRecord, DatasetResult]]) -> None:
    seeds: dict[int, EvalRecord] = {}
    for record, _ in entries:
        other = seeds.get(record.model.seed)
        if other is not None:
            raise SemptError(
                f"Two different evaluations of {dataset} with seed {record.model.seed}: {_where(other)} and "
                f"{_where(record)}; averaging them as seeds would be wrong.",
                "Pass one checkpoint per seed (or evaluate them separately).",
            )
        seeds[record.model.seed] = record
    configs = {record.model.config_hash for record, _ in entries}
    if len(configs) > 1:
        raise SemptError(
            f"The checkpoints evaluated on {dataset} differ in settings other than the seed "
            f"({', '.join(_where(r) for r, _ in entries)}), so they are not seeds of one run.",
            "Evaluate each configuration separately.",
        )


def _where(record: EvalRecord) -> str:
    return record.model.checkpoint or str(record.path or record.key)
