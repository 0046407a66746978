"""Prompt-learning methods as plug-ins on one engine (see `sempt_cli.protocol` for the contract).

Importing this package imports every module in it, which registers the built-in methods: adding a method is
adding one file here (or, from another package, one `sempt.methods` entry point; docs/writing-a-method.md).
"""

import importlib
import pkgutil

from sempt_cli.methods.sempt import SemPT
from sempt_cli.protocol import (
    Batch,
    LossOutput,
    Method,
    TrainingForward,
    get_method,
    method_names,
    register_method,
    supervised_method_names,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "Batch", "LossOutput", "Method", "SemPT", "TrainingForward", "get_method", "method_names", "register_method",
    "supervised_method_names",
]
