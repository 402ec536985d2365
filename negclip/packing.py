"""Encode captions that share a token prefix in one pass over that prefix.

CLIP's text encoder is causal, so the hidden state of a token depends only on the tokens before it and on its
position. A negated caption such as "A man on a bench, but there is no dog." therefore repeats, token for token,
the hidden states of its original caption up to the comma. Packing a step's captions into a prefix tree (a trie
over token ids), with each node attending to itself and its ancestors at its depth as position, computes every
shared prefix once. Each caption's embedding is read at its end-of-text node, and equals the unpacked embedding
up to float rounding.

Captions are sorted by token ids and cut into rows of at most `max_row_tokens` tree nodes. A row is one sequence
of the batch, with a (nodes x nodes) attention mask in place of the causal one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from negclip.encode import tokenize

# Attention implementations that honour an arbitrary (batch, 1, query, key) mask.
PACKABLE_ATTENTION = ("eager", "sdpa")
# Tree nodes per row. Attention within a row costs the square of its length; at 128, the COCO negation batches
# of benchmarks/train_step.py (batch 32) carried about 9 % padding nodes.
DEFAULT_MAX_ROW_TOKENS = 128


@dataclass
class PackedCaptions:
    """Captions packed into prefix trees, one tree of several captions per row."""

    input_ids: torch.Tensor  # (rows, nodes) token id of each tree node, the end-of-text id on padding nodes
    position_ids: torch.Tensor  # (rows, nodes) depth of each node, i.e. its position in every caption through it
    attention_mask: torch.Tensor  # (rows, nodes, nodes) bool: node i may attend to node j, its ancestor or itself
    end_rows: torch.Tensor  # (captions,) row of each caption's end-of-text node
    end_columns: torch.Tensor  # (captions,) column of each caption's end-of-text node
    nodes: int  # real tree nodes over all rows, i.e. token positions the encoder must compute


def pack_token_ids(token_ids: list[list[int]], max_row_tokens: int = DEFAULT_MAX_ROW_TOKENS) -> PackedCaptions:
    """Pack tokenized captions (each with its start and end tokens) into rows of prefix trees."""
    if not token_ids:
        raise ValueError("no captions to pack")
    budget = max(max_row_tokens, max(len(ids) for ids in token_ids))
    order = sorted(range(len(token_ids)), key=lambda index: token_ids[index])

    rows: list[dict] = []
    end_rows = [0] * len(token_ids)
    end_columns = [0] * len(token_ids)
    row: dict | None = None
    previous: list[int] = []
    path: list[int] = []  # node index of each token of the previous caption in this row
    for index in order:
        ids = token_ids[index]
        shared = _common_prefix_length(previous, ids) if row is not None else 0
        if row is None or len(row["ids"]) + len(ids) - shared > budget:
            row = {"ids": [], "depth": [], "parent": []}
            rows.append(row)
            shared, path = 0, []
        path = path[:shared]
        for token in ids[shared:]:
            row["parent"].append(path[-1] if path else -1)
            row["depth"].append(len(path))
            row["ids"].append(token)
            path.append(len(row["ids"]) - 1)
        end_rows[index] = len(rows) - 1
        end_columns[index] = path[-1]
        previous = ids

    width = max(len(tree["ids"]) for tree in rows)
    pad_id = token_ids[0][-1]  # the end-of-text id, which CLIP also pads with
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    # Every node attends to itself, so padding nodes stay finite. No real node attends to a padding node.
    attention_mask = torch.eye(width, dtype=torch.bool).repeat(len(rows), 1, 1)
    for row_index, tree in enumerate(rows):
        count = len(tree["ids"])
        input_ids[row_index, :count] = torch.tensor(tree["ids"])
        position_ids[row_index, :count] = torch.tensor(tree["depth"])
        mask = attention_mask[row_index]
        for node, parent in enumerate(tree["parent"]):
            if parent >= 0:
                mask[node] |= mask[parent]  # parents come before their children
    return PackedCaptions(
        input_ids,
        position_ids,
        attention_mask,
        torch.tensor(end_rows),
        torch.tensor(end_columns),
        sum(len(tree["ids"]) for tree in rows),
    )


def _common_prefix_length(first: list[int], second: list[int]) -> int:
    length = 0
    for a, b in zip(first, second):
        if a != b:
            break
        length += 1
    return length


def can_pack(model) -> bool:
    """Return True when the model's attention implementation takes the tree mask (eager and sdpa do)."""
    return getattr(model.config, "_attn_implementation", None) in PACKABLE_ATTENTION


def packed_text_features(model, packed: PackedCaptions) -> torch.Tensor:
    """Return projected, unnormalised caption features (captions, projection_dim); gradients flow if enabled.

    `model` is a transformers CLIPModel (or a peft model around one) whose attention is eager or sdpa.
    """
    text_model = model.text_model
    embeddings = text_model.embeddings
    device = embeddings.token_embedding.weight.device
    # CLIPTextEmbeddings' own forward rejects rows longer than 77 tokens, although no depth here exceeds 76.
    hidden = embeddings.token_embedding(packed.input_ids.to(device)) + embeddings.position_embedding(
        packed.position_ids.to(device)
    )  # (rows, nodes, hidden)
    mask = packed.attention_mask.to(device).unsqueeze(1)  # (rows, 1, nodes, nodes), shared by every head
    if model.config._attn_implementation == "eager":
        # Eager attention adds the mask to the attention scores.
        additive = torch.zeros(mask.shape, dtype=hidden.dtype, device=device)
        mask = additive.masked_fill(~mask, torch.finfo(hidden.dtype).min)
    hidden = text_model.encoder(inputs_embeds=hidden, attention_mask=mask).last_hidden_state
    pooled = text_model.final_layer_norm(hidden[packed.end_rows.to(device), packed.end_columns.to(device)])
    return model.text_projection(pooled)


def encode_captions_packed(
    model, tokenizer, captions: list[str], max_row_tokens: int = DEFAULT_MAX_ROW_TOKENS
) -> torch.Tensor:
    """Encode captions through shared-prefix packing; return normalised features (captions, dim) in caption order.

    Empty captions raise EmptyCaptionError and long ones are truncated at 77 tokens, as `negclip.encode.tokenize`
    does.
    """
    packed = pack_token_ids(token_id_lists(tokenizer, captions), max_row_tokens)
    return F.normalize(packed_text_features(model, packed).float(), dim=-1)


def token_id_lists(tokenizer, captions: list[str]) -> list[list[int]]:
    """Token ids of each caption with its start and end tokens, unpadded, checked and truncated as tokenize does."""
    batch = tokenize(tokenizer, captions)
    return [ids[mask.bool()].tolist() for ids, mask in zip(batch.input_ids, batch.attention_mask)]
