"""Image loading for training and evaluation, with an explicit policy for unreadable files.

Why a policy: one truncated JPEG in 1.28M images should not kill a run hours in, yet silently training on a
different data set than the paper's is worse. The default (`on_corrupt="error"`) fails with the path.

Recommended way to skip bad images: run `scan_images` on the sample lists *before* training and drop what
it reports with `drop_unreadable`. That decision is made once, in the main process, is reproducible, and can
be logged. `ImageDataset(on_corrupt="skip")` is only a last-resort safety net: it substitutes the next
readable sample (deterministic for a given index), but DataLoader workers are separate processes, so the
`skipped` record of the dataset object in the main process does not see what workers skipped, and batches
then contain a duplicate image.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from PIL import Image
from torch.utils.data import Dataset, get_worker_info

from sempt_cli.data.records import Sample
from sempt_cli.errors import DatasetError

if TYPE_CHECKING:
    import torch

__all__ = ["ImageDataset", "OnCorrupt", "WorkerDatasetError", "drop_unreadable", "load_image", "scan_images"]

OnCorrupt = Literal["error", "skip"]

_PACKED = re.compile(r"<<sempt-error (.*?) sempt-error>>")


class WorkerDatasetError(DatasetError):
    """A `DatasetError` raised in a DataLoader worker process, arriving in the main process as one sentence.

    Why: torch re-raises a worker's exception as `type(error)(worker traceback text)`, which would print as
    "Caught DatasetError in DataLoader worker process 1" and a traceback. In a worker this error's text is its
    sentence and hint packed between markers; the constructor finds them in torch's text again, so any number
    of workers gives the sentence that `workers = 0` gives.
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        found = _PACKED.search(message)
        if found is not None:
            message, hint = json.loads(found.group(1))
        super().__init__(message, hint)

    def __str__(self) -> str:
        if get_worker_info() is None:
            return super().__str__()
        return f"<<sempt-error {json.dumps([self.message, self.hint])} sempt-error>>"


def load_image(path: Path) -> Image.Image:
    """Open an image with PIL and convert it to RGB (as Dassl's `read_image` does)."""
    with Image.open(path) as image:
        return image.convert("RGB")


def _problem(path: Path) -> str | None:
    """Why `path` cannot be used as an image, or None if it decodes."""
    try:
        load_image(path)
    except FileNotFoundError:
        return "file does not exist"
    except Exception as exc:  # any decoder failure means the file is unusable
        return f"{type(exc).__name__}: {exc}"
    return None


def scan_images(
    samples: Iterable[Sample], num_threads: int = 4, progress: Callable[[int], None] | None = None
) -> list[tuple[Path, str]]:
    """Fully decode every distinct image path; return (path, reason) for each that fails, in input order.

    Decoding releases the GIL, so a few threads help. `progress` is called with the number of images
    checked so far, for a progress bar.
    """
    paths = list(dict.fromkeys(sample.path for sample in samples))
    bad: list[tuple[Path, str]] = []
    with ThreadPoolExecutor(max_workers=max(1, num_threads)) as pool:
        for done, (path, reason) in enumerate(zip(paths, pool.map(_problem, paths), strict=True), start=1):
            if reason is not None:
                bad.append((path, reason))
            if progress is not None:
                progress(done)
    return bad


def drop_unreadable(samples: Sequence[Sample], bad: Iterable[tuple[Path, str]] | Iterable[Path]) -> list[Sample]:
    """`samples` without the paths `scan_images` reported (accepts its output or plain paths)."""
    excluded = {item[0] if isinstance(item, tuple) else item for item in bad}
    return [sample for sample in samples if sample.path not in excluded]


class ImageDataset(Dataset):
    """A map-style dataset of `Sample`s yielding `(image_tensor, label, index)`.

    `index` is the position of the sample actually returned: equal to the requested index unless a
    corrupt image was skipped. With `on_corrupt="skip"` an unreadable image is replaced by the next
    readable sample (wrapping around) and recorded in `skipped` (path -> reason, this process only; see
    the module docstring for why `scan_images` is the recommended mechanism).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: Callable[[Image.Image], Any] | None = None,
        on_corrupt: OnCorrupt = "error",
    ) -> None:
        if on_corrupt not in ("error", "skip"):
            raise ValueError(f"on_corrupt must be 'error' or 'skip', got {on_corrupt!r}")
        self.samples = list(samples)
        self.transform = transform
        self.on_corrupt = on_corrupt
        self.skipped: dict[Path, str] = {}

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | Any, int, int]:
        try:
            return self._item(index)
        except WorkerDatasetError:
            raise
        except DatasetError as exc:
            if get_worker_info() is None:
                raise
            raise WorkerDatasetError(exc.message, exc.hint) from None

    def _item(self, index: int) -> tuple[torch.Tensor | Any, int, int]:
        n = len(self.samples)
        if not -n <= index < n:
            raise IndexError(index)
        index %= n
        attempts = n if self.on_corrupt == "skip" else 1
        for offset in range(attempts):
            position = (index + offset) % n
            sample = self.samples[position]
            try:
                image = load_image(sample.path)
            except Exception as exc:
                reason = "file does not exist" if isinstance(exc, FileNotFoundError) else f"{type(exc).__name__}: {exc}"
                if self.on_corrupt == "error":
                    raise DatasetError(
                        f"Image {sample.path} cannot be read ({reason}).",
                        hint="Run `sempt data check --deep` to find every unreadable image, or skip them with "
                        "on_corrupt='skip'.",
                    ) from exc
                self.skipped[sample.path] = reason
                continue
            data = self.transform(image) if self.transform is not None else image
            return data, sample.label, position
        raise DatasetError(f"None of the {n} images of this dataset can be read (first: {self.samples[index].path}).")
