"""Data sets the app offers: the bundled example photos, generated negation-world scenes and a user's upload."""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from negclip.data import (
    McqItem,
    NegationExample,
    RetrievalItem,
    read_jsonl,
    read_negbench_mcq_csv,
    read_negbench_retrieval_csv,
)
from negclip.evaluate import retrieval_items_from_examples
from negclip.sources import load_negation_examples
from webapp.inputs import InputError, UploadedData
from webapp.models import negation_world_available
from webapp.session import work_root

logger = logging.getLogger(__name__)

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "assets" / "examples"
EXAMPLES_JSON = EXAMPLES_DIR / "examples.json"
EXAMPLES_NEGATIONS = EXAMPLES_DIR / "negations.jsonl"
EXAMPLES_MCQ = EXAMPLES_DIR / "mcq.csv"

BUNDLED = "example photos (6 COCO photos)"
WORLD = "negation-world scenes (generated)"
UPLOADED = "uploaded data set"
SOURCES = (BUNDLED, WORLD, UPLOADED)

# Scenes generated for the world source: a training split for Fine-tune and a test split for Evaluate and
# Embedding map, with the world's own seeds so that they never overlap.
WORLD_TRAIN_SCENES = 512
WORLD_TEST_SCENES = 200
WORLD_EXAMPLE_SCENES = 3

_world_lock = threading.Lock()


@dataclass
class ExamplePhoto:
    """One bundled photo with the Compare tab's default captions."""

    path: str
    captions: list[str]
    true_captions: list[str]
    label: str


def example_photos() -> list[ExamplePhoto]:
    """Read the bundled example photos, followed by a few negation-world scenes when that model is bundled."""
    photos = []
    for entry in json.loads(EXAMPLES_JSON.read_text()):
        captions = [item["caption"] for item in entry["compare_captions"]]
        true_captions = [item["caption"] for item in entry["compare_captions"] if item["true"]]
        label = ", ".join(entry["objects"][:3])
        photos.append(ExamplePhoto(str(EXAMPLES_DIR / entry["file"]), captions, true_captions, label))
    if negation_world_available():
        photos += world_example_photos()
    return photos


def world_example_photos(count: int = WORLD_EXAMPLE_SCENES) -> list[ExamplePhoto]:
    """Return the first scenes of the world's test split with their caption, T- (false) and Ta (true).

    The negation-world model was trained only on such scenes, so on photos its scores mean little.
    """
    folder = world_split("test")
    photos = []
    for example in read_jsonl(folder / "examples.jsonl")[:count]:
        captions = [example.caption, example.presence_negated, example.absence_negated]
        label = "scene: " + ", ".join(example.objects[:3])
        photos.append(ExamplePhoto(example.image, captions, [example.caption, example.absence_negated], label))
    return photos


def world_split(split: str) -> Path:
    """Return the folder of a generated world split, writing it on first use (about a second for 500 scenes)."""
    from negclip.world import SPLIT_SEEDS, generate_split

    count = WORLD_TRAIN_SCENES if split == "train" else WORLD_TEST_SCENES
    folder = work_root() / "shared" / f"world-{split}-{SPLIT_SEEDS[split]}-{count}"
    with _world_lock:
        if not (folder / "world.json").is_file():
            generate_split(folder, split, SPLIT_SEEDS[split], count)
    return folder


def _uploaded(upload: UploadedData | None) -> UploadedData:
    if upload is None:
        raise InputError("no data set uploaded in this session; upload a data file and its images first")
    return upload


def training_data(source: str, upload: UploadedData | None) -> tuple[str, str | None]:
    """Return (data file, image root) for TrainConfig."""
    if source == BUNDLED:
        return str(EXAMPLES_NEGATIONS), None
    if source == WORLD:
        return str(world_split("train") / "examples.jsonl"), None
    if source == UPLOADED:
        upload = _uploaded(upload)
        return str(upload.path), str(upload.image_root) if upload.image_root else None
    raise InputError(f"unknown data source {source!r}; choose one of: {', '.join(SOURCES)}")


def negation_examples(source: str, upload: UploadedData | None, split: str = "test") -> list[NegationExample]:
    """Read (or build) negation examples of a source; the world source uses its `split`."""
    if source == WORLD:
        return load_negation_examples(world_split(split) / "examples.jsonl")
    data, image_root = training_data(source, upload)
    return load_negation_examples(data, image_root)


def mcq_items(source: str, upload: UploadedData | None) -> list[McqItem]:
    """Read the multiple-choice questions of a source; an upload must be a NegBench MCQ CSV."""
    if source == BUNDLED:
        return read_negbench_mcq_csv(EXAMPLES_MCQ)
    if source == WORLD:
        return read_negbench_mcq_csv(world_split("test") / "mcq.csv")
    upload = _uploaded(upload)
    if upload.format != "negbench_mcq":
        raise InputError(
            f"{upload.path.name} is a {upload.format.replace('_', ' ')} file, not multiple choice; upload a NegBench "
            "MCQ CSV (image_path, correct_answer, caption_0, caption_1, ...) to run mcq"
        )
    return read_negbench_mcq_csv(upload.path, upload.image_root)


def retrieval_items(source: str, upload: UploadedData | None) -> list[RetrievalItem]:
    """Group the source's affirmative captions by image for retrieval."""
    if source == WORLD:
        return read_negbench_retrieval_csv(world_split("test") / "retrieval.csv")
    return retrieval_items_from_examples(negation_examples(source, upload))
