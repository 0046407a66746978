"""The run record: what a learned checkpoint's sidecar says about the run that produced it, typed.

Written by every job that saves a model (train-teacher, distill, the interop imports) and read wherever a model
is rebuilt, evaluated or distilled from, always through `RunRecord`: a misspelt or missing field is a validation
error at the file, not a KeyError deep in a command. Sidecars written before the record was typed (version 1:
a free-form dict with `seen_classnames` beside `train_classnames`, students without `train_classnames`) are
migrated on read; nothing is rewritten on disk.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sempt_cli.errors import WeightsError

RECORD_VERSION = 2


class RunRecord(BaseModel):
    """One trained (or imported) model: method, backbone, data, the classes it learned, and its settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    record_version: int = RECORD_VERSION
    kind: Literal["teacher", "student"] = Field(
        description="teacher: learned from labels (PromptSRC, MMRL, ...); student: distilled from a teacher."
    )
    method: str
    backbone: str
    pretrained: str | None = None
    backbone_identity: str | None = None
    dataset: str
    setting: str
    classnames: list[str] = Field(description="The dataset's full class list, base classes first.")
    num_base: int
    train_classnames: list[str] = Field(
        description="The class list the method was built with: its labelled training classes (a teacher's seen "
        "classes) or, for a student, every class it distils on."
    )
    settings: dict[str, Any] = Field(description="Every setting of the run, as JSON.")
    sempt_version: str
    variant: str = Field("", description="'w/ SemPT' when SemPT wraps the method.")
    sempt: dict[str, Any] | None = Field(None, description="What SemPT was built from (attribute file, hash, ...).")
    teacher_checkpoint: str | None = None
    teacher_sha256: str | None = None
    imported_from: dict[str, Any] | None = Field(None, description="Provenance of an imported official checkpoint.")

    @property
    def seen_classnames(self) -> list[str]:
        """The classes a supervised run was trained on with labels: SemPT scores them with T_lbl."""
        return self.train_classnames

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], source: str) -> RunRecord:
        """Validate a sidecar's metadata, migrating version-1 sidecars; one sentence naming `source` if it is bad."""
        values = dict(metadata)
        if "record_version" not in values:  # version 1
            values["record_version"] = RECORD_VERSION
            values.pop("seen_classnames", None)
            values.setdefault("train_classnames", values.get("classnames"))
            values.setdefault("sempt_version", "unknown")
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            where = ".".join(str(part) for part in error["loc"]) or "metadata"
            raise WeightsError(
                f"The sidecar of {source} is not a valid sempt run record: {where}: {error['msg']}."
            ) from None

    def to_metadata(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
