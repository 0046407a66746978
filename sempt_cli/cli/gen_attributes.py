"""`sempt gen-attributes`: build `attributes/<dataset>.json` (vocabulary + descriptions) with an LLM."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sempt_cli.cli.options import resolve_from_options, settings_options
from sempt_cli.errors import SemptError


@settings_options("paths", "data", "sempt", "prompts", "llm")
def gen_attributes(
    options: dict[str, Any],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Where to write the file (default: <attributes-dir>/<dataset>.json).",
                     show_default=False),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the exact requests with a token and cost estimate; send nothing.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file made differently.")] = False,
) -> None:
    """Build attributes/<dataset>.json with an LLM (two-step, one-step or names).

    Ask an LLM (any OpenAI-compatible endpoint) for a shared attribute vocabulary and S attribute-grounded
    descriptions per class, validate every answer, and write the attribute file atomically.

    Works from the class lists sempt ships (no images needed); with --data-root it also checks them against
    the dataset on disk. Answers are cached by exact request: re-running, or resuming an interrupted run, never
    pays twice. The API key comes from $OPENAI_API_KEY (or llm.api_key) and is never written anywhere.
    Strategies: two-step (default), one-step, names (no LLM), ground-truth (demo world only, no LLM)."""
    from sempt_cli.data import DEMO_KEY
    from sempt_cli.knowledge import (
        all_classnames,
        check_against_data,
        default_output,
        generate_attributes,
        load_attribute_file,
        make_client,
        plan_requests,
        same_generation,
        write_attribute_file,
    )
    from sempt_cli.knowledge.llm import resolve_api_key

    resolved = resolve_from_options(options)
    settings = resolved.settings
    dataset, strategy = settings.data.dataset, settings.llm.strategy
    err, out = Console(stderr=True, highlight=False, soft_wrap=True), Console(highlight=False, soft_wrap=True)
    classnames = all_classnames(dataset)
    if dataset != DEMO_KEY and resolved.sources["paths.data_root"] != "default":
        err.print(f"Checking the class list against {dataset} under {escape(str(settings.paths.data_root))} ...")
        note = check_against_data(dataset, classnames, settings.paths.data_root)
        err.print(f"[dim]{escape(note)}[/]" if note else
                  f"Class list agrees with {dataset} under {escape(str(settings.paths.data_root))}.")
    target = output or default_output(dataset, settings.paths.attributes_dir)

    if dry_run:
        _print_plan(plan_requests(settings, classnames=classnames), strategy, out)
        return

    if target.exists() and not force:
        try:
            existing = load_attribute_file(target)
        except SemptError:
            existing = None
        if existing is not None and same_generation(existing, settings, classnames):
            out.print(f"{escape(str(target))} is up to date ({strategy}, {len(classnames)} classes); nothing to do.")
            return
        raise SemptError(f"{target} exists and was made differently (or is invalid).",
                         "Pass --force to replace it, or --output another path.")

    client = make_client(settings, err) if strategy in ("two-step", "one-step") else None
    if client is not None:
        resolve_api_key(settings.llm)  # fail before anything is printed or sent
        err.print(f"gen-attributes {dataset} · {strategy} · {escape(settings.llm.model)} at "
                  f"{escape(settings.llm.base_url)} · "
                  f"S={settings.sempt.num_descriptions}"
                  + (f", M_a={settings.sempt.num_attributes}" if strategy == "two-step" else ""))
    attributes = generate_attributes(settings, classnames=classnames, client=client, console=err)
    write_attribute_file(attributes, target)
    summary = (f"Wrote {escape(str(target))}: {len(attributes.classnames)} classes × "
               f"{attributes.num_descriptions} descriptions"
               + (f", {len(attributes.vocabulary)} attributes" if attributes.vocabulary else "")
               + f" ({strategy}).")
    out.print(summary)
    if client is not None:
        usage = client.usage
        out.print(f"Requests: {usage.sent} sent ({usage.retries} retries), {usage.cached} answered from the cache; "
                  f"tokens billed: {usage.prompt_tokens} in, {usage.completion_tokens} out.")


def _print_plan(plan: Any, strategy: str, out: Console) -> None:
    """Every request as sent (JSON body after the endpoint line), then the estimate and its basis."""
    if not plan.requests:
        out.print(f"Strategy {strategy!r} asks no LLM: nothing would be sent.")
        return
    total = len(plan.requests)
    for index, item in enumerate(plan.requests, start=1):
        flags = ["cached: replayed for free" if item.cached else "to send"]
        if not item.exact:
            flags.append("vocabulary is a placeholder until step 1 is answered")
        typer.echo(f"### request {index}/{total} · {item.step} · {item.what} · {'; '.join(flags)} · "
                   f"~{item.input_tokens} input + ~{item.output_tokens} output tokens")
        typer.echo(f"POST {item.request.endpoint}/chat/completions")
        typer.echo(json.dumps(item.request.body, indent=2, ensure_ascii=False))
    table = Table(title="gen-attributes --dry-run estimate", show_header=True)
    for column in ("requests", "cached", "to send", "input tokens", "output tokens", "cost (USD)"):
        table.add_column(column, justify="right")
    table.add_row(str(total), str(total - len(plan.to_send)), str(len(plan.to_send)), f"~{plan.input_tokens:,}",
                  f"~{plan.output_tokens:,}", f"~{plan.cost:.4f}")
    out.print(table)
    out.print(
        "Basis: input ≈ characters/4 + 4 per message; output ≈ 6 tokens per attribute, 30 (two-step) or 22 "
        "(one-step) per description; prices --input-price/--output-price USD per 1M tokens "
        f"({plan.input_price:g}/{plan.output_price:g}). Re-asks and retries are not included (a lower bound). "
        "Nothing was sent."
    )
