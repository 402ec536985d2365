"""Plotly figures for the app: caption scores, embedding maps, per-layer cosines and the training loss."""

from __future__ import annotations

import textwrap

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis.embeddings import ABSENCE_NEGATED, IMAGE, KINDS, ORIGINAL, PRESENCE_NEGATED, EmbeddingPoints
from analysis.layers import LayerCosines

KIND_COLOURS = {
    ORIGINAL: "#1f77b4",
    PRESENCE_NEGATED: "#d62728",
    ABSENCE_NEGATED: "#2ca02c",
    IMAGE: "#7f7f7f",
}
KIND_SYMBOLS = {ORIGINAL: "circle", PRESENCE_NEGATED: "x", ABSENCE_NEGATED: "diamond", IMAGE: "square"}
MODEL_COLOURS = ("#1f77b4", "#ff7f0e", "#9467bd", "#8c564b")
LOSS_KEYS = ("loss", "presence_loss", "absence_loss")


def _short(text: str, width: int = 48) -> str:
    return textwrap.shorten(text, width=width, placeholder="…")


def _hover(text: str) -> str:
    return "<br>".join(textwrap.wrap(text, 60)) or text


def caption_scores_figure(captions: list[str], probabilities: dict[str, list[float]]) -> go.Figure:
    """Grouped horizontal bars: each model's softmax probability for each caption (models as colours)."""
    labels = [f"{index + 1}. {_short(caption)}" for index, caption in enumerate(captions)]
    figure = go.Figure()
    for colour, (model, values) in zip(MODEL_COLOURS, probabilities.items()):
        figure.add_trace(
            go.Bar(
                y=labels,
                x=values,
                name=model,
                orientation="h",
                marker_color=colour,
                hovertext=[_hover(caption) for caption in captions],
                hovertemplate="%{hovertext}<br>probability %{x:.3f}<extra>" + model + "</extra>",
            )
        )
    figure.update_layout(
        barmode="group",
        xaxis=dict(title="softmax probability over the captions", range=[0, 1]),
        yaxis=dict(autorange="reversed"),
        height=120 + 26 * len(captions) * max(1, len(probabilities)),
        margin=dict(l=10, r=10, t=30, b=40),
        legend=dict(orientation="h", y=1.02, yanchor="bottom", x=0),
    )
    return figure


def embedding_maps_figure(layouts: dict[str, np.ndarray], points: EmbeddingPoints) -> go.Figure:
    """UMAP maps side by side, one per model, coloured by kind with each caption as hover text."""
    titles = list(layouts)
    figure = make_subplots(rows=1, cols=len(titles), subplot_titles=titles, horizontal_spacing=0.05)
    kinds = np.asarray(points.kinds)
    for column, title in enumerate(titles, start=1):
        layout = layouts[title]
        for kind in KINDS:
            rows = np.flatnonzero(kinds == kind)
            if not len(rows):
                continue
            figure.add_trace(
                go.Scatter(
                    x=layout[rows, 0],
                    y=layout[rows, 1],
                    mode="markers",
                    name=kind,
                    legendgroup=kind,
                    showlegend=column == 1,
                    marker=dict(color=KIND_COLOURS[kind], symbol=KIND_SYMBOLS[kind], size=9, opacity=0.85),
                    hovertext=[f"{kind} #{points.groups[row]}<br>{_hover(points.texts[row])}" for row in rows],
                    hoverinfo="text",
                ),
                row=1,
                col=column,
            )
    figure.update_xaxes(showticklabels=False, zeroline=False)
    figure.update_yaxes(showticklabels=False, zeroline=False)
    figure.update_layout(height=460, margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.02))
    return figure


def layer_cosines_figure(results: dict[str, LayerCosines]) -> go.Figure:
    """Lines of caption-to-negation cosine against layer: one colour per negation, one dash style per model."""
    figure = go.Figure()
    dashes = ("solid", "dash", "dot", "dashdot")
    for dash, (model, result) in zip(dashes, results.items()):
        for index, variant in enumerate(result.variants):
            figure.add_trace(
                go.Scatter(
                    x=result.layer_labels,
                    y=result.cosine[index].tolist(),
                    mode="lines+markers",
                    name=f"{model}: {_short(variant, 40)}",
                    line=dict(color=MODEL_COLOURS[index % len(MODEL_COLOURS)], dash=dash),
                    hovertext=_hover(variant),
                    hovertemplate="%{hovertext}<br>%{x}: cosine %{y:.3f}<extra>" + model + "</extra>",
                )
            )
    figure.update_layout(
        xaxis_title="text-encoder layer (end-of-text hidden state)",
        yaxis_title="cosine to the caption",
        height=440,
        margin=dict(l=10, r=10, t=30, b=40),
        legend=dict(orientation="h", y=-0.25),
    )
    return figure


def loss_curve_figure(history: list[dict]) -> go.Figure:
    """Training loss against step: the total and, when recorded, the presence and absence parts."""
    figure = go.Figure()
    steps = [record["step"] for record in history]
    for key in LOSS_KEYS:
        values = [record.get(key) for record in history]
        if not any(value is not None for value in values):
            continue
        figure.add_trace(go.Scatter(x=steps, y=values, mode="lines", name=key.replace("_", " ")))
    figure.update_layout(
        xaxis_title="step",
        yaxis_title="loss",
        height=320,
        margin=dict(l=10, r=10, t=30, b=40),
        legend=dict(orientation="h", y=1.02, yanchor="bottom", x=0),
    )
    return figure
