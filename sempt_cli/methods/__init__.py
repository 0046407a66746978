"""Prompt-learning methods as plug-ins on one engine (see `methods.base` for the protocol).

Importing this package registers the built-in methods.
"""

from sempt_cli.methods import promptsrc, zeroshot  # noqa: F401  (registration)
from sempt_cli.methods.base import Batch, LossOutput, Method, get_method, method_names, register_method

__all__ = ["Batch", "LossOutput", "Method", "get_method", "method_names", "register_method"]
