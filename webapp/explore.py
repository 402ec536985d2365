"""Embedding map and Layer analysis tabs: how each model places captions, negations and images."""

from __future__ import annotations

import logging

import gradio as gr
import pandas as pd
import plotly.graph_objects as go

from analysis.embeddings import embed_examples, sample_examples, summarize_negations
from analysis.figures import embedding_maps_figure, layer_cosines_figure
from analysis.layers import layer_cosines
from analysis.maps import UmapWarmup, align_layout, umap_layout
from analysis.objects import guess_objects, suggest_negations
from negclip.data import NegationExample
from webapp.compare import VANILLA, caption_lines, compared_models
from webapp.datasets import BUNDLED, UPLOADED, WORLD, negation_examples
from webapp.errors import page_errors
from webapp.inputs import InputError, check_photo, parse_captions
from webapp.session import Session

logger = logging.getLogger(__name__)

COMPARE_SOURCE = "the Compare tab's photo and captions"
MAP_SOURCES = (BUNDLED, WORLD, UPLOADED, COMPARE_SOURCE)
MAX_MAP_EXAMPLES = 200

UMAP_WARMUP = UmapWarmup()


def typed_examples(
    session: Session, captions_text: str, model_name: str, adapter_choice: str | None
) -> list[NegationExample]:
    """Negate each typed caption of the Compare tab's photo, with objects guessed by the vanilla model."""
    photo = check_photo(session.photo)
    models = compared_models(model_name, adapter_choice, session)
    captions = parse_captions(captions_text).captions
    guess = guess_objects(models[VANILLA], photo)
    examples = []
    for caption in captions:
        suggestions = {item.kind: item.caption for item in suggest_negations(guess, photo, [caption])}
        if "presence-negated" in suggestions and "absence-negated" in suggestions:
            examples.append(
                NegationExample(photo, caption, suggestions["presence-negated"], suggestions["absence-negated"],
                                "", "", guess.present, guess.absent)
            )
    if not examples:
        raise InputError("none of the captions could be negated; type captions that describe the photo")
    return examples


def summary_table(summaries: dict) -> pd.DataFrame:
    rows = []
    for label, summary in summaries.items():
        rows.append(
            {
                "model": label,
                "mean cos(caption, presence-negated)": round(summary.caption_presence_cosine, 4),
                "mean cos(caption, absence-negated)": round(summary.caption_absence_cosine, 4),
                "share where the image prefers the caption to presence-negated": round(summary.caption_beats_presence, 4),
                "examples": summary.count,
            }
        )
    return pd.DataFrame(rows)


@page_errors
def embedding_map(
    source: str,
    sample_size: int,
    seed: int,
    captions_text: str,
    model_name: str,
    adapter_choice: str | None,
    session: Session,
    progress=gr.Progress(),
) -> tuple[go.Figure, pd.DataFrame, str]:
    """Map captions, their negations and their images with UMAP for each model; return (figure, numbers, note)."""
    seed = int(seed or 0)
    if source == COMPARE_SOURCE:
        examples = typed_examples(session, captions_text, model_name, adapter_choice)
    else:
        count = max(1, min(int(sample_size or 1), MAX_MAP_EXAMPLES))
        examples = sample_examples(negation_examples(source, session.upload), count, seed)
    models = compared_models(model_name, adapter_choice, session)

    progress(0.1, desc="embedding captions and images")
    points = {label: embed_examples(clip, examples) for label, clip in models.items()}
    summaries = {label: summarize_negations(points[label], examples) for label in models}

    if not UMAP_WARMUP.done:
        progress(0.3, desc="waiting for UMAP's one-time compilation")
    UMAP_WARMUP.start().wait()
    progress(0.6, desc="running UMAP")
    layouts = {label: umap_layout(points[label].embeds.numpy(), seed=seed) for label in models}
    reference = layouts[VANILLA]
    layouts = {label: layout if label == VANILLA else align_layout(reference, layout) for label, layout in layouts.items()}

    figure = embedding_maps_figure(layouts, points[VANILLA])
    note = (
        f"{len(examples)} captions, each with its presence-negated (false) and absence-negated (true) version, "
        f"and {len({e.image for e in examples})} images. Each model has its own UMAP (seed {seed}); the tuned map is "
        "rotated and scaled onto the vanilla one, so positions are comparable but distances across maps are not."
    )
    return figure, summary_table(summaries), note


@page_errors
def layer_analysis(
    caption: str, variants_text: str, model_name: str, adapter_choice: str | None, session: Session
) -> tuple[go.Figure, pd.DataFrame]:
    """Per-layer cosine between a caption's end-of-text state and each negation's, for each model."""
    models = compared_models(model_name, adapter_choice, session)
    tokenizer = models[VANILLA].tokenizer
    caption = parse_captions(caption, tokenizer, max_captions=1).captions[0]
    variants = [line for line in parse_captions(variants_text, tokenizer).captions if line != caption]
    if not variants:
        raise InputError("give at least one negated caption that differs from the caption")
    results = {label: layer_cosines(clip, caption, variants) for label, clip in models.items()}

    rows = []
    first = next(iter(results.values()))
    for index, variant in enumerate(variants):
        for layer, label in enumerate(first.layer_labels):
            row = {"negation": variant, "layer": label}
            for model_label, result in results.items():
                row[f"{model_label} cosine"] = round(float(result.cosine[index, layer]), 4)
            rows.append(row)
    return layer_cosines_figure(results), pd.DataFrame(rows)


def default_layer_inputs() -> tuple[str, str]:
    """Return a caption and its negations from the first bundled photo, to fill the Layer analysis tab."""
    from webapp.datasets import example_photos

    captions = caption_lines("\n".join(example_photos()[0].captions))
    return captions[0], "\n".join(captions[1:])
