"""Prompt-learning methods as plug-ins on one engine (see `methods.base` for the protocol).

Importing this package registers the built-in methods.
"""

from sempt_cli.methods import dpt, mmrl, promptkd, promptsrc, restore, zeroshot  # noqa: F401  (registration)
from sempt_cli.methods.base import (
    Batch,
    LossOutput,
    Method,
    TrainingForward,
    get_method,
    method_names,
    register_method,
    supervised_method_names,
)
from sempt_cli.methods.sempt import SemPT

__all__ = [
    "Batch", "LossOutput", "Method", "SemPT", "TrainingForward", "get_method", "method_names", "register_method",
    "supervised_method_names",
]
