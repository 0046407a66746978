"""`run_ablation`: SemPT Table 4's grids on PromptKD w/ SemPT, point by point, reusing every cache.

A grid point is a `distill` run with one SemPT setting changed (`alpha`, `beta`, `k`, `knowledge`), or an
evaluation-time choice on the default run (`embedding`: Table 4a's inference rules; `inference`: those and
the `calibrated` rule, which is not in the paper). Everything a point shares
with the others is computed once: the teacher (trained once per seed when none is given), its class vectors,
its per-view image features and the description vectors (content-addressed caches), and the student of
every point is a run folder keyed by its settings, so an interrupted ablation resumes at the first unfinished
point and a repeated one only re-renders. Each point is scored by `sempt eval` (records under `results/runs`),
and the grid summary is written atomically to `<eval.results_dir>/ablations/<dataset>/<param>-<key>.json`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from sempt_cli.data import DEMO_KEY
from sempt_cli.errors import SemptError, SettingsError
from sempt_cli.io import atomic_write_json, stable_hash
from sempt_cli.models.factory import DEMO_TEACHER
from sempt_cli.pipeline.distill import distill, resolve_distill_settings
from sempt_cli.pipeline.evaluation import evaluate_checkpoint
from sempt_cli.pipeline.runs import resolve_with_preset
from sempt_cli.pipeline.teacher import train_teacher
from sempt_cli.report.ablation import AblationResult, Grid, GridPoint
from sempt_cli.report.records import aggregate
from sempt_cli.settings import load_settings


def _number(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise SettingsError(f"{value!r} is not a number.") from None


EMBEDDING_ROWS = {"label": "T_lbl for all categories", "enhanced": "T_enh for all categories",
                  "hybrid": "T_lbl for seen, T_enh for unseen categories"}
KNOWLEDGE_ROWS = {"names": "category names only", "one-step": "one-step prompting", "two-step": "two-step prompting"}

GRIDS: dict[str, Grid] = {
    "alpha": Grid("alpha", "4c", "sempt.alpha", ("0.2", "0.4", "0.6", "0.8"), _number,
                  lambda v: f"alpha={_number(v):g}", "Hyperparameter α (fusion weight)"),
    "beta": Grid("beta", "4d", "sempt.beta", ("0.2", "0.4", "0.6", "0.8"), _number,
                 lambda v: f"beta={_number(v):g}", "Hyperparameter β (loss balance)"),
    "k": Grid("k", "4e", "sempt.top_k", ("1", "2", "3"), lambda v: int(_number(v)),
              lambda v: f"K={int(_number(v))}", "Hyperparameter K (descriptions selected)"),
    "embedding": Grid("embedding", "4a", "sempt.inference", ("label", "enhanced", "hybrid"), str,
                      lambda v: EMBEDDING_ROWS.get(v, v), "Text embedding choice", eval_only=True),
    "inference": Grid("inference", "4a", "sempt.inference", ("label", "enhanced", "hybrid", "calibrated"), str,
                      lambda v: EMBEDDING_ROWS.get(v, v), "Inference rule",
                      eval_only=True),
    "knowledge": Grid("knowledge", "4b", "sempt.attributes", ("names", "one-step", "two-step"), str,
                      lambda v: KNOWLEDGE_ROWS.get(v, v), "Knowledge construction strategy"),
}
DEMO_KNOWLEDGE = ("names", "ground-truth")
"""The demo world has no LLM-written files: its knowledge grid compares names only with its ground truth."""


def run_ablation(
    param: str,
    overrides: Mapping[str, Any],
    *,
    values: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    teacher: Path | None = None,
    config_file: Path | None = None,
    console: Console | None = None,
) -> AblationResult:
    """Every grid point of `param` for every seed (see the module docstring). Without `teacher`, the demo
    world's PromptSRC teacher is trained (or reused) per seed, as `sempt demo` does."""
    console = console or Console(stderr=True)
    if param not in GRIDS:
        raise SettingsError(f"Unknown ablation {param!r}; choose one of {', '.join(GRIDS)}.")
    grid = GRIDS[param]
    base = load_settings(overrides, config_file=config_file).settings
    seeds = list(seeds or [base.data.seed])
    if teacher is None and base.data.dataset != DEMO_KEY:
        raise SettingsError("Ablations on a real dataset need --teacher (a trained teacher checkpoint).")
    dataset = base.data.dataset
    chosen = list(values or (DEMO_KNOWLEDGE if param == "knowledge" and dataset == DEMO_KEY else grid.values))
    for value in chosen:
        grid.parse(value)  # bad values fail before any training
    points = [GridPoint(v, f"PromptKD w/ SemPT ({grid.paper_row(v)})") for v in chosen]
    for seed in seeds:
        seeded = {**overrides, "data.seed": seed, "sempt.enabled": True}
        teacher_checkpoint = teacher or _demo_teacher(seeded, config_file, console)
        for point in points:
            console.rule(f"[bold]ablate {param}[/] = {point.value} · seed {seed}")
            point_overrides = {**seeded, **_point_overrides(grid, point.value, base.paths.attributes_dir, dataset,
                                                            base.paths.cache_dir, base.sempt.num_descriptions)}
            run_overrides = {k: v for k, v in point_overrides.items() if not grid.eval_only or k != grid.setting}
            resolved = resolve_distill_settings("promptkd", teacher_checkpoint, run_overrides, config_file=config_file)
            student = distill("promptkd", teacher_checkpoint, resolved, console=console)
            point.checkpoints.append(student.checkpoint)
            eval_settings = load_settings(point_overrides, config_file=config_file).settings
            point.records.append(evaluate_checkpoint(student.checkpoint, eval_settings, console=console))
    for point in points:
        groups = aggregate(point.records, base.eval.round_per_seed)
        point.stats = dict(groups[0].cells.get(dataset, {})) if groups else {}
    first = points[0].records[0] if points and points[0].records else None
    key = stable_hash(param, chosen, seeds, [[r.key for r in p.records] for p in points], length=12)
    path = base.eval.results_dir / "ablations" / dataset / f"{param}-{key}.json"
    result = AblationResult(grid, dataset, seeds, points, path, bool(first and first.comparable),
                            first.comparability_note if first else "")
    atomic_write_json(path, _summary(result))
    return result


def _demo_teacher(overrides: Mapping[str, Any], config_file: Path | None, console: Console) -> Path:
    resolved = resolve_with_preset("promptsrc", {**overrides, "model.backbone": DEMO_TEACHER}, config_file=config_file)
    return train_teacher("promptsrc", resolved, console=console).checkpoint


def _point_overrides(grid: Grid, value: str, attributes_dir: Path, dataset: str, cache_dir: Path,
                     num_descriptions: int) -> dict[str, Any]:
    if grid.param != "knowledge":
        return {grid.setting: grid.parse(value)}
    return {grid.setting: str(knowledge_file(value, dataset, attributes_dir, cache_dir, num_descriptions))}


def knowledge_file(strategy: str, dataset: str, attributes_dir: Path, cache_dir: Path, num_descriptions: int) -> Path:
    """The attribute file a knowledge strategy stands for: made here when no LLM is needed (names; the demo's
    ground truth), else `<attributes-dir>/<dataset>-<strategy>.json` or `<dataset>.json` if written that way."""
    from sempt_cli.data import all_classnames
    from sempt_cli.knowledge import demo_attribute_file, load_attribute_file, names_file, write_attribute_file

    if strategy in ("names", "ground-truth"):
        if strategy == "ground-truth" and dataset != DEMO_KEY:
            raise SettingsError("The ground-truth knowledge strategy exists only for the demo world.")
        path = cache_dir / "attributes" / f"{dataset}-{strategy}-s{num_descriptions}.json"
        if not path.is_file():
            made = (names_file(dataset, all_classnames(dataset), num_descriptions) if strategy == "names"
                    else demo_attribute_file(num_descriptions))
            write_attribute_file(made, path)
        return path
    for candidate in (attributes_dir / f"{dataset}-{strategy}.json", attributes_dir / f"{dataset}.json"):
        if candidate.is_file() and load_attribute_file(candidate).strategy == strategy:
            return candidate
    raise SemptError(
        f"No {strategy} attribute file for {dataset} in {attributes_dir}.",
        f"Write one with `sempt gen-attributes --dataset {dataset} --strategy {strategy} "
        f"--output {attributes_dir / f'{dataset}-{strategy}.json'}`.",
    )


def _summary(result: AblationResult) -> dict[str, Any]:
    return {
        "param": result.grid.param, "setting": result.grid.setting, "paper_table": f"SemPT Table {result.grid.table}",
        "dataset": result.dataset, "seeds": result.seeds, "comparable": result.comparable, "note": result.note,
        "points": [
            {"value": p.value, "paper_method": p.paper_method, "checkpoints": [str(c) for c in p.checkpoints],
             "records": [str(r.path) for r in p.records],
             "metrics": {m: {"mean": s.mean, "std": s.std, "values": list(s.values), "seeds": list(s.seeds)}
                         for m, s in p.stats.items()}}
            for p in result.points
        ],
    }
