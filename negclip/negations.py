"""Build negated captions from captions and object labels.

For each caption of an image the builder writes two variants in the same phrasing:
  presence_negated (false): negates an object that is in the image ("..., but there is no dog");
  absence_negated (true): negates a plausible object that is not ("..., but there is no fork").
Both use one phrasing, so only the negated object differs and a model cannot separate them by
wording. Plausible absent objects come from the data (NegBench negative_objects) or, when the data has
none, from a CooccurrenceTable over the user's own annotations.
"""

from __future__ import annotations

import logging
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from negclip.data import ImageRecord, NegationExample

logger = logging.getLogger(__name__)

# The 80 COCO object categories, in COCO's category-id order.
COCO_CATEGORIES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip

# Number of plausible absent objects the co-occurrence table proposes per image. NegBench also gives 3.
DEFAULT_ABSENT_POOL_SIZE = 3

# ---------------------------------------------------------------------------------------------------------
# Articles and plurals

# Plural forms that the suffix rules in `pluralize` get wrong. Multi-word names use the last word's entry.
IRREGULAR_PLURALS = {
    "person": "people",
    "man": "men",
    "woman": "women",
    "child": "children",
    "mouse": "mice",
    "knife": "knives",
    "leaf": "leaves",
    "shelf": "shelves",
    "wolf": "wolves",
    "foot": "feet",
    "tooth": "teeth",
    "goose": "geese",
    "sheep": "sheep",
    "deer": "deer",
    "fish": "fish",
    "potato": "potatoes",
    "tomato": "tomatoes",
}

# Nouns used only in the plural: they take no article and a plural verb ("there are no skis").
PLURAL_ONLY_NOUNS = frozenset({"skis", "scissors", "glasses", "sunglasses", "jeans", "pants", "shorts", "trousers"})

# Mass nouns: no article and no plural ("without broccoli", "with no broccoli in sight").
MASS_NOUNS = frozenset({"broccoli", "grass", "snow", "water", "sand", "food", "rice", "bread", "luggage", "furniture"})

# Display forms for labels that are written differently in running text.
DISPLAY_FORMS = {"tv": ("TV", "TVs")}

# Words spelt with a vowel but pronounced with a consonant sound ("a unicorn", "a one-way sign"), and the reverse.
_CONSONANT_SOUND_PREFIXES = ("uni", "use", "usu", "uten", "uk", "eu", "one", "once", "ewe")
_VOWEL_SOUND_PREFIXES = ("hour", "honest", "honor", "honour", "heir")


@dataclass(frozen=True)
class NounForms:
    """The forms of an object name that the phrasings need."""

    singular: str
    plural: str
    indefinite: str
    is_plural_only: bool


def indefinite_article(word: str) -> str:
    """Return "a" or "an" for a word, by its first sound ("an umbrella", "a unicorn", "an hour", "a TV")."""
    lowered = word.strip().lower()
    if not lowered:
        raise ValueError("indefinite_article needs a non-empty word")
    if lowered.startswith(_VOWEL_SOUND_PREFIXES):
        return "an"
    if lowered.startswith(_CONSONANT_SOUND_PREFIXES):
        return "a"
    return "an" if lowered[0] in "aeiou" else "a"


def pluralize(noun: str) -> str:
    """Return the plural of a noun. For a multi-word name only the last word changes ("wine glasses")."""
    head, _, last = noun.strip().rpartition(" ")
    lowered = last.lower()
    if lowered in IRREGULAR_PLURALS:
        plural = IRREGULAR_PLURALS[lowered]
    elif lowered in PLURAL_ONLY_NOUNS or lowered in MASS_NOUNS:
        plural = last
    elif lowered.endswith(("s", "x", "z", "ch", "sh")):
        plural = last + "es"
    elif lowered.endswith("y") and len(lowered) > 1 and lowered[-2] not in "aeiou":
        plural = last[:-1] + "ies"
    else:
        plural = last + "s"
    return f"{head} {plural}" if head else plural


@lru_cache(maxsize=4096)
def noun_forms(name: str) -> NounForms:
    """Return singular, plural and article forms for an object name such as a COCO category."""
    name = " ".join(name.split())
    if not name:
        raise ValueError("object name is empty")
    last_word = name.rsplit(" ", 1)[-1].lower()
    if name.lower() in DISPLAY_FORMS:
        singular, plural = DISPLAY_FORMS[name.lower()]
        return NounForms(singular, plural, f"{indefinite_article(singular)} {singular}", False)
    if last_word in PLURAL_ONLY_NOUNS:
        return NounForms(name, name, name, True)
    if last_word in MASS_NOUNS:
        return NounForms(name, name, name, False)
    return NounForms(name, pluralize(name), f"{indefinite_article(name)} {name}", False)


def with_article(name: str) -> str:
    """Return the name with its indefinite article ("an umbrella"), or bare for plural-only and mass nouns."""
    return noun_forms(name).indefinite


# ---------------------------------------------------------------------------------------------------------
# Captions and phrasings


def clean_caption(caption: str) -> str:
    """Collapse whitespace and strip trailing punctuation, so a phrase can follow the caption."""
    return " ".join(caption.split()).rstrip(" .,;:!?")


def _as_sentence_start(text: str) -> str:
    return text[:1].upper() + text[1:]


def _as_continuation(text: str) -> str:
    """Lower-case the first letter for text that follows a prefix, unless the first word is "I" or an acronym."""
    first_word = text.split(" ", 1)[0]
    if re.match(r"I\b", first_word) or sum(letter.isupper() for letter in first_word) >= 2:
        return text
    # NOTE: a proper noun at the start ("Obama speaks ...") is lower-cased too, because there is no list of names.
    return text[:1].lower() + text[1:]


def _there_is_no(noun: NounForms) -> str:
    return f"there are no {noun.singular}" if noun.is_plural_only else f"there is no {noun.singular}"


def _be_verb(noun: NounForms) -> str:
    return "are" if noun.is_plural_only else "is"


def _phrase_but_there_is_no(caption: str, noun: NounForms) -> str:
    return f"{_as_sentence_start(caption)}, but {_there_is_no(noun)}."


def _phrase_there_is_no_prefix(caption: str, noun: NounForms) -> str:
    return f"{_as_sentence_start(_there_is_no(noun))} in this image; {_as_continuation(caption)}."


def _phrase_without(caption: str, noun: NounForms) -> str:
    return f"{_as_sentence_start(caption)} without {noun.indefinite}."


def _phrase_in_sight(caption: str, noun: NounForms) -> str:
    return f"{_as_sentence_start(caption)}, with no {noun.plural} in sight."


def _phrase_is_visible(caption: str, noun: NounForms) -> str:
    return f"{_as_sentence_start(caption)}, and no {noun.singular} {_be_verb(noun)} visible."


def _phrase_can_be_seen_prefix(caption: str, noun: NounForms) -> str:
    return f"No {noun.singular} can be seen, but {_as_continuation(caption)}."


# Each phrasing takes a cleaned caption (see clean_caption) and the negated object's forms.
PHRASINGS: dict[str, Callable[[str, NounForms], str]] = {
    "but_there_is_no": _phrase_but_there_is_no,
    "there_is_no_prefix": _phrase_there_is_no_prefix,
    "without": _phrase_without,
    "in_sight": _phrase_in_sight,
    "is_visible": _phrase_is_visible,
    "can_be_seen_prefix": _phrase_can_be_seen_prefix,
}
PHRASING_NAMES: tuple[str, ...] = tuple(PHRASINGS)


def negate_caption(caption: str, object_name: str, phrasing: str = "but_there_is_no") -> str:
    """Add the negation of one object to a caption, e.g. "A man on a bench, but there is no dog."."""
    if phrasing not in PHRASINGS:
        raise ValueError(f"unknown phrasing {phrasing!r} (choose one of {', '.join(PHRASING_NAMES)})")
    cleaned = clean_caption(caption)
    if not cleaned:
        raise ValueError("caption is empty")
    return PHRASINGS[phrasing](cleaned, noun_forms(object_name))


# ---------------------------------------------------------------------------------------------------------
# Which objects a caption mentions

# Words that captions use for COCO categories, beyond the category name and its plural.
MENTION_SYNONYMS: dict[str, tuple[str, ...]] = {
    "person": (
        "man", "woman", "boy", "girl", "child", "kid", "baby", "guy", "lady", "player", "skier", "surfer",
        "skateboarder", "snowboarder", "rider", "adult", "toddler", "teenager", "someone",
    ),
    "bicycle": ("bike",),
    "motorcycle": ("motorbike", "motor bike"),
    "airplane": ("plane", "jet", "airliner"),
    "boat": ("ship",),
    "traffic light": ("stop light", "traffic signal"),
    "fire hydrant": ("hydrant",),
    "parking meter": ("meter",),
    "dog": ("puppy",),
    "cat": ("kitten",),
    "horse": ("pony",),
    "cow": ("cattle",),
    "sheep": ("lamb",),
    "handbag": ("purse",),
    "skis": ("ski",),
    "sports ball": ("ball",),
    "baseball bat": ("bat",),
    "baseball glove": ("mitt", "glove"),
    "tennis racket": ("racket", "racquet"),
    "wine glass": ("glass of wine",),
    "cup": ("mug",),
    "donut": ("doughnut",),
    "couch": ("sofa",),
    "potted plant": ("plant", "houseplant"),
    "dining table": ("table",),
    "tv": ("television",),
    "remote": ("remote control", "controller"),
    "cell phone": ("phone", "cellphone", "smartphone"),
    "oven": ("stove",),
    "refrigerator": ("fridge",),
    "teddy bear": ("teddy",),
    "hair drier": ("hair dryer", "hairdryer", "blow dryer"),
    "toothbrush": ("tooth brush",),
}  # fmt: skip


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


@lru_cache(maxsize=4096)
def _mention_phrases(name: str) -> frozenset[tuple[str, ...]]:
    """Token sequences that count as a mention of an object: its name, synonyms and their plurals."""
    words = (name, *MENTION_SYNONYMS.get(name.lower(), ()))
    forms = {form for word in words for form in (word, pluralize(word), noun_forms(word).plural)}
    return frozenset(tuple(_tokens(form)) for form in forms if _tokens(form))


def _mentions(tokens: Sequence[str], name: str) -> bool:
    for phrase in _mention_phrases(name):
        width = len(phrase)
        if any(tuple(tokens[start : start + width]) == phrase for start in range(len(tokens) - width + 1)):
            return True
    return False


def mentions_object(caption: str, name: str) -> bool:
    """Check whether a caption names an object, by whole words, plurals and a few common synonyms."""
    return _mentions(_tokens(caption), name)


# ---------------------------------------------------------------------------------------------------------
# Co-occurrence of objects


class CooccurrenceTable:
    """Counts of object categories over a set of annotated images, alone and in pairs (once per image)."""

    def __init__(self) -> None:
        self.image_count = 0
        self.object_counts: Counter[str] = Counter()
        self._neighbour_counts: dict[str, Counter[str]] = {}

    @classmethod
    def from_object_lists(cls, object_lists: Iterable[Iterable[str]]) -> CooccurrenceTable:
        table = cls()
        for objects in object_lists:
            table.add_image(objects)
        return table

    @classmethod
    def from_records(cls, records: Iterable[ImageRecord]) -> CooccurrenceTable:
        return cls.from_object_lists(record.objects for record in records)

    def add_image(self, objects: Iterable[str]) -> None:
        """Count one image's objects, counting a label repeated in the image once."""
        present = _clean_labels(objects)
        self.image_count += 1
        self.object_counts.update(present)
        for name in present:
            neighbours = self._neighbour_counts.setdefault(name, Counter())
            neighbours.update(other for other in present if other != name)

    def pair_count(self, first: str, second: str) -> int:
        """Return the number of images that contain both objects."""
        return self._neighbour_counts.get(first, Counter())[second]

    def plausible_absent(
        self, present: Iterable[str], count: int = DEFAULT_ABSENT_POOL_SIZE, fallback: Sequence[str] = COCO_CATEGORIES
    ) -> list[str]:
        """Rank objects that are not present by how often they co-occur with the present ones.

        Ties, and objects that never co-occur, are ordered by overall frequency, then by name. When the
        table contains fewer than `count` other objects, names from `fallback` (in its order) fill the list.
        """
        present_set = set(_clean_labels(present))
        scores: Counter[str] = Counter()
        for name in present_set:
            scores.update(self._neighbour_counts.get(name, Counter()))
        candidates = [name for name in self.object_counts if name not in present_set]
        ranked = sorted(candidates, key=lambda name: (-scores[name], -self.object_counts[name], name))
        if len(ranked) < count:
            known = set(ranked) | present_set
            ranked += [name for name in _clean_labels(fallback) if name not in known]
        return ranked[:count]


def _clean_labels(labels: Iterable[str]) -> list[str]:
    cleaned = (" ".join(label.split()).lower() for label in labels)
    return list(dict.fromkeys(label for label in cleaned if label))


# ---------------------------------------------------------------------------------------------------------
# The builder


@dataclass
class NegationBuild:
    """Examples written by build_negations and counts of what it skipped."""

    examples: list[NegationExample] = field(default_factory=list)
    images_total: int = 0
    images_used: int = 0
    skipped_no_objects: int = 0
    skipped_no_captions: int = 0
    skipped_no_absent_candidates: int = 0
    captions_skipped: int = 0

    def summary(self) -> str:
        return (
            f"{len(self.examples)} examples from {self.images_used} of {self.images_total} images; skipped "
            f"{self.skipped_no_objects} images without object labels, {self.skipped_no_captions} without "
            f"captions, {self.skipped_no_absent_candidates} without a candidate absent object, and "
            f"{self.captions_skipped} captions that mention every candidate absent object"
        )


def build_negations(
    records: Sequence[ImageRecord],
    seed: int = 0,
    captions_per_image: int | None = None,
    *,
    table: CooccurrenceTable | None = None,
    absent_pool_size: int = DEFAULT_ABSENT_POOL_SIZE,
) -> NegationBuild:
    """Write a presence-negated and an absence-negated caption for each chosen caption of each image.

    captions_per_image=None uses every caption, otherwise a seeded sample of that many per image. Absent
    objects come from ImageRecord.absent_objects when given, else from `table` (by default a
    CooccurrenceTable over `records`). The same records and seed give the same examples.
    """
    if captions_per_image is not None and captions_per_image < 1:
        raise ValueError(f"captions_per_image must be at least 1 or None, not {captions_per_image}")
    rng = random.Random(seed)
    table = table if table is not None else CooccurrenceTable.from_records(records)
    build = NegationBuild(images_total=len(records))
    for record in records:
        _add_record_examples(build, record, table, rng, captions_per_image, absent_pool_size)
    logger.info("negation build: %s", build.summary())
    return build


def _add_record_examples(
    build: NegationBuild,
    record: ImageRecord,
    table: CooccurrenceTable,
    rng: random.Random,
    captions_per_image: int | None,
    absent_pool_size: int,
) -> None:
    objects = _clean_labels(record.objects)
    captions = [" ".join(caption.split()) for caption in record.captions if clean_caption(caption)]
    if not objects:
        build.skipped_no_objects += 1
        return
    if not captions:
        build.skipped_no_captions += 1
        return
    candidates = absent_candidates(objects, record.absent_objects, table, absent_pool_size)
    if not candidates:
        build.skipped_no_absent_candidates += 1
        return

    chosen = choose_captions(captions, captions_per_image, rng)
    examples = [example for caption in chosen if (example := _negate_pair(record, objects, candidates, caption, rng))]
    build.captions_skipped += len(chosen) - len(examples)
    build.images_used += bool(examples)
    build.examples.extend(examples)


def absent_candidates(
    objects: Sequence[str], data_absent_objects: Sequence[str], table: CooccurrenceTable, count: int
) -> list[str]:
    """Return the data's absent objects when it gives any, else the table's most plausible absent objects."""
    present = set(_clean_labels(objects))
    from_data = [name for name in _clean_labels(data_absent_objects) if name not in present]
    return from_data or table.plausible_absent(present, count)


def choose_captions(captions: Sequence[str], count: int | None, rng: random.Random) -> list[str]:
    """Return all captions, or a seeded sample of `count` of them in their original order."""
    if count is None or count >= len(captions):
        return list(captions)
    return [captions[index] for index in sorted(rng.sample(range(len(captions)), count))]


def choose_present_object(caption_tokens: Sequence[str], objects: Sequence[str], rng: random.Random) -> str:
    """Pick the present object to negate, preferring one the caption names so the negation is clearly false."""
    mentioned = [name for name in objects if _mentions(caption_tokens, name)]
    return rng.choice(mentioned or list(objects))


def _negate_pair(
    record: ImageRecord, objects: list[str], candidates: list[str], caption: str, rng: random.Random
) -> NegationExample | None:
    tokens = _tokens(caption)
    present_object = choose_present_object(tokens, objects, rng)
    # An absent object that the caption names (a table in the text but no "dining table" label) would make
    # the "true" caption contradict itself, so such candidates are left out.
    unmentioned = [name for name in candidates if not _mentions(tokens, name)]
    if not unmentioned:
        return None
    absent_object = rng.choice(unmentioned)
    phrase = PHRASINGS[rng.choice(PHRASING_NAMES)]
    cleaned = clean_caption(caption)
    return NegationExample(
        image=record.image,
        caption=caption,
        presence_negated=phrase(cleaned, noun_forms(present_object)),
        absence_negated=phrase(cleaned, noun_forms(absent_object)),
        present_object=present_object,
        absent_object=absent_object,
        objects=list(objects),
        absent_objects=list(candidates),
        image_id=record.image_id,
    )
