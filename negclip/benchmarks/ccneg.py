"""CC-Neg: does the model prefer an image's true caption over a negated caption that is false for it?

CC-Neg, released with CoN-CLIP as `ccneg_preprocessed.pt`, pairs each image's caption with a negated
caption; negclip.data.read_ccneg reads it without unpickling code. As its authors do, only the last
40,000 items are scored: they are the evaluation split, and the rest is for training.
"""

from __future__ import annotations

import argparse
from collections import Counter

from negclip.benchmarks.common import (
    UNREADABLE_IMAGE,
    BenchmarkData,
    counts,
    first_items,
    option,
    require_path,
    resolve_images,
    score_caption_pairs,
    share,
)
from negclip.data import CCNEG_EVAL_SIZE, PathLike, read_ccneg
from negclip.evaluate import Benchmark
from negclip.models import LoadedClip

NAME = "ccneg"


def load_ccneg(
    path: PathLike, image_root: PathLike | None = None, limit: int | None = None, eval_size: int = CCNEG_EVAL_SIZE
) -> BenchmarkData:
    """Read the evaluation split (the last `eval_size` items), keep the first `limit`, and find their images.

    Items whose image is missing are skipped and counted; MissingImagesError is raised when most are missing.
    """
    if eval_size < 1:
        raise ValueError(f"--ccneg-eval-size must be at least 1, not {eval_size}")
    skipped: Counter = Counter()
    items = read_ccneg(path, image_root, split="eval", eval_size=eval_size, on_missing="keep")
    items = resolve_images(first_items(items, limit), image_root, path, skipped)
    return BenchmarkData(items, str(path), None if image_root is None else str(image_root), skipped)


def score_ccneg(clip: LoadedClip, data: BenchmarkData) -> dict:
    """Compute the share of items where sim(image, caption) > sim(image, negated caption).

    An exact tie is a miss.
    """
    skipped = Counter(data.skipped)
    pairs = score_caption_pairs(
        clip,
        [item.image for item in data.items],
        [item.caption for item in data.items],
        [item.negated_caption for item in data.items],
        data.image_root,
    )
    skipped[UNREADABLE_IMAGE] += pairs.unreadable_items
    return {"accuracy": share(pairs.wins), **counts(len(pairs.wins), skipped), "ties": pairs.ties}


def load(args: argparse.Namespace) -> BenchmarkData:
    path = require_path(args, "ccneg", NAME, "CC-Neg's ccneg_preprocessed.pt")
    image_root = option(args, "ccneg_image_root") or option(args, "image_root")
    return load_ccneg(path, image_root, option(args, "limit"), option(args, "ccneg_eval_size", CCNEG_EVAL_SIZE))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("ccneg")
    group.add_argument("--ccneg", metavar="PATH", help="CC-Neg's ccneg_preprocessed.pt as released")
    group.add_argument(
        "--ccneg-image-root", metavar="DIR", help="folder that contains the CC-Neg photos (default: --image-root)"
    )
    group.add_argument(
        "--ccneg-eval-size",
        type=int,
        default=CCNEG_EVAL_SIZE,
        metavar="N",
        help=f"score the last N items of the file, its evaluation split (default {CCNEG_EVAL_SIZE:,})",
    )


BENCHMARK = Benchmark(NAME, load, score_ccneg, [("accuracy", "accuracy")], add_arguments)
