"""How `sempt reproduce` runs its jobs: existing engines only, no scheduler of our own.

* `local`: one job after another in a child process (its output shown and logged), or with `--gpus 0,1,2,3` a pool
  of child processes, one per GPU (`CUDA_VISIBLE_DEVICES`), over the independent jobs of each dependency level;
* `torchrun`: each job as `torchrun --nproc_per_node N` on `--gpus-per-job N` GPUs (several such jobs side by
  side when `--gpus` lists more);
* `slurm`: `submitit` job arrays, one array per dependency level, later levels held by `afterany` dependencies
  (the local/debug executors of submitit, which have no dependencies, wait for each level instead).

Every job runs `sempt reproduce-job SPEC` (or `sempt gen-attributes`), so a crash, an out-of-memory kill or a
Python error in one job is that job's failure: it is recorded with its log and independent jobs go on
(`keep_going`); jobs that need it are reported as blocked. Whether a job succeeded is read from its done marker,
never from an exit code alone.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import queue
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from sempt_cli.errors import SettingsError
from sempt_cli.pipeline.reproduce import Job, Plan, environment, ordered_waves, write_attributes_marker

LAUNCHERS = ("local", "torchrun", "slurm")
SLURM_CLUSTERS = ("slurm", "local", "debug")
DEFAULT_TIMEOUT_MIN = 24 * 60


@dataclass
class LaunchOptions:
    """How to run the jobs (see the module docstring)."""

    launcher: str = "local"
    gpus: list[str] | None = None
    gpus_per_job: int = 1
    keep_going: bool = True
    wait: bool = True
    slurm_partition: str | None = None
    slurm_time: str | None = None
    slurm_account: str | None = None
    slurm_cpus_per_task: int | None = None
    slurm_cluster: str = "slurm"

    def __post_init__(self) -> None:
        if self.launcher not in LAUNCHERS:
            raise SettingsError(f"Unknown launcher {self.launcher!r}; choose one of {', '.join(LAUNCHERS)}.")
        if self.gpus_per_job < 1:
            raise SettingsError("--gpus-per-job must be at least 1.")
        if self.launcher == "local" and self.gpus_per_job > 1:
            raise SettingsError("A local job runs in one process on one GPU; use --launcher torchrun for "
                                f"--gpus-per-job {self.gpus_per_job}.")
        if self.slurm_cluster not in SLURM_CLUSTERS:
            raise SettingsError(f"Unknown submitit cluster {self.slurm_cluster!r}.")
        if self.gpus and len(self.gpus) % self.gpus_per_job:
            raise SettingsError(f"--gpus lists {len(self.gpus)} GPUs, not a multiple of --gpus-per-job "
                                f"{self.gpus_per_job}.")

    @property
    def slots(self) -> list[str | None]:
        """GPU sets jobs run on side by side (None: whatever the process sees, one job at a time)."""
        if not self.gpus:
            return [None]
        size = self.gpus_per_job
        return [",".join(self.gpus[i:i + size]) for i in range(0, len(self.gpus), size)]

    def timeout_min(self) -> int | None:
        """--slurm-time as minutes: 'MM', 'HH:MM[:SS]' or 'D-HH:MM[:SS]' (seconds round up)."""
        if not self.slurm_time:
            return None
        try:
            days, _, clock = self.slurm_time.rpartition("-")
            parts = [int(p) for p in clock.split(":")]
            whole_days = int(days) if days else 0
        except ValueError:
            raise SettingsError(f"--slurm-time {self.slurm_time!r} is not MM, HH:MM:SS or D-HH:MM:SS.") from None
        if len(parts) == 1:
            return whole_days * 1440 + parts[0]
        seconds = parts[2] if len(parts) > 2 else 0
        return whole_days * 1440 + parts[0] * 60 + parts[1] + (1 if seconds else 0)


@dataclass
class LaunchReport:
    """What happened: finished, failed (with log), blocked by a failure, submitted and not waited for."""

    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    blocked: dict[str, str] = field(default_factory=dict)
    submitted: dict[str, str] = field(default_factory=dict)


def job_argv(job: Job, spec: Path, options: LaunchOptions) -> list[str]:
    if job.argv is not None:
        return list(job.argv)
    runner = [sys.executable, "-m", "sempt_cli", "reproduce-job", str(spec)]
    if options.launcher == "torchrun" and job.trains:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={options.gpus_per_job}", *runner[1:]]
    return runner


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """A job must not outlive a killed `reproduce` (Linux; elsewhere it finishes on its own)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _finished(plan: Plan, job: Job) -> bool:
    if job.kind == "attributes":
        write_attributes_marker(plan.book, job)
    return plan.book.done(job.id) is not None


def launch(plan: Plan, options: LaunchOptions, console: Console) -> LaunchReport:
    """Run (or submit) every job of `plan` that is not done; see the module docstring."""
    report = LaunchReport()
    todo = [job for job in plan.todo if plan.states[job.id].state != "queued"]
    for job in plan.todo:
        if plan.states[job.id].state == "queued":
            report.submitted[job.id] = plan.states[job.id].detail
    if options.launcher == "slurm":
        _launch_submitit(plan, todo, options, console, report)
    else:
        _launch_local(plan, todo, options, console, report)
    return report


def _blocked(job: Job, report: LaunchReport, *, queued_ok: bool = False) -> str | None:
    """Why `job` cannot run now: a job it needs failed or was blocked (or, run here, is queued on SLURM)."""
    bad = [n for n in job.needs if n in report.failed or n in report.blocked
           or (n in report.submitted and not queued_ok)]
    return ", ".join(bad) if bad else None


def _launch_local(plan: Plan, todo: Sequence[Job], options: LaunchOptions, console: Console,
                  report: LaunchReport) -> None:
    slots = options.slots
    stop = False
    for wave in ordered_waves(todo):
        runnable = []
        for job in wave:
            reason = _blocked(job, report)
            if reason or stop:
                report.blocked[job.id] = reason or "stopped after a failure (--no-keep-going)"
                continue
            runnable.append(job)
        if len(slots) == 1:
            for job in runnable:
                if stop:
                    report.blocked[job.id] = "stopped after a failure (--no-keep-going)"
                    continue
                stop = not _run_one(plan, job, slots[0], options, console, report, tee=True) and not options.keep_going
            continue
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(slots)) as pool:
            results = list(pool.map(_on_free_slot(plan, options, console, report, slots), runnable))
        stop = stop or (not all(results) and not options.keep_going)


def _on_free_slot(plan: Plan, options: LaunchOptions, console: Console, report: LaunchReport,
                  slots: Sequence[str | None]) -> Callable[[Job], bool]:
    """A worker for the GPU pool: takes a free GPU set, runs the job on it, gives the set back."""
    free: queue.Queue[str | None] = queue.Queue()
    for slot in slots:
        free.put(slot)

    def work(job: Job) -> bool:
        slot = free.get()
        try:
            return _run_one(plan, job, slot, options, console, report, tee=False)
        finally:
            free.put(slot)

    return work


def _run_one(plan: Plan, job: Job, slot: str | None, options: LaunchOptions, console: Console,
             report: LaunchReport, *, tee: bool) -> bool:
    book = plan.book
    spec = book.write_spec(job)
    log = book.log_path(job)
    log.parent.mkdir(parents=True, exist_ok=True)
    argv = job_argv(job, spec, options)
    where = f" on GPU {slot}" if slot is not None else ""
    console.print(f"[bold]▶ {escape(job.title)}[/]{where} · log {escape(str(log))}")
    book.update(job.id, status="running", log=str(log), launcher=options.launcher, slot=slot)
    started = time.time()
    with log.open("a", encoding="utf-8") as handle:
        handle.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n")
        handle.flush()
        process = subprocess.Popen(argv, stdout=subprocess.PIPE if tee else handle, stderr=subprocess.STDOUT,
                                   env=environment(job, slot), text=True, preexec_fn=_die_with_parent)
        if tee:
            assert process.stdout is not None
            for line in process.stdout:
                handle.write(line)
                handle.flush()
                sys.stderr.write(line)
        code = process.wait()
    seconds = time.time() - started
    if code == 0 and _finished(plan, job):
        book.update(job.id, status="done", returncode=0, seconds=round(seconds, 1))
        report.done.append(job.id)
        console.print(f"[green]✔ {escape(job.title)}[/] ({seconds:.0f} s)")
        return True
    book.update(job.id, status="failed", returncode=code, seconds=round(seconds, 1))
    report.failed[job.id] = str(log)
    console.print(f"[red]✘ {escape(job.title)} failed[/] (exit {code}); log: {escape(str(log))}")
    return False


def _launch_submitit(plan: Plan, todo: Sequence[Job], options: LaunchOptions, console: Console,
                     report: LaunchReport) -> None:
    import submitit
    from submitit.helpers import CommandFunction

    book = plan.book
    folder = book.root / "slurm" / "%j"
    cluster = options.slurm_cluster
    executor = submitit.AutoExecutor(folder=folder, cluster=None if cluster == "slurm" else cluster)
    parameters: dict[str, Any] = {"name": f"sempt-{plan.target.name}", "tasks_per_node": 1, "nodes": 1}
    # submitit's own defaults (5 min on SLURM, 2 min locally) would kill any real run: a day unless told otherwise
    parameters["timeout_min"] = options.timeout_min() or DEFAULT_TIMEOUT_MIN
    if cluster == "slurm":
        parameters["gpus_per_node"] = options.gpus_per_job
        if options.slurm_partition:
            parameters["slurm_partition"] = options.slurm_partition
        if options.slurm_account:
            parameters["slurm_account"] = options.slurm_account
        if options.slurm_cpus_per_task:
            parameters["cpus_per_task"] = options.slurm_cpus_per_task
    executor.update_parameters(**parameters)
    runner = LaunchOptions("torchrun" if options.gpus_per_job > 1 else "local", gpus_per_job=options.gpus_per_job)
    previous: list[Any] = []
    recorded = book.read()
    for wave in ordered_waves(todo):
        jobs = []
        for job in wave:
            reason = _blocked(job, report, queued_ok=cluster == "slurm")
            if reason:
                report.blocked[job.id] = reason
                continue
            jobs.append(job)
        if not jobs:
            continue
        if cluster == "slurm":
            queued = [str(recorded[n]["slurm_job"]) for job in jobs for n in job.needs
                      if n in report.submitted and recorded.get(n, {}).get("slurm_job")]
            after = list(dict.fromkeys([str(p.job_id) for p in previous] + queued))
            executor.update_parameters(slurm_additional_parameters=(
                {"dependency": "afterany:" + ":".join(after)} if after else {}))
        submitted = []
        with executor.batch():
            for job in jobs:
                spec = book.write_spec(job)
                command = CommandFunction(job_argv(job, spec, runner), env=environment(job))
                submitted.append((job, executor.submit(command)))
        for job, handle in submitted:
            log = str(handle.paths.stderr)  # where the job's console output and any traceback go
            book.update(job.id, status="submitted", cluster=cluster, slurm_job=str(handle.job_id),
                        folder=str(folder), log=log, launcher="slurm")
            console.print(f"[bold]⇪ {escape(job.title)}[/] submitted as job {handle.job_id} · log {escape(log)}")
        previous = [handle for _, handle in submitted]
        if cluster == "slurm" and not options.wait:
            for job, handle in submitted:
                report.submitted[job.id] = f"SLURM job {handle.job_id}"
            continue
        for job, handle in submitted:
            log = str(handle.paths.stderr)
            try:
                handle.result()
                ok = _finished(plan, job)
            except Exception as exc:  # submitit's words for a failed job; the log has the details
                lines = [line for line in str(exc).splitlines() if line.strip()]
                console.print(f"[dim]{escape(lines[-1] if lines else type(exc).__name__)}[/]")
                ok = False
            if ok:
                book.update(job.id, status="done")
                report.done.append(job.id)
                console.print(f"[green]✔ {escape(job.title)}[/] (job {handle.job_id})")
            else:
                book.update(job.id, status="failed")
                report.failed[job.id] = log
                console.print(f"[red]✘ {escape(job.title)} failed[/] (job {handle.job_id}); log: {escape(log)}")
                if not options.keep_going:
                    for later in todo:
                        if later.id not in report.done and later.id not in report.failed:
                            report.blocked.setdefault(later.id, "stopped after a failure (--no-keep-going)")
                    return
