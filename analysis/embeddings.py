"""Embeddings of captions, their presence- and absence-negated versions and their images, and the numbers
that summarise how far a model keeps a caption apart from its negations."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from negclip.data import NegationExample
from negclip.encode import ImageFeatureCache, encode_images, encode_texts
from negclip.models import LoadedClip
from negclip.scoring import SHARED_IMAGE_CACHE

ORIGINAL = "original"
PRESENCE_NEGATED = "presence-negated"
ABSENCE_NEGATED = "absence-negated"
IMAGE = "image"
KINDS = (ORIGINAL, PRESENCE_NEGATED, ABSENCE_NEGATED, IMAGE)


def sample_examples(examples: list[NegationExample], count: int, seed: int = 0) -> list[NegationExample]:
    """Pick one example per image for up to `count` images, the same for the same seed.

    One caption per image keeps the map readable and makes "share of images" below a share of examples.
    """
    by_image: dict[str, list[NegationExample]] = {}
    for example in examples:
        by_image.setdefault(example.image, []).append(example)
    rng = random.Random(seed)
    images = sorted(by_image)
    rng.shuffle(images)
    return [rng.choice(by_image[image]) for image in sorted(images[:count])]


@dataclass
class EmbeddingPoints:
    """Normalised embeddings of captions, negations and images, one row per point of a map."""

    embeds: torch.Tensor  # (points, projection_dim), L2-normalised
    kinds: list[str]  # one of KINDS per point
    texts: list[str]  # the caption, or the image's file name
    groups: list[int]  # index of the example (caption rows) or of the image (image rows)


def embed_examples(
    clip: LoadedClip, examples: list[NegationExample], cache: ImageFeatureCache | None = SHARED_IMAGE_CACHE
) -> EmbeddingPoints:
    """Embed each example's caption, presence-negated and absence-negated caption, and each distinct image once."""
    if not examples:
        raise ValueError("no examples to embed; give at least one caption with its negations")
    captions = [example.caption for example in examples]
    presence = [example.presence_negated for example in examples]
    absence = [example.absence_negated for example in examples]
    text_embeds = encode_texts(clip, captions + presence + absence)

    images = list(dict.fromkeys(example.image for example in examples))
    image_embeds = encode_images(clip, images, cache=cache)

    count = len(examples)
    kinds = [ORIGINAL] * count + [PRESENCE_NEGATED] * count + [ABSENCE_NEGATED] * count + [IMAGE] * len(images)
    texts = captions + presence + absence + [image.rsplit("/", 1)[-1] for image in images]
    groups = list(range(count)) * 3 + list(range(len(images)))
    return EmbeddingPoints(torch.cat([text_embeds, image_embeds]), kinds, texts, groups)


@dataclass
class NegationSummary:
    """The numbers behind an embedding map, for one model."""

    caption_presence_cosine: float  # mean cosine between a caption and its presence-negated version
    caption_absence_cosine: float  # mean cosine between a caption and its absence-negated version
    caption_beats_presence: float  # share of examples whose image is closer to the caption than to T-
    count: int


def summarize_negations(points: EmbeddingPoints, examples: list[NegationExample]) -> NegationSummary:
    """Compute the caption-to-negation cosines and the caption-beats-presence share from embedded points."""
    count = len(examples)
    captions = points.embeds[:count]
    presence = points.embeds[count : 2 * count]
    absence = points.embeds[2 * count : 3 * count]
    image_rows = {image: 3 * count + index for index, image in enumerate(dict.fromkeys(e.image for e in examples))}
    images = points.embeds[[image_rows[example.image] for example in examples]]
    beats = ((images * captions).sum(-1) > (images * presence).sum(-1)).float().mean().item()
    return NegationSummary(
        caption_presence_cosine=(captions * presence).sum(-1).mean().item(),
        caption_absence_cosine=(captions * absence).sum(-1).mean().item(),
        caption_beats_presence=beats,
        count=count,
    )
