"""Knowledge construction (spec §1): class names in, a validated attribute file out.

Strategies (paper Table 4b):

* ``two-step`` (default). Step 1, attribute discovery: the LLM sees the dataset's domain and the names of
  *all* classes (seen and unseen) and returns `M_a` (`sempt.num_attributes`) visual attributes. Lists
  longer than `llm.names_per_request` are split into strided groups (every k-th class, so each group spans
  the whole label range), each group proposes `M_a` candidates, and a final request merges and
  de-duplicates them. Step 2: `S` (`sempt.num_descriptions`) descriptions per class, each grounded in a
  different combination of vocabulary attributes, `llm.classes_per_request` classes per request.
* ``one-step``: `S` descriptions per class directly, no vocabulary.
* ``names``: no LLM; every description is the class name, encoded like the class prompt "{ctx} {class}.",
  so `T_atr` repeats `T_lbl` (the no-knowledge ablation).
* ``ground-truth``: demo world only; descriptions from its true attribute values (`demo_attribute_file`).

Every answer is validated (`answers.py`); invalid ones are re-asked up to `llm.reasks` times with the
problems fed back, and only the classes still wrong are asked again. An answer cut off at the output limit
splits its batch in two. Requests run `llm.max_concurrency` at a time. The file is returned only when every
class has passed; `write_attribute_file` writes it atomically. When a conversation gives up, its last answer
is dropped from the request cache, so re-running asks again for exactly the classes that failed while
everything else is replayed for free.

Dry-run estimates (`plan_requests`): input tokens ≈ characters / 4 of the messages plus 4 per message
(OpenAI's rule of thumb for English; real counts differ by model tokenizer, typically within ±20 %);
output tokens ≈ 6 per attribute (+10) for vocabulary requests and, per class, `S` × 30 (two-step:
description plus attribute list) or `S` × 22 (one-step) + 12. Cost = tokens × `llm.input_price` /
`llm.output_price` (USD per 1M tokens; defaults are GPT-4o list prices). Cached requests cost nothing;
re-asks and retries are not predictable and not included, so the estimate is a lower bound.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from sempt_cli import __version__
from sempt_cli.data.records import prompt_name
from sempt_cli.data.registry import DEMO_KEY, all_classnames
from sempt_cli.errors import SemptError, SettingsError
from sempt_cli.io import atomic_write_json
from sempt_cli.knowledge.answers import (
    AnswerError,
    DescriptionsVerdict,
    descriptions_schema,
    validate_descriptions,
    validate_vocabulary,
    vocabulary_schema,
)
from sempt_cli.knowledge.budget import TokenBudget, context_prefix
from sempt_cli.knowledge.llm import ChatAnswer, ChatRequest, EndpointError, LLMClient, Message, RequestCache, Stopped
from sempt_cli.knowledge.prompts import bullet_lines, class_lines, dataset_context, load_templates, render
from sempt_cli.knowledge.schema import AttributeFile, ClassDescriptions, Description, Generator
from sempt_cli.settings import Settings

LLM_STRATEGIES = ("two-step", "one-step")
MAX_NAMED_MISSING = 10
PLACEHOLDER = "<attribute {}>"


class GenerationError(SemptError):
    """The LLM could not be brought to a complete, valid answer; names the classes still missing."""


def check_against_data(dataset: str, classnames: Sequence[str], data_root: Path) -> str | None:
    """Compare with the data layer's class list under `data_root`: raise on disagreement, return a note if the
    dataset is not there (building attributes before downloading images is allowed)."""
    from sempt_cli.data import MissingDataError, load_dataset

    try:
        found = load_dataset(dataset, data_root, check_files=False).classnames
    except MissingDataError as exc:
        return f"{exc.message} Using the class list sempt ships."
    if list(found) == list(classnames):
        return None
    if len(found) != len(classnames):
        detail = f"{len(found)} classes there, {len(classnames)} in the shipped list"
    else:
        label = next(i for i, (a, b) in enumerate(zip(found, classnames, strict=True)) if a != b)
        detail = f"label {label} is {found[label]!r} there and {classnames[label]!r} in the shipped list"
    raise SemptError(f"The class list of {dataset} under {data_root} disagrees with the one sempt ships ({detail}).",
                     "Attributes must follow the data layer's label order; fix the dataset folder.")


def default_output(dataset: str, directory: Path = Path("attributes")) -> Path:
    """`<paths.attributes_dir>/<dataset>.json`: where SemPT looks for a dataset's descriptions."""
    return directory / f"{dataset}.json"


# ----------------------------------------------------------------------------------------------- no-LLM files


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def names_file(dataset: str, classnames: Sequence[str], num_descriptions: int) -> AttributeFile:
    """The `names` ablation: every description is the class name (T_atr then equals T_lbl)."""
    classes = [ClassDescriptions(label=i, name=name,
                                 descriptions=[Description(text=prompt_name(name))] * num_descriptions)
               for i, name in enumerate(classnames)]
    return AttributeFile(
        dataset=dataset, classnames=list(classnames), vocabulary=[], num_descriptions=num_descriptions,
        classes=classes, strategy="names",
        generator=Generator(kind="class-names", note="No LLM: each description is the class name, encoded "
                            "like the class prompt, so T_atr repeats T_lbl (paper Table 4b, 'names')."),
        prompt_version=None, created_at=_now(), sempt_version=__version__,
    )


def demo_attribute_file(num_descriptions: int = 6, seed: int = 0) -> AttributeFile:
    """`attributes/demo.json`: descriptions written from the demo world's true attribute values, no LLM.

    The vocabulary is the world's attribute dimensions; each description lists the dimensions whose true
    value it mentions (vague ones mention none)."""
    from sempt_cli.data.demo import demo_attribute_descriptions, demo_world

    world = demo_world()
    texts = demo_attribute_descriptions(world, num_descriptions, seed)
    vocabulary = list(world.attributes)
    classes = []
    for label, cls in enumerate(world.classes):
        descriptions = [Description(text=text, attributes=_mentioned(text, cls.attributes, vocabulary))
                        for text in texts[cls.name]]
        classes.append(ClassDescriptions(label=label, name=cls.name, descriptions=descriptions))
    return AttributeFile(
        dataset=DEMO_KEY, classnames=[c.name for c in world.classes], vocabulary=vocabulary,
        num_descriptions=num_descriptions, classes=classes, strategy="ground-truth",
        generator=Generator(
            kind="ground-truth",
            seed=seed,
            note="Written from the demo world's ground-truth attribute values by "
            f"sempt_cli.data.demo.demo_attribute_descriptions (seed {seed}); no LLM was asked. The vocabulary is "
            "the world's attribute dimensions.",
        ),
        prompt_version=None, created_at=_now(), sempt_version=__version__,
    )


def _mentioned(text: str, values: dict[str, str], dimensions: Sequence[str]) -> list[str]:
    """The dimensions whose true value a demo description mentions, in vocabulary order."""
    from sempt_cli.data.demo import _BACKGROUND_PHRASE, _PATTERN_NOUN  # the phrasing the descriptions use

    words = set(text.replace(",", " ").split())
    used = []
    for dim in dimensions:
        value = values[dim]
        phrases = [value]
        if dim == "pattern":
            phrases.append(_PATTERN_NOUN[value])
        if dim == "background":
            phrases.extend(_BACKGROUND_PHRASE[value])
        if any((p in words) if " " not in p else (p in text) for p in phrases):
            used.append(dim)
    return used


# ----------------------------------------------------------------------------------------------- LLM runs


@dataclass
class PlannedRequest:
    """One request a run would send, for --dry-run."""

    step: str
    what: str
    request: ChatRequest
    cached: bool
    exact: bool
    input_tokens: int
    output_tokens: int


@dataclass
class Plan:
    requests: list[PlannedRequest] = field(default_factory=list)
    input_price: float = 0.0
    output_price: float = 0.0

    @property
    def to_send(self) -> list[PlannedRequest]:
        return [r for r in self.requests if not r.cached]

    @property
    def input_tokens(self) -> int:
        return sum(r.input_tokens for r in self.to_send)

    @property
    def output_tokens(self) -> int:
        return sum(r.output_tokens for r in self.to_send)

    @property
    def cost(self) -> float:
        return (self.input_tokens * self.input_price + self.output_tokens * self.output_price) / 1e6


def estimate_input_tokens(messages: Sequence[Message]) -> int:
    return sum(math.ceil(len(m["content"]) / 4) + 4 for m in messages)


class KnowledgeBuilder:
    """One LLM run for one dataset: request construction (shared with --dry-run) and execution."""

    def __init__(self, settings: Settings, classnames: Sequence[str], client: LLMClient,
                 console: Console | None = None) -> None:
        llm = settings.llm
        if llm.strategy not in LLM_STRATEGIES:
            raise SettingsError(f"llm.strategy = {llm.strategy!r} asks no LLM; use generate_attributes().")
        self.settings = settings
        self.llm = llm
        self.dataset = settings.data.dataset
        self.classnames = list(classnames)
        self.client = client
        self.console = console or Console(stderr=True)
        self.version = llm.prompt_version
        load_templates(self.version)  # an unknown version fails before anything is sent
        prompts = settings.prompts
        self.budget = TokenBudget(context_prefix(prompts.text_depth, prompts.text_length, prompts.ctx_init))
        self.num_descriptions = settings.sempt.num_descriptions
        self.num_attributes = settings.sempt.num_attributes
        self.context = dataset_context(self.dataset)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ request construction
    def _system(self) -> Message:
        return {"role": "system", "content": render(self.version, "system")}

    def vocabulary_groups(self) -> list[list[int]]:
        """Strided groups of labels, each at most `names_per_request` long and spanning the label range."""
        n = len(self.classnames)
        count = math.ceil(n / self.llm.names_per_request)
        return [list(range(start, n, count)) for start in range(count)]

    def vocabulary_messages(self, group: Sequence[int], index: int, count: int) -> list[Message]:
        if count == 1:
            scope = "The categories are (id and name):"
        else:
            scope = (f"The list is long, so it is shown in {count} groups in separate requests. This is group "
                     f"{index + 1} of {count} ({len(group)} of the {len(self.classnames)} categories, id and name):")
        user = render(self.version, "attributes", **self.context, num_classes=len(self.classnames), scope=scope,
                      class_list=class_lines(group, self.classnames), num_attributes=self.num_attributes)
        return [self._system(), {"role": "user", "content": user}]

    def merge_messages(self, candidates: Sequence[Sequence[str]]) -> list[Message]:
        counts = Counter(a for group in candidates for a in dict.fromkeys(group))
        lines = [f"{a} (proposed for {c} of {len(candidates)} groups)" for a, c in counts.items()]
        user = render(self.version, "attributes_merge", **self.context, num_classes=len(self.classnames),
                      num_groups=len(candidates), candidates=bullet_lines(lines), num_attributes=self.num_attributes)
        return [self._system(), {"role": "user", "content": user}]

    def description_batches(self) -> list[list[int]]:
        size = self.llm.classes_per_request
        return [list(range(i, min(i + size, len(self.classnames)))) for i in range(0, len(self.classnames), size)]

    def description_messages(self, batch: Sequence[int], vocabulary: Sequence[str] | None) -> list[Message]:
        common = {**self.context, "num_descriptions": self.num_descriptions, "max_words": self.budget.max_words(),
                  "class_list": class_lines(batch, self.classnames)}
        if vocabulary is None:
            user = render(self.version, "one_step", **common)
        else:
            user = render(self.version, "descriptions", **common, vocabulary=bullet_lines(list(vocabulary)))
        return [self._system(), {"role": "user", "content": user}]

    def _reask(self, messages: list[Message], answer: ChatAnswer, template: str, **values: Any) -> list[Message]:
        return [*messages, {"role": "assistant", "content": answer.content or ""},
                {"role": "user", "content": render(self.version, template, **values)}]

    # ------------------------------------------------------------------ dry run
    def plan(self) -> Plan:
        """Every request a run would send now, in order, with estimates (see the module docstring)."""
        plan = Plan(input_price=self.llm.input_price, output_price=self.llm.output_price)
        vocabulary: list[str] | None = None
        exact_vocabulary = True
        if self.llm.strategy == "two-step":
            vocab_out = 6 * self.num_attributes + 10
            groups = self.vocabulary_groups()
            candidates: list[list[str]] = []
            for index, group in enumerate(groups):
                request = self.client.build(self.vocabulary_messages(group, index, len(groups)), vocabulary_schema())
                answer = self.client.cached(request)
                found = self._valid_vocabulary(answer)
                candidates.append(found or [PLACEHOLDER.format(i + 1) for i in range(self.num_attributes)])
                exact_vocabulary &= found is not None
                what = "attribute discovery" + (f", group {index + 1}/{len(groups)}" if len(groups) > 1 else "")
                plan.requests.append(self._planned("step 1", what, request, answer, True, vocab_out))
                vocabulary = found
            if len(groups) > 1:
                request = self.client.build(self.merge_messages(candidates), vocabulary_schema())
                answer = self.client.cached(request)
                vocabulary = self._valid_vocabulary(answer)
                plan.requests.append(self._planned("step 1", "merge", request, answer, exact_vocabulary, vocab_out))
                exact_vocabulary &= vocabulary is not None
            if vocabulary is None:
                vocabulary = [PLACEHOLDER.format(i + 1) for i in range(self.num_attributes)]
                exact_vocabulary = False
        per_class = self.num_descriptions * (30 if vocabulary is not None else 22) + 12
        step = "step 2" if vocabulary is not None else "one-step"
        schema = descriptions_schema(vocabulary)
        for batch in self.description_batches():
            request = self.client.build(self.description_messages(batch, vocabulary), schema)
            answer = self.client.cached(request)
            what = f"descriptions, classes {batch[0]}-{batch[-1]}"
            plan.requests.append(self._planned(step, what, request, answer, exact_vocabulary, per_class * len(batch)))
        return plan

    def _planned(self, step: str, what: str, request: ChatRequest, answer: ChatAnswer | None, exact: bool,
                 output_tokens: int) -> PlannedRequest:
        return PlannedRequest(step, what, request, answer is not None, exact,
                              estimate_input_tokens(request.messages), output_tokens)

    def _valid_vocabulary(self, answer: ChatAnswer | None) -> list[str] | None:
        if answer is None or answer.finish_reason == "length":
            return None
        try:
            return validate_vocabulary(answer.content, self.num_attributes)
        except AnswerError:
            return None

    # ------------------------------------------------------------------ execution
    def build(self) -> AttributeFile:
        """Run the strategy; the returned file is complete and valid, or `GenerationError` says what is missing."""
        vocabulary = self.discover_vocabulary() if self.llm.strategy == "two-step" else None
        descriptions = self.describe(vocabulary)
        classes = [ClassDescriptions(label=i, name=name, descriptions=descriptions[i])
                   for i, name in enumerate(self.classnames)]
        return AttributeFile(
            dataset=self.dataset, classnames=self.classnames, vocabulary=list(vocabulary or []),
            num_descriptions=self.num_descriptions, classes=classes, strategy=self.llm.strategy,
            generator=generator_for(self.settings), prompt_version=self.version, created_at=_now(),
            sempt_version=__version__,
        )

    def discover_vocabulary(self) -> list[str]:
        groups = self.vocabulary_groups()
        if len(groups) == 1:
            return self._ask_vocabulary(self.vocabulary_messages(groups[0], 0, 1), "attribute discovery")
        self.console.print(f"Step 1: attribute discovery in {len(groups)} groups of class names, then a merge")
        jobs = [lambda i=i, g=g: self._ask_vocabulary(self.vocabulary_messages(g, i, len(groups)),
                                                      f"attribute discovery, group {i + 1}/{len(groups)}")
                for i, g in enumerate(groups)]
        candidates = self._run_parallel(jobs, lambda _result: 1, len(groups), "step 1 groups")
        return self._ask_vocabulary(self.merge_messages(candidates), "merging the groups' attributes")

    def _ask_vocabulary(self, messages: list[Message], what: str) -> list[str]:
        problem = ""
        request: ChatRequest | None = None
        for _round in range(self.llm.reasks + 1):
            request = self.client.build(messages, vocabulary_schema())
            answer = self.client.complete(request)
            try:
                if answer.finish_reason == "length":
                    raise AnswerError("The answer was cut off at the output limit; keep it short.")
                return validate_vocabulary(answer.content, self.num_attributes)
            except AnswerError as exc:
                problem = str(exc)
            messages = self._reask(messages, answer, "reask_attributes", problems=problem,
                                   num_attributes=self.num_attributes)
        assert request is not None
        self.client.cache.evict(request)  # so that a re-run asks again instead of replaying the failure
        raise GenerationError(
            f"The LLM gave no valid attribute vocabulary ({what}) after {self.llm.reasks} re-asks; the last "
            f"problem: {problem.splitlines()[0]}",
            "Nothing was written. Re-run to ask again (valid answers so far are cached), or raise --reasks.",
        )

    def describe(self, vocabulary: Sequence[str] | None) -> dict[int, list[Description]]:
        """Descriptions for every class, batches in parallel; raises naming the classes that never passed."""
        batches = self.description_batches()
        step = "Step 2" if vocabulary is not None else "One-step"
        self.console.print(f"{step}: {len(self.classnames)} classes in {len(batches)} requests "
                           f"({self.llm.max_concurrency} at a time)")
        jobs = [lambda b=b: self._describe_batch(b, vocabulary) for b in batches]
        results = self._run_parallel(jobs, lambda r: len(r.accepted) + len(r.problems), len(self.classnames),
                                     "classes")
        accepted: dict[int, list[Description]] = {}
        problems: dict[int, list[str]] = {}
        for result in results:
            accepted.update(result.accepted)
            problems.update(result.problems)
        if problems:
            raise self._missing_error(problems, accepted)
        return accepted

    def _describe_batch(self, batch: Sequence[int], vocabulary: Sequence[str] | None) -> DescriptionsVerdict:
        messages = self.description_messages(batch, vocabulary)
        schema = descriptions_schema(vocabulary)
        pending = list(batch)
        result = DescriptionsVerdict()
        request: ChatRequest | None = None
        for _round in range(self.llm.reasks + 1):
            request = self.client.build(messages, schema)
            answer = self.client.complete(request)
            if answer.finish_reason == "length" and len(pending) > 1:
                half = len(pending) // 2
                self.console.print(f"[yellow]An answer for {len(pending)} classes was cut off; asking for "
                                   f"{half} and {len(pending) - half} separately[/]")
                result.problems = {}  # the halves judge the pending classes afresh
                for part in (pending[:half], pending[half:]):
                    sub = self._describe_batch(part, vocabulary)
                    result.accepted.update(sub.accepted)
                    result.problems.update(sub.problems)
                return result
            try:
                if answer.finish_reason == "length":
                    raise AnswerError("The answer was cut off at the output limit; keep the descriptions short.")
                verdict = validate_descriptions(answer.content, pending, self.classnames, self.num_descriptions,
                                                self.budget, vocabulary)
                feedback = verdict.feedback(self.classnames)
            except AnswerError as exc:
                verdict = DescriptionsVerdict(problems={label: [str(exc)] for label in pending})
                feedback = f"- {exc}"
            result.accepted.update(verdict.accepted)
            pending = [label for label in pending if label not in verdict.accepted]
            if not pending:
                result.problems.clear()
                return result
            result.problems = {label: verdict.problems[label] for label in pending}
            messages = self._reask(messages, answer, "reask_descriptions", problems=feedback,
                                   class_list=class_lines(pending, self.classnames),
                                   num_descriptions=self.num_descriptions)
        assert request is not None
        self.client.cache.evict(request)  # so that a re-run asks again instead of replaying the failure
        return result

    def _missing_error(self, problems: dict[int, list[str]], accepted: dict[int, Any]) -> GenerationError:
        named = [f"{self.classnames[label]!r} (id {label}: {msgs[0]})" for label, msgs in sorted(problems.items())]
        more = f" and {len(named) - MAX_NAMED_MISSING} more" if len(named) > MAX_NAMED_MISSING else ""
        return GenerationError(
            f"Gave up on {len(problems)} of {len(self.classnames)} classes after {self.llm.reasks} re-asks: "
            f"{'; '.join(named[:MAX_NAMED_MISSING])}{more}.",
            f"Nothing was written. Re-run to ask again for these classes only: the {len(accepted)} finished "
            "classes are cached and cost nothing. A higher --reasks, another --llm-seed or a stronger --model "
            "may help.",
        )

    def _run_parallel(self, jobs: Sequence[Callable[[], Any]], weight: Callable[[Any], int], total: int,
                      unit: str) -> list[Any]:
        """Run `jobs` `max_concurrency` at a time; results in job order. On a fatal error or Ctrl-C, stop
        sending, let requests in flight finish (so their answers are cached), then re-raise."""
        results: list[Any] = [None] * len(jobs)
        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=self.console, transient=True,
                            disable=not self.console.is_terminal)
        executor = ThreadPoolExecutor(max_workers=self.llm.max_concurrency, thread_name_prefix="sempt-llm")
        futures: dict[Future[Any], int] = {}
        try:
            with progress:
                task = progress.add_task(unit, total=total)
                futures = {executor.submit(job): i for i, job in enumerate(jobs)}
                pending = set(futures)
                while pending:
                    done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    for future in done:
                        error = future.exception()
                        if error is not None:
                            raise error
                        results[futures[future]] = future.result()
                        progress.advance(task, weight(results[futures[future]]))
        except BaseException as exc:
            self.client.stop.set()
            if isinstance(exc, KeyboardInterrupt):
                self.console.print("[yellow]Interrupted: waiting for requests in flight so that their answers "
                                   "are cached[/]")
            executor.shutdown(wait=True, cancel_futures=True)
            if isinstance(exc, Stopped):  # pragma: no cover - only a worker raises it, after another error
                raise EndpointError("The run was stopped.") from None
            if isinstance(exc, EndpointError):
                done_count = sum(1 for f in futures if f.done() and not f.cancelled() and f.exception() is None)
                raise EndpointError(f"{exc.message} {done_count} of the {len(jobs)} requests for {unit} had "
                                    "finished.", exc.hint) from None
            raise
        executor.shutdown(wait=True)
        return results


def generator_for(settings: Settings) -> Generator:
    llm = settings.llm
    return Generator(kind="llm", endpoint=llm.base_url, model=llm.model, temperature=llm.temperature, seed=llm.seed,
                     response_format=llm.response_format)


def make_client(settings: Settings, console: Console | None = None, *, api_key: str | None = None,
                sleep: Callable[[float], None] | None = None) -> LLMClient:
    """The shared client of a run; the request cache lives under `paths.cache_dir/llm-requests`."""
    cache = RequestCache(settings.paths.cache_dir / "llm-requests")
    extra: dict[str, Any] = {} if sleep is None else {"sleep": sleep}
    return LLMClient(settings.llm, cache, api_key=api_key, console=console, **extra)


def generate_attributes(
    settings: Settings,
    *,
    classnames: Sequence[str] | None = None,
    client: LLMClient | None = None,
    console: Console | None = None,
) -> AttributeFile:
    """Build the attribute file of `data.dataset` with `llm.strategy` (library entry point of gen-attributes).

    `classnames` defaults to the shipped list in label order. Nothing is written; see `write_attribute_file`.
    """
    dataset = settings.data.dataset
    names = list(classnames) if classnames is not None else all_classnames(dataset)
    strategy = settings.llm.strategy
    num_descriptions = settings.sempt.num_descriptions
    if strategy == "names":
        return names_file(dataset, names, num_descriptions)
    if strategy == "ground-truth":
        if dataset != DEMO_KEY:
            raise SettingsError(f"llm.strategy = 'ground-truth' exists only for the demo world, not {dataset}; "
                                "real datasets need an LLM (two-step or one-step) or 'names'.")
        return demo_attribute_file(num_descriptions)
    client = client or make_client(settings, console)
    return KnowledgeBuilder(settings, names, client, console).build()


def plan_requests(settings: Settings, *, classnames: Sequence[str] | None = None) -> Plan:
    """What `generate_attributes` would send now (cached requests marked), without sending anything."""
    names = list(classnames) if classnames is not None else all_classnames(settings.data.dataset)
    if settings.llm.strategy not in LLM_STRATEGIES:
        return Plan(input_price=settings.llm.input_price, output_price=settings.llm.output_price)
    client = make_client(settings, api_key="")  # building requests needs no key
    return KnowledgeBuilder(settings, names, client).plan()


def write_attribute_file(attributes: AttributeFile, path: str | Path) -> Path:
    """Validate once more and write atomically: a reader never sees a partial file."""
    AttributeFile.model_validate(attributes.to_json())
    atomic_write_json(path, attributes.to_json())
    return Path(path)


def same_generation(existing: AttributeFile, settings: Settings, classnames: Sequence[str]) -> bool:
    """Would generating again with `settings` reproduce `existing` (up to its creation time)?"""
    strategy = settings.llm.strategy
    if (existing.dataset != settings.data.dataset or existing.classnames != list(classnames)
            or existing.strategy != strategy or existing.num_descriptions != settings.sempt.num_descriptions):
        return False
    if strategy in LLM_STRATEGIES:
        if existing.generator != generator_for(settings) or existing.prompt_version != settings.llm.prompt_version:
            return False
        return strategy != "two-step" or len(existing.vocabulary) == settings.sempt.num_attributes
    return True
