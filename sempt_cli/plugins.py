"""Discovery of method plug-ins: the built-in ones (every module of `sempt_cli.methods`) and those of other
packages, which register through the `sempt.methods` entry-point group (docs/writing-a-method.md).

Settings, flags, presets and report titles are all built from the method registry, so whatever reads them
calls `load_plugins()` first. Discovery imports by name (`importlib`), as entry points do: the settings layer
never imports the methods layer statically.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from sempt_cli.errors import SettingsError

ENTRY_POINT_GROUP = "sempt.methods"
BUILTIN_METHODS = "sempt_cli.methods"

_loaded = False
_loading = False


def load_plugins() -> None:
    """Import the built-in methods and every `sempt.methods` entry point once (idempotent, re-entrant)."""
    global _loaded, _loading
    if _loaded or _loading:
        return
    _loading = True
    try:
        importlib.import_module(BUILTIN_METHODS)
        for entry in entry_points(group=ENTRY_POINT_GROUP):
            try:
                entry.load()
            except Exception as error:
                raise SettingsError(
                    f"The method plug-in {entry.name!r} ({entry.value}) could not be loaded: {error}."
                ) from error
        _loaded = True
    finally:
        _loading = False
