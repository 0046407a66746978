"""User-facing errors.

Every failure a user can cause or fix (a bad setting, a missing file, missing weights) is raised as a
`SemptError` carrying one plain sentence plus an optional hint. The CLI prints these without a traceback;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class SemptError(Exception):
    """An error whose message is meant for the user, not the developer."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if self.hint is None else f"{self.message} {self.hint}"


def short_quote(text: str, limit: int = 60) -> str:
    """`text` quoted for a message, cut to its first `limit` characters: a message must stay one sentence even
    when a file holds a megabyte where a phrase belongs."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}… ({len(text):,} characters)"


class SettingsError(SemptError):
    """A setting has a value the tool refuses."""


class DatasetError(SemptError):
    """A dataset is missing, malformed, or has an unreadable file."""


class WeightsError(SemptError):
    """Model weights or a checkpoint cannot be found or loaded."""
