"""Tests for analysis/: layer probes, embeddings and their summary, UMAP maps, object guesses and figures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from analysis.embeddings import (
    ABSENCE_NEGATED,
    IMAGE,
    ORIGINAL,
    PRESENCE_NEGATED,
    embed_examples,
    sample_examples,
    summarize_negations,
)
from analysis.figures import caption_scores_figure, embedding_maps_figure, layer_cosines_figure, loss_curve_figure
from analysis.layers import eot_hidden_states, eot_positions, layer_cosines
from analysis.maps import UmapWarmup, align_layout, umap_layout
from analysis.objects import ObjectGuess, guess_objects, suggest_negations
from negclip.data import NegationExample
from negclip.encode import ImageFeatureCache, encode_images, encode_texts, tokenize
from negclip.models import EOS_TOKEN_ID, load_clip
from negclip.negations import COCO_CATEGORIES
from negclip.sources import load_negation_examples


@pytest.fixture(scope="module")
def clip():
    return load_clip("tiny-random")


@pytest.fixture(scope="module")
def coco_examples(coco_neg) -> list[NegationExample]:
    """Negation examples built from the NegBench retrieval CSV over the real COCO photos."""
    examples = load_negation_examples(
        coco_neg / "negbench" / "COCO_val_retrieval.csv", image_root=coco_neg / "images", seed=0
    )
    return sample_examples(examples, count=8, seed=0)


# ---------------------------------------------------------------- layers


def test_eot_positions_padded_batch(clip):
    batch = tokenize(clip.tokenizer, ["a dog", "a dog on a boat, but there is no cat"])
    positions = eot_positions(batch.input_ids)
    assert positions.tolist() == [3, 12]
    assert batch.input_ids[0, 3].item() == EOS_TOKEN_ID
    assert batch.input_ids[0, 4:].eq(EOS_TOKEN_ID).all()  # padding uses the same id after the caption's own


def test_eot_positions_missing_token():
    with pytest.raises(ValueError, match="rows \\[1\\]"):
        eot_positions(torch.tensor([[49406, 320, EOS_TOKEN_ID], [49406, 320, 1929]]))


def test_eot_hidden_states_match_pooler(clip):
    captions = ["a man with a cat", "a man with no cat on his lap"]
    states = eot_hidden_states(clip, captions)
    assert states.shape == (clip.num_text_layers + 1, 2, clip.model.config.text_config.hidden_size)
    batch = tokenize(clip.tokenizer, captions)
    with torch.no_grad():
        pooled = clip.model.text_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).pooler_output
        last = clip.model.text_model.final_layer_norm(states[-1])
    torch.testing.assert_close(last, pooled, rtol=1e-5, atol=1e-5)


def test_layer_cosines_identical_caption(clip):
    result = layer_cosines(clip, "a dog on a boat", ["a dog on a boat", "a boat with no dog"])
    assert result.cosine.shape == (2, clip.num_text_layers + 1)
    torch.testing.assert_close(result.cosine[0], torch.ones(clip.num_text_layers + 1))
    # Both captions have 5 words, so their end-of-text tokens share a position and the embedding output.
    assert result.cosine[1, 0].item() == pytest.approx(1.0)
    assert (result.cosine[1, 1:] < 0.9999).all()
    assert result.layer_labels == ["embeddings", "layer 0", "layer 1", "layer 2", "layer 3"]


def test_layer_cosines_needs_variants(clip):
    with pytest.raises(ValueError, match="no negated captions"):
        layer_cosines(clip, "a dog", [])


# ---------------------------------------------------------------- embeddings


def test_sample_examples_one_per_image(coco_examples):
    images = [example.image for example in coco_examples]
    assert len(coco_examples) == 8
    assert len(set(images)) == 8
    assert images == sorted(images)


def test_sample_examples_same_seed(coco_neg):
    examples = load_negation_examples(coco_neg / "negbench" / "COCO_val_retrieval.csv", coco_neg / "images")
    first = sample_examples(examples, 5, seed=3)
    second = sample_examples(examples, 5, seed=3)
    other = sample_examples(examples, 5, seed=4)
    assert first == second
    assert first != other


def test_embed_examples_rows_and_kinds(clip, coco_examples):
    points = embed_examples(clip, coco_examples, cache=ImageFeatureCache())
    count = len(coco_examples)
    assert points.embeds.shape == (4 * count, clip.model.config.projection_dim)
    assert points.kinds == [ORIGINAL] * count + [PRESENCE_NEGATED] * count + [ABSENCE_NEGATED] * count + [IMAGE] * count
    assert points.texts[count] == coco_examples[0].presence_negated
    assert points.texts[3 * count].endswith(".jpg")
    torch.testing.assert_close(points.embeds.norm(dim=-1), torch.ones(4 * count))


def test_summarize_negations_values(clip, coco_examples):
    points = embed_examples(clip, coco_examples, cache=ImageFeatureCache())
    summary = summarize_negations(points, coco_examples)

    captions = encode_texts(clip, [e.caption for e in coco_examples])
    presence = encode_texts(clip, [e.presence_negated for e in coco_examples])
    absence = encode_texts(clip, [e.absence_negated for e in coco_examples])
    images = encode_images(clip, [e.image for e in coco_examples])
    assert summary.count == 8
    assert summary.caption_presence_cosine == pytest.approx((captions * presence).sum(-1).mean().item(), abs=1e-5)
    assert summary.caption_absence_cosine == pytest.approx((captions * absence).sum(-1).mean().item(), abs=1e-5)
    wins = ((images * captions).sum(-1) > (images * presence).sum(-1)).float().mean().item()
    assert summary.caption_beats_presence == pytest.approx(wins)


def test_embed_examples_empty(clip):
    with pytest.raises(ValueError, match="no examples"):
        embed_examples(clip, [])


# ---------------------------------------------------------------- UMAP maps


@pytest.fixture(scope="module")
def warmed_umap() -> UmapWarmup:
    warmup = UmapWarmup().start()
    assert warmup.wait(timeout=300)
    return warmup


def test_umap_warmup_finishes(warmed_umap):
    assert warmed_umap.done
    assert warmed_umap.error is None
    assert warmed_umap.seconds > 0
    assert UmapWarmup().wait(timeout=0)  # never started: nothing to wait for


def test_umap_layout_same_seed(warmed_umap, clip, coco_examples):
    embeds = embed_examples(clip, coco_examples, cache=ImageFeatureCache()).embeds.numpy()
    first = umap_layout(embeds, seed=1)
    second = umap_layout(embeds, seed=1)
    assert first.shape == (len(embeds), 2)
    np.testing.assert_allclose(first, second)
    assert np.isfinite(first).all()


def test_umap_layout_small_input(warmed_umap):
    layout = umap_layout(np.eye(5, 8), seed=0)
    assert layout.shape == (5, 2)
    with pytest.raises(ValueError, match="at least 4 points"):
        umap_layout(np.eye(3, 8))


def test_align_layout_undoes_rotation():
    reference = np.random.default_rng(0).standard_normal((20, 2))
    angle = 0.7
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = 3.0 * reference @ rotation.T * np.array([1.0, -1.0]) + np.array([5.0, -2.0])
    np.testing.assert_allclose(align_layout(reference, moved), reference, atol=1e-9)


# ---------------------------------------------------------------- objects and suggestions


def test_guess_objects_real_photo(clip, photo_paths):
    guess = guess_objects(clip, photo_paths[0], cache=ImageFeatureCache())
    assert 1 <= len(guess.present) <= 3
    assert len(guess.absent) == 3
    assert not set(guess.present) & set(guess.absent)
    assert set(guess.probabilities) == set(COCO_CATEGORIES)
    assert sum(guess.probabilities.values()) == pytest.approx(1.0, abs=1e-4)
    values = list(guess.probabilities.values())
    assert values == sorted(values, reverse=True)
    assert guess.present[0] == next(iter(guess.probabilities))


def test_suggest_negations_marks_truth():
    guess = ObjectGuess(present=["dog", "boat"], absent=["car", "chair", "handbag"], probabilities={})
    suggestions = suggest_negations(guess, "photo.jpg", ["A man and a dog on a small boat."], seed=0)
    kinds = [item.kind for item in suggestions]
    assert kinds == ["presence-negated", "absence-negated"]
    presence, absence = suggestions
    assert presence.is_true is False
    assert absence.is_true is True
    assert presence.caption == "A man and a dog on a small boat, but there is no boat."
    assert absence.caption == "A man and a dog on a small boat, but there is no chair."


def test_suggest_negations_without_captions():
    guess = ObjectGuess(present=["dog", "umbrella"], absent=["car", "chair", "handbag"], probabilities={})
    suggestions = suggest_negations(guess, "photo.jpg", [], seed=0)
    assert suggestions[0].caption == "A photo of a dog and an umbrella."
    assert suggestions[0].is_true
    assert [item.kind for item in suggestions] == ["original", "presence-negated", "absence-negated"]


# ---------------------------------------------------------------- figures


def test_caption_scores_figure_traces():
    figure = caption_scores_figure(["a dog", "no dog"], {"vanilla": [0.6, 0.4], "tuned": [0.9, 0.1]})
    assert [trace.name for trace in figure.data] == ["vanilla", "tuned"]
    assert list(figure.data[1].x) == [0.9, 0.1]
    assert figure.layout.barmode == "group"


def test_embedding_maps_figure_panels(clip, coco_examples):
    points = embed_examples(clip, coco_examples, cache=ImageFeatureCache())
    layout = np.random.default_rng(0).standard_normal((len(points.kinds), 2))
    figure = embedding_maps_figure({"vanilla": layout, "tuned": layout + 1}, points)
    assert [annotation.text for annotation in figure.layout.annotations] == ["vanilla", "tuned"]
    assert len(figure.data) == 8  # four kinds in each of two panels
    assert [trace.name for trace in figure.data[:4]] == [ORIGINAL, PRESENCE_NEGATED, ABSENCE_NEGATED, IMAGE]
    assert sum(trace.showlegend for trace in figure.data) == 4
    assert coco_examples[0].caption.split()[0] in figure.data[0].hovertext[0]


def test_layer_cosines_figure_lines(clip):
    results = {
        "vanilla": layer_cosines(clip, "a dog", ["no dog", "a dog, no cat"]),
        "tuned": layer_cosines(clip, "a dog", ["no dog", "a dog, no cat"]),
    }
    figure = layer_cosines_figure(results)
    assert len(figure.data) == 4
    assert list(figure.data[0].x)[0] == "embeddings"
    assert figure.data[2].line.dash == "dash"


def test_loss_curve_figure_keys():
    history = [
        {"step": 1, "loss": 3.0, "presence_loss": 1.0, "absence_loss": 2.0},
        {"step": 2, "loss": 2.5, "presence_loss": 0.9, "absence_loss": 1.6},
    ]
    figure = loss_curve_figure(history)
    assert [trace.name for trace in figure.data] == ["loss", "presence loss", "absence loss"]
    assert list(figure.data[0].y) == [3.0, 2.5]
    assert len(loss_curve_figure([]).data) == 0
