"""Score one photo against a list of captions: the comparison behind `score` and the app's Compare tab."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from PIL import Image

from negclip.encode import ImageFeatureCache, encode_images, encode_texts
from negclip.models import LoadedClip

SHARED_IMAGE_CACHE = ImageFeatureCache(max_entries=512)


@dataclass
class CaptionScores:
    cosine: list[float]  # cosine similarity of each caption to the photo
    probability: list[float]  # softmax over logit_scale * cosine, as CLIP's zero-shot classifier
    best: int  # index of the caption the model picks


def score_captions(
    clip: LoadedClip,
    image: str | os.PathLike | Image.Image,
    captions: list[str],
    cache: ImageFeatureCache | None = SHARED_IMAGE_CACHE,
) -> CaptionScores:
    """Score captions against one photo; the photo's features are cached per model and pixel hash."""
    image_embeds = encode_images(clip, [image], cache=cache)[0]
    text_embeds = encode_texts(clip, captions)
    cosine = text_embeds @ image_embeds
    scale = clip.model.logit_scale.detach().exp().float().cpu()
    probability = torch.softmax(scale * cosine, dim=0)
    return CaptionScores(cosine.tolist(), probability.tolist(), int(cosine.argmax()))
