"""Compare tab: score one photo against typed captions with the vanilla and the tuned model side by side."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import gradio as gr
import pandas as pd
import plotly.graph_objects as go

from analysis.figures import caption_scores_figure
from analysis.objects import guess_objects, suggest_negations
from negclip.models import LoadedClip
from negclip.scoring import CaptionScores, score_captions
from webapp.datasets import example_photos
from webapp.errors import page_errors, warn
from webapp.inputs import check_photo, parse_captions
from webapp.models import STORE, resolve_adapter
from webapp.session import Session

logger = logging.getLogger(__name__)

VANILLA = "vanilla"
TUNED = "tuned"
MAX_PREMISES = 2  # captions that "suggest negations" writes negations for
NEGATION_WORDS = frozenset({"no", "not", "without", "nothing", "none", "never", "nor", "neither"})


def compared_models(model_name: str, adapter_choice: str | None, session: Session) -> dict[str, LoadedClip]:
    """Return {"vanilla": base} or {"vanilla": base, "tuned": base with the adapter}, loading each once."""
    model_name = (model_name or "").strip()
    if not model_name:
        raise ValueError("no model chosen; pick a model or type a Hub id or folder")
    models = {VANILLA: STORE.base(model_name)}
    adapter = resolve_adapter(adapter_choice, session.adapter_dir)
    if adapter is not None:
        models[TUNED] = STORE.tuned(model_name, adapter)
    return models


def describe_models(models: dict[str, LoadedClip]) -> str:
    lines = []
    for label, clip in models.items():
        adapter = f" + adapter `{clip.adapter}`" if clip.adapter else ""
        lines.append(f"**{label}**: `{clip.name}`{adapter}")
    if TUNED not in models:
        lines.append("No adapter is selected, so only the vanilla model is scored; fine-tune one or pick an adapter.")
    return "  \n".join(lines)


def is_negated(caption: str) -> bool:
    """Check whether a caption contains a negation word ("no", "not", "without", "n't", ...)."""
    words = re.findall(r"[a-z']+", caption.lower())
    return any(word in NEGATION_WORDS or word.endswith("n't") for word in words)


def caption_lines(text: str | None) -> list[str]:
    """Split text into distinct non-empty captions without raising, for keeping widgets in step while typing."""
    lines = (" ".join(line.split()) for line in (text or "").splitlines())
    return list(dict.fromkeys(line for line in lines if line))


def sync_truth_choices(captions_text: str | None, true_captions: list[str] | None) -> dict:
    """Offer the current captions as "true" checkboxes, keeping the marks of captions still present."""
    captions = caption_lines(captions_text)
    still_marked = [caption for caption in (true_captions or []) if caption in captions]
    return gr.update(choices=captions, value=still_marked)


def clear_photo(session: Session) -> tuple[None, None, str, None, Session]:
    """Forget the session's photo and clear the photo preview, score table, summary and chart.

    Runs before set_photo checks a new upload, so a rejected upload leaves no photo for Compare to score
    and no results of the previous photo next to its error message.
    """
    session.photo = None
    return None, None, "", None, session


@page_errors
def set_photo(upload: str | None, session: Session) -> tuple[str, Session]:
    """Check an uploaded photo and make it the session's photo; returns (preview path, session)."""
    session.photo = None
    session.photo = check_photo(upload)
    logger.info("session %s uploaded a photo", session.id)
    return session.photo, session


@page_errors
def choose_example(index: int, session: Session) -> tuple[str, str, dict, Session]:
    """Load bundled example photo `index` with its default captions and true marks."""
    photo = example_photos()[index]
    session.photo = check_photo(photo.path)
    return photo.path, "\n".join(photo.captions), gr.update(choices=photo.captions, value=photo.true_captions), session


@dataclass
class Verdict:
    """One model's ordering of the captions that the user marked true or false."""

    correct_pairs: int
    pairs: int
    top_is_true: bool

    @property
    def all_right(self) -> bool:
        return self.correct_pairs == self.pairs


def judge_ranking(cosine: list[float], truths: list[bool]) -> Verdict | None:
    """Count (true, false) caption pairs that a model orders correctly; None unless both kinds are marked."""
    true_scores = [score for score, truth in zip(cosine, truths) if truth]
    false_scores = [score for score, truth in zip(cosine, truths) if not truth]
    if not true_scores or not false_scores:
        return None
    correct = sum(t > f for t in true_scores for f in false_scores)
    best = max(range(len(cosine)), key=cosine.__getitem__)
    return Verdict(correct, len(true_scores) * len(false_scores), truths[best])


def scores_table(captions: list[str], truths: list[bool], scores: dict[str, CaptionScores]) -> pd.DataFrame:
    columns: dict[str, list] = {"#": list(range(1, len(captions) + 1)), "caption": captions, "marked true": truths}
    for label, result in scores.items():
        columns[f"{label} cosine"] = [round(value, 4) for value in result.cosine]
        columns[f"{label} probability"] = [round(value, 4) for value in result.probability]
    return pd.DataFrame(columns)


def scores_summary(captions: list[str], truths: list[bool], scores: dict[str, CaptionScores], models) -> str:
    lines = [describe_models(models), ""]
    any_marked = any(truths)
    for label, result in scores.items():
        pick = f"{label} picks caption {result.best + 1}: “{captions[result.best]}”"
        verdict = judge_ranking(result.cosine, truths) if any_marked else None
        if verdict is not None:
            right = "ranks every true caption above every false one" if verdict.all_right else (
                f"orders {verdict.correct_pairs} of {verdict.pairs} true/false pairs correctly"
            )
            pick += f" ({'true' if verdict.top_is_true else 'false'}); it {right}."
        lines.append(f"- {pick}")
    if not any_marked:
        lines.append("\nMark the true captions below the caption box to see which model ranks them right.")
    elif all(truths):
        lines.append("\nEvery caption is marked true; leave the false ones unmarked to judge the rankings.")
    return "\n".join(lines)


@page_errors
def compare(
    session: Session, captions_text: str, true_captions: list[str] | None, model_name: str, adapter_choice: str | None
) -> tuple[pd.DataFrame, str, go.Figure]:
    """Score the session's photo against each caption with both models; return (table, summary, bar chart)."""
    photo = check_photo(session.photo)
    models = compared_models(model_name, adapter_choice, session)
    parsed = parse_captions(captions_text, models[VANILLA].tokenizer)
    for note in parsed.notes:
        warn(note)
    captions = parsed.captions
    marked = set(true_captions or [])
    truths = [caption in marked for caption in captions]
    scores = {label: score_captions(clip, photo, captions) for label, clip in models.items()}
    figure = caption_scores_figure(captions, {label: result.probability for label, result in scores.items()})
    return scores_table(captions, truths, scores), scores_summary(captions, truths, scores, models), figure


@page_errors
def suggest(
    session: Session, captions_text: str, true_captions: list[str] | None, model_name: str, seed: int = 0
) -> tuple[str, dict, str]:
    """Guess the photo's objects with the vanilla model and append presence- and absence-negated captions.

    Returns (new caption text, true-mark update, a note on the guess).
    """
    photo = check_photo(session.photo)
    base = STORE.base((model_name or "").strip())
    captions = caption_lines(captions_text)
    marked = [caption for caption in (true_captions or []) if caption in captions]
    # Negate only captions marked true, because an unmarked one may be false. Affirmative ones come first, so
    # that a suggestion does not stack a second negation onto a negated caption.
    affirmative = [caption for caption in marked if not is_negated(caption)]
    premises = (affirmative or marked or captions[:1])[:MAX_PREMISES]
    guess = guess_objects(base, photo)
    suggestions = suggest_negations(guess, photo, premises, seed=int(seed or 0))
    if not suggestions:
        warn("no negation could be written for these captions: each names every candidate absent object")
    new = [item for item in suggestions if item.caption not in captions]
    all_captions = captions + [item.caption for item in new]
    marked += [caption for caption in premises if caption not in marked]
    marked += [item.caption for item in new if item.is_true]
    top = ", ".join(f"{name} {probability:.2f}" for name, probability in list(guess.probabilities.items())[:6])
    note = (
        f"`{base.name}` guesses present: **{', '.join(guess.present)}**; plausible but absent: "
        f"**{', '.join(guess.absent)}** (top zero-shot probabilities: {top}). Presence-negated captions are "
        "marked false and absence-negated ones true by this guess; correct the marks if it is wrong."
    )
    return "\n".join(all_captions), gr.update(choices=all_captions, value=marked), note
