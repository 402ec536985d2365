"""Tests for negclip.negations: grammar tables, phrasings, co-occurrence and the builder on real COCO data."""

import json
import random
from pathlib import Path

import pytest

from negclip.data import ImageRecord, read_coco
from negclip.negations import (
    COCO_CATEGORIES,
    PHRASING_NAMES,
    CooccurrenceTable,
    absent_candidates,
    build_negations,
    choose_captions,
    clean_caption,
    indefinite_article,
    mentions_object,
    negate_caption,
    noun_forms,
    pluralize,
    with_article,
)

ARTICLE_CASES = [
    ("umbrella", "an umbrella"),
    ("hair drier", "a hair drier"),
    ("orange", "an orange"),
    ("person", "a person"),
    ("airplane", "an airplane"),
    ("elephant", "an elephant"),
    ("oven", "an oven"),
    ("apple", "an apple"),
    ("tv", "a TV"),
    ("unicorn", "a unicorn"),
    ("hour glass", "an hour glass"),
    ("skis", "skis"),
    ("scissors", "scissors"),
    ("broccoli", "broccoli"),
    ("wine glass", "a wine glass"),
]

PLURAL_CASES = [
    ("person", "people"),
    ("mouse", "mice"),
    ("knife", "knives"),
    ("skis", "skis"),
    ("sheep", "sheep"),
    ("bus", "buses"),
    ("bench", "benches"),
    ("toothbrush", "toothbrushes"),
    ("wine glass", "wine glasses"),
    ("hot dog", "hot dogs"),
    ("potted plant", "potted plants"),
    ("teddy bear", "teddy bears"),
    ("sandwich", "sandwiches"),
    ("couch", "couches"),
    ("scissors", "scissors"),
    ("broccoli", "broccoli"),
    ("hair drier", "hair driers"),
    ("tv", "TVs"),
    ("box", "boxes"),
    ("puppy", "puppies"),
    ("toy", "toys"),
]


@pytest.mark.parametrize(("name", "expected"), ARTICLE_CASES)
def test_article_table(name, expected):
    assert with_article(name) == expected


@pytest.mark.parametrize(("name", "expected"), PLURAL_CASES)
def test_plural_table(name, expected):
    assert noun_forms(name).plural == expected


def test_coco_categories_match_instances(coco_neg):
    data = json.loads((coco_neg / "annotations" / "instances_val2017.json").read_text(encoding="utf-8"))

    names = tuple(category["name"] for category in sorted(data["categories"], key=lambda category: category["id"]))

    assert COCO_CATEGORIES == names


def test_coco_forms_complete():
    bare = {"skis", "scissors", "broccoli"}
    for name in COCO_CATEGORIES:
        forms = noun_forms(name)
        article = forms.indefinite.split(" ", 1)[0]
        assert article in ({"a", "an"} if name not in bare else {name.split(" ")[0]}), name
        if name not in bare | {"sheep"}:
            assert forms.plural != forms.singular, name


def test_indefinite_article_empty():
    with pytest.raises(ValueError):
        indefinite_article(" ")


def test_pluralize_last_word():
    assert pluralize("baseball glove") == "baseball gloves"
    assert pluralize("cell phone") == "cell phones"


def test_phrasings_for_dog():
    caption = "A man sitting on a bench.  "
    expected = {
        "but_there_is_no": "A man sitting on a bench, but there is no dog.",
        "there_is_no_prefix": "There is no dog in this image; a man sitting on a bench.",
        "without": "A man sitting on a bench without a dog.",
        "in_sight": "A man sitting on a bench, with no dogs in sight.",
        "is_visible": "A man sitting on a bench, and no dog is visible.",
        "can_be_seen_prefix": "No dog can be seen, but a man sitting on a bench.",
    }

    assert set(expected) == set(PHRASING_NAMES)
    for phrasing, sentence in expected.items():
        assert negate_caption(caption, "dog", phrasing) == sentence


def test_phrasings_for_plural_only():
    caption = "a woman on a snowy hill"

    assert negate_caption(caption, "skis") == "A woman on a snowy hill, but there are no skis."
    assert negate_caption(caption, "skis", "there_is_no_prefix") == (
        "There are no skis in this image; a woman on a snowy hill."
    )
    assert negate_caption(caption, "skis", "is_visible") == "A woman on a snowy hill, and no skis are visible."
    assert negate_caption(caption, "umbrella", "without") == "A woman on a snowy hill without an umbrella."
    assert negate_caption(caption, "person", "in_sight") == "A woman on a snowy hill, with no people in sight."


def test_prefix_keeps_acronym():
    assert negate_caption("TV screens on a wall", "dog", "there_is_no_prefix") == (
        "There is no dog in this image; TV screens on a wall."
    )
    assert negate_caption("I see a cat!", "dog", "can_be_seen_prefix") == "No dog can be seen, but I see a cat."


def test_clean_caption_cases():
    assert clean_caption("  A dog\n on a couch .  ") == "A dog on a couch"
    assert clean_caption("A dog!?") == "A dog"
    assert clean_caption(" . ") == ""


def test_negate_caption_rejects():
    with pytest.raises(ValueError, match="unknown phrasing"):
        negate_caption("A dog.", "cat", "sideways")
    with pytest.raises(ValueError, match="caption is empty"):
        negate_caption(" . ", "cat")


def test_mentions_object_cases():
    assert mentions_object("Two dogs on a couch.", "dog")
    assert mentions_object("People waiting for a bus", "person")
    assert mentions_object("A man riding a horse", "person")
    assert mentions_object("Some hot dogs on a grill", "hot dog")
    assert mentions_object("A stack of knives", "knife")
    assert mentions_object("Cake on the table", "dining table")
    assert mentions_object("A bowl of banana's", "banana")
    assert not mentions_object("A catalogue on a desk", "cat")
    assert not mentions_object("A glass of water", "wine glass")


def test_cooccurrence_hand_counts():
    table = CooccurrenceTable.from_object_lists(
        [
            ["person", "dog", "frisbee"],
            ["person", "dog"],
            ["person", "frisbee"],
            ["dog", "cat"],
            ["cup", "fork"],
            ["cup", "fork", "cup"],
        ]
    )

    assert table.image_count == 6
    assert table.object_counts["cup"] == 2
    assert table.pair_count("person", "dog") == 2
    assert table.pair_count("dog", "person") == 2
    assert table.pair_count("dog", "fork") == 0
    # dog: person 2, cat 1, frisbee 1 (frisbee is more frequent than cat, 2 images against 1).
    assert table.plausible_absent(["dog"], count=3) == ["person", "frisbee", "cat"]
    # person + dog: frisbee 1 + 1, cat 0 + 1, then cup and fork by frequency (2 each) and name.
    assert table.plausible_absent(["person", "dog"], count=4) == ["frisbee", "cat", "cup", "fork"]


def test_cooccurrence_fallback_categories():
    table = CooccurrenceTable.from_object_lists([["dog", "cat"]])

    assert table.plausible_absent(["dog", "cat"], count=2) == ["person", "bicycle"]
    assert table.plausible_absent(["dog"], count=2) == ["cat", "person"]


def test_absent_candidates_prefer_data():
    table = CooccurrenceTable.from_object_lists([["dog", "cat"]])

    assert absent_candidates(["dog"], ["Fork", "dog"], table, 3) == ["fork"]
    assert absent_candidates(["dog"], [], table, 1) == ["cat"]


def test_choose_captions_sample():
    captions = ["a", "b", "c", "d", "e"]

    assert choose_captions(captions, None, random.Random(0)) == captions
    assert choose_captions(captions, 9, random.Random(0)) == captions
    sample = choose_captions(captions, 2, random.Random(0))
    assert len(sample) == 2
    assert sample == sorted(sample)


def tiny_records() -> list[ImageRecord]:
    return [
        ImageRecord("a.jpg", ["A dog chasing a frisbee in a park."], ["person", "dog", "frisbee"], image_id="1"),
        ImageRecord("b.jpg", ["Two people eating dinner.", "A family at a table"], ["person", "dining table", "fork"]),
        ImageRecord("c.jpg", ["A cup of coffee on a desk."], ["cup", "laptop"], ["fork", "cup"]),
        ImageRecord("d.jpg", ["An empty street."], []),
        ImageRecord("e.jpg", ["  ", "."], ["car"]),
    ]


def test_build_skips_and_counts():
    build = build_negations(tiny_records(), seed=0)

    assert build.images_total == 5
    assert build.images_used == 3
    assert build.skipped_no_objects == 1
    assert build.skipped_no_captions == 1
    assert len(build.examples) == 4
    assert "4 examples from 3 of 5 images" in build.summary()


def test_build_prefers_mentioned_object():
    for seed in range(10):
        first = build_negations(tiny_records(), seed=seed).examples[0]
        assert first.present_object in {"dog", "frisbee"}
        assert first.absent_object not in first.objects


def test_build_uses_data_absent_objects():
    build = build_negations(tiny_records(), seed=3)

    example = next(example for example in build.examples if example.image == "c.jpg")
    assert example.absent_objects == ["fork"]
    assert example.absent_object == "fork"
    assert example.present_object == "cup"
    assert "fork" in example.absence_negated
    assert "cup" in example.presence_negated


def test_build_skips_mentioned_absent():
    records = [ImageRecord("a.jpg", ["Cake on a table.", "A cake."], ["cake"], ["dining table"])]

    build = build_negations(records)

    assert build.captions_skipped == 1
    assert [example.caption for example in build.examples] == ["A cake."]


def test_build_deterministic_seed():
    records = tiny_records() * 20

    first = build_negations(records, seed=7).examples
    again = build_negations(records, seed=7).examples
    other = build_negations(records, seed=8).examples

    assert first == again
    assert first != other


def test_build_rejects_zero_captions():
    with pytest.raises(ValueError, match="captions_per_image"):
        build_negations(tiny_records(), captions_per_image=0)


def test_build_on_coco_subset(coco_neg: Path):
    records = read_coco(
        coco_neg / "annotations" / "captions_val2017.json",
        image_root=coco_neg / "images",
        negbench_retrieval_csv=coco_neg / "negbench" / "COCO_val_retrieval.csv",
    )

    build = build_negations(records, seed=0, captions_per_image=2)

    assert build.images_used == 252
    assert len(build.examples) == 504
    for example in build.examples:
        assert example.present_object in example.objects
        assert example.absent_object not in example.objects
        assert example.absent_object in example.absent_objects
        assert noun_forms(example.present_object).singular in example.presence_negated or (
            noun_forms(example.present_object).plural in example.presence_negated
        )
        assert noun_forms(example.absent_object).singular in example.absence_negated or (
            noun_forms(example.absent_object).plural in example.absence_negated
        )
        assert not mentions_object(example.caption, example.absent_object)
