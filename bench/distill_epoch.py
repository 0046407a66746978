"""A whole PromptKD distillation epoch end to end on a fabricated JPEG dataset, beside the official per-step loop.

    python bench/distill_epoch.py --device cuda --amp bf16 --workers 16          # 1000 classes x 50 images, 500x375
    python bench/distill_epoch.py --classes 100 --images-per-class 8 --workers 2 # CPU at 224 px (slow: ViT-L/14)
    python bench/distill_epoch.py --quick                                        # CPU smoke test (demo models)

The dataset is written once in the CoOp ImageNet layout (`imagenet/images/train/<wnid>/<n>.JPEG` and
`imagenet/classnames.txt`) under `--data-dir` (a temporary folder by default): JPEGs of `--size` pixels with
smooth random content, so that they compress and decode like photographs rather than like noise.

Timed, in one run and on the same weights and views:

  loader     the training loader alone (decode + RandomResizedCrop + flip + normalise): images/s in the main
             process (one worker's rate) and with `--workers` worker processes (the total)
  sempt      `sempt distill`'s path: the teacher text over all classes once, the teacher pre-pass filling the
             epoch's `ViewFeatureCache` (batch `--prepass-batch`), then the student epoch through `engine.Trainer`
             (train.compile = `--compile`, loss read back every 10 steps, fused SGD on CUDA)
  official   the official PromptKD loop re-created with the same Trainer: every step the teacher text over all
             N classes at 77 tokens (prompts tokenised once, as the official prompt learner's buffers) and the
             teacher image forward, eager, the loss read back every step; on CUDA in the official precision
             (fp16 weights and activations, `--official-precision fp16`), on CPU in fp32

Both epochs run after `--warmup-steps` untimed steps on the same loader and models (compilation, worker start-up
and cuDNN autotuning are then outside the clock; the warm-up time is printed). Shares: loading = the time a step
waited for its batch; teacher = the text + pre-pass (sempt) or the teacher calls inside the steps (official,
timed with a device synchronisation around them); student = the rest of the step time.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # a shared CPU machine: do not spin-wait between kernels

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.distill_step import backbone_at, class_names, describe, method_settings, untruncated
from sempt_cli.data.records import Sample
from sempt_cli.data.transforms import clip_train_transform
from sempt_cli.engine.loader import EpochBatches, EpochLoader, SeededImageDataset
from sempt_cli.engine.runtime import Runtime, seeded
from sempt_cli.engine.trainer import Trainer
from sempt_cli.engine.view_cache import ViewFeatureCache, plan_cache
from sempt_cli.methods.promptkd import PromptKD, TeacherSignals
from sempt_cli.methods.promptsrc import IVLP, PromptSRC
from sempt_cli.models.factory import load_clip
from sempt_cli.models.prompted import ClassPrompts
from sempt_cli.protocol import Batch
from sempt_cli.settings import Settings, load_settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=1000, help="classes N (ImageNet names up to 1000)")
    parser.add_argument("--images-per-class", type=int, default=50)
    parser.add_argument("--size", default="500x375", help="stored JPEG size WxH (ImageNet's typical 500x375)")
    parser.add_argument("--data-dir", type=Path, default=None, help="keep the fabricated dataset here (reused)")
    parser.add_argument("--teacher", default="ViT-L-14-quickgelu")
    parser.add_argument("--student", default="ViT-B-16-quickgelu")
    parser.add_argument("--image-size", type=int, default=None, help="model input size (default: the backbone's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", choices=["none", "bf16"], default="none", help="sempt's autocast dtype (CUDA)")
    parser.add_argument("--official-precision", choices=["auto", "fp16", "fp32"], default="auto",
                        help="the official loop's arithmetic: auto = fp16 weights on CUDA (official), fp32 on CPU")
    parser.add_argument("--compile", choices=["auto", "off", "compile", "cuda-graphs"], default="auto",
                        help="train.compile for sempt's student epoch")
    parser.add_argument("--batch", type=int, default=8, help="distillation batch (official: 8)")
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    parser.add_argument("--prepass-batch", type=int, default=256, help="teacher pre-pass batch")
    parser.add_argument("--loader-images", type=int, default=None,
                        help="images timed in the loader-only part (default: 2 per worker x 50, at most the data)")
    parser.add_argument("--warmup-steps", type=int, default=None, help="untimed steps first (default 3 CPU, 20 CUDA)")
    parser.add_argument("--official-steps", type=int, default=None,
                        help="time only this many official steps and scale to the epoch (default: the whole epoch)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: demo models, 6 classes x 4 images of 64x48, 1 worker (no verdict)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.teacher, args.student = "sempt-demo-teacher", "sempt-demo-student"
        args.classes, args.images_per_class, args.size = 6, 4, "64x48"
        args.workers, args.batch, args.prepass_batch = 1, 4, 8
    return args


# ---------------------------------------------------------------------------------------------------------
# The dataset


def _write_jpeg(job: tuple[Path, int, int, int]) -> None:
    """One photograph-like JPEG: smooth colour fields plus mild noise (compresses and decodes like a photo)."""
    path, width, height, seed = job
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (max(2, height // 32), max(2, width // 32), 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    pixels = np.asarray(image, dtype=np.int16) + rng.integers(-12, 13, (height, width, 3), dtype=np.int16)
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=90)


def fabricate(root: Path, names: list[str], per_class: int, size: tuple[int, int], workers: int) -> list[Sample]:
    """The CoOp ImageNet layout under `root/imagenet`; files that exist are kept (a re-run reuses them)."""
    base = root / "imagenet"
    train = base / "images" / "train"
    lines, jobs, samples = [], [], []
    for label, name in enumerate(names):
        wnid = f"n{label:08d}"
        lines.append(f"{wnid} {name}")
        (train / wnid).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            path = train / wnid / f"{wnid}_{i}.JPEG"
            samples.append(Sample(path, label, name))
            if not path.is_file():
                jobs.append((path, size[0], size[1], label * 100003 + i))
    (base / "classnames.txt").write_text("\n".join(lines) + "\n")
    if jobs:
        with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
            list(pool.map(_write_jpeg, jobs, chunksize=64))
    return samples


def loader_rate(dataset: SeededImageDataset, images: int, batch: int, workers: int) -> dict[str, float]:
    """images/s of decode + augmentation: in this process (one worker's rate) and through `workers` persistent
    workers (the total; timed on a second pass, after the workers have started)."""
    count = max(batch, min(images, len(dataset)))
    single = min(count, max(batch, count // max(workers, 1)))
    start = time.perf_counter()
    for i in range(single):
        dataset[(1, i)]
    per_worker = single / (time.perf_counter() - start)
    batches = EpochBatches(count, batch, seed=1)
    loader = EpochLoader(dataset, workers)
    for _ in loader.epoch(1, batches.plan(1)[: max(1, workers)]):  # start the workers
        pass
    start = time.perf_counter()
    seen = sum(len(images) for images, _, _ in loader.epoch(2, batches.plan(2)))
    total = seen / (time.perf_counter() - start)
    return {"per_worker": per_worker, "total": total, "workers": workers, "images": seen}


# ---------------------------------------------------------------------------------------------------------
# The two epochs


class Stopwatch:
    """Seconds spent in wrapped callables, with a device synchronisation around each (CUDA)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda, self.seconds = cuda, 0.0

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any) -> Any:
            if self.cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            value = fn(*args)
            if self.cuda:
                torch.cuda.synchronize()
            self.seconds += time.perf_counter() - start
            return value
        return timed


def student_settings(args: argparse.Namespace, compile: str, read_every: int, workers: int) -> Settings:
    preset = method_settings(PromptKD, args.student)
    values = {"data.setting": "base2novel", "data.batch_size": args.batch, "data.workers": workers,
              "train.epochs": 1, "train.warmup_epochs": 0, "train.compile": compile, "train.read_every": read_every,
              "train.checkpoint_every": 10**9, "data.seed": args.seed}
    return load_settings(values, env={}, preset=PromptKD.presets(preset, args.student)).settings


def run_epoch(trainer: Trainer, warmup: int, steps: int | None, after_warmup: Callable[[], None]) -> dict[str, Any]:
    """Warm up (untimed, then forgotten: the run starts over), then time one epoch or its first `steps`."""
    started = time.perf_counter()
    if warmup:
        trainer.fit(stop_after_steps=warmup)
        trainer.state_path.unlink()
    after_warmup()
    warm = time.perf_counter() - started
    started = time.perf_counter()
    result = trainer.fit(stop_after_steps=steps)
    seconds = time.perf_counter() - started
    clock = trainer.last_clock
    assert clock is not None
    return {"seconds": seconds, "warmup_s": warm, "steps": result.steps, "waiting_s": clock.waiting,
            "stepping_s": clock.stepping}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    warmup = args.warmup_steps if args.warmup_steps is not None else (20 if cuda else 3)
    official_precision = args.official_precision if args.official_precision != "auto" else (
        "fp16" if cuda else "fp32")
    amp_dtype = torch.bfloat16 if args.amp == "bf16" else None
    ours = Runtime(device, amp_dtype)
    official = Runtime(device, torch.float16, half_weights=True) if official_precision == "fp16" else Runtime(device,
                                                                                                              None)
    width, height = (int(x) for x in args.size.lower().split("x"))
    names = class_names("imagenet" if args.classes <= 1000 else "synthetic", args.classes)
    started = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="sempt-epoch-") as tmp:
        data_root = args.data_dir or Path(tmp) / "data"
        samples = fabricate(data_root, names, args.images_per_class, (width, height), args.workers)
        made = time.perf_counter() - started
        teacher_name = backbone_at(args.teacher, args.image_size)
        student_name = backbone_at(args.student, args.image_size)
        clips = {}
        for key, runtime, precision in (("sempt", ours, "fp32"), ("official", official, official_precision)):
            with seeded(args.seed):
                teacher_clip = load_clip(teacher_name, None, device=device, precision=precision)
            with seeded(args.seed + 1):
                student_clip = load_clip(student_name, None, device=device, precision=precision)
            clips[key] = (teacher_clip, student_clip, runtime)
        size = clips["sempt"][0].preprocess.image_size
        size = size if isinstance(size, int) else size[0]
        transform = clip_train_transform(size)
        header = (f"PromptKD distillation epoch on {describe(device)}, torch {torch.__version__}; {len(samples)} JPEGs "
                  f"of {width}x{height} in {args.classes} classes (written in {made:.0f} s), {size} px input, batch "
                  f"{args.batch}, {args.workers} workers; teacher {args.teacher}, student {args.student} (random "
                  f"init); sempt {ours.describe()}, official {official.describe()}")
        print(header)

        dataset = SeededImageDataset(samples, transform, seed=args.seed)
        loader_images = args.loader_images or min(len(samples), 100 * max(1, args.workers))
        loading = loader_rate(dataset, loader_images, args.batch, args.workers)
        print(f"\nloader (decode + augmentation at {size} px): {loading['per_worker']:.0f} img/s in one process, "
              f"{loading['total']:.0f} img/s with {args.workers} workers ({loading['images']} images)")

        results: dict[str, dict[str, float]] = {}
        for key in ("sempt", "official"):
            teacher_clip, student_clip, runtime = clips[key]
            teacher_settings = method_settings(PromptSRC, args.teacher)
            with seeded(args.seed + 3):
                teacher = IVLP(teacher_clip, names[: math.ceil(len(names) / 2)], teacher_settings).to(device)
            teacher.eval()
            scale = float(teacher.logit_scale().item())
            settings = student_settings(args, args.compile if key == "sempt" else "off", 10 if key == "sempt" else 1,
                                        args.workers)
            watch = Stopwatch(cuda)
            teacher_s = 0.0
            if key == "sempt":
                start = time.perf_counter()
                with torch.no_grad(), runtime.autocast():
                    vectors = teacher.class_embeddings(names).float()
                view_dataset = SeededImageDataset(samples, transform, seed=args.seed)
                cache = ViewFeatureCache(Path(tmp) / "views", view_dataset, teacher.image_embeddings, runtime,
                                         plan_cache(len(samples), int(vectors.shape[1]), 1, 1e6),
                                         batch_size=args.prepass_batch, workers=args.workers)
                cache.ensure(1)
                teacher_s = time.perf_counter() - start
                prepass = cache.last_clock
                assert prepass is not None
                print(f"sempt teacher: text over {len(names)} classes + pre-pass of {len(samples)} views in "
                      f"{teacher_s:.1f} s ({len(samples) / teacher_s:.3g} img/s; the pre-pass waited "
                      f"{prepass.waiting:.1f} s for images)")
                signals = TeacherSignals(lambda v=vectors: v, lambda b, c=cache: c.features(b.epoch, b.indices),
                                         scale, cache.ensure)
            else:
                prompts = teacher.text.class_prompts(names)

                def text_77(teacher: PromptSRC = teacher, prompts: ClassPrompts = prompts) -> torch.Tensor:
                    with untruncated(teacher):  # all 77 positions, as the official text encoder
                        return torch.nn.functional.normalize(teacher.text.encode(prompts), dim=-1)

                def image(batch: Batch, teacher: PromptSRC = teacher) -> torch.Tensor:
                    return teacher.image_embeddings(batch.images)

                signals = TeacherSignals(watch.wrap(text_77), watch.wrap(image), scale)
            with seeded(args.seed + 2):
                student = PromptKD(student_clip, names, settings, None, teacher=signals,
                                   teacher_dim=int(teacher_clip.model.visual.output_dim)).to(device)
            trainer = Trainer(student, SeededImageDataset(samples, transform, seed=args.seed), settings,
                              Path(tmp) / f"run-{key}", runtime)
            steps = args.official_steps if key == "official" else None
            timing = run_epoch(trainer, warmup, steps, lambda watch=watch: setattr(watch, "seconds", 0.0))
            epoch_steps = trainer.batches.steps_per_epoch
            if key == "official":
                teacher_s = watch.seconds
            results[key] = epoch_row(timing, epoch_steps / timing["steps"], teacher_s, epoch_steps * args.batch,
                                     key == "sempt")
            del trainer, student, teacher
        report(results, loading)
    record = {"device": describe(device), "torch": torch.__version__, "images": len(samples), "classes": args.classes,
              "size": [width, height], "input_px": size, "batch": args.batch, "workers": args.workers,
              "compile": args.compile, "amp": args.amp, "official_precision": official_precision,
              "loader": loading, "epochs": results}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    print(f"total {time.perf_counter() - started:.0f} s")
    return record


def epoch_row(timing: dict[str, Any], factor: float, teacher_s: float, images: int, ours: bool) -> dict[str, Any]:
    """One epoch's seconds and where they went. Ours: the teacher work (text + pre-pass) precedes the steps.
    Official: the teacher calls are inside the steps; a partial epoch is scaled to the whole by `factor`."""
    loop, waiting, stepping = (timing[k] * factor for k in ("seconds", "waiting_s", "stepping_s"))
    teacher = teacher_s if ours else teacher_s * factor
    seconds = loop + (teacher_s if ours else 0.0)
    student = stepping if ours else max(stepping - teacher, 0.0)
    return {"seconds": seconds, "images_per_s": images / seconds, "loading_s": waiting, "teacher_s": teacher,
            "student_s": student, "warmup_s": timing["warmup_s"], "timed_steps": timing["steps"],
            "scaled": factor != 1}


def report(results: dict[str, dict[str, float]], loading: dict[str, float]) -> None:
    print(f"\n  {'loop':9s} {'epoch s':>9s} {'img/s':>9s} {'loading':>8s} {'teacher':>8s} {'student':>8s} "
          f"{'warm-up s':>10s}")
    for key, row in results.items():
        total = row["seconds"]
        shares = [100 * row[k] / total for k in ("loading_s", "teacher_s", "student_s")]
        note = f"  (first {row['timed_steps']} steps, scaled to the epoch)" if row["scaled"] else ""
        print(f"  {key:9s} {total:9.1f} {row['images_per_s']:9.1f} {shares[0]:7.0f}% {shares[1]:7.0f}% "
              f"{shares[2]:7.0f}% {row['warmup_s']:10.1f}{note}")
    ratio = results["sempt"]["images_per_s"] / results["official"]["images_per_s"]
    print(f"\n  sempt / official images per second: {ratio:.2f}x")
    step_rate = results["sempt"]["images_per_s"]
    verdict = "keeps up with" if loading["total"] >= step_rate else "is slower than"
    print(f"  the loader ({loading['total']:.0f} img/s with {loading['workers']} workers) {verdict} sempt's epoch "
          f"({step_rate:.3g} img/s)")
    results["ratio"] = {"images_per_s": ratio}  # type: ignore[assignment]


if __name__ == "__main__":
    main()
