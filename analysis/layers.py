"""Per-layer probes of CLIP's text encoder: where along the layers a caption and its negation separate.

CLIP pools a caption at its end-of-text token, so the end-of-text hidden state of each layer is what that layer
contributes to the final embedding. Comparing a caption with its negation layer by layer shows which layers
tell them apart, the measurement behind tuning the front layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from negclip.encode import tokenize
from negclip.models import EOS_TOKEN_ID, LoadedClip


def eot_positions(input_ids: torch.Tensor, eos_token_id: int = EOS_TOKEN_ID) -> torch.Tensor:
    """Return the index of the first end-of-text token in each row of input_ids (batch, length).

    The bundled tokenizer pads with the end-of-text id too, so the first occurrence is the caption's own.
    Raises ValueError when a row has no end-of-text token.
    """
    is_eot = input_ids == eos_token_id
    missing = (~is_eot.any(dim=1)).nonzero().flatten().tolist()
    if missing:
        raise ValueError(f"rows {missing} of input_ids have no end-of-text token {eos_token_id}")
    return is_eot.int().argmax(dim=1)


@torch.no_grad()
def eot_hidden_states(clip: LoadedClip, captions: list[str]) -> torch.Tensor:
    """Return the end-of-text hidden state of every layer: (num_layers + 1, len(captions), hidden_size).

    Index 0 is the embedding output (token plus position embedding), index i the output of transformer
    layer i - 1, before the final layer norm. At index 0 the end-of-text state depends only on the caption's
    length, so two captions of the same token length have identical states there.
    """
    clip.model.eval()
    batch = tokenize(clip.tokenizer, captions)
    input_ids = batch.input_ids.to(clip.device)
    outputs = clip.model.text_model(
        input_ids=input_ids,
        attention_mask=batch.attention_mask.to(clip.device),
        output_hidden_states=True,
    )
    rows = torch.arange(len(captions), device=input_ids.device)
    positions = eot_positions(input_ids)
    return torch.stack([hidden[rows, positions] for hidden in outputs.hidden_states]).float().cpu()


@dataclass
class LayerCosines:
    """Cosine between a caption and each of its variants at every text-encoder layer."""

    caption: str
    variants: list[str]
    cosine: torch.Tensor  # (len(variants), num_layers + 1); column 0 is the embedding output

    @property
    def layer_labels(self) -> list[str]:
        return ["embeddings"] + [f"layer {index}" for index in range(self.cosine.shape[1] - 1)]


def layer_cosines(clip: LoadedClip, caption: str, variants: list[str]) -> LayerCosines:
    """Measure, per layer, the cosine between the caption's end-of-text state and each variant's."""
    if not variants:
        raise ValueError("no negated captions given; give at least one caption to compare with")
    states = eot_hidden_states(clip, [caption, *variants])  # (layers + 1, 1 + variants, hidden)
    cosine = F.cosine_similarity(states[:, 1:], states[:, :1], dim=-1)  # (layers + 1, variants)
    return LayerCosines(caption, list(variants), cosine.t().contiguous())
