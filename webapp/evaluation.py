"""Evaluate tab: the library's presence, multiple-choice and retrieval benchmarks, vanilla against tuned."""

from __future__ import annotations

import logging

import gradio as gr
import pandas as pd

from negclip.evaluate import evaluate_mcq, evaluate_presence, evaluate_retrieval, lookup
from webapp.compare import compared_models
from webapp.datasets import BUNDLED, mcq_items, negation_examples, retrieval_items
from webapp.errors import page_errors
from webapp.inputs import InputError
from webapp.session import Session

logger = logging.getLogger(__name__)

BENCHMARK_CHOICES = ("presence", "mcq", "retrieval")

# (benchmark, metric label, dotted key in the benchmark's result)
HEADLINES = [
    ("presence", "accuracy", "accuracy"),
    ("mcq", "accuracy", "accuracy"),
    ("mcq", "positive template", "by_template.positive"),
    ("mcq", "negative template", "by_template.negative"),
    ("mcq", "hybrid template", "by_template.hybrid"),
    ("retrieval", "image-to-text R@1", "image_to_text.R@1"),
    ("retrieval", "image-to-text R@5", "image_to_text.R@5"),
    ("retrieval", "text-to-image R@1", "text_to_image.R@1"),
    ("retrieval", "text-to-image R@5", "text_to_image.R@5"),
]


def run_benchmark(name: str, clip, source: str, upload) -> dict:
    if name == "presence":
        return evaluate_presence(clip, negation_examples(source, upload))
    if name == "mcq":
        return evaluate_mcq(clip, mcq_items(source, upload))
    if name == "retrieval":
        return evaluate_retrieval(clip, retrieval_items(source, upload))
    raise InputError(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARK_CHOICES)}")


def results_table(results: dict[str, dict[str, dict]]) -> pd.DataFrame:
    """Lay out {model label: {benchmark: result}} as rows of percentages, with the change in points."""
    labels = list(results)
    rows = []
    for benchmark, metric, key in HEADLINES:
        values = {label: lookup(results[label].get(benchmark, {}), key) for label in labels}
        if all(value is None for value in values.values()):
            continue
        row = {"benchmark": benchmark, "metric": metric}
        for label in labels:
            row[f"{label} (%)"] = None if values[label] is None else round(100 * values[label], 1)
        if len(labels) == 2 and None not in values.values():
            row["change (points)"] = round(100 * (values[labels[1]] - values[labels[0]]), 1)
        rows.append(row)
    return pd.DataFrame(rows)


@page_errors
def evaluate(
    source: str,
    benchmarks: list[str],
    model_name: str,
    adapter_choice: str | None,
    session: Session,
    progress=gr.Progress(),
) -> tuple[pd.DataFrame, str]:
    """Run the chosen benchmarks on a data source with both models; return (table, note with the counts)."""
    if not benchmarks:
        raise InputError("no benchmark chosen; tick presence, mcq or retrieval")
    models = compared_models(model_name, adapter_choice, session)
    results: dict[str, dict[str, dict]] = {label: {} for label in models}
    total = len(benchmarks) * len(models)
    done = 0
    for name in benchmarks:
        for label, clip in models.items():
            progress((done, total), desc=f"{name} with the {label} model")
            results[label][name] = run_benchmark(name, clip, source, session.upload)
            done += 1
    first = results[next(iter(models))]
    counts = []
    for name in benchmarks:
        result = first[name]
        count = result.get("count", result.get("captions"))
        counts.append(f"{name}: {count} {'captions' if name == 'retrieval' else 'items'}")
    note = f"Data: {source}. " + "; ".join(counts) + "."
    if source == BUNDLED:
        note += (
            " The example photos are also the bundled training set, so an adapter fine-tuned on them is not "
            "measured on held-out photos here."
        )
    return results_table(results), note
