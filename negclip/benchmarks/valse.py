"""VALSE existence: does the model prefer "There are no animals." over the foil "There are animals."?

VALSE (Parcalabescu et al., ACL 2022) publishes `existence.json`, a JSON object of items keyed by id. Each
item has `image_file` (a Visual7W photo), `caption`, `foil`, `mturk` votes (`caption`, `foil`, `other`)
and `provenance_of_foils`. In `zero_to_something` items the caption denies an object and the foil asserts
it, and `something_to_zero` items are the reverse. As the VALSE authors do, only items whose caption at
least 2 of the 3 annotators judged correct are kept.
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from negclip.benchmarks.common import (
    UNREADABLE_IMAGE,
    BenchmarkData,
    counts,
    first_items,
    option,
    read_json,
    require_path,
    resolve_images,
    score_caption_pairs,
    share,
)
from negclip.data import DataFormatError, PathLike
from negclip.evaluate import Benchmark
from negclip.models import LoadedClip

NAME = "valse-existence"
MIN_CAPTION_VOTES = 2


@dataclass
class ValseItem:
    """One VALSE item: a true caption and a foil for one image."""

    image: str
    caption: str
    foil: str
    caption_votes: int  # annotators (of 3) who judged the caption correct for the image
    provenance: str  # provenance_of_foils
    item_id: str


@dataclass
class ValseData(BenchmarkData):
    """VALSE items kept by the annotator vote, with their images found on disk."""

    min_caption_votes: int = MIN_CAPTION_VOTES
    excluded_by_votes: int = 0  # items the vote filter removed: a selection, not a skip


def read_valse(path: PathLike) -> list[ValseItem]:
    """Read a VALSE JSON file (existence.json or another piece); image paths stay as written.

    Raises DataFormatError naming the item id for a missing or mistyped field.
    """
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataFormatError(path, f"expected a JSON object of items keyed by id, not {type(data).__name__}")
    return [_valse_item(path, str(item_id), entry) for item_id, entry in data.items()]


def _valse_item(path: PathLike, item_id: str, entry: Any) -> ValseItem:
    where = f"item {item_id!r}"
    if not isinstance(entry, dict):
        raise DataFormatError(path, f"expected a JSON object, not {type(entry).__name__}", entry=where)
    texts = {}
    for key in ("image_file", "caption", "foil", "provenance_of_foils"):
        value = entry.get(key)
        if not isinstance(value, str) or not value.strip():
            raise DataFormatError(path, f"{key!r} must be a non-empty string, not {value!r}", entry=where)
        texts[key] = value.strip()
    votes = entry.get("mturk")
    caption_votes = votes.get("caption") if isinstance(votes, dict) else None
    if isinstance(caption_votes, bool) or not isinstance(caption_votes, int):
        raise DataFormatError(path, f"'mturk' must contain an integer 'caption' vote count, not {votes!r}", entry=where)
    return ValseItem(
        texts["image_file"], texts["caption"], texts["foil"], caption_votes, texts["provenance_of_foils"], item_id
    )


def load_valse(
    path: PathLike,
    image_root: PathLike | None = None,
    limit: int | None = None,
    min_caption_votes: int = MIN_CAPTION_VOTES,
) -> ValseData:
    """Keep items with at least `min_caption_votes` caption votes, then the first `limit`, and find their images.

    Items whose image is missing are skipped and counted; MissingImagesError is raised when most are missing.
    """
    every_item = read_valse(path)
    voted_items = [item for item in every_item if item.caption_votes >= min_caption_votes]
    skipped: Counter = Counter()
    items = resolve_images(first_items(voted_items, limit), image_root, path, skipped)
    return ValseData(
        items,
        str(path),
        None if image_root is None else str(image_root),
        skipped,
        min_caption_votes,
        len(every_item) - len(voted_items),
    )


def score_valse(clip: LoadedClip, data: ValseData) -> dict:
    """Compute the share of items where sim(image, caption) > sim(image, foil), overall and by
    provenance_of_foils.

    An exact tie is a miss.
    """
    skipped = Counter(data.skipped)
    pairs = score_caption_pairs(
        clip,
        [item.image for item in data.items],
        [item.caption for item in data.items],
        [item.foil for item in data.items],
        data.image_root,
    )
    skipped[UNREADABLE_IMAGE] += pairs.unreadable_items
    by_provenance: dict[str, list[bool]] = defaultdict(list)
    for index, win in zip(pairs.scored_indices, pairs.wins):
        by_provenance[data.items[index].provenance].append(win)
    return {
        "accuracy": share(pairs.wins),
        **counts(len(pairs.wins), skipped),
        "ties": pairs.ties,
        "by_provenance": {name: share(wins) for name, wins in sorted(by_provenance.items())},
        "count_by_provenance": {name: len(wins) for name, wins in sorted(by_provenance.items())},
        "min_caption_votes": data.min_caption_votes,
        "excluded_by_votes": data.excluded_by_votes,
    }


def load(args: argparse.Namespace) -> ValseData:
    path = require_path(args, "valse", NAME, "VALSE's existence.json")
    image_root = option(args, "valse_image_root") or option(args, "image_root")
    return load_valse(path, image_root, option(args, "limit"), option(args, "valse_min_votes", MIN_CAPTION_VOTES))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("valse-existence")
    group.add_argument("--valse", metavar="PATH", help="VALSE's existence.json as published")
    group.add_argument(
        "--valse-image-root",
        metavar="DIR",
        help="folder that contains the Visual7W photos (default: --image-root)",
    )
    group.add_argument(
        "--valse-min-votes",
        type=int,
        default=MIN_CAPTION_VOTES,
        metavar="N",
        help=f"keep items whose caption at least N of 3 annotators accepted (default {MIN_CAPTION_VOTES})",
    )


BENCHMARK = Benchmark(
    NAME,
    load,
    score_valse,
    [
        ("accuracy", "accuracy"),
        ("zero_to_something", "by_provenance.zero_to_something"),
        ("something_to_zero", "by_provenance.something_to_zero"),
    ],
    add_arguments,
)
