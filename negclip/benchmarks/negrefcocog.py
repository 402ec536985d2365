"""NegRefCOCOg: pick the box that a negated referring expression describes ("a chair with no one on it").

NegRefCOCOg.json (NegationCLIP, Park et al., ICCV 2025) is a JSON list of items with `image` (a COCO
train2014 file name), `phrase`, `ref_bbox` and `bbox_list`, boxes as [x, y, width, height] in pixels. Each
candidate box is cropped from the photo, the phrase is scored against every crop, and an item is a hit
when the reference crop scores highest.

In the published file the reference is always bbox_list[0], so an argmax that resolves ties to the first
index (numpy's and torch's both do) turns every tie into a hit. Here the candidate order is shuffled under
a seed, and a hit needs the reference to score strictly higher than every other candidate, so an exact
tie is a miss. Results record both rules under "tie_policy" and "shuffled".
"""

from __future__ import annotations

import argparse
import math
import random
import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from numbers import Real
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from negclip.benchmarks.common import (
    BAD_BOX,
    UNREADABLE_IMAGE,
    BenchmarkData,
    check_readable,
    counts,
    encode_distinct_images,
    first_items,
    option,
    read_images,
    read_json,
    require_path,
    resolve_images,
    share,
)
from negclip.data import DataFormatError, PathLike, find_image_path
from negclip.encode import encode_texts
from negclip.evaluate import Benchmark
from negclip.models import LoadedClip

NAME = "negrefcocog"
TIE_POLICY = "exact ties count as misses"
DEFAULT_SEED = 0

# Items whose photos and crops are held in memory at once while scoring.
ITEMS_PER_CHUNK = 64

# COCO 2017 renamed the 2014 photos by dropping this prefix (COCO_train2014_000000374391.jpg is
# train2017/000000374391.jpg), so a COCO 2017 folder also serves the published file.
COCO_2014_PREFIX = re.compile(r"^COCO_(?:train|val)2014_(?=\d+\.jpg$)")


@dataclass
class NegRefItem:
    """One NegRefCOCOg item: a phrase and the candidate boxes it may refer to."""

    image: str
    phrase: str
    boxes: list[list[float]]  # candidates as [x, y, width, height] in pixels, in file order
    reference_index: int  # position of ref_bbox in boxes


@dataclass
class NegRefCocogData(BenchmarkData):
    """NegRefCOCOg items with their images found on disk, and the seed that shuffles candidate order."""

    seed: int = DEFAULT_SEED


def read_negrefcocog(path: PathLike) -> list[NegRefItem]:
    """Read NegRefCOCOg.json; image paths stay as written.

    Raises DataFormatError naming the item for a missing key, a box that is not four numbers, fewer than
    two candidates, or a ref_bbox that is not one of bbox_list.
    """
    data = read_json(path)
    if not isinstance(data, list):
        raise DataFormatError(path, f"expected a JSON list of items, not {type(data).__name__}")
    return [_negref_item(path, index, entry) for index, entry in enumerate(data)]


def _negref_item(path: PathLike, index: int, entry: Any) -> NegRefItem:
    where = f"item {index}"
    if not isinstance(entry, dict):
        raise DataFormatError(path, f"expected a JSON object, not {type(entry).__name__}", entry=where)
    texts = {}
    for key in ("image", "phrase"):
        value = entry.get(key)
        if not isinstance(value, str) or not value.strip():
            raise DataFormatError(path, f"{key!r} must be a non-empty string, not {value!r}", entry=where)
        texts[key] = value.strip()

    reference = _box(path, entry.get("ref_bbox"), f"{where}, 'ref_bbox'")
    candidates = entry.get("bbox_list")
    if not isinstance(candidates, list) or len(candidates) < 2:
        raise DataFormatError(path, f"'bbox_list' must be a list of at least 2 boxes, not {candidates!r}", entry=where)
    boxes = [_box(path, box, f"{where}, 'bbox_list'[{position}]") for position, box in enumerate(candidates)]
    if reference not in boxes:
        raise DataFormatError(path, f"'ref_bbox' {reference} is not one of 'bbox_list' {boxes}", entry=where)
    return NegRefItem(texts["image"], texts["phrase"], boxes, boxes.index(reference))


def _box(path: PathLike, value: Any, where: str) -> list[float]:
    if (
        not isinstance(value, list)
        or len(value) != 4
        or not all(isinstance(number, Real) and not isinstance(number, bool) for number in value)
    ):
        raise DataFormatError(path, f"a box must be [x, y, width, height] in pixels, not {value!r}", entry=where)
    return [float(number) for number in value]


def load_negrefcocog(
    path: PathLike, image_root: PathLike | None = None, limit: int | None = None, seed: int = DEFAULT_SEED
) -> NegRefCocogData:
    """Read the file, keep the first `limit` items, and find their images under image_root.

    Items whose image is missing are skipped and counted; MissingImagesError is raised when most are missing.
    """
    skipped: Counter = Counter()
    items = first_items(read_negrefcocog(path), limit)
    items = _use_coco_2017_names(items, image_root, Path(path).parent)
    items = resolve_images(items, image_root, path, skipped)
    return NegRefCocogData(items, str(path), None if image_root is None else str(image_root), skipped, seed)


def _use_coco_2017_names(items: list[NegRefItem], image_root: PathLike | None, base_dir: Path) -> list[NegRefItem]:
    """Rename an item's COCO 2014 file to its COCO 2017 name when only the 2017 name is found on disk."""
    renamed: dict[str, str] = {}
    for written in dict.fromkeys(item.image for item in items):
        name_2017 = COCO_2014_PREFIX.sub("", Path(written).name)
        if name_2017 == Path(written).name or find_image_path(written, image_root, base_dir) is not None:
            continue
        if find_image_path(name_2017, image_root, base_dir) is not None:
            renamed[written] = name_2017
    return [replace(item, image=renamed[item.image]) if item.image in renamed else item for item in items]


def shuffled_orders(items: list[NegRefItem], seed: int) -> list[list[int]]:
    """Return, per item, the order in which its candidates are scored: the same for the same seed."""
    generator = random.Random(seed)
    orders = []
    for item in items:
        order = list(range(len(item.boxes)))
        generator.shuffle(order)
        orders.append(order)
    return orders


def crop_box(image: Image.Image, box: list[float]) -> tuple[Image.Image | None, bool]:
    """Crop [x, y, width, height] from the image, clamped to its borders.

    Edges are rounded to whole pixels, as PIL's Image.crop does. Returns (crop, clamped), where clamped is
    True when the box reached past a border. The crop is None for a bad box: a non-finite value, a width or height
    of zero or less, or less than one pixel left inside the image.
    """
    x, y, width, height = box
    if not all(math.isfinite(value) for value in box) or width <= 0 or height <= 0:
        return None, False
    left, top = round(x), round(y)
    right, bottom = round(x + width), round(y + height)
    clamped = left < 0 or top < 0 or right > image.width or bottom > image.height
    left, top = max(left, 0), max(top, 0)
    right, bottom = min(right, image.width), min(bottom, image.height)
    if right - left < 1 or bottom - top < 1:
        return None, clamped
    return image.crop((left, top, right, bottom)), clamped


def is_strict_hit(scores: torch.Tensor, reference_position: int) -> bool:
    """True when the reference scores strictly above every other candidate; an exact tie is a miss."""
    best = scores.max()
    return bool(scores[reference_position] == best) and int((scores == best).sum()) == 1


def score_negrefcocog(clip: LoadedClip, data: NegRefCocogData) -> dict:
    """Score the phrase against every crop: accuracy of picking the reference box, with counts of skipped
    items, bad and clamped boxes, and ties."""
    skipped = Counter(data.skipped)
    orders = shuffled_orders(data.items, data.seed)
    phrase_embeds = encode_texts(clip, [item.phrase for item in data.items])  # (items, dim)
    hits: list[bool] = []
    chance: list[float] = []
    tally = Counter()
    unreadable: dict[str, None] = {}  # distinct paths in first-seen order; a photo may recur in later chunks
    starts = range(0, len(data.items), ITEMS_PER_CHUNK)
    for start in tqdm(starts, desc=NAME, disable=None if len(starts) > 1 else True, leave=False):
        chunk = range(start, min(start + ITEMS_PER_CHUNK, len(data.items)))
        images, failed = read_images([data.items[index].image for index in chunk])
        unreadable.update(dict.fromkeys(failed))
        crops, owners = _crop_candidates(data.items, orders, chunk, images, skipped, tally)
        if not crops:
            continue
        crop_embeds = encode_distinct_images(clip, crops)  # (crops, dim), in shuffled order
        for index, rows in owners.items():
            item = data.items[index]
            # Row-wise products, not a matrix product: BLAS can round identical rows of a matrix product
            # differently, which would break an exact tie between identical crops.
            scores = (crop_embeds[rows] * phrase_embeds[index]).sum(-1)
            reference_position = orders[index].index(item.reference_index)
            tally["ties"] += int((scores == scores.max()).sum() > 1)
            hits.append(is_strict_hit(scores, reference_position))
            chance.append(1 / len(item.boxes))
    skipped[UNREADABLE_IMAGE] += sum(1 for item in data.items if item.image in unreadable)
    check_readable(list(unreadable), len({item.image for item in data.items}), data.image_root)

    return {
        "accuracy": share(hits),
        **counts(len(hits), skipped),
        "ties": tally["ties"],
        "tie_policy": TIE_POLICY,
        "shuffled": True,
        "seed": data.seed,
        "bad_boxes": tally["bad_boxes"],
        "clamped_boxes": tally["clamped_boxes"],
        "chance_accuracy": sum(chance) / len(chance) if chance else None,
    }


def _crop_candidates(
    items: list[NegRefItem],
    orders: list[list[int]],
    chunk: range,
    images: dict[str, Image.Image],
    skipped: Counter,
    tally: Counter,
) -> tuple[list[Image.Image], dict[int, list[int]]]:
    """Crop every candidate of the chunk's readable items in shuffled order.

    Returns the crops and, per scored item, the rows of its crops. An item with any bad box is skipped
    whole: dropping only that candidate would leave an easier choice than the file sets.
    """
    crops: list[Image.Image] = []
    owners: dict[int, list[int]] = {}
    for index in chunk:
        item = items[index]
        image = images.get(item.image)
        if image is None:
            continue
        item_crops = []
        for position in orders[index]:
            crop, clamped = crop_box(image, item.boxes[position])
            tally["clamped_boxes"] += clamped
            if crop is None:
                tally["bad_boxes"] += 1
            item_crops.append(crop)
        if any(crop is None for crop in item_crops):
            skipped[BAD_BOX] += 1
            continue
        owners[index] = list(range(len(crops), len(crops) + len(item_crops)))
        crops += item_crops
    return crops, owners


def load(args: argparse.Namespace) -> NegRefCocogData:
    path = require_path(args, "negrefcocog", NAME, "the published NegRefCOCOg.json")
    image_root = option(args, "negrefcocog_image_root") or option(args, "image_root")
    return load_negrefcocog(path, image_root, option(args, "limit"), option(args, "negrefcocog_seed", DEFAULT_SEED))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("negrefcocog")
    group.add_argument("--negrefcocog", metavar="PATH", help="NegRefCOCOg.json as published")
    group.add_argument(
        "--negrefcocog-image-root",
        metavar="DIR",
        help="folder that contains the COCO train2014 or train2017 photos (default: --image-root)",
    )
    group.add_argument(
        "--negrefcocog-seed",
        type=int,
        default=DEFAULT_SEED,
        metavar="N",
        help=f"seed for shuffling the candidate boxes of each item (default {DEFAULT_SEED})",
    )


BENCHMARK = Benchmark(
    NAME,
    load,
    score_negrefcocog,
    [("accuracy", "accuracy"), ("chance", "chance_accuracy")],
    add_arguments,
)
