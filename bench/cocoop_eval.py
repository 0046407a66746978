"""CoCoOp's evaluation against CoOp's at an ImageNet-size class list: throughput and peak memory, side by side.

    python bench/cocoop_eval.py                                   # CPU: ViT-B/16, 224 px, N = 1000, 2 images x 2 rounds
    python bench/cocoop_eval.py --backbone sempt-demo-student --classes 40 --eval-batch 3 --repeats 1   # smoke
    python bench/cocoop_eval.py --device cuda --amp bf16          # the GPU numbers (100 images per batch, 5 rounds)

What is timed, per image batch, is what `engine.evaluate.score_views` does: `method.image_embeddings(images)`, the
classifier from `method.classifier(classnames)` (prepared once, outside the clock: its one-time cost is printed),
then argmax. CoOp (its base-to-novel preset: 16 context vectors, text encoded once per class list) scores every
image against the same N class embeddings; CoCoOp (`vit_b16_c4_ep10_batch1_ctxv1`) encodes N prompts per image,
in blocks of at most `--budget` text sequences (images x classes; default the method's `SEQUENCE_BUDGET`), so its
cost grows with images x classes: that is the method, not the implementation. Peak memory of one batch: on CUDA
`torch.cuda.max_memory_allocated` above what was allocated before; on CPU the peak of live tensor bytes from
torch.profiler's allocation events (as `sempt_overhead.py`). Beside it, the size of the prompt tensor the official
`PromptLearner.forward` stacks for one batch, [B, N, 77, width] in fp16, which alone exceeds a GPU at ImageNet
scale (computed, not run). Weights are random (no download): speed does not depend on their values.
Variants are timed round-robin so a busy machine slows both alike; ratios use the best round, the median is shown
beside it.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # a shared CPU machine: do not spin-wait between kernels

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.distill_step import Variant, add_run_arguments, backbone_at, class_names, describe, time_round_robin
from bench.sempt_overhead import peak_bytes, size_text
from sempt_cli.methods.cocoop import CoCoOp
from sempt_cli.methods.promptsrc import CoOp
from sempt_cli.models.factory import load_clip
from sempt_cli.protocol import Method
from sempt_cli.settings import load_settings

VARIANTS = ("coop", "cocoop")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="ViT-B-16-quickgelu")
    parser.add_argument("--image-size", type=int, default=None, help="input size instead of the backbone's own")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none", help="autocast dtype (CUDA)")
    parser.add_argument("--classes", type=int, default=1000, help="N classes scored (ImageNet: 1000)")
    parser.add_argument("--classnames", choices=["imagenet", "synthetic"], default="imagenet",
                        help="the first N ImageNet names (realistic prompt lengths), or 'class 0', 'class 1', ...")
    parser.add_argument("--eval-batch", type=int, default=None, help="images per batch; default 2 on CPU, 100 on CUDA")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds; default 2 on CPU, 5 on CUDA")
    parser.add_argument("--warmup", type=int, default=None, help="untimed rounds first; default 0 on CPU, 1 on CUDA")
    parser.add_argument("--budget", type=int, default=None, help="CoCoOp's text sequences per forward")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    add_run_arguments(parser)
    return parser.parse_args(argv)


def build(method: type[Method], clip: Any, names: list[str]) -> Method:
    """The method at its official base-to-novel preset for this backbone, as `train-teacher` would resolve it."""
    first = load_settings({"data.setting": "base2novel"}, env={}).settings
    settings = load_settings({"data.setting": "base2novel"}, env={},
                             preset=method.presets(first, clip.backbone)).settings
    return method(clip, names, settings).eval()


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run the comparison `args` asks for, print the table and return the record (`--json` writes it)."""
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    batch = args.eval_batch or (100 if cuda else 2)
    repeats = args.repeats or (5 if cuda else 2)
    warmup = args.warmup if args.warmup is not None else (1 if cuda else 0)
    amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    autocast = (lambda: torch.autocast(device.type, dtype=amp)) if amp else contextlib.nullcontext
    clock = time.process_time if args.clock == "process" else time.perf_counter

    clip = load_clip(backbone_at(args.backbone, args.image_size), None, device=device)
    names = class_names(args.classnames, args.classes)
    size = int(clip.model.visual.image_size[0])
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(args.seed)).to(device)
    methods = {"coop": build(CoOp, clip, names), "cocoop": build(CoCoOp, clip, names)}
    cocoop = methods["cocoop"]
    assert isinstance(cocoop, CoCoOp)
    if args.budget:
        cocoop.sequence_budget = args.budget

    prepare_s: dict[str, float] = {}
    classifiers: dict[str, Any] = {}
    with torch.no_grad(), autocast():
        for name, method in methods.items():
            start = time.perf_counter()
            classifiers[name] = method.classifier(names)
            if cuda:
                torch.cuda.synchronize()
            prepare_s[name] = time.perf_counter() - start

    def batch_for(name: str) -> Callable[[], Tensor]:
        method, classify = methods[name], classifiers[name]

        def run() -> Tensor:
            with torch.no_grad(), autocast():
                return classify(method.image_embeddings(images)).argmax(dim=-1)

        return run

    times, _ = time_round_robin([Variant(name, batch_for(name)) for name in VARIANTS], warmup, repeats, cuda,
                                clock=clock)
    peaks = {} if args.no_memory else {name: peak_bytes(batch_for(name), device) for name in VARIANTS}
    width = cocoop.text.width
    record: dict[str, Any] = {
        "device": describe(device), "amp": args.amp, "backbone": args.backbone, "image_size": size,
        "classes": args.classes, "eval_batch": batch, "repeats": repeats, "warmup": warmup,
        "sequence_budget": cocoop.sequence_budget, "clock": args.clock,
        "official_prompt_tensor_bytes": batch * args.classes * 77 * width * 2,
        "variants": [],
    }
    for name in VARIANTS:
        best, median = min(times[name]), statistics.median(times[name])
        record["variants"].append({
            "variant": name, "best_s": best, "median_s": median, "images_per_s": batch / best,
            "median_images_per_s": batch / median, "prepare_s": prepare_s[name],
            "peak_bytes": peaks.get(name), "text_sequences_per_image": args.classes if name == "cocoop" else 0,
        })
    rows = {row["variant"]: row for row in record["variants"]}
    record["slowdown"] = rows["cocoop"]["best_s"] / rows["coop"]["best_s"]
    report(record)
    if args.json is not None:
        args.json.write_text(json.dumps(record, indent=2))
    return record


def report(record: dict[str, Any]) -> None:
    print(f"{record['backbone']} at {record['image_size']} px, N = {record['classes']} classes, "
          f"{record['eval_batch']} images per batch, {record['repeats']} rounds ({record['clock']} clock) · "
          f"{record['device']} · autocast {record['amp']} · CoCoOp budget {record['sequence_budget']} sequences")
    print(f"{'variant':<8} {'img/s best':>11} {'img/s median':>13} {'class side once':>16} {'peak / batch':>13}")
    for row in record["variants"]:
        peak = "-" if row["peak_bytes"] is None else size_text(row["peak_bytes"])
        print(f"{row['variant']:<8} {row['images_per_s']:>11.3f} {row['median_images_per_s']:>13.3f} "
              f"{row['prepare_s']:>15.2f}s {peak:>13}")
    print(f"CoCoOp / CoOp time per batch: {record['slowdown']:.1f}x (N text sequences per image instead of N once); "
          f"the official code's stacked prompts for this batch alone: "
          f"{size_text(record['official_prompt_tensor_bytes'])} in fp16")


if __name__ == "__main__":
    measure(parse_args())
