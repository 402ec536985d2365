"""Negation benchmarks (presence, NegBench MCQ, retrieval), base-versus-tuned tables, JSON and model cards.

A benchmark is registered in BENCHMARKS with a loader (reads its files once) and a scorer (runs one model).
Image features come from a shared cache keyed by the base model, so a tuned model, whose image tower is the
base model's, never re-encodes a photo that the base model already encoded.
"""

from __future__ import annotations

import argparse
import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

import torch

from negclip.data import McqItem, NegationExample, RetrievalItem
from negclip.encode import ImageFeatureCache, encode_images, encode_texts
from negclip.models import LoadedClip

logger = logging.getLogger(__name__)

IMAGE_CACHE = ImageFeatureCache()
RECALL_AT = (1, 5, 10)


def _image_embeddings(clip: LoadedClip, images: list[str]) -> torch.Tensor:
    return encode_images(clip, images, cache=IMAGE_CACHE)


def evaluate_presence(clip: LoadedClip, examples: list[NegationExample]) -> dict:
    """Share of (image, T+, T-) triples where sim(I, T+) > sim(I, T-): does the model reject a caption that
    negates an object the image contains?"""
    if not examples:
        return {"accuracy": None, "count": 0}
    images = _image_embeddings(clip, [e.image for e in examples])
    positive = encode_texts(clip, [e.caption for e in examples])
    negated = encode_texts(clip, [e.presence_negated for e in examples])
    wins = ((images * positive).sum(-1) > (images * negated).sum(-1)).float()
    return {"accuracy": wins.mean().item(), "count": len(examples)}


def evaluate_absence(clip: LoadedClip, examples: list[NegationExample]) -> dict:
    """Share of examples where the true absence-negated caption Ta beats the false presence-negated T-."""
    if not examples:
        return {"accuracy": None, "count": 0}
    images = _image_embeddings(clip, [e.image for e in examples])
    absence = encode_texts(clip, [e.absence_negated for e in examples])
    negated = encode_texts(clip, [e.presence_negated for e in examples])
    wins = ((images * absence).sum(-1) > (images * negated).sum(-1)).float()
    return {"accuracy": wins.mean().item(), "count": len(examples)}


def evaluate_mcq(clip: LoadedClip, items: list[McqItem]) -> dict:
    """Score NegBench multiple choice: the model picks the caption closest to the image. Returns accuracy
    overall and per template (positive: affirmative correct caption, negative: negated, hybrid: both)."""
    if not items:
        return {"accuracy": None, "count": 0, "by_template": {}}
    images = _image_embeddings(clip, [item.image for item in items])
    flat = [caption for item in items for caption in item.captions]
    texts = encode_texts(clip, flat)
    correct = []
    offset = 0
    for row, item in enumerate(items):
        scores = texts[offset : offset + len(item.captions)] @ images[row]
        offset += len(item.captions)
        correct.append(int(scores.argmax().item()) == item.correct_index)
    by_template: dict[str, list[bool]] = defaultdict(list)
    for item, hit in zip(items, correct):
        by_template[item.template].append(hit)
    return {
        "accuracy": sum(correct) / len(correct),
        "count": len(correct),
        "by_template": {name: sum(hits) / len(hits) for name, hits in sorted(by_template.items())},
        "count_by_template": {name: len(hits) for name, hits in sorted(by_template.items())},
    }


def evaluate_retrieval(clip: LoadedClip, items: list[RetrievalItem]) -> dict:
    """Image-to-text and text-to-image recall at 1, 5 and 10 over all captions of the set."""
    if not items:
        return {"image_to_text": {}, "text_to_image": {}, "images": 0, "captions": 0}
    images = _image_embeddings(clip, [item.image for item in items])
    captions = [caption for item in items for caption in item.captions]
    owner = torch.tensor([row for row, item in enumerate(items) for _ in item.captions])
    texts = encode_texts(clip, captions)
    similarity = images @ texts.t()  # (images, captions)

    image_to_text = {}
    text_ranking = similarity.argsort(dim=1, descending=True)  # caption indices, best first
    for k in RECALL_AT:
        top = owner[text_ranking[:, :k]]  # (images, k): which image each retrieved caption belongs to
        hits = (top == torch.arange(len(items)).unsqueeze(1)).any(dim=1)
        image_to_text[f"R@{k}"] = hits.float().mean().item()

    text_to_image = {}
    image_ranking = similarity.t().argsort(dim=1, descending=True)  # (captions, images)
    for k in RECALL_AT:
        hits = (image_ranking[:, :k] == owner.unsqueeze(1)).any(dim=1)
        text_to_image[f"R@{k}"] = hits.float().mean().item()
    return {"image_to_text": image_to_text, "text_to_image": text_to_image, "images": len(items), "captions": len(captions)}


def retrieval_items_from_examples(examples: list[NegationExample]) -> list[RetrievalItem]:
    """Group the affirmative captions of negation examples by image."""
    grouped: dict[str, list[str]] = defaultdict(list)
    for example in examples:
        if example.caption not in grouped[example.image]:
            grouped[example.image].append(example.caption)
    return [RetrievalItem(image=image, captions=captions) for image, captions in grouped.items()]


def evaluate_examples(clip: LoadedClip, examples: list[NegationExample]) -> dict:
    """Run the quick before/after check that training applies to its held-out images."""
    return {
        "presence": evaluate_presence(clip, examples),
        "absence": evaluate_absence(clip, examples),
        "retrieval": evaluate_retrieval(clip, retrieval_items_from_examples(examples)),
    }


@dataclass
class Benchmark:
    """A benchmark the `evaluate` command can run: `load(args)` reads its files once, `score(clip, items)`
    scores one model, `headline` lists (label, dotted key) pairs for the printed table, and `add_arguments`
    adds the benchmark's own command-line options."""

    name: str
    load: Callable[[argparse.Namespace], object]
    score: Callable[[LoadedClip, object], dict]
    headline: list[tuple[str, str]]
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None


BENCHMARKS: dict[str, Benchmark] = {}


def register(benchmark: Benchmark) -> None:
    BENCHMARKS[benchmark.name] = benchmark


def lookup(result: dict, dotted: str):
    value = result
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def format_table(results: dict[str, dict], with_tuned: bool) -> str:
    """Render {benchmark: result} (or {benchmark: {"base": ..., "tuned": ...}}) as an aligned text table."""
    rows = []
    for name, result in results.items():
        benchmark = BENCHMARKS.get(name)
        headline = benchmark.headline if benchmark else [("accuracy", "accuracy")]
        base = result["base"] if with_tuned else result
        tuned = result.get("tuned") if with_tuned else None
        for label, key in headline:
            base_value = lookup(base, key)
            if base_value is None:
                continue
            row = [name, label, _percent(base_value)]
            if with_tuned:
                tuned_value = lookup(tuned, key)
                row += [_percent(tuned_value), _signed_points(tuned_value, base_value)]
            rows.append(row)
    header = ["benchmark", "metric", "base"] + (["tuned", "change"] if with_tuned else [])
    widths = [max(len(str(row[i])) for row in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header] + rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _percent(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _signed_points(tuned, base) -> str:
    if tuned is None or base is None:
        return "-"
    return f"{100 * (tuned - base):+.1f}"


def model_card(config, info: dict, before: dict | None, after: dict | None) -> str:
    """Write the adapter's README.md: what it was tuned from, on what, how, and the measured change."""
    lines = [
        "---",
        "library_name: negclip",
        f"base_model: {info['base_model']}",
        "tags: [clip, negation, omni-negclip]",
        "---",
        "",
        f"# Omni-NegCLIP adapter for {info['base_model']}",
        "",
        "Fine-tuned with the Omni-NegCLIP presence and absence objectives; the image encoder is unchanged.",
        "",
        "| setting | value |",
        "| --- | --- |",
        f"| base model | `{info['base_model']}` |",
        f"| mode | {info['mode']} |",
        f"| tuned text layers | {info['layer_preset']} = {info['layers']} |",
        f"| data | `{info['data']}` ({info['train_examples']} training examples over {info['train_images']} images) |",
        f"| steps | {info['steps']} of {info['total_steps']}{' (stopped early)' if info['stopped_early'] else ''} |",
        f"| batch size, learning rate | {config.batch_size}, {config.learning_rate:g} |",
        f"| lambda_abs, lambda_orig, lambda_text, margin | {config.lambda_abs:g}, {config.lambda_orig:g}, "
        f"{config.lambda_text:g}, {config.margin:g} |",
        f"| seed | {info['seed']} |",
        "",
    ]
    if before and after:
        lines += [
            f"## Before and after, on {info['eval_examples']} held-out examples",
            "",
            "| metric | base | tuned | change (points) |",
            "| --- | --- | --- | --- |",
        ]
        for label, key in [
            ("presence accuracy", "presence.accuracy"),
            ("absence accuracy (Ta over T-)", "absence.accuracy"),
            ("image-to-text R@1", "retrieval.image_to_text.R@1"),
            ("text-to-image R@1", "retrieval.text_to_image.R@1"),
            ("zero-shot mAP (object categories)", "zeroshot.mean_average_precision"),
            ("zero-shot top-1 hit rate", "zeroshot.top1_hit_rate"),
        ]:
            base_value, tuned_value = lookup(before, key), lookup(after, key)
            if base_value is None:
                continue
            lines.append(f"| {label} | {_percent(base_value)} | {_percent(tuned_value)} | {_signed_points(tuned_value, base_value)} |")
        lines.append("")
    else:
        lines += ["No held-out evaluation was run (eval_fraction was 0 or the data set was too small).", ""]
    for warning in info.get("warnings", []):
        lines += [f"**Warning:** {warning}", ""]
    lines += [
        "## Loading",
        "",
        "```python",
        "from negclip.models import load_clip",
        "from negclip.tuning import load_adapter",
        f"tuned = load_adapter(load_clip({info['base_model']!r}), 'path/to/this/folder')",
        "```",
        "",
    ]
    return "\n".join(lines)
