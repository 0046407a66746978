"""`sempt reproduce TARGET`: a paper table or figure as one resumable graph of ordinary runs.

A target is data (`TARGETS`): the setting, the training datasets, the method variants, the seeds (and shots, or an
ablation grid), and which paper table its rows are compared with. `plan_target` turns it into jobs — a PromptSRC
teacher per dataset × seed, a student per variant distilled from it, a supervised baseline per variant, an
attribute file per dataset where SemPT needs one and an LLM can write it — each one exactly what the single
commands run (`train_teacher`, `distill`, `evaluate_checkpoint`, `sempt gen-attributes`), so run folders,
caches and evaluation records are the very ones `sempt train-teacher/distill/eval` would use and reuse.

What is done is read from the files themselves (a finished run folder, its evaluation record, the job's done
marker), never from a separate database: an interrupted `reproduce` (even `kill -9`) continues where it stopped
when run again, and a run made earlier by a single command counts. `state.json` (written only by the driving
process, atomically) only remembers what cannot be read from the runs: failures and their logs, and the SLURM job
a missing run was submitted as, so a re-run neither loses a failure nor submits a queued job twice.

Inputs the tool cannot make (a dataset folder, an attribute file with no LLM key to write it, CLIP weights that
are not cached on an offline machine) are collected over the whole plan before anything starts
(`missing_inputs`), so a user sees them in one message rather than one crash at a time.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from sempt_cli.data import DEMO_KEY
from sempt_cli.data.readers import resolve_dataset
from sempt_cli.data.registry import canonical_dataset_name
from sempt_cli.engine.distributed import init_distributed
from sempt_cli.errors import SemptError, SettingsError, WeightsError
from sempt_cli.io import atomic_write_json, file_identity, stable_hash
from sempt_cli.methods import supervised_method_names
from sempt_cli.models.checkpoint import load_learned
from sempt_cli.models.factory import DEMO_STUDENT, DEMO_TEACHER, is_offline, resolve_pretrained
from sempt_cli.pipeline.ablate import DEMO_KNOWLEDGE, GRIDS, knowledge_file
from sempt_cli.pipeline.distill import default_student, resolve_distill_settings, student_run_dir
from sempt_cli.pipeline.embed import class_vectors_cached
from sempt_cli.pipeline.evaluation import default_datasets, evaluate_checkpoint
from sempt_cli.pipeline.runs import CHECKPOINT_NAME, METRICS_FILE, resolve_with_preset
from sempt_cli.pipeline.sempt import attribute_file
from sempt_cli.pipeline.teacher import teacher_run_dir
from sempt_cli.report.paper import BASE2NOVEL_DATASETS
from sempt_cli.report.records import EvalRecord, load_record
from sempt_cli.settings import STANDARD_SHOTS, ModelSettings, Settings, load_settings

SEEDS = (1, 2, 3)
TEACHER_METHOD = "promptsrc"
PAPER_TEACHER = {"model.backbone": "ViT-L-14-quickgelu", "model.pretrained": "openai"}
PAPER_STUDENT = {"model.backbone": "ViT-B-16-quickgelu", "model.pretrained": "openai"}
DEMO_TEACHER_MODEL = {"model.backbone": DEMO_TEACHER, "model.pretrained": "demo"}
DEMO_STUDENT_MODEL = {"model.backbone": DEMO_STUDENT, "model.pretrained": "demo"}
PLANNED = ("data.dataset", "data.seed", "data.setting", "sempt.enabled")
"""Settings the plan sets for every run; a flag for one of them is refused (use --datasets/--seeds/--methods)."""
DONE_SUFFIX = ".done.json"


# ------------------------------------------------------------------------------------------------------ targets


@dataclass(frozen=True)
class Target:
    """A paper table or figure as data: what to train, on what, how often, and which paper rows to print beside."""

    name: str
    title: str
    setting: str
    datasets: tuple[str, ...]
    methods: tuple[str, ...]
    paper: str
    table: str
    seeds: tuple[int, ...] = SEEDS
    shots: tuple[int, ...] = (16,)
    grid: str | None = None
    """An ablation grid of `pipeline.ablate.GRIDS`: one student per value (or one scored per value, Table 4a)."""

    @property
    def size(self) -> int:
        """Training runs of the whole target (teachers included), as `--list` shows it."""
        return len(plan_jobs(self, self.datasets, self.seeds, self.methods, {}, probe=False)[0])


B2N = tuple(BASE2NOVEL_DATASETS)
STUDENTS = ("promptkd", "promptkd-sempt")
TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("sempt-table1", "SemPT Table 1: base-to-novel on 11 datasets", "base2novel", B2N, STUDENTS, "sempt", "1"),
    Target("sempt-table2", "SemPT Table 2: cross-dataset, ImageNet → 10 datasets", "cross-dataset", ("imagenet",),
           STUDENTS, "sempt", "2"),
    Target("sempt-table3", "SemPT Table 3: cross-domain, ImageNet → -V2/-S/-A/-R", "cross-domain", ("imagenet",),
           STUDENTS, "sempt", "3"),
    *(Target(f"sempt-table{g.table}", f"SemPT Table {g.table}: {g.title}", "base2novel", B2N, ("promptkd-sempt",),
             "sempt", g.table, grid=g.param) for g in sorted(GRIDS.values(), key=lambda g: g.table)),
    Target("sempt-fig4", "SemPT Fig. 4: few-shot curves, MMRL with and without SemPT", "few-shot", B2N,
           ("mmrl", "mmrl-sempt"), "sempt", "fig4", shots=STANDARD_SHOTS),
    Target("promptkd-table1", "PromptKD Table 1: base-to-novel on 11 datasets", "base2novel", B2N, ("promptkd",),
           "promptkd", "1"),
    Target("promptkd-table2", "PromptKD Table 2: cross-dataset, ImageNet → 10 datasets", "cross-dataset",
           ("imagenet",), ("promptkd",), "promptkd", "2"),
    Target("promptkd-table9", "PromptKD Table 9: domain generalisation, ImageNet → -V2/-S/-A/-R", "cross-domain",
           ("imagenet",), ("promptkd",), "promptkd", "9"),
    Target("promptkd-table10", "PromptKD Table 10: the ViT-L/14 PromptSRC teachers, base-to-novel", "base2novel", B2N,
           ("teacher",), "promptkd", "10"),
)}


def get_target(name: str) -> Target:
    if name not in TARGETS:
        raise SettingsError(f"Unknown target {name!r}; `sempt reproduce --list` shows {', '.join(TARGETS)}.")
    return TARGETS[name]


@dataclass(frozen=True)
class Variant:
    """A row of a table: `teacher` (PromptSRC), `promptkd[-sempt]` (a student) or `<supervised>[-sempt]`."""

    key: str
    method: str
    kind: str
    sempt: bool


def variant(key: str) -> Variant:
    if key == "teacher":
        return Variant(key, TEACHER_METHOD, "teacher", False)
    base, sempt = key.removesuffix("-sempt"), key.endswith("-sempt")
    if base == "promptkd":
        return Variant(key, base, "student", sempt)
    if base in supervised_method_names():
        return Variant(key, base, "baseline", sempt)
    raise SettingsError(f"Unknown method {key!r}: use teacher, promptkd, promptkd-sempt, or a supervised method "
                        f"({', '.join(sorted(supervised_method_names()))}) with or without -sempt.")


# --------------------------------------------------------------------------------------------------------- jobs


@dataclass
class Job:
    """One unit of work a launcher runs in its own process (`sempt reproduce-job SPEC`, or `argv` as given)."""

    id: str
    kind: str  # attributes | teacher | baseline | student
    title: str
    dataset: str
    seed: int
    method: str
    overrides: dict[str, Any]
    sempt: bool = False
    needs: list[str] = field(default_factory=list)
    variant: str = ""
    point: str = ""
    evals: list[dict[str, Any]] = field(default_factory=list)
    """One evaluation per entry (its extra settings); none: the job only trains (a teacher others need)."""
    teacher: dict[str, Any] | None = None
    """A student's teacher: the teacher job's overrides (its checkpoint is found from them)."""
    argv: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    config_file: str | None = None

    @property
    def trains(self) -> bool:
        return self.kind != "attributes"


def _job_id(*parts: Any, payload: Any) -> str:
    safe = "-".join(str(p) for p in parts if p != "")
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in safe) + "-" + stable_hash(payload, length=8)


def _model_defaults(dataset: str, kind: str) -> dict[str, Any]:
    demo = dataset == DEMO_KEY
    if kind == "teacher":
        return dict(DEMO_TEACHER_MODEL if demo else PAPER_TEACHER)
    return dict(DEMO_STUDENT_MODEL if demo else PAPER_STUDENT)


def plan_jobs(
    target: Target, datasets: Sequence[str], seeds: Sequence[int], methods: Sequence[str],
    overrides: Mapping[str, Any], *, config_file: Path | None = None, probe: bool = True,
) -> tuple[list[Job], list[str]]:
    """The jobs of a target's slice in dependency order, and the inputs that are missing and cannot be made
    (checked only when `probe`: attribute files, LLM key)."""
    chosen = [variant(m) for m in methods]
    grid = GRIDS[target.grid] if target.grid else None
    jobs: list[Job] = []
    missing: list[str] = []
    attribute_jobs: dict[str, Job] = {}
    settings = load_settings(dict(overrides), config_file=config_file).settings if probe else None
    user_shots = overrides.get("data.shots")  # a slice of a few-shot target; elsewhere a flag like any other
    shots_list: list[int | None] = [None]
    if target.setting == "few-shot":
        shots_list = [int(user_shots)] if user_shots is not None else list(target.shots)
    for dataset in datasets:
        needs_attributes = any(v.sempt for v in chosen)
        attr_dep: list[str] = []
        if needs_attributes and probe:
            assert settings is not None
            for needed in _attribute_datasets(target, dataset):
                job = _attribute_job(needed, settings, config_file, missing)
                if job is not None and needed not in attribute_jobs:
                    attribute_jobs[needed] = job
                    jobs.append(job)
                if needed in attribute_jobs:
                    attr_dep.append(attribute_jobs[needed].id)
        for seed in seeds:
            for shots in shots_list:
                base = {**dict(overrides), "data.dataset": dataset, "data.seed": seed, "data.setting": target.setting}
                if shots is not None:
                    base["data.shots"] = shots
                teacher_job: Job | None = None
                if any(v.kind in ("student", "teacher") for v in chosen):
                    teacher_over = {**_model_defaults(dataset, "teacher"), **base, "sempt.enabled": False}
                    evaluate = any(v.kind == "teacher" for v in chosen)
                    teacher_job = Job(
                        _job_id(dataset, f"seed{seed}", "teacher", payload=teacher_over), "teacher",
                        f"PromptSRC teacher · {dataset} · seed {seed}", dataset, seed, TEACHER_METHOD, teacher_over,
                        variant="teacher" if evaluate else "", evals=[{}] if evaluate else [],
                    )
                    jobs.append(teacher_job)
                for v in chosen:
                    if v.kind == "teacher":
                        continue
                    for value in (grid_values(grid, dataset) if grid else ("",)):
                        if grid is not None and grid.eval_only and value != grid.values[0]:
                            continue  # one student scored under every rule
                        job = _variant_job(target, v, base, dataset, seed, value, teacher_job, attr_dep, settings,
                                           missing, shots if target.setting == "few-shot" else None)
                        if job is not None:
                            jobs.append(job)
    for job in jobs:
        job.config_file = None if config_file is None else str(config_file)
    return jobs, list(dict.fromkeys(missing))


def grid_values(grid: Any, dataset: str) -> tuple[str, ...]:
    """The grid's values; the demo world's knowledge grid is names vs its ground truth (no LLM-written files)."""
    return DEMO_KNOWLEDGE if grid.param == "knowledge" and dataset == DEMO_KEY else tuple(grid.values)


def _variant_job(
    target: Target, v: Variant, base: dict[str, Any], dataset: str, seed: int, value: str, teacher: Job | None,
    attr_dep: list[str], settings: Settings | None, missing: list[str], shots: int | None,
) -> Job | None:
    grid = GRIDS[target.grid] if target.grid else None
    over = {**(_model_defaults(dataset, "student") if v.kind == "baseline" else {}), **base, "sempt.enabled": v.sempt}
    evals: list[dict[str, Any]] = [{}]
    if grid is not None:
        if grid.eval_only:
            evals = [{grid.setting: grid.parse(val)} for val in grid.values]
        elif grid.param == "knowledge":
            if settings is None:
                over[grid.setting] = f"<{value} attribute file>"
            else:
                try:
                    over[grid.setting] = str(knowledge_file(value, dataset, settings.paths.attributes_dir,
                                                            settings.paths.cache_dir, settings.sempt.num_descriptions))
                except SemptError as exc:
                    missing.append(str(exc))
                    return None
        else:
            over[grid.setting] = grid.parse(value)
    label = f"{v.method}{' w/ SemPT' if v.sempt else ''}"
    where = f"{dataset} · seed {seed}" + (f" · {shots} shot" if shots is not None else "") + \
        (f" · {grid.param}={value}" if grid is not None and not grid.eval_only else "")
    return Job(
        _job_id(dataset, f"seed{seed}", f"{shots}shot" if shots is not None else "", v.key,
                value if grid is not None and not grid.eval_only else "", payload=[over, evals]),
        v.kind, f"{label} · {where}", dataset, seed, v.method, over, v.sempt,
        needs=([teacher.id] if v.kind == "student" and teacher is not None else []) + (attr_dep if v.sempt else []),
        variant=v.key, point=value if grid is not None else "", evals=evals,
        teacher=teacher.overrides if v.kind == "student" and teacher is not None else None,
    )


def _attribute_datasets(target: Target, dataset: str) -> list[str]:
    """Datasets whose attribute files a SemPT run on `dataset` needs: its own, and in cross-dataset every target
    (all their classes are unseen); ImageNet's variants share ImageNet's file."""
    if target.setting != "cross-dataset" or dataset == DEMO_KEY:
        return [dataset]
    return list(dict.fromkeys(canonical_dataset_name(d) or d for d in default_datasets(target.setting, dataset)))


def _attribute_job(dataset: str, settings: Settings, config_file: Path | None, missing: list[str]) -> Job | None:
    """None when the file exists (or is derived, as the demo's); a `gen-attributes` job when an LLM key is set;
    else the file is recorded as missing."""
    try:
        attribute_file(dataset, settings, explicit=False)
        return None
    except SemptError as exc:
        reason = exc.message
    from sempt_cli.knowledge.llm import resolve_api_key

    try:
        resolve_api_key(settings.llm)
    except SemptError:
        missing.append(f"{reason.rstrip('.')} and no LLM key is set to write it "
                       f"(set OPENAI_API_KEY, or run `sempt gen-attributes --dataset {dataset}` elsewhere).")
        return None
    env = {"SEMPT_PATHS__ATTRIBUTES_DIR": str(settings.paths.attributes_dir),
           "SEMPT_PATHS__DATA_ROOT": str(settings.paths.data_root),
           "SEMPT_PATHS__CACHE_DIR": str(settings.paths.cache_dir)}
    return Job(_job_id(dataset, "attributes", payload=[dataset, env]), "attributes",
               f"attribute file · {dataset} (gen-attributes)", dataset, 0, "gen-attributes", {},
               argv=[sys.executable, "-m", "sempt_cli", "gen-attributes", "--dataset", dataset], env=env)


# ------------------------------------------------------------------------------------------ where a job stands


def planned_identity(model: ModelSettings) -> str | None:
    """`backbone_identity` of the backbone these settings load, without loading it (for run folder names): the
    weights file's hash. Raises WeightsError when the weights are not on this machine."""
    if model.checkpoint is not None:
        path = Path(model.checkpoint).expanduser()
    elif model.pretrained == "demo":
        from sempt_cli.models.demo_clip import demo_weights_path

        path = demo_weights_path(model.backbone)
    elif model.pretrained:
        path = resolve_pretrained(model.backbone, model.pretrained, offline=True)
    else:
        return None
    if not path.is_file():
        raise WeightsError(f"The weights file {path} for {model.backbone} does not exist.")
    return f"{model.backbone}@{file_identity(path)}"


def run_dir_of(job: Job, teacher_checkpoint: Path | None = None) -> Path | None:
    """The run folder `train_teacher`/`distill` will use for `job` (None while it cannot be known: weights not
    here yet, or a student's teacher not trained yet)."""
    if not job.trains:
        return None
    config = Path(job.config_file) if job.config_file else None
    try:
        if job.kind == "student":
            if teacher_checkpoint is None:
                return None
            resolved = resolve_distill_settings(job.method, teacher_checkpoint, job.overrides, config)
            identity = planned_identity(resolved.settings.model)
            teacher_sha = load_learned(teacher_checkpoint).sha256
            return student_run_dir(job.method, resolved.settings, f"{identity}|teacher:{teacher_sha}")
        resolved = resolve_with_preset(job.method, job.overrides, config)
        identity = planned_identity(resolved.settings.model)
        return teacher_run_dir(job.method, resolved.settings, identity, sempt=job.sempt)
    except SemptError:
        return None


def finished_checkpoint(run_dir: Path | None) -> Path | None:
    if run_dir is None:
        return None
    checkpoint = run_dir / f"{CHECKPOINT_NAME}.safetensors"
    return checkpoint if checkpoint.is_file() and (run_dir / METRICS_FILE).is_file() else None


def teacher_checkpoint_of(job: Job) -> Path | None:
    """A student's trained teacher, found from the teacher job's settings (None while untrained)."""
    if job.teacher is None:
        return None
    teacher = Job("", "teacher", "", job.dataset, job.seed, TEACHER_METHOD, job.teacher, config_file=job.config_file)
    return finished_checkpoint(run_dir_of(teacher))


@dataclass
class JobStatus:
    state: str  # done | trained | partial | failed | queued | waiting | todo
    detail: str = ""
    run_dir: Path | None = None


class StateBook:
    """`<results>/reproduce/<target>/`: job specs, done markers, logs, and state.json (failures, SLURM jobs)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / "state.json"

    def read(self) -> dict[str, dict[str, Any]]:
        if not self.path.is_file():
            return {}
        try:
            return dict(json.loads(self.path.read_text()).get("jobs", {}))
        except (json.JSONDecodeError, AttributeError):
            return {}

    def update(self, job_id: str, **entry: Any) -> None:
        jobs = self.read()
        jobs[job_id] = {**jobs.get(job_id, {}), **entry}
        atomic_write_json(self.path, {"format": "sempt.reproduce-state/1", "jobs": jobs})

    def spec_path(self, job: Job) -> Path:
        return self.root / "jobs" / f"{job.id}.json"

    def done_path(self, job_id: str) -> Path:
        return self.root / "jobs" / f"{job_id}{DONE_SUFFIX}"

    def log_path(self, job: Job) -> Path:
        return self.root / "logs" / f"{job.id}.log"

    def write_spec(self, job: Job) -> Path:
        path = self.spec_path(job)
        atomic_write_json(path, {**asdict(job), "state_dir": str(self.root)})
        return path

    def done(self, job_id: str) -> dict[str, Any] | None:
        """The job's done marker if what it names still exists (a deleted run or record makes it undone)."""
        path = self.done_path(job_id)
        if not path.is_file():
            return None
        marker = json.loads(path.read_text())
        files = [marker.get("checkpoint"), *marker.get("records", []), *marker.get("files", [])]
        return marker if all(Path(f).is_file() for f in files if f) else None


def job_status(job: Job, book: StateBook, states: Mapping[str, JobStatus], recorded: Mapping[str, Any]) -> JobStatus:
    """Where `job` stands, from its files first (see the module docstring), then from state.json."""
    if book.done(job.id) is not None:
        return JobStatus("done")
    run_dir = None
    if job.trains:
        teacher = teacher_checkpoint_of(job) if job.kind == "student" else None
        run_dir = run_dir_of(job, teacher)
        if finished_checkpoint(run_dir) is not None:
            detail = "evaluation pending" if job.evals else "reused as is"
            return JobStatus("trained", detail, run_dir)
    entry = recorded.get(job.id, {})
    if entry.get("status") == "submitted" and _slurm_alive(entry):
        return JobStatus("queued", f"SLURM job {entry.get('slurm_job')}", run_dir)
    if entry.get("status") == "failed":
        return JobStatus("failed", f"log: {entry.get('log')}", run_dir)
    if run_dir is not None and (run_dir / "progress.json").is_file():
        progress = json.loads((run_dir / "progress.json").read_text())
        return JobStatus("partial", f"interrupted at epoch {progress['epoch']}/{progress['epochs']}, step "
                         f"{progress['step_in_epoch']}/{progress['steps_per_epoch']}", run_dir)
    waiting = [n for n in job.needs if states.get(n, JobStatus("todo")).state not in ("done", "trained")]
    if waiting:
        return JobStatus("waiting", "waits for " + ", ".join(waiting), run_dir)
    detail = ""
    if job.kind == "student" and (teacher := teacher_checkpoint_of(job)) is not None:
        settings = load_settings(job.overrides, config_file=Path(job.config_file) if job.config_file else None)
        cached = class_vectors_cached(teacher, settings.settings)
        detail = f"teacher trained; its class vectors {'cached' if cached else 'not cached yet'}"
    return JobStatus("todo", detail, run_dir)


def _slurm_alive(entry: Mapping[str, Any]) -> bool:
    """A job submitted to a real SLURM cluster that is still queued or running (asked through submitit)."""
    if entry.get("cluster") != "slurm" or not entry.get("slurm_job"):
        return False
    try:
        import submitit

        state = submitit.SlurmJob(folder=entry["folder"], job_id=str(entry["slurm_job"])).state
    except Exception:
        return False
    return state in {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED"}


def statuses(jobs: Sequence[Job], book: StateBook) -> dict[str, JobStatus]:
    recorded = book.read()
    out: dict[str, JobStatus] = {}
    for job in jobs:  # dependency order: a job's needs are judged first
        out[job.id] = job_status(job, book, out, recorded)
    return out


# ------------------------------------------------------------------------------------------------- missing inputs


def missing_inputs(jobs: Sequence[Job], target: Target, config_file: Path | None = None) -> tuple[list[str], list[str]]:
    """(missing, notes): everything the plan needs that is absent and cannot be made here — dataset folders
    (training and evaluation datasets), CLIP weights on an offline machine — and notes on what will be fetched."""
    missing: list[str] = []
    notes: list[str] = []
    seen_datasets: set[str] = set()
    seen_models: set[tuple[Any, ...]] = set()
    for job in jobs:
        if not job.trains:
            continue
        settings = load_settings(job.overrides, config_file=config_file).settings
        evaluated = default_datasets(target.setting, job.dataset) if job.evals else []
        for dataset in dict.fromkeys([job.dataset, *evaluated]):
            if dataset in seen_datasets or dataset == DEMO_KEY:
                continue
            seen_datasets.add(dataset)
            problem = _dataset_problem(dataset, settings.paths.data_root)
            if problem:
                missing.append(problem)
        models = [settings.model]
        if job.kind == "student" and job.teacher is not None:  # the student's backbone follows its teacher's
            teacher_model = load_settings(job.teacher, config_file=config_file).settings.model
            own = {k: v for k, v in job.overrides.items() if k.startswith("model.")}
            models = [load_settings({**default_student(teacher_model.backbone), **own},
                                    config_file=config_file).settings.model]
        for model in models:
            key = (model.backbone, model.pretrained, str(model.checkpoint))
            if key in seen_models:
                continue
            seen_models.add(key)
            try:
                planned_identity(model)
            except WeightsError as exc:
                if is_offline() or model.checkpoint is not None:
                    missing.append(str(exc))
                else:
                    notes.append(f"{model.backbone}/{model.pretrained} weights are not cached yet: the first run "
                                 "downloads them.")
    return missing, notes


def _dataset_problem(dataset: str, data_root: Path) -> str | None:
    from sempt_cli.data import load_dataset
    from sempt_cli.errors import DatasetError

    try:
        info = resolve_dataset(dataset)
    except SemptError as exc:
        return str(exc)
    folder = info.dataset_dir(data_root.expanduser().absolute())
    if not folder.is_dir():
        return f"Dataset {info.key}: folder {folder} does not exist (get it from {info.download})."
    try:
        load_dataset(info.key, data_root, check_files=False)
    except DatasetError as exc:
        return str(exc)
    return None


# ------------------------------------------------------------------------------------------------------ the plan


@dataclass
class Plan:
    """A target's slice: its jobs in dependency order, where each stands, and what is missing."""

    target: Target
    jobs: list[Job]
    missing: list[str]
    notes: list[str]
    book: StateBook
    states: dict[str, JobStatus]
    seeds: list[int]
    datasets: list[str]
    methods: list[str]
    round_per_seed: bool = False

    @property
    def todo(self) -> list[Job]:
        return [job for job in self.jobs if self.states[job.id].state != "done"]


def plan_target(
    name: str, overrides: Mapping[str, Any], *, datasets: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None, methods: Sequence[str] | None = None, config_file: Path | None = None,
) -> Plan:
    """The whole dependency graph of a target's slice, with what is already done and what is missing."""
    target = get_target(name)
    given = [key for key in PLANNED if key in overrides]
    if given:
        raise SettingsError(f"reproduce sets {', '.join(given)} itself; choose with --datasets, --seeds, --methods.")
    chosen_datasets = [canonical_dataset_name(d) or d for d in (datasets or target.datasets)]
    for dataset in chosen_datasets:
        resolve_dataset(dataset)  # unknown names fail before anything else
    chosen_methods = list(methods or target.methods)
    for method in chosen_methods:
        variant(method)
    chosen_seeds = list(seeds or target.seeds)
    jobs, missing = plan_jobs(target, chosen_datasets, chosen_seeds, chosen_methods, overrides,
                              config_file=config_file)
    more, notes = missing_inputs(jobs, target, config_file)
    settings = load_settings(dict(overrides), config_file=config_file).settings
    book = StateBook(settings.eval.results_dir / "reproduce" / target.name)
    return Plan(target, jobs, list(dict.fromkeys(missing + more)), notes, book, statuses(jobs, book),
                chosen_seeds, chosen_datasets, chosen_methods, settings.eval.round_per_seed)


def missing_message(plan: Plan) -> str:
    """Every missing input, in one message."""
    return (f"{plan.target.name} cannot start: {len(plan.missing)} input(s) are missing and cannot be made here:\n"
            + "\n".join(f"  - {item}" for item in plan.missing))


# -------------------------------------------------------------------------------------------------- one job


def run_job(spec_path: Path, console: Console | None = None) -> dict[str, Any]:
    """Run one job as the single commands would (train or reuse, then evaluate), and write its done marker.
    This is what every launcher runs, in a process of its own; under torchrun only rank 0 evaluates."""
    console = console or Console(stderr=True)
    spec = json.loads(Path(spec_path).read_text())
    state_dir = Path(spec.pop("state_dir"))
    job = Job(**spec)
    config = Path(job.config_file) if job.config_file else None
    dist = init_distributed()
    from sempt_cli.pipeline.distill import distill
    from sempt_cli.pipeline.teacher import train_teacher

    if job.kind == "student":
        teacher = teacher_checkpoint_of(job)
        if teacher is None:
            raise SemptError(f"The teacher of {job.title} is not trained yet; its teacher job must finish first.")
        resolved = resolve_distill_settings(job.method, teacher, job.overrides, config)
        run = distill(job.method, teacher, resolved, console=console, dist=dist)
    else:
        resolved = resolve_with_preset(job.method, job.overrides, config)
        run = train_teacher(job.method, resolved, sempt=job.sempt, console=console, dist=dist)
    if not dist.is_main:
        return {}
    records: list[EvalRecord] = []
    for extra in job.evals:
        settings = load_settings({**job.overrides, **extra}, config_file=config).settings
        records.append(evaluate_checkpoint(run.checkpoint, settings, console=console,
                                           command=["sempt", "reproduce-job", str(spec_path)]))
    marker = {"job": job.id, "checkpoint": str(run.checkpoint), "run_dir": str(run.run_dir),
              "records": [str(r.path) for r in records], "evals": job.evals}
    atomic_write_json(StateBook(state_dir).done_path(job.id), marker)
    return marker


def write_attributes_marker(book: StateBook, job: Job) -> None:
    """An attribute job is done when its file exists (gen-attributes wrote it)."""
    settings = load_settings({"paths.attributes_dir": job.env["SEMPT_PATHS__ATTRIBUTES_DIR"],
                              "paths.cache_dir": job.env["SEMPT_PATHS__CACHE_DIR"]}, env={}).settings
    try:
        path = attribute_file(job.dataset, settings, explicit=False)
    except SemptError:
        return
    atomic_write_json(book.done_path(job.id), {"job": job.id, "files": [str(path)]})


def job_records(plan: Plan) -> dict[str, list[EvalRecord]]:
    """The evaluation records of every finished job that reports rows, by job id."""
    out: dict[str, list[EvalRecord]] = {}
    for job in plan.jobs:
        marker = plan.book.done(job.id)
        if marker and marker.get("records"):
            out[job.id] = [load_record(Path(p)) for p in marker["records"]]
    return out


def environment(job: Job, gpus: str | None = None) -> dict[str, str]:
    """The environment a job's process runs in: ours, the job's own, and its GPUs."""
    env = {**os.environ, **job.env}
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpus
    return env


def ordered_waves(jobs: Iterable[Job]) -> list[list[Job]]:
    """Jobs grouped so that every job's needs are in an earlier group (independent jobs share a group)."""
    level: dict[str, int] = {}
    waves: list[list[Job]] = []
    for job in jobs:  # planned in dependency order
        depth = 1 + max((level[n] for n in job.needs if n in level), default=-1)
        level[job.id] = depth
        while len(waves) <= depth:
            waves.append([])
        waves[depth].append(job)
    return waves


# ------------------------------------------------------------------------------------------------------ the table


@dataclass
class Summary:
    """The target's rows beside the paper's (`comparisons`, or one ablation view per dataset for Table 4), and
    the warnings where a seed spread is larger than a gap the table reports."""

    comparisons: list[Any]
    ablations: list[Any]
    warnings: list[str]
    rows: int


PAPER_METHODS = {"PromptSRC": "PromptKD teacher"}
"""Our group titles the paper spells differently (PromptKD Table 10 calls its ViT-L/14 PromptSRC the teacher)."""


def summarize(plan: Plan) -> Summary:
    """Every finished job's records aggregated as `sempt eval` does (mean ± std over seeds), beside the target's
    paper table with deltas; an ablation target as `sempt ablate` shows it, per dataset."""
    from sempt_cli.report.paper import load_paper_numbers
    from sempt_cli.report.records import aggregate
    from sempt_cli.report.tables import build_comparisons, spread_warnings

    target = plan.target
    by_job = job_records(plan)
    if target.grid:
        ablations = _ablation_results(plan, by_job)
        return Summary([], ablations, _ablation_warnings(ablations), sum(len(v) for v in by_job.values()))
    records = [r for job in plan.jobs if job.variant in plan.methods for r in by_job.get(job.id, [])]
    groups = aggregate(records, plan.round_per_seed)
    numbers = [n for n in load_paper_numbers() if n.paper == target.paper and n.table == target.table]
    comparisons = []
    for group in groups:
        title = PAPER_METHODS.get(group.title, group.title) if target.paper == "promptkd" else group.title
        compare = [title] if any(n.method.lower() == title.lower() for n in numbers) else []
        comparisons += build_comparisons([group], numbers, compare)
    return Summary(comparisons, [], spread_warnings(comparisons), len(records))


def _ablation_results(plan: Plan, by_job: Mapping[str, list[EvalRecord]]) -> list[Any]:
    from sempt_cli.report.ablation import AblationResult, GridPoint
    from sempt_cli.report.records import aggregate

    assert plan.target.grid is not None
    grid = GRIDS[plan.target.grid]
    out = []
    for dataset in plan.datasets:
        points: dict[str, GridPoint] = {}
        seeds: set[int] = set()
        for job in plan.jobs:
            if job.dataset != dataset or job.kind != "student" or job.id not in by_job:
                continue
            records = by_job[job.id]
            values = list(grid.values) if grid.eval_only else [job.point]
            for value, record in zip(values, records, strict=False):
                point = points.setdefault(value, GridPoint(value, f"PromptKD w/ SemPT ({grid.paper_row(value)})"))
                point.records.append(record)
                seeds.add(job.seed)
        for point in points.values():
            groups = aggregate(point.records, plan.round_per_seed)
            point.stats = dict(groups[0].cells.get(dataset, {})) if groups else {}
        if points:
            first = next(iter(points.values())).records[0]
            out.append(AblationResult(grid, dataset, sorted(seeds), list(points.values()), plan.book.root,
                                      first.comparable, first.comparability_note))
    return out


def _ablation_warnings(results: Sequence[Any]) -> list[str]:
    """Where two neighbouring grid values differ in HM by less than their seed spread."""
    warnings = []
    for result in results:
        stats = [(p.value, p.stats.get("hm")) for p in result.points if p.stats.get("hm") is not None]
        for (a, sa), (b, sb) in itertools.pairwise(stats):
            gap, spread = sb.mean - sa.mean, max(sa.std, sb.std)
            if sa.n > 1 and spread > abs(gap):
                warnings.append(f"{result.dataset}: HM {result.grid.param}={b} vs {a} differs by {gap:+.2f}, less "
                                f"than the seed spread (std up to {spread:.2f} over {min(sa.n, sb.n)} seeds).")
    return warnings
