"""Score one photo against a list of captions: the comparison behind `score` and the app's Compare tab."""

from __future__ import annotations

import itertools
import os
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image

from negclip import inference
from negclip.encode import ImageFeatureCache, encode_images, encode_texts, in_eval_mode
from negclip.models import LoadedClip
from negclip.packing import can_pack, encode_captions_packed, pack_token_ids, token_id_lists

SHARED_IMAGE_CACHE = ImageFeatureCache(max_entries=512)


class TextFeatureCache:
    """Normalised caption features per model, dropped when the model's weights change or the model is freed.

    Entries belong to the model object, held weakly, and are checked against the storage address and version
    counter of each parameter and against the number of optimiser steps taken in this process. In-place updates
    such as copy_ and load_state_dict advance the version counter. Fused AdamW does not (PyTorch 2.13), which the
    step count covers.
    """

    def __init__(self, max_entries: int = 4096):
        self.max_entries = max_entries  # per model
        self._models: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()  # the app scores from several request threads
        self.hits = 0
        self.misses = 0

    def encode(self, clip: LoadedClip, captions: list[str]) -> torch.Tensor:
        """Return (len(captions), projection_dim) normalised features, encoding only the captions not cached."""
        fingerprint = _weights_fingerprint(clip.model)
        with self._lock:
            entry = self._models.get(clip.model)
            if entry is None or entry[0] != fingerprint:
                entry = (fingerprint, OrderedDict())
                self._models[clip.model] = entry
            features = entry[1]
            found = {caption: features[caption] for caption in captions if caption in features}
            for caption in found:
                features.move_to_end(caption)
        missing = [caption for caption in dict.fromkeys(captions) if caption not in found]
        self.hits += len(captions) - len(missing)
        self.misses += len(missing)
        if missing:
            encoded = _encode_captions(clip, missing)
            found.update(zip(missing, encoded))
            with self._lock:
                features.update(zip(missing, encoded))
                while len(features) > self.max_entries:
                    features.popitem(last=False)
        return torch.stack([found[caption] for caption in captions])


SHARED_TEXT_CACHE = TextFeatureCache()


def _weights_fingerprint(model) -> tuple:
    """Fingerprint the weights that caption features depend on: the text tower and its projection."""
    inner = inference.clip_model(model)
    text_model, projection = getattr(inner, "text_model", None), getattr(inner, "text_projection", None)
    if text_model is None or projection is None:
        return inference.weights_fingerprint(model.parameters())
    # Walking only the text side halves the cost, which is milliseconds per call for ViT-B/32.
    fingerprint = inference.weights_fingerprint(itertools.chain(text_model.parameters(), projection.parameters()))
    if hasattr(model, "peft_config"):
        # peft's disable_adapter() and set_adapter() switch unmerged LoRA layers without touching any weight.
        from peft.tuners.tuners_utils import BaseTunerLayer

        switches = tuple(
            (module.disable_adapters, tuple(module.active_adapters))
            for module in text_model.modules()
            if isinstance(module, BaseTunerLayer)
        )
        fingerprint += (switches,)
    return fingerprint


@in_eval_mode
@torch.inference_mode()
def _encode_captions(clip: LoadedClip, captions: list[str]) -> torch.Tensor:
    """Encode captions with shared-prefix packing when the attention allows it (negclip.packing), else padded."""
    if not can_pack(clip.model):
        return encode_texts(clip, captions)
    if inference.supports(clip.model):
        packed = pack_token_ids(token_id_lists(clip.tokenizer, captions))
        return F.normalize(inference.packed_text_features(clip.model, packed).float(), dim=-1).cpu()
    return encode_captions_packed(clip.model, clip.tokenizer, captions).cpu()


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
    text_cache: TextFeatureCache | None = SHARED_TEXT_CACHE,
) -> CaptionScores:
    """Score captions against one photo.

    The photo's features are cached per model and photo, and the captions' per model and weights, so trying
    another photo against the same captions runs only the image tower. Pass None to compute either afresh.
    """
    image_embeds = encode_images(clip, [image], cache=cache, lean=True)[0]
    text_embeds = text_cache.encode(clip, captions) if text_cache is not None else _encode_captions(clip, captions)
    cosine = text_embeds @ image_embeds
    scale = clip.model.logit_scale.detach().exp().float().cpu()
    probability = torch.softmax(scale * cosine, dim=0)
    return CaptionScores(cosine.tolist(), probability.tolist(), int(cosine.argmax()))
