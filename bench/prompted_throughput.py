"""Throughput of the prompted towers against open_clip's own encoders, side by side on the same weights.

    python bench/prompted_throughput.py                       # CPU, ViT-B-16-quickgelu, < 1 minute
    python bench/prompted_throughput.py --device cuda --amp bf16 --image-batch 256 --classes 1000

Why: the towers run open_clip's modules step by step; this checks that doing so costs nothing at depth 0
(target ratio >= 0.95), what deep prompts cost, and what causal-mask truncation of the text saves (text
ratio > 1). Weights are random (no download): speed does not depend on their values. Variants are timed
round-robin, so a busy machine slows all of them alike; rates and ratios use the best round (the one least
disturbed by other processes, as `timeit` advises), and the median is shown beside it. The text
prompts ("a photo of a {class}.") are tokenised and embedded once before timing, as a method would.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sempt_cli.models import PromptedTextTower, PromptedVisionTower, PromptSpec, load_clip

CLASSNAMES = [
    "abyssinian cat", "golden retriever", "red fox", "water lily", "boeing 747", "tabby cat", "hot dog",
    "ice cream", "great white shark", "mountain bike", "sunflower", "espresso", "school bus", "lighthouse",
    "strawberry", "airliner", "snow leopard", "daisy", "fire truck", "pizza",
]  # fmt: skip


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="ViT-B-16-quickgelu")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none", help="autocast dtype")
    parser.add_argument("--image-batch", type=int, default=None, help="default 2 on CPU, 128 on CUDA")
    parser.add_argument("--classes", type=int, default=None, help="text prompts; default 8 on CPU, 1000 on CUDA")
    parser.add_argument("--depth", type=int, default=9, help="prompt depth of the deep variant (both towers)")
    parser.add_argument("--length", type=int, default=4, help="prompt tokens per layer")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds; default 3 on CPU, 20 on CUDA")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--clock",
        choices=["wall", "process"],
        default="wall",
        help="'process' times CPU seconds of this process: steadier than wall time on a shared CPU machine "
        "(use with --threads 1)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    batch = args.image_batch or (128 if cuda else 2)
    n_classes = args.classes or (1000 if cuda else 8)
    repeats = args.repeats or (20 if cuda else 3)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model, tokenizer, preprocess = load_clip(args.backbone, None, device=device)
    size = preprocess.image_size if isinstance(preprocess.image_size, int) else preprocess.image_size[0]
    images = torch.randn(batch, 3, size, size, device=device)
    names = [CLASSNAMES[i % len(CLASSNAMES)] + ("" if i < len(CLASSNAMES) else f" {i}") for i in range(n_classes)]

    vision0 = PromptedVisionTower(model.visual)
    vision_deep = PromptedVisionTower(model.visual, PromptSpec(args.depth, args.length))
    text0 = PromptedTextTower(model, PromptSpec(0), truncate=True)
    text0_full = PromptedTextTower(model, PromptSpec(0), truncate=False)
    text_deep = PromptedTextTower(model, PromptSpec(args.depth, args.length), truncate=True)
    prompts0 = text0.class_prompts(names)
    prompts_deep = text_deep.class_prompts(names)
    token_ids = tokenizer(prompts0.texts).to(device)

    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()

    with torch.no_grad(), autocast:
        image_diff = (vision0(images).float() - model.encode_image(images).float()).abs().max().item()
        text_diff = (text0(prompts0).float() - model.encode_text(token_ids).float()).abs().max().item()
        variants: dict[str, tuple[str, Callable[[], object]]] = {
            "open_clip encode_image": ("image", lambda: model.encode_image(images)),
            "prompted depth 0": ("image", lambda: vision0(images)),
            f"prompted depth {args.depth} x{args.length}": ("image", lambda: vision_deep(images)),
            "open_clip encode_text (77 tokens)": ("text", lambda: model.encode_text(token_ids)),
            f"prompted depth 0, truncated to {prompts0.length}": ("text", lambda: text0(prompts0)),
            "prompted depth 0, full 77": ("text", lambda: text0_full(prompts0)),
            f"prompted depth {args.depth} x{args.length}, truncated": ("text", lambda: text_deep(prompts_deep)),
        }
        clock = time.process_time if args.clock == "process" else time.perf_counter
        times = time_round_robin({k: fn for k, (_, fn) in variants.items()}, args.warmup, repeats, cuda, clock)

    amp = args.amp if amp_dtype else "fp32"
    print(f"{args.backbone} on {describe(device)} ({amp}), image batch {batch}, {n_classes} classes, "
          f"{repeats} rounds after {args.warmup} warm-up, {args.clock} clock")  # fmt: skip
    print(f"depth-0 max |prompted - open_clip|: image {image_diff:.2e}, text {text_diff:.2e}")
    print(f"  {'':5s} {'variant':42s} {'best':>10s} {'median':>10s}   ratio (best)")
    results = []
    baseline: dict[str, float] = {}
    for name, (kind, _) in variants.items():
        items = batch if kind == "image" else n_classes
        best, median = items / min(times[name]), items / statistics.median(times[name])
        base = baseline.setdefault(kind, best)
        unit = "img/s" if kind == "image" else "txt/s"
        print(f"  {kind:5s} {name:42s} {best:10.1f} {median:10.1f} {unit}   {best / base:5.2f}")
        results.append(
            {"kind": kind, "variant": name, "best_per_s": best, "median_per_s": median, "ratio": best / base}
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "backbone": args.backbone,
            "device": describe(device),
            "amp": amp,
            "image_batch": batch,
            "classes": n_classes,
            "repeats": repeats,
            "clock": args.clock,
            "torch": torch.__version__,
            "results": results,
        }
        args.json.write_text(json.dumps(record, indent=2) + "\n")


def time_round_robin(
    variants: dict[str, Callable[[], object]],
    warmup: int,
    repeats: int,
    cuda: bool,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Seconds per call, per round; one call of every variant per round so background load hits all alike."""

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    for _ in range(warmup):
        for fn in variants.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            sync()
            start = clock()
            fn()
            sync()
            times[name].append(clock() - start)
    return times


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu x{torch.get_num_threads()} threads"


if __name__ == "__main__":
    main()
