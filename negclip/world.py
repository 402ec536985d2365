"""Procedural negation world: coloured shapes in rooms, their captions, negations and data splits.

A scene is one room (a background style plus the objects that usually appear there) holding one to four
distinct objects. An object is a colour and a shape ("red circle"). The objects of a scene's room that it
does not show are its plausible absent objects, as a fork is plausible at a dinner table. Everything is
drawn from a NumPy generator seeded with (split seed, scene index), so a scene does not depend on how many
scenes are generated with it.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from negclip.negations import PHRASING_NAMES, negate_caption, noun_forms, with_article

logger = logging.getLogger(__name__)

DEFAULT_IMAGE_SIZE = 64
MAX_OBJECTS = 4

# Saturated object colours; the room backgrounds below stay pale or grey so every object stays visible.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 165, 50),
    "blue": (35, 75, 215),
    "yellow": (235, 205, 25),
    "purple": (135, 45, 175),
    "orange": (240, 125, 25),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring")
OBJECTS: tuple[str, ...] = tuple(f"{colour} {shape}" for colour in COLOURS for shape in SHAPES)


@dataclass(frozen=True)
class Room:
    """A background style and the objects that usually appear on it."""

    name: str
    background: tuple[int, int, int]  # base RGB colour, jittered per scene
    pattern: str  # "plain" | "stripes" | "checker" | "gradient" | "noise" | "dots"
    objects: tuple[str, ...]


def _build_rooms() -> tuple[Room, ...]:
    """Give each of six rooms eight objects: six of its own and two shared with another room.

    The split is drawn once from a fixed seed, so it is part of the world's definition and the same for
    every split seed.
    """
    styles = (
        ("kitchen", (214, 206, 190), "checker"),
        ("garden", (150, 178, 140), "noise"),
        ("beach", (222, 208, 168), "gradient"),
        ("office", (168, 170, 176), "plain"),
        ("bedroom", (212, 180, 190), "stripes"),
        ("garage", (110, 110, 116), "dots"),
    )
    rng = np.random.default_rng(20_240_601)
    order = [OBJECTS[i] for i in rng.permutation(len(OBJECTS))]
    own = [order[6 * index : 6 * index + 6] for index in range(len(styles))]
    rooms = []
    for index, (name, background, pattern) in enumerate(styles):
        neighbour = own[(index + 1) % len(styles)]
        shared = [neighbour[int(k)] for k in rng.choice(len(neighbour), size=2, replace=False)]
        rooms.append(Room(name, background, pattern, tuple(own[index] + shared)))
    return tuple(rooms)


ROOMS: tuple[Room, ...] = _build_rooms()
ROOMS_BY_NAME: dict[str, Room] = {room.name: room for room in ROOMS}

# Share of a scene's objects drawn from the whole vocabulary instead of from its room.
OUT_OF_ROOM_RATE = 0.15


@dataclass(frozen=True)
class PlacedObject:
    """One object of a scene and where it is drawn, in pixels of the rendered image."""

    name: str
    x: float
    y: float
    radius: float
    angle: float  # radians; rotates triangles, stars and crosses
    shade: float  # brightness factor applied to the object's colour

    @property
    def colour(self) -> str:
        return self.name.split(" ")[0]

    @property
    def shape(self) -> str:
        return self.name.split(" ")[1]


@dataclass(frozen=True)
class Scene:
    """A room, the objects drawn in it and the parameters of its background."""

    room: str
    objects: tuple[PlacedObject, ...]
    image_size: int
    background_shift: tuple[int, int, int]
    background_seed: int

    @property
    def object_names(self) -> list[str]:
        return [placed.name for placed in self.objects]

    @property
    def absent_objects(self) -> list[str]:
        """The room's objects that the scene does not show: its plausible absent objects."""
        present = set(self.object_names)
        return [name for name in ROOMS_BY_NAME[self.room].objects if name not in present]


def scene_rng(seed: int, index: int, stream: int = 0) -> np.random.Generator:
    """Return the generator of scene `index` under `seed`; `stream` separates pretraining from splits."""
    return np.random.default_rng([int(stream), int(seed), int(index)])


def sample_scene(rng: np.random.Generator, image_size: int = DEFAULT_IMAGE_SIZE) -> Scene:
    """Draw a room, one to four distinct objects and their non-overlapping places."""
    room = ROOMS[int(rng.integers(len(ROOMS)))]
    count = int(rng.integers(1, MAX_OBJECTS + 1))
    names: list[str] = []
    while len(names) < count:
        pool = OBJECTS if rng.random() < OUT_OF_ROOM_RATE else room.objects
        name = pool[int(rng.integers(len(pool)))]
        if name not in names:
            names.append(name)

    placed: list[PlacedObject] = []
    for name in names:
        placed.append(_place(rng, name, placed, image_size))
    shift = tuple(int(v) for v in rng.integers(-18, 19, size=3))
    return Scene(room.name, tuple(placed), image_size, shift, int(rng.integers(2**31)))


def _place(rng: np.random.Generator, name: str, placed: list[PlacedObject], image_size: int) -> PlacedObject:
    """Place one object where it does not overlap the ones already placed (smallest overlap after 50 tries)."""
    scale = image_size / 64.0
    best: PlacedObject | None = None
    best_overlap = math.inf
    for _ in range(50):
        radius = float(rng.uniform(6.5, 11.0)) * scale
        x = float(rng.uniform(radius + 1, image_size - radius - 1))
        y = float(rng.uniform(radius + 1, image_size - radius - 1))
        candidate = PlacedObject(name, x, y, radius, float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(0.85, 1.1)))
        overlap = max(
            (other.radius + radius + scale - math.hypot(other.x - x, other.y - y) for other in placed), default=-1.0
        )
        if overlap <= 0:
            return candidate
        if overlap < best_overlap:
            best, best_overlap = candidate, overlap
    assert best is not None
    return best


# Drawing is done at SUPERSAMPLE times the image size and reduced with a box filter, for anti-aliased edges.
SUPERSAMPLE = 2


def render_scene(scene: Scene) -> Image.Image:
    """Draw a scene as an RGB image of scene.image_size pixels square."""
    size = scene.image_size * SUPERSAMPLE
    background = _background(ROOMS_BY_NAME[scene.room], scene.background_shift, scene.background_seed, size)
    image = Image.fromarray(background, mode="RGB")
    draw = ImageDraw.Draw(image)
    for placed in scene.objects:
        _draw_object(draw, placed, SUPERSAMPLE)
    return image.reduce(SUPERSAMPLE)


def _background(room: Room, shift: tuple[int, int, int], seed: int, size: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.clip(np.array(room.background, dtype=np.float32) + np.array(shift, dtype=np.float32), 0, 255)
    grid_y, grid_x = np.mgrid[0:size, 0:size].astype(np.float32)
    if room.pattern == "checker":
        cell = int(rng.integers(8, 17)) * size // 128
        light = ((grid_x // cell + grid_y // cell) % 2)[..., None]
        pixels = base + (light - 0.5) * 28
    elif room.pattern == "stripes":
        period = float(rng.uniform(10, 20)) * size / 128
        angle = float(rng.uniform(0, math.pi))
        phase = np.cos(angle) * grid_x + np.sin(angle) * grid_y
        pixels = base + (np.sin(phase * 2 * math.pi / period) > 0)[..., None] * 22 - 11
    elif room.pattern == "gradient":
        angle = float(rng.uniform(0, 2 * math.pi))
        ramp = (np.cos(angle) * (grid_x - size / 2) + np.sin(angle) * (grid_y - size / 2)) / size
        pixels = base + ramp[..., None] * 50
    elif room.pattern == "noise":
        coarse = rng.normal(0, 14, size=(8, 8, 3)).astype(np.float32)
        pixels = base + np.kron(coarse, np.ones((size // 8, size // 8, 1), dtype=np.float32))
        pixels += rng.normal(0, 4, size=pixels.shape).astype(np.float32)
    elif room.pattern == "dots":
        pixels = np.broadcast_to(base, (size, size, 3)).copy()
        spacing = int(rng.integers(12, 21)) * size // 128
        dots = ((grid_x % spacing) < spacing / 3) & ((grid_y % spacing) < spacing / 3)
        pixels[dots] += 25
    else:
        pixels = np.broadcast_to(base, (size, size, 3)) + rng.normal(0, 3, size=(size, size, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _draw_object(draw: ImageDraw.ImageDraw, placed: PlacedObject, factor: int) -> None:
    fill = tuple(int(min(255, channel * placed.shade)) for channel in COLOURS[placed.colour])
    x, y, r, angle = placed.x * factor, placed.y * factor, placed.radius * factor, placed.angle
    shape = placed.shape
    if shape == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    elif shape == "ring":
        draw.ellipse((x - r, y - r, x + r, y + r), outline=fill, width=max(2, int(r * 0.38)))
    elif shape == "square":
        half = r * 0.85
        draw.rectangle((x - half, y - half, x + half, y + half), fill=fill)
    elif shape == "triangle":
        draw.polygon(_regular_polygon(x, y, r, 3, angle), fill=fill)
    elif shape == "star":
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else r * 0.45
            theta = angle + k * math.pi / 5
            points.append((x + radius * math.cos(theta), y + radius * math.sin(theta)))
        draw.polygon(points, fill=fill)
    elif shape == "cross":
        arm = r * 0.32
        for theta in (angle, angle + math.pi / 2):
            dx, dy = math.cos(theta), math.sin(theta)
            nx, ny = -dy, dx
            draw.polygon(
                [
                    (x - dx * r - nx * arm, y - dy * r - ny * arm),
                    (x + dx * r - nx * arm, y + dy * r - ny * arm),
                    (x + dx * r + nx * arm, y + dy * r + ny * arm),
                    (x - dx * r + nx * arm, y - dy * r + ny * arm),
                ],
                fill=fill,
            )
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {', '.join(SHAPES)}")


def _regular_polygon(x: float, y: float, r: float, sides: int, angle: float) -> list[tuple[float, float]]:
    return [
        (x + r * math.cos(angle + 2 * math.pi * k / sides), y + r * math.sin(angle + 2 * math.pi * k / sides))
        for k in range(sides)
    ]


# ---------------------------------------------------------------------------------------------------------
# Captions. Affirmative captions never contain a negation, and pretraining reads only these. Every caption,
# affirmative or negated, is a sentence with a capital letter and a full stop, so punctuation cannot
# separate negated captions from affirmative ones.

# Templates with {bare} list objects without articles, as tag-style web captions do ("red star, blue ring"),
# so the model learns each object's words in any context, not only after "a".
AFFIRMATIVE_TEMPLATES = (
    "{bare}",
    "{bare} {where}",
    "photo of {bare}",
    "{objects}",
    "a photo of {objects}",
    "there is {objects}",
    "this image shows {objects}",
    "{objects} {where}",
    "a picture of {objects} {where}",
    "{objects} can be seen here",
)
# Place phrase of each room, as it follows a list of objects.
ROOM_PLACES = {
    "kitchen": "in the kitchen",
    "garden": "in the garden",
    "beach": "on the beach",
    "office": "in the office",
    "bedroom": "in the bedroom",
    "garage": "in the garage",
}
# Base of a presence-negated caption when the negated object is the scene's only object.
EMPTY_ROOM_TEMPLATES = ("a photo of the {room}", "a picture of a {room}", "an image of the {room}")


def list_objects(names: list[str], articles: bool = True) -> str:
    """Join object names, with articles when `articles` is set: "a red star, a blue ring and an orange cross"."""
    phrases = [with_article(name) for name in names] if articles else list(names)
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + "."


def _shuffled(rng: np.random.Generator, names: list[str]) -> list[str]:
    return [names[int(i)] for i in rng.permutation(len(names))]


# Clauses that name a present object after (or before) a caption. They mirror the negation phrasings of
# negclip.negations word for word, less the negation, as web captions stress what they show. Half of the
# time the clause is the only mention of its object, as the denied object of a presence-negated caption is.
# A model pretrained only on clauses that repeat listed objects learns to skip them. It then prefers a true
# caption over a presence-negated one because the negated object sits in a skipped clause, not because it
# reads "no".
EMPHASIS_TEMPLATES = (
    "{caption}, but there is {a_object}.",
    "There is {a_object} in this image; {continuation}.",
    "{caption} with {a_object}.",
    "{caption}, with {objects} in sight.",
    "{caption}, and {a_object} is visible.",
    "{A_object} can be seen, but {continuation}.",
)
EMPHASIS_RATE = 0.5
CLAUSE_ONLY_RATE = 0.5  # share of stressed objects named only in the clause


def affirmative_caption(rng: np.random.Generator, names: list[str], room: str, emphasis: bool = True) -> str:
    """Describe the objects present, in a random phrasing and order.

    With `emphasis`, half of the captions stress one present object with a clause from EMPHASIS_TEMPLATES,
    which either repeats a listed object or is the only mention of it.
    """
    if not emphasis or rng.random() >= EMPHASIS_RATE:
        return _sentence(_list_caption(rng, names, room))
    stressed = _pick(rng, names)
    others = [name for name in names if name != stressed]
    if rng.random() >= CLAUSE_ONLY_RATE:
        caption = _list_caption(rng, names, room)
    elif others:
        caption = _list_caption(rng, others, room)
    else:
        caption = _pick(rng, EMPTY_ROOM_TEMPLATES).format(room=room)
    a_object = with_article(stressed)
    return _pick(rng, EMPHASIS_TEMPLATES).format(
        caption=caption[:1].upper() + caption[1:],
        continuation=caption,
        a_object=a_object,
        A_object=a_object[:1].upper() + a_object[1:],
        objects=noun_forms(stressed).plural,
    )


def _list_caption(rng: np.random.Generator, names: list[str], room: str) -> str:
    """List the objects in a random template and order, without the final full stop."""
    order = _shuffled(rng, names)
    return _pick(rng, AFFIRMATIVE_TEMPLATES).format(
        objects=list_objects(order), bare=list_objects(order, articles=False), where=ROOM_PLACES[room]
    )


def presence_negated_caption(rng: np.random.Generator, names: list[str], negated: str, room: str) -> str:
    """Write a false caption: the other present objects, then a denial of `negated`, which is present.

    This is presence negation as in "A cat on a sofa, but there is no dog." made from "A dog and a cat on a
    sofa.": the caption names the same objects as the true one and differs in what it denies.
    """
    others = [name for name in names if name != negated]
    if others:
        base = affirmative_caption(rng, others, room, emphasis=False)
    else:
        base = _sentence(_pick(rng, EMPTY_ROOM_TEMPLATES).format(room=room))
    return negate_caption(base, negated, _pick(rng, PHRASING_NAMES))


def absence_negated_caption(rng: np.random.Generator, names: list[str], negated: str, room: str) -> str:
    """Write a true caption: every present object, then a denial of `negated`, which is absent."""
    return negate_caption(affirmative_caption(rng, names, room, emphasis=False), negated, _pick(rng, PHRASING_NAMES))


# NegBench's multiple-choice templates. The correct option affirms present objects ("positive"), denies an
# absent one ("negative") or does both ("hybrid"). The three wrong options are the same for every template:
# the hybrid with the roles swapped, an affirmation of the absent object and a denial of a present one.
MCQ_CORRECT = {
    "positive": ("this image shows {present_list}", "{present_list} can be seen in this image"),
    "negative": ("there is no {absent} in this image", "no {absent} appears in this image"),
    "hybrid": ("this image shows {a_present}, but no {absent}", "{a_present} is here, with no {absent} in sight"),
}
MCQ_WRONG = (
    ("this image shows {a_absent}, but no {present}", "{a_absent} is here, with no {present} in sight"),
    ("this image shows {a_absent}", "{a_absent} can be seen in this image"),
    ("there is no {present} in this image", "no {present} appears in this image"),
)
MCQ_TEMPLATES = tuple(MCQ_CORRECT)


def mcq_options(
    rng: np.random.Generator, names: list[str], absent_candidates: list[str], template: str
) -> tuple[list[str], int]:
    """Build four NegBench-style options for a scene; return them shuffled with the index of the true one."""
    present = _pick(rng, names)
    absent = _pick(rng, absent_candidates)
    order = _shuffled(rng, names)
    fields = dict(
        present=present,
        a_present=with_article(present),
        present_list=list_objects(order),
        absent=absent,
        a_absent=with_article(absent),
    )
    options = [_sentence(_pick(rng, MCQ_CORRECT[template]).format(**fields))]
    options += [_sentence(_pick(rng, wrong).format(**fields)) for wrong in MCQ_WRONG]
    permutation = [int(i) for i in rng.permutation(len(options))]
    return [options[i] for i in permutation], permutation.index(0)


# ---------------------------------------------------------------------------------------------------------
# Splits on disk.

# Default seed of each split. Fine-tuning reads the train split; reported numbers come from the test split,
# whose seed no training run uses.
SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}
RETRIEVAL_CAPTIONS_PER_IMAGE = 3


@dataclass
class SplitSummary:
    """Paths and settings of a split written by generate_split."""

    folder: Path
    split: str
    seed: int
    count: int
    examples: Path
    mcq: Path
    retrieval: Path
    negated_retrieval: Path


def scene_records(split: str, seed: int, index: int, image_size: int = DEFAULT_IMAGE_SIZE) -> tuple[Image.Image, dict]:
    """Render scene `index` of a split and write its captions, negations and multiple-choice row.

    Returns the image and a dict with the JSONL fields (image left empty), `mcq_captions`,
    `mcq_correct`, `mcq_template` and `retrieval_captions`, `negated_retrieval_captions`.
    """
    rng = scene_rng(seed, index)
    scene = sample_scene(rng, image_size)
    names, absent, room = scene.object_names, scene.absent_objects, scene.room
    present_object = _pick(rng, names)
    absent_object = _pick(rng, absent)
    template = MCQ_TEMPLATES[index % len(MCQ_TEMPLATES)]
    mcq_captions, mcq_correct = mcq_options(rng, names, absent, template)
    record = {
        "image": "",
        "caption": affirmative_caption(rng, names, room),
        "presence_negated": presence_negated_caption(rng, names, present_object, room),
        "absence_negated": absence_negated_caption(rng, names, absent_object, room),
        "present_object": present_object,
        "absent_object": absent_object,
        "objects": names,
        "absent_objects": absent,
        "image_id": f"{split}-{seed}-{index:06d}",
        "mcq_captions": mcq_captions,
        "mcq_correct": mcq_correct,
        "mcq_template": template,
        "retrieval_captions": _distinct_captions(rng, lambda: affirmative_caption(rng, names, room)),
        "negated_retrieval_captions": _distinct_captions(
            rng, lambda: absence_negated_caption(rng, names, _pick(rng, absent), room)
        ),
    }
    return render_scene(scene), record


def _distinct_captions(rng: np.random.Generator, make) -> list[str]:
    captions: list[str] = []
    for _ in range(10 * RETRIEVAL_CAPTIONS_PER_IMAGE):
        caption = make()
        if caption not in captions:
            captions.append(caption)
        if len(captions) == RETRIEVAL_CAPTIONS_PER_IMAGE:
            break
    return captions


def generate_split(
    out: str | Path, split: str, seed: int, count: int, image_size: int = DEFAULT_IMAGE_SIZE, progress: bool = False
) -> SplitSummary:
    """Write `count` scenes of a split: PNG images, the project's JSONL, a NegBench MCQ CSV and retrieval CSVs.

    Paths inside the files are relative to `out`. Files written: images/<index>.png, examples.jsonl, mcq.csv,
    retrieval.csv (affirmative captions), negated_retrieval.csv (true captions with a negation) and world.json.
    """
    from tqdm import tqdm

    from negclip.data import NegationExample, write_jsonl

    if count < 1:
        raise ValueError(f"count must be at least 1, not {count}")
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLIT_SEEDS)}")
    if split != "test" and seed == SPLIT_SEEDS["test"]:
        logger.warning("seed %d is the test split's seed; training on it would leak test scenes", seed)

    folder = Path(out)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    examples, mcq_rows, retrieval_rows, negated_rows = [], [], [], []
    for index in tqdm(range(count), desc=f"world {split}", disable=not progress):
        image, record = scene_records(split, seed, index, image_size)
        relative = f"images/{index:06d}.png"
        image.save(folder / relative)
        examples.append(
            NegationExample(
                image=relative,
                caption=record["caption"],
                presence_negated=record["presence_negated"],
                absence_negated=record["absence_negated"],
                present_object=record["present_object"],
                absent_object=record["absent_object"],
                objects=record["objects"],
                absent_objects=record["absent_objects"],
                image_id=record["image_id"],
            )
        )
        mcq_rows.append(
            [relative, record["mcq_correct"], *record["mcq_captions"], record["mcq_template"]]
        )
        # NegBench writes its list columns as Python-list strings; repr() gives the same form.
        labels = [repr(record["objects"]), repr(record["absent_objects"]), relative, record["image_id"]]
        retrieval_rows.append([*labels, repr(record["retrieval_captions"])])
        negated_rows.append([*labels, repr(record["negated_retrieval_captions"])])

    summary = SplitSummary(
        folder=folder,
        split=split,
        seed=seed,
        count=count,
        examples=folder / "examples.jsonl",
        mcq=folder / "mcq.csv",
        retrieval=folder / "retrieval.csv",
        negated_retrieval=folder / "negated_retrieval.csv",
    )
    write_jsonl(examples, summary.examples)
    _write_csv(
        summary.mcq,
        ["image_path", "correct_answer", "caption_0", "caption_1", "caption_2", "caption_3", "correct_answer_template"],
        mcq_rows,
    )
    retrieval_header = ["positive_objects", "negative_objects", "filepath", "image_id", "captions"]
    _write_csv(summary.retrieval, retrieval_header, retrieval_rows)
    _write_csv(summary.negated_retrieval, retrieval_header, negated_rows)
    manifest = {
        "split": split,
        "seed": seed,
        "count": count,
        "image_size": image_size,
        "objects": list(OBJECTS),
        "rooms": {room.name: list(room.objects) for room in ROOMS},
        "files": {
            "examples": summary.examples.name,
            "mcq": summary.mcq.name,
            "retrieval": summary.retrieval.name,
            "negated_retrieval": summary.negated_retrieval.name,
        },
    }
    (folder / "world.json").write_text(json.dumps(manifest, indent=2) + "\n")
    logger.info("wrote %d %s scenes (seed %d) to %s", count, split, seed, folder)
    return summary


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `world` on the CLI's subparsers."""
    parser = subparsers.add_parser(
        "world",
        help="write a split of the procedural negation world (images, JSONL, MCQ and retrieval CSVs)",
        description=(
            "Write procedural scenes of coloured shapes with affirmative captions, presence- and absence-negated "
            "captions, NegBench-style multiple-choice rows and retrieval files. Paths in the files are relative "
            "to --out."
        ),
    )
    parser.add_argument("--split", choices=list(SPLIT_SEEDS), required=True, help="split name, used in image ids")
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="scene seed (default: train 0, val 1, test 2; never train on the test seed)",
    )
    parser.add_argument("--count", type=int, default=1000, help="number of scenes (default: %(default)s)")
    parser.add_argument("--out", required=True, help="folder to write into; created if missing")
    parser.add_argument(
        "--image-size", type=int, default=DEFAULT_IMAGE_SIZE, help="image side in pixels (default: %(default)s)"
    )
    parser.set_defaults(func=run_world)
    return parser


def run_world(args: argparse.Namespace) -> int:
    seed = SPLIT_SEEDS[args.split] if args.seed is None else args.seed
    summary = generate_split(args.out, args.split, seed, args.count, args.image_size, progress=True)
    print(
        f"wrote {summary.count} {summary.split} scenes (seed {summary.seed}) to {summary.folder}: "
        f"{summary.examples.name}, {summary.mcq.name}, {summary.retrieval.name}, {summary.negated_retrieval.name}"
    )
    return 0
