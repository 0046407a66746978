"""The attribute file (`attributes/<dataset>.json`): one pydantic model, exported as `attributes/schema.json`.

An attribute file is the whole output of knowledge construction for one dataset: the classes in label order
(exactly as the data layer produces them), the shared attribute vocabulary A, S descriptions per class with
the attributes each one uses, and how it was made (strategy, generator, prompt-template version, time).
Everything downstream (`embed_attributes`, SemPT training) reads it through `load_attribute_file`, which
validates it, so a hand-edited or truncated file fails with a sentence instead of a shape error later.

The JSON Schema file is generated from the model; a test keeps them equal. Regenerate it with::

    python -c "from sempt_cli.knowledge.schema import write_json_schema; write_json_schema('attributes/schema.json')"
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sempt_cli.data.registry import canonical_dataset_name
from sempt_cli.errors import SemptError, short_quote
from sempt_cli.io import atomic_write_json

SCHEMA_VERSION: Final = 1
Strategy = Literal["two-step", "one-step", "names", "ground-truth"]
GeneratorKind = Literal["llm", "class-names", "ground-truth"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Description(_Strict):
    """One description and the vocabulary attributes it is grounded in (empty for one-step and names)."""

    text: str = Field(min_length=1, description="The description as written (CLIP encodes it after the prompt).")
    attributes: list[str] = Field(default_factory=list, description="Attributes of the vocabulary it uses.")


class ClassDescriptions(_Strict):
    """The descriptions of one class."""

    label: int = Field(ge=0, description="Label index (position in `classnames`).")
    name: str = Field(min_length=1, description="Class name exactly as in `classnames`.")
    descriptions: list[Description] = Field(min_length=1)


class Generator(_Strict):
    """Who wrote the descriptions: an LLM (endpoint, model, sampling), the class names, or the demo ground truth."""

    kind: GeneratorKind
    endpoint: str | None = Field(None, description="OpenAI-compatible base URL the requests went to.")
    model: str | None = None
    temperature: float | None = None
    seed: int | None = None
    response_format: str | None = Field(None, description="json_schema, json_object or text.")
    note: str = Field("", description="Free text, e.g. what ground truth the descriptions come from.")


class AttributeFile(_Strict):
    """Knowledge for one dataset: vocabulary A and S descriptions per class (spec §1)."""

    schema_version: Literal[1] = SCHEMA_VERSION
    dataset: str = Field(min_length=1, description="Dataset key (see `sempt data list`).")
    classnames: list[str] = Field(min_length=1, description="All classes (base and novel) in label order.")
    vocabulary: list[str] = Field(description="Shared attribute vocabulary A (empty for one-step and names).")
    num_descriptions: int = Field(ge=1, description="S, descriptions per class.")
    classes: list[ClassDescriptions] = Field(description="One entry per class, in label order.")
    strategy: Strategy
    generator: Generator
    prompt_version: str | None = Field(None, description="Prompt-template version (null when no LLM was asked).")
    created_at: datetime = Field(description="When the file was written (UTC, ISO 8601).")
    sempt_version: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> AttributeFile:
        if canonical_dataset_name(self.dataset) is None:
            raise ValueError(f"{short_quote(self.dataset)} is not a dataset sempt knows (see `sempt data list`)")
        if len(self.classes) != len(self.classnames):
            raise ValueError(f"{len(self.classes)} class entries for {len(self.classnames)} classnames")
        vocabulary = set(self.vocabulary)
        if len(vocabulary) != len(self.vocabulary):
            raise ValueError("the vocabulary repeats an attribute")
        for label, (entry, name) in enumerate(zip(self.classes, self.classnames, strict=True)):
            if entry.label != label or entry.name != name:
                raise ValueError(
                    f"class entry {label} is ({entry.label}, {entry.name!r}), expected ({label}, {name!r})"
                )
            if len(entry.descriptions) != self.num_descriptions:
                raise ValueError(
                    f"class {name!r} has {len(entry.descriptions)} descriptions, expected {self.num_descriptions}"
                )
            if self.strategy != "names":
                texts = [normalise_text(d.text) for d in entry.descriptions]
                if len(set(texts)) != len(texts):
                    raise ValueError(f"class {name!r} repeats a description")
            for description in entry.descriptions:
                unknown = [a for a in description.attributes if a not in vocabulary]
                if unknown:
                    raise ValueError(f"class {name!r} uses attributes outside the vocabulary: {unknown}")
        return self

    def descriptions(self) -> list[list[str]]:
        """[N][S] description texts in label order."""
        return [[d.text for d in entry.descriptions] for entry in self.classes]

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def normalise_text(text: str) -> str:
    """Comparison form of a description: case, spacing and a final period do not make two different."""
    return " ".join(text.lower().split()).rstrip(".!? ")


def load_attribute_file(path: str | Path) -> AttributeFile:
    """Read and validate an attribute file, or raise one sentence saying what is wrong with it."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SemptError(f"The attribute file {path} does not exist.",
                         "Create it with `sempt gen-attributes --dataset NAME`.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SemptError(f"The attribute file {path} is not valid JSON ({exc}).") from None
    try:
        return AttributeFile.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in error["loc"]) or "the file"
        message = str(error["msg"]).removeprefix("Value error, ")
        # a key or a value error may quote what the file holds, which may be enormous
        where, message = _cut(where, 100), _cut(message, 300)
        raise SemptError(f"The attribute file {path} is invalid at {where}: {message}.") from None


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}…"


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of an attribute file."""
    schema = AttributeFile.model_json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **schema,
    }


def write_json_schema(path: str | Path) -> None:
    atomic_write_json(path, json_schema())
