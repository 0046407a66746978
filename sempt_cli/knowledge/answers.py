"""Validation of LLM answers: parse, check every rule of spec §1, and say what is wrong in words.

The problems are fed back to the LLM verbatim when it is re-asked, so they name the class id, the
description and the rule, and they are short. Description answers are judged class by class: the classes
that pass are kept and only the others are asked again.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from sempt_cli.data.records import prompt_name
from sempt_cli.knowledge.budget import TokenBudget
from sempt_cli.knowledge.schema import Description, normalise_text

MAX_ATTRIBUTE_WORDS = 6
"""The prompt asks for at most 4 words; 6 tolerates "colour of the inner petals" and catches sentences."""
MAX_FEEDBACK_LINES = 30


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")  # an LLM adding a field is harmless


class VocabularyAnswer(_Lenient):
    attributes: list[str]


class DescriptionAnswer(_Lenient):
    text: str
    attributes: list[str] = []


class ClassAnswer(_Lenient):
    id: int
    name: str = ""
    descriptions: list[DescriptionAnswer | str]


class DescriptionsAnswer(_Lenient):
    classes: list[ClassAnswer]


class AnswerError(ValueError):
    """The answer as a whole is unusable (not JSON, wrong shape); the message is fed back to the LLM."""


def canonical_attribute(name: str) -> str:
    return " ".join(name.split()).lower()


def _compare_name(name: str) -> str:
    return " ".join(prompt_name(name).lower().split())


_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n?(.*?)\n?```\s*$", re.S)


def parse_json(content: str | None) -> Any:
    """The JSON object in an answer; tolerates a Markdown code fence or text around the object."""
    if not content or not content.strip():
        raise AnswerError("The answer was empty.")
    text = content.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError as first:
        start, end = text.find("{"), text.rfind("}")
        if 0 <= start < end:
            try:
                return json.loads(text[start : end + 1])
            except json.JSONDecodeError:
                pass
        raise AnswerError(f"The answer was not valid JSON ({first.msg} at line {first.lineno} "
                          f"column {first.colno}).") from None


def _shape_error(exc: ValidationError) -> AnswerError:
    lines = []
    for error in exc.errors(include_url=False)[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "the object"
        lines.append(f"{where}: {error['msg']}")
    return AnswerError("The JSON did not have the requested form: " + "; ".join(lines) + ".")


def validate_vocabulary(content: str | None, num_attributes: int) -> list[str]:
    """The M_a attributes (canonical lower-case form) or `AnswerError` listing every problem."""
    try:
        answer = VocabularyAnswer.model_validate(parse_json(content))
    except ValidationError as exc:
        raise _shape_error(exc) from None
    problems: list[str] = []
    attributes = [canonical_attribute(a) for a in answer.attributes]
    if any(not a for a in attributes):
        problems.append("An attribute is empty.")
    if len(attributes) != num_attributes:
        problems.append(f"It lists {len(attributes)} attributes; exactly {num_attributes} are required.")
    seen: set[str] = set()
    for attribute in attributes:
        if attribute in seen:
            problems.append(f'"{attribute}" is listed twice.')
        seen.add(attribute)
        if len(attribute.split()) > MAX_ATTRIBUTE_WORDS:
            problems.append(f'"{attribute}" is not a short noun phrase (at most 4 words).')
    if problems:
        raise AnswerError("\n".join(problems))
    return attributes


@dataclass
class DescriptionsVerdict:
    """What an answer settled: accepted classes (label -> descriptions) and problems of the others."""

    accepted: dict[int, list[Description]] = field(default_factory=dict)
    problems: dict[int, list[str]] = field(default_factory=dict)

    def feedback(self, classnames: Sequence[str]) -> str:
        lines = [f'- id {label} ("{prompt_name(classnames[label])}"): {problem}'
                 for label, problems in sorted(self.problems.items()) for problem in problems]
        if len(lines) > MAX_FEEDBACK_LINES:
            lines = [*lines[:MAX_FEEDBACK_LINES], f"- ... and {len(lines) - MAX_FEEDBACK_LINES} more problems."]
        return "\n".join(lines)


def validate_descriptions(
    content: str | None,
    pending: Sequence[int],
    classnames: Sequence[str],
    num_descriptions: int,
    budget: TokenBudget,
    vocabulary: Sequence[str] | None,
) -> DescriptionsVerdict:
    """Judge every requested class; `vocabulary=None` is one-step (no attributes required).

    Raises `AnswerError` only when nothing in the answer can be judged (not JSON, wrong shape)."""
    try:
        answer = DescriptionsAnswer.model_validate(parse_json(content))
    except ValidationError as exc:
        raise _shape_error(exc) from None
    verdict = DescriptionsVerdict()
    by_id: dict[int, list[ClassAnswer]] = {}
    for entry in answer.classes:
        by_id.setdefault(entry.id, []).append(entry)
    for label in pending:
        entries = by_id.get(label, [])
        if not entries:
            verdict.problems[label] = ["The answer has no entry for this id."]
            continue
        if len(entries) > 1:
            verdict.problems[label] = ["The answer has more than one entry for this id; give exactly one."]
            continue
        problems, descriptions = _judge_class(entries[0], classnames[label], num_descriptions, budget, vocabulary)
        if problems:
            verdict.problems[label] = problems
        else:
            verdict.accepted[label] = descriptions
    return verdict


def _judge_class(
    entry: ClassAnswer,
    classname: str,
    num_descriptions: int,
    budget: TokenBudget,
    vocabulary: Sequence[str] | None,
) -> tuple[list[str], list[Description]]:
    problems: list[str] = []
    if entry.name and _compare_name(entry.name) != _compare_name(classname):
        problems.append(f'The entry is named "{entry.name}", but this id is "{prompt_name(classname)}".')
    known = {canonical_attribute(a): a for a in vocabulary} if vocabulary is not None else {}
    descriptions: list[Description] = []
    seen_texts: set[str] = set()
    seen_combinations: dict[frozenset[str], str] = {}
    for item in entry.descriptions:
        raw = item if isinstance(item, str) else item.text
        text = " ".join(raw.split())
        attributes = [] if isinstance(item, str) else item.attributes
        if not text:
            problems.append("A description is empty.")
            continue
        key = normalise_text(text)
        if key in seen_texts:
            problems.append(f'"{text}" is given twice; every description must be different.')
        seen_texts.add(key)
        too_long = budget.problem(text)
        if too_long:
            problems.append(f'"{text}" {too_long}.')
        used: list[str] = []
        if vocabulary is not None:
            for attribute in attributes:
                canonical = known.get(canonical_attribute(attribute))
                if canonical is None:
                    problems.append(f'"{text}" uses "{attribute}", which is not in the vocabulary.')
                elif canonical not in used:
                    used.append(canonical)
            if not attributes:
                problems.append(f'"{text}" lists no attributes; name the 1 to 3 vocabulary attributes it uses.')
            combination = frozenset(used)
            if used and combination in seen_combinations:
                problems.append(f'"{text}" uses the same attribute combination as "{seen_combinations[combination]}".')
            seen_combinations.setdefault(combination, text)
        descriptions.append(Description(text=text, attributes=used))
    if len(entry.descriptions) != num_descriptions:
        problems.insert(0, f"It has {len(entry.descriptions)} descriptions; exactly {num_descriptions} are required.")
    return problems, descriptions


def vocabulary_schema() -> dict[str, Any]:
    """`response_format` for attribute discovery (OpenAI structured outputs, strict)."""
    schema = {
        "type": "object",
        "properties": {"attributes": {"type": "array", "items": {"type": "string"}}},
        "required": ["attributes"],
        "additionalProperties": False,
    }
    return {"type": "json_schema", "json_schema": {"name": "attribute_vocabulary", "strict": True, "schema": schema}}


def descriptions_schema(vocabulary: Sequence[str] | None) -> dict[str, Any]:
    """`response_format` for descriptions; with a vocabulary, attributes are constrained to it (enum)."""
    if vocabulary is None:
        item: dict[str, Any] = {"type": "string"}
        name = "class_descriptions"
    else:
        item = {
            "type": "object",
            "properties": {
                "text": {"type": "string"},
                "attributes": {"type": "array", "items": {"type": "string", "enum": list(vocabulary)}},
            },
            "required": ["text", "attributes"],
            "additionalProperties": False,
        }
        name = "attribute_descriptions"
    entry = {
        "type": "object",
        "properties": {"id": {"type": "integer"}, "name": {"type": "string"},
                       "descriptions": {"type": "array", "items": item}},
        "required": ["id", "name", "descriptions"],
        "additionalProperties": False,
    }
    schema = {
        "type": "object",
        "properties": {"classes": {"type": "array", "items": entry}},
        "required": ["classes"],
        "additionalProperties": False,
    }
    return {"type": "json_schema", "json_schema": {"name": name, "strict": True, "schema": schema}}
