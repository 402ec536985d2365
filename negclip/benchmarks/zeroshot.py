"""Zero-shot recognition of the object categories in each photo: a check that negation tuning has not cost
the model its general ability.

Every image is scored against "a photo of a {category}." for all categories of the set. The metrics are
mean average precision over categories (each category ranks the images by cosine similarity) and the
top-1 hit rate (the best-scoring category is one the image contains). `zeroshot_guard` and
`compare_zeroshot` turn a base and a tuned result into a warning when the tuned model loses more than a
set number of points.
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from negclip.benchmarks.common import (
    NO_LABELS,
    UNREADABLE_IMAGE,
    BenchmarkData,
    counts,
    encode_image_files,
    first_items,
    option,
    read_json,
    require_path,
    resolve_images,
)
from negclip.data import DataFormatError, PathLike, load_dataset_file
from negclip.encode import encode_texts
from negclip.evaluate import Benchmark
from negclip.models import LoadedClip

logger = logging.getLogger(__name__)

NAME = "zeroshot"
PROMPT_TEMPLATE = "a photo of a {}."
DEFAULT_MAX_DROP_POINTS = 5.0

# Metrics the guard compares, with the words its warning uses for them.
GUARDED_METRICS = {"mean_average_precision": "mean average precision", "top1_hit_rate": "top-1 hit rate"}


class LabelledImage(Protocol):
    """Anything with an image path and the object categories present: ImageRecord, NegationExample."""

    image: str
    objects: list[str]


@dataclass
class ZeroshotItem:
    """One image and the object categories it contains."""

    image: str
    objects: list[str]


@dataclass
class ZeroshotData(BenchmarkData):
    """Labelled images with their files found on disk, and the categories every image is scored against."""

    categories: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- reading


def read_coco_instances(path: PathLike) -> tuple[list[ZeroshotItem], list[str]]:
    """Read a COCO instances JSON: one item per entry of 'images', and every name in 'categories'.

    Images without annotations get an empty object list. Raises DataFormatError naming the entry for a
    missing key or an annotation whose image or category is not declared.
    """
    return _coco_instances(path, read_json(path))


def _coco_instances(path: PathLike, data: Any) -> tuple[list[ZeroshotItem], list[str]]:
    if not isinstance(data, dict) or not all(isinstance(data.get(key), list) for key in ("images", "annotations", "categories")):
        raise DataFormatError(path, "expected a COCO instances JSON object with lists 'images', 'annotations' and 'categories'")
    names = {}
    for index, category in enumerate(data["categories"]):
        if not isinstance(category, dict) or "id" not in category or not isinstance(category.get("name"), str):
            raise DataFormatError(path, f"a category needs 'id' and 'name', not {category!r}", entry=f"categories[{index}]")
        names[category["id"]] = category["name"].strip().lower()
    files = {}
    for index, image in enumerate(data["images"]):
        if not isinstance(image, dict) or "id" not in image or not isinstance(image.get("file_name"), str):
            raise DataFormatError(path, f"an image needs 'id' and 'file_name', not {image!r}", entry=f"images[{index}]")
        files[image["id"]] = image["file_name"]

    objects: dict[Any, list[str]] = {image_id: [] for image_id in files}
    for index, annotation in enumerate(data["annotations"]):
        where = f"annotations[{index}]"
        if not isinstance(annotation, dict):
            raise DataFormatError(path, f"expected a JSON object, not {annotation!r}", entry=where)
        image_id, category_id = annotation.get("image_id"), annotation.get("category_id")
        if image_id not in files:
            raise DataFormatError(path, f"image_id {image_id!r} is not in 'images'", entry=where)
        if category_id not in names:
            raise DataFormatError(path, f"category_id {category_id!r} is not in 'categories'", entry=where)
        if names[category_id] not in objects[image_id]:
            objects[image_id].append(names[category_id])
    items = [ZeroshotItem(files[image_id], objects[image_id]) for image_id in files]
    return items, list(dict.fromkeys(names.values()))


def read_labelled_images(path: PathLike, image_root: PathLike | None = None) -> tuple[list[ZeroshotItem], list[str]]:
    """Read labelled images and the category list from any file with object labels.

    A COCO instances JSON gives its own category list. Other files read by negclip.data.load_dataset_file
    (the project's JSONL or CSV, a NegBench retrieval CSV) give the sorted union of their objects. Image
    paths stay as written when not found.
    """
    if Path(path).suffix.lower() == ".json":
        data = read_json(path)
        if isinstance(data, dict) and "categories" in data:
            return _coco_instances(path, data)
    loaded = load_dataset_file(path, image_root, on_missing="keep")
    if loaded.items and not hasattr(loaded.items[0], "objects"):
        raise DataFormatError(
            path,
            f"a {loaded.format} file has no object labels; pass a COCO instances JSON, a NegBench retrieval CSV "
            "or the project's JSONL",
        )
    items = merge_by_image(loaded.items)
    return items, sorted({name for item in items for name in item.objects})


def merge_by_image(records: Iterable[LabelledImage]) -> list[ZeroshotItem]:
    """Merge records into one item per distinct image, with the union of their objects in first-seen order."""
    merged: dict[str, list[str]] = {}
    for record in records:
        objects = merged.setdefault(record.image, [])
        objects += [name for name in record.objects if name not in objects]
    return [ZeroshotItem(image, objects) for image, objects in merged.items()]


def load_zeroshot(path: PathLike, image_root: PathLike | None = None, limit: int | None = None) -> ZeroshotData:
    """Read labelled images, keep the first `limit`, and find their files under image_root.

    Images that are missing are skipped and counted; MissingImagesError is raised when most are missing.
    """
    items, categories = read_labelled_images(path, image_root)
    skipped: Counter = Counter()
    items = resolve_images(first_items(items, limit), image_root, path, skipped)
    return ZeroshotData(items, str(path), None if image_root is None else str(image_root), skipped, categories)


# ---------------------------------------------------------------- scoring


def average_precision(scores: torch.Tensor, labels: torch.Tensor) -> float | None:
    """Average precision of ranking by `scores` (n,) against boolean `labels` (n,), or None with no positives.

    Equal scores are taken together, as one threshold, so the result does not depend on the input order; it
    equals scikit-learn's average_precision_score.
    """
    positives = int(labels.sum())
    if positives == 0:
        return None
    order = torch.argsort(scores, descending=True, stable=True)
    ranked_scores = scores[order]
    true_positives = torch.cumsum(labels[order].double(), dim=0)
    # The last rank of each run of equal scores is where a threshold at that score cuts the ranking.
    cut = torch.nonzero(ranked_scores[1:] != ranked_scores[:-1]).flatten().tolist() + [len(scores) - 1]
    cut = torch.tensor(cut)
    precision = true_positives[cut] / (cut + 1).double()
    recall = true_positives[cut] / positives
    recall_steps = torch.diff(recall, prepend=torch.zeros(1, dtype=torch.float64))
    return float((recall_steps * precision).sum())


def evaluate_zeroshot(
    clip: LoadedClip,
    records: Sequence[LabelledImage],
    categories: Sequence[str] | None = None,
    image_root: str | None = None,
) -> dict:
    """Score each image against a prompt per category: mean average precision and top-1 hit rate.

    `records` are ZeroshotItems, ImageRecords or NegationExamples with existing image paths; records of
    one image are merged. `categories` defaults to the union of their objects. Images with no object among
    the categories are skipped as "no_labels". Top-1 counts a hit only when every category tied at the top
    score is present, so ties never help. Mean average precision averages over categories present in at
    least one scored image.
    """
    items = merge_by_image(records)
    if categories is None:
        categories = sorted({name for item in items for name in item.objects})
    categories = list(dict.fromkeys(categories))
    known = set(categories)
    skipped: Counter = Counter()
    labelled = [item for item in items if known.intersection(item.objects)]
    skipped[NO_LABELS] += len(items) - len(labelled)
    result = {"mean_average_precision": None, "top1_hit_rate": None}
    if len(categories) < 2 or not labelled:
        return {**result, **counts(0, skipped), "categories": len(categories), "prompt_template": PROMPT_TEMPLATE}

    rows, image_embeds, unreadable = encode_image_files(clip, [item.image for item in labelled], image_root)
    scored = [item for item in labelled if item.image in rows]
    skipped[UNREADABLE_IMAGE] += len(labelled) - len(scored)
    if not scored:
        return {**result, **counts(0, skipped), "categories": len(categories), "prompt_template": PROMPT_TEMPLATE}
    text_embeds = encode_texts(clip, [PROMPT_TEMPLATE.format(category) for category in categories])
    scores = image_embeds[[rows[item.image] for item in scored]] @ text_embeds.t()  # (images, categories)
    labels = torch.tensor([[category in item.objects for category in categories] for item in scored])

    by_category = {}
    for column, category in enumerate(categories):
        precision = average_precision(scores[:, column], labels[:, column])
        if precision is not None:
            by_category[category] = precision
    top = scores.max(dim=1, keepdim=True).values
    hits = [bool(labels[row][scores[row] == top[row]].all()) for row in range(len(scored))]
    return {
        "mean_average_precision": sum(by_category.values()) / len(by_category),
        "top1_hit_rate": sum(hits) / len(hits),
        **counts(len(scored), skipped),
        "categories": len(categories),
        "categories_present": len(by_category),
        "prompt_template": PROMPT_TEMPLATE,
        "average_precision_by_category": by_category,
    }


def score_zeroshot(clip: LoadedClip, data: ZeroshotData) -> dict:
    """Score the loaded set, adding the images skipped while reading to the result's counts."""
    result = evaluate_zeroshot(clip, data.items, data.categories, data.image_root)
    skipped = Counter(result["skipped_by_reason"]) + data.skipped
    return {**result, **counts(result["count"], skipped)}


# ---------------------------------------------------------------- guard for training


@dataclass
class ZeroshotGuardResult:
    """Base and tuned zero-shot results, the drop of each guarded metric, and the warning, if any."""

    base: dict
    tuned: dict
    drop_points: dict[str, float | None]  # base minus tuned, in percentage points; positive is a loss
    max_drop_points: float
    warning: str | None  # set when a guarded metric fell by more than max_drop_points
    unchecked_reason: str | None = None  # set when no metric could be compared


def compare_zeroshot(base: dict, tuned: dict, max_drop_points: float = DEFAULT_MAX_DROP_POINTS) -> ZeroshotGuardResult:
    """Compare two evaluate_zeroshot results and build a warning, also logged, when a guarded metric fell by
    more than `max_drop_points` percentage points.

    On a slice of 25 images one image moves the top-1 hit rate by 4 points, so size the limit to the slice.
    """
    if not max_drop_points >= 0:
        raise ValueError(f"max_drop_points must be zero or more, not {max_drop_points}")
    drops: dict[str, float | None] = {}
    losses = []
    for key, words in GUARDED_METRICS.items():
        before, after = base.get(key), tuned.get(key)
        drops[key] = None if before is None or after is None else 100 * (before - after)
        if drops[key] is not None and drops[key] > max_drop_points:
            losses.append(f"{words} fell by {drops[key]:.1f} points ({100 * before:.1f} to {100 * after:.1f})")
    if all(drop is None for drop in drops.values()):
        reason = (
            f"no zero-shot score to compare: {base.get('count', 0)} images scored over {base.get('categories', 0)} "
            f"categories (at least 1 image with labels and 2 categories are needed); skipped: {base.get('skipped_by_reason', {})}"
        )
        return ZeroshotGuardResult(base, tuned, drops, max_drop_points, None, reason)
    warning = None
    if losses:
        warning = (
            f"zero-shot recognition on {base['count']} images got worse after tuning: {'; '.join(losses)}, more than "
            f"the {max_drop_points:g} points allowed. The tuned model may have lost general ability; try a lower "
            "learning rate, fewer steps or fewer tuned layers."
        )
        logger.warning(warning)
    return ZeroshotGuardResult(base, tuned, drops, max_drop_points, warning)


def zeroshot_guard(
    base_clip: LoadedClip,
    tuned_clip: LoadedClip,
    records: Sequence[LabelledImage],
    max_drop_points: float = DEFAULT_MAX_DROP_POINTS,
    categories: Sequence[str] | None = None,
) -> ZeroshotGuardResult:
    """Run evaluate_zeroshot with both models on the same images and compare them with compare_zeroshot.

    Both models must exist at once. A training loop that changes its model in place should instead call
    evaluate_zeroshot before and after training, then pass both results to compare_zeroshot.
    """
    base = evaluate_zeroshot(base_clip, records, categories)
    tuned = evaluate_zeroshot(tuned_clip, records, categories)
    return compare_zeroshot(base, tuned, max_drop_points)


# ---------------------------------------------------------------- command line


def load(args: argparse.Namespace) -> ZeroshotData:
    path = require_path(args, "zeroshot_data", NAME, "COCO instances JSON, NegBench retrieval CSV or the project's JSONL")
    image_root = option(args, "zeroshot_image_root") or option(args, "image_root")
    return load_zeroshot(path, image_root, option(args, "limit"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("zeroshot")
    group.add_argument(
        "--zeroshot-data",
        metavar="PATH",
        help="images with object labels: COCO instances JSON (all its categories are scored), "
        "NegBench retrieval CSV or the project's JSONL",
    )
    group.add_argument(
        "--zeroshot-image-root", metavar="DIR", help="folder that contains those images (default: --image-root)"
    )


BENCHMARK = Benchmark(
    NAME,
    load,
    score_zeroshot,
    [("mean average precision", "mean_average_precision"), ("top-1 hit rate", "top1_hit_rate")],
    add_arguments,
)
