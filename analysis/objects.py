"""Guess the objects in a photo by zero-shot scoring of the COCO categories, and suggest negated captions.

The guess uses the model itself, so it is only as good as the model: a random model guesses at random. The
suggestions are marked true or false by that guess, and the user can correct the marks.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import torch
from PIL import Image

from negclip.data import ImageRecord
from negclip.encode import ImageFeatureCache, encode_images, encode_texts
from negclip.models import LoadedClip
from negclip.negations import COCO_CATEGORIES, build_negations, with_article
from negclip.scoring import SHARED_IMAGE_CACHE

MAX_PRESENT = 3
MIN_PRESENT_PROBABILITY = 0.15
ABSENT_COUNT = 3

_prompt_embeds: dict[tuple[str, tuple[str, ...]], torch.Tensor] = {}
_prompt_lock = threading.Lock()


def category_prompt(name: str) -> str:
    return f"a photo of {with_article(name)}."


def _category_embeds(clip: LoadedClip, categories: tuple[str, ...]) -> torch.Tensor:
    """Embed the category prompts once per model and adapter."""
    key = (clip.key, categories)
    with _prompt_lock:
        if key not in _prompt_embeds:
            _prompt_embeds[key] = encode_texts(clip, [category_prompt(name) for name in categories])
        return _prompt_embeds[key]


@dataclass
class ObjectGuess:
    """Objects a model finds in a photo, and plausible ones it finds absent."""

    present: list[str]
    absent: list[str]
    probabilities: dict[str, float]  # every category's zero-shot probability, highest first


def guess_objects(
    clip: LoadedClip,
    image: str | os.PathLike | Image.Image,
    categories: tuple[str, ...] = COCO_CATEGORIES,
    cache: ImageFeatureCache | None = SHARED_IMAGE_CACHE,
) -> ObjectGuess:
    """Rank the categories by CLIP's zero-shot probability ("a photo of a dog.") for the photo.

    Present: the top categories with probability at least MIN_PRESENT_PROBABILITY (always the top one, at
    most MAX_PRESENT). Absent: the ABSENT_COUNT categories ranked after the present ones, skipping the first
    of them, which is the likeliest to be present after all. Ranking close to the present objects makes them
    plausible in the scene, as the data's absent objects are.
    """
    image_embeds = encode_images(clip, [image], cache=cache)[0]
    text_embeds = _category_embeds(clip, tuple(categories))
    scale = clip.model.logit_scale.detach().exp().float().cpu()
    probabilities = torch.softmax(scale * (text_embeds @ image_embeds), dim=0)
    order = probabilities.argsort(descending=True).tolist()

    present = [categories[order[0]]]
    for index in order[1:MAX_PRESENT]:
        if probabilities[index] >= MIN_PRESENT_PROBABILITY:
            present.append(categories[index])
    first_absent = len(present) + 1
    absent = [categories[index] for index in order[first_absent : first_absent + ABSENT_COUNT]]
    ranked = {categories[index]: probabilities[index].item() for index in order}
    return ObjectGuess(present, absent, ranked)


@dataclass
class SuggestedCaption:
    caption: str
    is_true: bool  # by the object guess: presence-negated captions are false, the others true
    kind: str  # "original", "presence-negated" or "absence-negated"


def describe_objects(names: list[str]) -> str:
    """Write a plain caption naming the objects, e.g. "A photo of a dog, a boat and a person."."""
    phrases = [with_article(name) for name in names]
    listed = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return f"A photo of {listed}."


def suggest_negations(guess: ObjectGuess, image: str, captions: list[str], seed: int = 0) -> list[SuggestedCaption]:
    """Write presence- and absence-negated versions of true captions with the library's negation builder.

    Without captions, a plain caption naming the guessed objects is used (and suggested too). A caption that
    names every candidate absent object gets no suggestion, as in the builder.
    """
    originals = list(captions) or [describe_objects(guess.present)]
    record = ImageRecord(image=image, captions=originals, objects=guess.present, absent_objects=guess.absent)
    build = build_negations([record], seed=seed)
    suggestions = [] if captions else [SuggestedCaption(originals[0], True, "original")]
    for example in build.examples:
        suggestions.append(SuggestedCaption(example.presence_negated, False, "presence-negated"))
        suggestions.append(SuggestedCaption(example.absence_negated, True, "absence-negated"))
    return suggestions
