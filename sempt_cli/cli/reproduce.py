"""`sempt reproduce TARGET`: a paper table or figure as one resumable job, on one GPU, several, or SLURM."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sempt_cli.cli.options import METHOD_SECTIONS, overrides_from_options, parse_list, settings_options
from sempt_cli.errors import SemptError

STATE_STYLES = {"done": "green", "trained": "cyan", "partial": "yellow", "failed": "red", "queued": "magenta",
                "waiting": "dim", "todo": ""}


@settings_options("paths", "model", "train", "prompts", METHOD_SECTIONS, "sempt",
                  "eval.results_dir", "eval.reuse", "eval.round_per_seed", "data.shots", "data.batch_size",
                  "data.eval_batch_size", "data.workers", "data.allow_any_shots", "data.on_corrupt")
def reproduce(
    options: dict[str, Any],
    target: Annotated[str | None, typer.Argument(help="sempt-table1, sempt-fig4, promptkd-table1, ... (--list).",
                                                 show_default=False)] = None,
    list_targets: Annotated[bool, typer.Option("--list", help="Show every target and its size in runs.")] = False,
    status: Annotated[bool, typer.Option("--status", help="Show where every job of the target stands.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and what is missing.")] = False,
    datasets: Annotated[str | None, typer.Option("--datasets", help="Comma-separated slice of the target's datasets.",
                                                 show_default=False)] = None,
    seeds: Annotated[str | None, typer.Option("--seeds", help="Comma-separated seeds (default: the paper's 1,2,3).",
                                              show_default=False)] = None,
    methods: Annotated[str | None, typer.Option(
        "--methods", help="Comma-separated rows: teacher, promptkd, promptkd-sempt, mmrl, mmrl-sempt, ...",
        show_default=False)] = None,
    launcher: Annotated[str, typer.Option("--launcher", help="local, torchrun or slurm.")] = "local",
    gpus: Annotated[str | None, typer.Option("--gpus", help="GPUs to run independent jobs on side by side, e.g. "
                                             "0,1,2,3 (one job per GPU, or per --gpus-per-job GPUs).",
                                             show_default=False)] = None,
    gpus_per_job: Annotated[int, typer.Option("--gpus-per-job", help="GPUs per job (torchrun, slurm).")] = 1,
    keep_going: Annotated[bool, typer.Option("--keep-going/--no-keep-going",
                                             help="Go on with independent jobs after a failure.")] = True,
    wait: Annotated[bool, typer.Option("--wait/--no-wait",
                                       help="slurm: wait for the jobs and print the table (else submit and return).")
                    ] = True,
    slurm_partition: Annotated[str | None, typer.Option("--slurm-partition", show_default=False)] = None,
    slurm_time: Annotated[str | None, typer.Option("--slurm-time", help="Per-job limit, HH:MM:SS (default 24:00:00).",
                                                   show_default=False)] = None,
    slurm_account: Annotated[str | None, typer.Option("--slurm-account", show_default=False)] = None,
    slurm_cpus: Annotated[int | None, typer.Option("--slurm-cpus-per-task", show_default=False)] = None,
    slurm_cluster: Annotated[str, typer.Option("--slurm-cluster", hidden=True,
                                               help="submitit executor: slurm, or local/debug for tests.")] = "slurm",
) -> None:
    """Reproduce a paper table or figure: plan every run it needs, run what is missing, print it beside the paper.

    Each job is exactly what the single commands run (train-teacher, distill, eval, gen-attributes): same run
    folders, caches and records, so finished work is reused and an interrupted reproduce continues. Setting flags
    (e.g. --epochs, --shots, --data-root) apply to every run. Inputs that cannot be made here are listed up front,
    and nothing starts until they exist."""
    from sempt_cli.pipeline.launchers import LaunchOptions, launch
    from sempt_cli.pipeline.reproduce import TARGETS, missing_message, plan_target, summarize

    out, err = Console(), Console(stderr=True)
    if list_targets:
        table = Table(title="sempt reproduce targets", title_justify="left")
        for column in ("target", "what", "datasets", "rows", "seeds", "runs"):
            table.add_column(column, justify="right" if column == "runs" else "left", no_wrap=column == "target")
        for t in TARGETS.values():
            table.add_row(t.name, t.title, str(len(t.datasets)), ", ".join(t.methods),
                          ",".join(map(str, t.seeds)), str(t.size))
        out.print(table)
        return
    if target is None:
        raise SemptError("Name a target (sempt reproduce --list shows them).")
    config = options.get("opt__config")
    overrides = overrides_from_options(options)
    launch_options = LaunchOptions(
        launcher, parse_list(gpus, "--gpus", str), gpus_per_job, keep_going, wait, slurm_partition, slurm_time,
        slurm_account, slurm_cpus, slurm_cluster)
    plan = plan_target(target, overrides, datasets=parse_list(datasets, "--datasets", str),
                       seeds=parse_list(seeds, "--seeds", int), methods=parse_list(methods, "--methods", str),
                       config_file=config)
    _print_plan(plan, out)
    if status:
        return
    if plan.missing:
        raise SemptError(missing_message(plan))
    if dry_run:
        out.print(f"Dry run: {len(plan.todo)} of {len(plan.jobs)} job(s) would run; nothing was started.")
        return
    report = launch(plan, launch_options, err)
    done = plan_target(target, overrides, datasets=plan.datasets, seeds=plan.seeds, methods=plan.methods,
                       config_file=config)
    _print_summary(summarize(done), out, err)
    for job_id, log in report.failed.items():
        err.print(f"[red]failed[/] {escape(job_id)} · log {escape(log)}")
    for job_id, reason in report.blocked.items():
        err.print(f"[yellow]not run[/] {escape(job_id)} · needs {escape(reason)}")
    if report.submitted:
        err.print(f"{len(report.submitted)} job(s) queued on SLURM; `sempt reproduce {target} --status` shows them, "
                  "and running this command again when they are done prints the table.")
    if report.failed or report.blocked:
        raise typer.Exit(1)


def _print_plan(plan: Any, out: Console) -> None:
    table = Table(title=f"{plan.target.title} — {len(plan.jobs)} job(s), {len(plan.todo)} to run",
                  title_justify="left")
    for column in ("job", "status", "detail"):
        table.add_column(column)
    for job in plan.jobs:
        state = plan.states[job.id]
        style = STATE_STYLES.get(state.state, "")
        table.add_row(escape(job.title), f"[{style}]{state.state}[/]" if style else state.state,
                      escape(state.detail))
    out.print(table)
    for note in plan.notes:
        out.print(f"[dim]{escape(note)}[/]")
    if plan.missing:
        out.print(f"[red]Missing ({len(plan.missing)}):[/]")
        for item in plan.missing:
            out.print(f"  - {escape(item)}")
    out.print(f"State, specs and logs: {escape(str(plan.book.root))}")


def _print_summary(summary: Any, out: Console, err: Console) -> None:
    from sempt_cli.report.ablation import ablation_view
    from sempt_cli.report.tables import rich_table, rich_tables

    for table in rich_tables(summary.comparisons):
        out.print(table)
        out.print()
    for result in summary.ablations:
        out.print(rich_table(ablation_view(result)))
        out.print()
    for warning in summary.warnings:
        err.print(f"[yellow]Warning:[/] {escape(warning)}")


def reproduce_job(spec: Annotated[Path, typer.Argument(help="A job spec written by `sempt reproduce`.")]) -> None:
    """Run one job of `sempt reproduce` (what its launchers start; not meant to be typed)."""
    from sempt_cli.pipeline.reproduce import run_job

    run_job(spec)
