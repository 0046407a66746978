"""Candidates for the `calibrated` inference rule, measured on trained SemPT models (issue #18).

    python bench/calibration_candidates.py RUN/model.safetensors [RUN2/model.safetensors ...] \
        [--cache-dir DIR] [--teacher-reference]

For every SemPT checkpoint (a PromptKD w/ SemPT student, or a supervised baseline w/ SemPT such as MMRL) this
scores the model's T_lbl and T_enh logits for all classes on its own training images (labels never read) and
on the test split once, then applies each candidate map to the unseen classes' T_enh logits and prints the
all-classes accuracy (base and novel are unchanged by every affine map: they never mix the groups). Candidates:

  moment       the kept rule (`methods.sempt.fit_calibration`): scale and bias that give the unseen classes' T_enh
               logits the mean and std of the same model's T_lbl logits for the same classes and images
  lstsq        least-squares regression of those T_lbl logits on the T_enh logits
  top-moment   moment matching of the per-image top logit over the unseen classes instead of all pairs
  shift        bias only (scale 1), matching the means
  seen-group   moments of the unseen T_enh logits matched to the *seen* classes' T_lbl logits
  anchor       per test image: the unseen T_enh logits standardised, then given the mean and std of that
               image's T_lbl logits for the same classes (nothing fitted)
  standardise  per test image and group: each group's logits z-scored on their own (nothing fitted)
  teacher-*    (--teacher-reference, PromptKD only) moment / lstsq against the teacher's logits for the
               unseen classes on the same training images

Label, enhanced and hybrid (today's rules) are printed beside them. One seed's candidates print in a few
seconds once the logits are scored (about a minute per model on 2 CPU cores for the demo world).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from torch import Tensor

from sempt_cli.data import load_dataset
from sempt_cli.data.transforms import clip_test_transform
from sempt_cli.engine.runtime import resolve_runtime
from sempt_cli.methods.sempt import SemPT, fit_calibration
from sempt_cli.models.checkpoint import load_learned
from sempt_cli.pipeline.data import prepare_data
from sempt_cli.pipeline.evaluation import _data_root, _Model, _Student, _Teacher
from sempt_cli.pipeline.runs import image_size, run_settings
from sempt_cli.settings import load_settings


@torch.no_grad()
def _logits(method: SemPT, samples: list, transform: Callable, classnames: list[str]) -> tuple[Tensor, Tensor, Tensor]:
    from PIL import Image

    lbl, enh, labels = [], [], []
    labels_all = method.class_embeddings(classnames)
    attributes = method._attributes_for(classnames)
    for start in range(0, len(samples), 100):
        chunk = samples[start : start + 100]
        images = torch.stack([transform(Image.open(s.path).convert("RGB")) for s in chunk])
        features = method.image_embeddings(images)
        lbl.append(method.base.classifier(classnames)(features).double())
        enh.append(method.enhanced_logits(method.matching_embeddings(features), labels_all, attributes).double())
        labels += [s.label for s in chunk]
    return torch.cat(lbl), torch.cat(enh), torch.tensor(labels)


@torch.no_grad()
def _teacher_logits(student: Path, settings, samples: list, transform: Callable, classnames: list[str]) -> Tensor:
    from PIL import Image

    record = load_learned(student).record
    teacher = _Teacher(load_learned(Path(str(record.teacher_checkpoint))), settings)
    teacher.ensure_loaded(resolve_runtime(settings.model))
    method = teacher.method_for(record.dataset, classnames, resolve_runtime(settings.model), Console(quiet=True))
    method.eval()
    classify = method.classifier(classnames)
    out = []
    for start in range(0, len(samples), 100):
        images = torch.stack([transform(Image.open(s.path).convert("RGB")) for s in samples[start : start + 100]])
        out.append(classify(method.image_embeddings(images)).double())
    return torch.cat(out)


def _moments(reference: Tensor, enhanced: Tensor) -> tuple[float, float]:
    scale = float(reference.std(unbiased=False) / enhanced.std(unbiased=False))
    return scale, float(reference.mean()) - scale * float(enhanced.mean())


def _lstsq(reference: Tensor, enhanced: Tensor) -> tuple[float, float]:
    design = torch.stack([enhanced.flatten(), torch.ones(enhanced.numel(), dtype=enhanced.dtype)], 1)
    solution = torch.linalg.lstsq(design, reference.flatten()[:, None]).solution.flatten()
    return float(solution[0]), float(solution[1])


def measure(checkpoint: Path, cache_dir: str, teacher_reference: bool) -> dict[str, float]:
    settings = load_settings({"paths.cache_dir": cache_dir, "sempt.inference": "hybrid"}).settings
    sidecar = load_learned(checkpoint)
    model: _Model = _Student(sidecar, settings, None) if sidecar.record.kind == "student" else _Teacher(sidecar,
                                                                                                         settings)
    runtime = resolve_runtime(settings.model)
    clip = model.ensure_loaded(runtime)
    dataset = sidecar.record.dataset
    full = load_dataset(dataset, _data_root(dataset, settings))
    method = model.method_for(dataset, full.classnames, runtime, Console(quiet=True))
    assert isinstance(method, SemPT), f"{checkpoint} is not a SemPT model"
    method.eval()
    transform = clip_test_transform(image_size(clip))
    train = prepare_data(run_settings(sidecar.record, settings.paths)).train.train
    seen = torch.tensor([name in method.seen for name in full.classnames])
    unseen = ~seen
    train_lbl, train_enh, _ = _logits(method, train, transform, full.classnames)
    test_lbl, test_enh, y = _logits(method, list(full.test), transform, full.classnames)

    def accuracy(logits: Tensor) -> float:
        return 100.0 * float((logits.argmax(1) == y).double().mean())

    def mapped(scale: float, bias: float) -> Tensor:
        out = test_lbl.clone()
        out[:, unseen] = scale * test_enh[:, unseen] + bias
        return out

    reference, enhanced = train_lbl[:, unseen], train_enh[:, unseen]
    kept = fit_calibration(reference, enhanced)
    results = {"label": accuracy(test_lbl), "enhanced": accuracy(test_enh), "hybrid": accuracy(mapped(1.0, 0.0)),
               "moment": accuracy(mapped(kept.scale, kept.bias)),
               "lstsq": accuracy(mapped(*_lstsq(reference, enhanced))),
               "top-moment": accuracy(mapped(*_moments(reference.max(1).values, enhanced.max(1).values))),
               "shift": accuracy(mapped(1.0, float(reference.mean() - enhanced.mean()))),
               "seen-group": accuracy(mapped(*_moments(train_lbl[:, seen], enhanced)))}
    lbl_u, enh_u = test_lbl[:, unseen], test_enh[:, unseen]
    anchored = test_lbl.clone()
    anchored[:, unseen] = ((enh_u - enh_u.mean(1, keepdim=True)) / enh_u.std(1, keepdim=True)
                           * lbl_u.std(1, keepdim=True) + lbl_u.mean(1, keepdim=True))
    results["anchor"] = accuracy(anchored)
    standardised = torch.zeros_like(test_lbl)
    for group, source in ((seen, test_lbl), (unseen, test_enh)):
        block = source[:, group]
        standardised[:, group] = (block - block.mean(1, keepdim=True)) / block.std(1, keepdim=True)
    results["standardise"] = accuracy(standardised)
    if teacher_reference and sidecar.record.kind == "student":
        teacher = _teacher_logits(checkpoint, settings, train, transform, full.classnames)[:, unseen]
        results["teacher-moment"] = accuracy(mapped(*_moments(teacher, enhanced)))
        results["teacher-lstsq"] = accuracy(mapped(*_lstsq(teacher, enhanced)))
    results["scale"], results["bias"] = kept.scale, kept.bias
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--cache-dir", default=".sempt-cache")
    parser.add_argument("--teacher-reference", action="store_true")
    args = parser.parse_args()
    rows = [measure(path, args.cache_dir, args.teacher_reference) for path in args.checkpoints]
    names = list(rows[0])
    print("| candidate | " + " | ".join(f"model {i + 1}" for i in range(len(rows))) + " | mean ± std |")
    print("|---|" + "---|" * (len(rows) + 1))
    for name in names:
        values = [row[name] for row in rows]
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
        print(f"| {name} | " + " | ".join(f"{v:.2f}" for v in values) + f" | {mean:.2f} ± {std:.2f} |")


if __name__ == "__main__":
    main()
