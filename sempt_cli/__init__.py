"""sempt: Semantic Prompt Tuning (SemPT) and the CLIP prompt learners it builds on, as a library and a CLI.

The CLI (`sempt ...`) is a thin layer over this package; everything it does is importable:

>>> from sempt_cli.settings import load_settings
>>> from sempt_cli.data import load_dataset
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sempt")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"

__all__ = ["__version__"]
