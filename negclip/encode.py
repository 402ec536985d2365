"""Tokenize captions and encode captions and photos into CLIP's joint embedding space."""

from __future__ import annotations

import functools
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from negclip import inference
from negclip.images import image_bytes_hash, load_image
from negclip.models import MAX_TEXT_LENGTH, LoadedClip

logger = logging.getLogger(__name__)


@dataclass
class TokenizedBatch:
    input_ids: torch.Tensor  # (batch, longest caption in the batch) int64
    attention_mask: torch.Tensor  # (batch, longest caption in the batch) int64
    truncated: int  # captions cut at MAX_TEXT_LENGTH tokens


class EmptyCaptionError(ValueError):
    """A caption is empty or only white space."""


def tokenize(tokenizer, captions: list[str], max_length: int = MAX_TEXT_LENGTH) -> TokenizedBatch:
    """Tokenize captions, padded to the longest caption of this batch rather than to 77 tokens.

    CLIP's text encoder is causal and pools at the first end-of-text token, so padding after it does not change
    the embedding: per-batch padding gives the same features for less compute. Captions over `max_length`
    tokens are truncated (keeping the end-of-text token) and counted.
    """
    for index, caption in enumerate(captions):
        if not isinstance(caption, str) or not caption.strip():
            raise EmptyCaptionError(f"caption {index + 1} of {len(captions)} is empty: {caption!r}; give every caption some text")
    # verbose=False: the untruncated lengths are counted here, which would otherwise log a warning over 77 tokens.
    full = tokenizer(list(captions), add_special_tokens=True, verbose=False)["input_ids"]
    truncated = sum(len(ids) > max_length for ids in full)
    if truncated:
        logger.info("%d of %d captions were longer than %d tokens and were truncated", truncated, len(captions), max_length)
    # Truncate and pad here instead of tokenizing again: a cut caption keeps its last token (end of text), as the
    # tokenizer's own truncation does, and padding goes to the right with the tokenizer's padding id.
    rows = [ids if len(ids) <= max_length else ids[: max_length - 1] + ids[-1:] for ids in full]
    longest = max((len(ids) for ids in rows), default=0)
    padding_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids = torch.full((len(rows), longest), padding_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for row, ids in enumerate(rows):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
    return TokenizedBatch(input_ids, attention_mask, truncated)


def text_features(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Return projected, unnormalised caption features (batch, projection_dim); gradients flow if enabled."""
    outputs = model.text_model(input_ids=input_ids, attention_mask=attention_mask)
    return model.text_projection(outputs.pooler_output)


def image_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """Return projected, unnormalised photo features (batch, projection_dim)."""
    outputs = model.vision_model(pixel_values=pixel_values)
    return model.visual_projection(outputs.pooler_output)


def in_eval_mode(function):
    """Run `function(clip, ...)` with clip.model in eval mode, and switch a model that was training back after.

    eval() and train() walk every module, which costs milliseconds for ViT-B/32, so a model already in eval
    mode is left alone.
    """

    @functools.wraps(function)
    def wrapper(clip, *args, **kwargs):
        training = clip.model.training
        if training:
            clip.model.eval()
        try:
            return function(clip, *args, **kwargs)
        finally:
            if training:
                clip.model.train()

    return wrapper


@in_eval_mode
@torch.no_grad()
def encode_texts(
    clip: LoadedClip, captions: list[str], batch_size: int = 256, normalize: bool = True, progress: bool = False
) -> torch.Tensor:
    """Embed captions, returning (len(captions), projection_dim) float32 on the CPU."""
    chunks = []
    starts = range(0, len(captions), batch_size)
    for start in tqdm(starts, desc="captions", disable=not progress or len(starts) < 2):
        batch = tokenize(clip.tokenizer, captions[start : start + batch_size])
        features = text_features(
            clip.model, batch.input_ids.to(clip.device), batch.attention_mask.to(clip.device)
        ).float()
        chunks.append(F.normalize(features, dim=-1) if normalize else features)
    if not chunks:
        return torch.empty(0, clip.model.config.projection_dim)
    return torch.cat(chunks).cpu()


def _image_key(source) -> str:
    """Cache key of a photo: path, size and modification time for files (no decoding needed), pixel hash for
    in-memory images."""
    if isinstance(source, Image.Image):
        return "pixels:" + image_bytes_hash(source)
    path = Path(source)
    try:
        stat = path.stat()
    except OSError:
        return f"path:{path}"  # load_image raises the missing-file error with the path
    return f"path:{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


class ImageFeatureCache:
    """Unnormalised image features keyed by model and photo; least recently used entries go first."""

    def __init__(self, max_entries: int = 4096):
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, model_key: str, image_hash: str) -> torch.Tensor | None:
        entry = self._entries.get((model_key, image_hash))
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end((model_key, image_hash))
        return entry

    def put(self, model_key: str, image_hash: str, features: torch.Tensor) -> None:
        self._entries[(model_key, image_hash)] = features
        self._entries.move_to_end((model_key, image_hash))
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


@in_eval_mode
@torch.no_grad()
def encode_images(
    clip: LoadedClip,
    images: list[str | os.PathLike | Image.Image],
    batch_size: int = 64,
    normalize: bool = True,
    cache: ImageFeatureCache | None = None,
    progress: bool = False,
    lean: bool = False,
) -> torch.Tensor:
    """Embed photos (paths or PIL images), returning (len(images), projection_dim) float32 on the CPU.

    With `lean`, a model that negclip.inference supports runs that module's faster forward pass. It keeps a
    prepared copy of the image tower's linear weights in memory, so scoring uses it and training does not.

    The image tower is never trained here, so with a cache each photo is encoded once per model. Tuned models
    share the base model's image features, because tuning touches only the text encoder.
    """
    model_key = clip.image_cache_key  # shared by a tuned model and its base, since adapters change only text
    keys = [_image_key(source) for source in images]
    found: dict[str, torch.Tensor] = {}
    pending: dict[str, object] = {}  # key -> source, each distinct photo once, decoded batch by batch
    for source, key in zip(images, keys):
        if key in found or key in pending:
            continue
        cached = cache.get(model_key, key) if cache is not None else None
        if cached is not None:
            found[key] = cached
        else:
            pending[key] = source

    pending_items = list(pending.items())
    starts = range(0, len(pending_items), batch_size)
    for start in tqdm(starts, desc="images", disable=not progress or len(starts) < 2):
        chunk = pending_items[start : start + batch_size]
        pixel_values = clip.preprocess([load_image(source) for _, source in chunk]).to(clip.device)
        if lean and inference.supports(clip.model):
            features = inference.image_features(clip.model, pixel_values).float().cpu()
        else:
            features = image_features(clip.model, pixel_values).float().cpu()
        for (key, _), feature in zip(chunk, features):
            found[key] = feature
            if cache is not None:
                cache.put(model_key, key, feature)

    results = [found[key] for key in keys]
    if not results:
        return torch.empty(0, clip.model.config.projection_dim)
    stacked = torch.stack(results)
    return F.normalize(stacked, dim=-1) if normalize else stacked
