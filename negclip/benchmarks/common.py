"""Steps every benchmark shares: find its images on disk, read them, count skipped items and why, and reject
runs where most images are missing or unreadable.

Published benchmark files name images on their authors' disks. A run whose image root is wrong would
otherwise score a handful of images, or none, and print a number that looks real. So each benchmark here
skips the few items it cannot score, reports how many and why, and raises once most images are unusable.
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from negclip.data import IMAGE_ROOT_FIX, MIN_FOUND_FRACTION, PathLike, read_json, resolve_item_images
from negclip.encode import ImageFeatureCache, encode_images, encode_texts
from negclip.images import ImageLoadError, image_bytes_hash, load_image
from negclip.models import LoadedClip

logger = logging.getLogger(__name__)

# Reasons an item is skipped, as they appear under "skipped_by_reason" in every result.
MISSING_IMAGE = "missing_image"
UNREADABLE_IMAGE = "unreadable_image"
BAD_BOX = "bad_box"
NO_LABELS = "no_labels"

# CC-Neg's evaluation split has 40,000 images. A ViT-B/32 feature takes 2 KiB, so this cache keeps all of
# them (at most about 100 MB) and the tuned model reuses the base model's image features.
IMAGE_CACHE = ImageFeatureCache(max_entries=50_000)

# Photos decoded and encoded at a time, so a 40,000-image split never sits in memory decoded.
IMAGE_CHUNK = 256

# How many unreadable files an error message lists.
UNREADABLE_SHOWN = 5


@dataclass
class BenchmarkData:
    """Items of one benchmark, read once and scored by each model, with the items skipped while reading."""

    items: list
    source: str
    image_root: str | None
    skipped: Counter = field(default_factory=Counter)  # reason -> items dropped while reading the file


def option(args: argparse.Namespace, name: str, default: Any = None) -> Any:
    """Read a parsed option, or `default` when the namespace lacks it (a caller may build its own)."""
    value = getattr(args, name, None)
    return default if value is None else value


def require_path(args: argparse.Namespace, name: str, benchmark: str, description: str) -> str:
    """Return the path option `name`, raising ValueError with the flag to pass when it is not set."""
    value = option(args, name)
    if not value:
        flag = "--" + name.replace("_", "-")
        raise ValueError(f"benchmark {benchmark} needs {flag} PATH ({description})")
    return str(value)


def first_items(items: list, limit: int | None) -> list:
    """Keep the first `limit` items (all when limit is None); a limit below 1 is rejected."""
    if limit is None:
        return items
    if limit < 1:
        raise ValueError(f"--limit must be at least 1, not {limit}")
    return items[:limit]


def resolve_images(
    items: list, image_root: PathLike | None, source: PathLike, skipped: Counter
) -> list:
    """Replace each item's `image` by the file found on disk, dropping items whose image is missing.

    The count of dropped items is added to skipped[MISSING_IMAGE]. Raises negclip.data.MissingImagesError,
    naming the image root and the fix, when fewer than half of the distinct images are found.
    """
    check = resolve_item_images(
        items, image_root, Path(source).parent, on_missing="skip", min_found_fraction=MIN_FOUND_FRACTION, source=source
    )
    if check.skipped:
        skipped[MISSING_IMAGE] += check.skipped
    return check.items


def read_images(paths: Sequence[str]) -> tuple[dict[str, Image.Image], list[str]]:
    """Decode each distinct path once; return {path: RGB image} and the paths that could not be read."""
    images: dict[str, Image.Image] = {}
    unreadable: list[str] = []
    for path in dict.fromkeys(paths):
        try:
            images[path] = load_image(path)
        except ImageLoadError as error:
            logger.debug("skipping unreadable image: %s", error)
            unreadable.append(path)
    return images, unreadable


def check_readable(unreadable: Sequence[str], image_count: int, image_root: str | None) -> None:
    """Log one warning listing the unreadable images, and raise ImageLoadError when they are more than half,
    since the score would then describe a small and arbitrary subset."""
    if not unreadable:
        return
    listed = ", ".join(unreadable[:UNREADABLE_SHOWN]) + (", ..." if len(unreadable) > UNREADABLE_SHOWN else "")
    if len(unreadable) <= image_count * (1 - MIN_FOUND_FRACTION):
        logger.warning("skipped %d of %d images that could not be read as photos: %s", len(unreadable), image_count, listed)
        return
    raise ImageLoadError(
        f"{len(unreadable)} of {image_count} images could not be read as photos (image root: {image_root or 'not set'}); "
        f"first ones: {listed}. Check that these files are complete JPEG or PNG photos rather than placeholders "
        f"(such as Git LFS pointers), or {IMAGE_ROOT_FIX}"
    )


def encode_image_files(
    clip: LoadedClip, paths: Sequence[str], image_root: str | None
) -> tuple[dict[str, int], torch.Tensor, list[str]]:
    """Embed each distinct readable photo once, IMAGE_CHUNK at a time.

    Returns ({path: row}, normalised features (readable images, projection_dim), unreadable paths).
    Raises ImageLoadError when most photos are unreadable.
    """
    distinct = list(dict.fromkeys(paths))
    rows: dict[str, int] = {}
    chunks: list[torch.Tensor] = []
    unreadable: list[str] = []
    starts = range(0, len(distinct), IMAGE_CHUNK)
    for start in tqdm(starts, desc="images", disable=None if len(starts) > 1 else True, leave=False):
        images, failed = read_images(distinct[start : start + IMAGE_CHUNK])
        unreadable += failed
        if images:
            chunks.append(encode_images(clip, list(images.values()), cache=IMAGE_CACHE))
            for path in images:
                rows[path] = len(rows)
    check_readable(unreadable, len(distinct), image_root)
    features = torch.cat(chunks) if chunks else torch.empty(0, clip.model.config.projection_dim)
    return rows, features, unreadable


def encode_distinct_images(clip: LoadedClip, images: Sequence[Image.Image]) -> torch.Tensor:
    """Embed PIL images (len(images), projection_dim), encoding each distinct set of pixels once.

    Identical crops then get bitwise-identical features and tie exactly. Batched kernels do not promise
    equal outputs for equal inputs at different batch positions, and a difference in the last bits would
    turn that tie into a near-tie decided by position.
    """
    rows: dict[str, int] = {}
    distinct: list[Image.Image] = []
    positions = []
    for image in images:
        key = image_bytes_hash(image)
        if key not in rows:
            rows[key] = len(distinct)
            distinct.append(image)
        positions.append(rows[key])
    features = encode_images(clip, distinct, cache=IMAGE_CACHE)
    return features[positions]


@dataclass
class PairScores:
    """Outcome of scoring a true caption against a false one for each image."""

    wins: list[bool]  # per scored item: sim(image, true caption) > sim(image, false caption), strictly
    ties: int  # scored items whose two similarities were exactly equal (counted as misses)
    scored_indices: list[int]  # positions in the input of the items that were scored
    unreadable_items: int  # items dropped because their photo could not be read


def score_caption_pairs(
    clip: LoadedClip,
    images: Sequence[str],
    true_captions: Sequence[str],
    false_captions: Sequence[str],
    image_root: str | None,
) -> PairScores:
    """Compare each image's similarity to its true caption with its similarity to its false caption.

    Only a strictly higher similarity for the true caption counts as a win, so an exact tie is a miss.
    """
    rows, image_embeds, unreadable = encode_image_files(clip, images, image_root)
    scored = [index for index, image in enumerate(images) if image in rows]
    if not scored:
        return PairScores([], 0, [], len(images))
    true_embeds = encode_texts(clip, [true_captions[index] for index in scored])
    false_embeds = encode_texts(clip, [false_captions[index] for index in scored])
    selected = image_embeds[[rows[images[index]] for index in scored]]  # (scored, dim)
    true_similarity = (selected * true_embeds).sum(-1)
    false_similarity = (selected * false_embeds).sum(-1)
    wins = (true_similarity > false_similarity).tolist()
    ties = int((true_similarity == false_similarity).sum())
    return PairScores(wins, ties, scored, len(images) - len(scored))


def counts(count: int, skipped: Counter) -> dict:
    """Build the keys every result carries: items scored, items skipped, and skipped items by reason."""
    return {
        "count": count,
        "skipped": sum(skipped.values()),
        "skipped_by_reason": {reason: skipped[reason] for reason in sorted(skipped) if skipped[reason]},
    }


def share(hits: Sequence[bool]) -> float | None:
    """Fraction of true values, or None for an empty list (no score rather than a made-up zero)."""
    return sum(hits) / len(hits) if hits else None
