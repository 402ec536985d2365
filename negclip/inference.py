"""A lean, inference-only forward pass through CLIP's towers, for scoring with frozen weights.

It computes what transformers' CLIPModel computes, up to float rounding, with less work:

- every linear layer runs on a copy of its weight prepared once in oneDNN's blocked layout. At ViT-B/32 shapes
  on a 2-core x86 CPU this took 15-20 % off each matrix product of the image tower (torch 2.13);
- one matrix product for the query, key and value projections of each layer, in place of three, and the MLP's
  quick_gelu fused into its first product as oneDNN's swish;
- the patch convolution (stride equal to kernel) as one matrix product over the flattened patches;
- in the last layer, attention and MLP only for the token that is pooled (the class token of the image, the
  end-of-text token of each caption): every other token's last hidden state is discarded anyway;
- no attention-mask preparation and no output objects between layers.

The prepared copies cost as much memory as the two towers' linear weights (about 0.5 GB for ViT-B/32). They are
kept per model and rebuilt when its weights change. The path takes a plain CLIPModel, or the one inside a peft
model, whose linear maps are all plain nn.Linear. That covers the models `load_clip` returns, with or without a
merged adapter. Callers send anything else, such as unmerged LoRA layers, through transformers' forward (see
`supports`). Without oneDNN the prepared weights are plain transposed copies. Setting the environment variable
NEGCLIP_LEAN_SCORING=0 turns the path off, for example to save the memory of the prepared copies.
"""

from __future__ import annotations

import os
import threading
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

if TYPE_CHECKING:
    from negclip.packing import PackedCaptions

# oneDNN picks the weight layout for products of this many rows. Products with other row counts work as well.
LAYOUT_ROWS_HINT = 64
# encoder -> (fingerprint, [PreparedLayer]); vision embeddings -> (fingerprint, PreparedLinear)
_PREPARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()
_optimizer_steps = 0


def _count_optimizer_step(optimizer, args, kwargs) -> None:
    global _optimizer_steps
    _optimizer_steps += 1


register_optimizer_step_post_hook(_count_optimizer_step)


def weights_fingerprint(parameters) -> tuple:
    """Identify the current values of `parameters`: storage addresses, version counters and optimiser steps.

    In-place updates such as copy_ and load_state_dict advance the version counter. Fused AdamW does not
    (PyTorch 2.13), which the count of optimiser steps taken in this process covers.
    """
    # NOTE: an update made through `parameter.data` (an old idiom) bumps no version counter and is not detected.
    return _optimizer_steps, tuple((parameter.data_ptr(), parameter._version) for parameter in parameters)


def clip_model(model) -> nn.Module:
    """Return the transformers CLIPModel inside `model` (a peft model wraps it as base_model.model)."""
    inner = getattr(getattr(model, "base_model", None), "model", None)
    return inner if inner is not None and hasattr(inner, "text_model") else model


def supports(model) -> bool:
    """Return True for a CLIP in eval mode, in float32 on the CPU, whose layers' linear maps are all nn.Linear."""
    if os.environ.get("NEGCLIP_LEAN_SCORING", "1") == "0":
        return False
    model = clip_model(model)
    if model.training or not hasattr(model, "vision_model") or not hasattr(model, "text_model"):
        return False
    weight = model.text_projection.weight
    if weight.device.type != "cpu" or weight.dtype != torch.float32:
        return False
    for encoder in (model.vision_model.encoder, model.text_model.encoder):
        for layer in encoder.layers:
            if any(type(linear) is not nn.Linear for linear in _linear_maps(layer)):
                return False
    return True


def _linear_maps(layer) -> tuple[nn.Module, ...]:
    """Return the query, key, value, output, fc1 and fc2 maps of a CLIPEncoderLayer."""
    attention, mlp = layer.self_attn, layer.mlp
    return attention.q_proj, attention.k_proj, attention.v_proj, attention.out_proj, mlp.fc1, mlp.fc2


@torch.inference_mode()
def image_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """Return projected, unnormalised image features (batch, projection_dim), as CLIPModel.get_image_features."""
    model = clip_model(model)
    vision = model.vision_model
    hidden = vision.pre_layrnorm(_embed_patches(vision.embeddings, pixel_values))
    class_token = torch.zeros(1, dtype=torch.long, device=hidden.device)
    pooled = _encode(vision.encoder, hidden, mask=None, pooled_rows=None, pooled_columns=class_token)
    return model.visual_projection(vision.post_layernorm(pooled))


def _embed_patches(embeddings, pixel_values: torch.Tensor) -> torch.Tensor:
    """Compute CLIPVisionEmbeddings' output, with the patch convolution (stride = kernel) as one matrix product."""
    batch, channels, height, width = pixel_values.shape
    size, patch = embeddings.image_size, embeddings.patch_size
    if (height, width) != (size, size):
        raise ValueError(f"pixel_values are {height} x {width}, but the model takes {size} x {size} images")
    patches = pixel_values.to(torch.float32).reshape(batch, channels, size // patch, patch, size // patch, patch)
    patches = patches.permute(0, 2, 4, 1, 3, 5).reshape(batch, -1, channels * patch * patch)
    patch_embeds = _prepared_patch_embedding(embeddings)(patches)
    class_embeds = embeddings.class_embedding.expand(batch, 1, -1)
    hidden = torch.cat([class_embeds, patch_embeds], dim=1)
    return hidden + embeddings.position_embedding(embeddings.position_ids)


def _prepared_patch_embedding(embeddings) -> PreparedLinear:
    convolution = embeddings.patch_embedding
    fingerprint = weights_fingerprint([tensor for tensor in (convolution.weight, convolution.bias) if tensor is not None])
    with _LOCK:
        cached = _PREPARED.get(embeddings)
        if cached is not None and cached[0] == fingerprint:
            return cached[1]
    with torch.no_grad():
        prepared = _prepare_linear(convolution.weight.reshape(convolution.out_channels, -1), convolution.bias)
    with _LOCK:
        _PREPARED[embeddings] = (fingerprint, prepared)
    return prepared


@torch.inference_mode()
def packed_text_features(model, packed: PackedCaptions) -> torch.Tensor:
    """Return projected, unnormalised caption features (captions, projection_dim) from packed captions."""
    model = clip_model(model)
    text = model.text_model
    embeddings = text.embeddings
    device = embeddings.token_embedding.weight.device
    hidden = embeddings.token_embedding(packed.input_ids.to(device)) + embeddings.position_embedding(
        packed.position_ids.to(device)
    )
    mask = packed.attention_mask.to(device).unsqueeze(1)  # (rows, 1, nodes, nodes), shared by every head
    pooled = _encode(text.encoder, hidden, mask, packed.end_rows.to(device), packed.end_columns.to(device))
    return model.text_projection(text.final_layer_norm(pooled))


@dataclass
class PreparedLinear:
    weight: torch.Tensor  # oneDNN blocked copy, or the transposed weight (in, out) without oneDNN
    bias: torch.Tensor | None
    onednn: bool
    activation: str = "none"  # "none", or "swish" (x * sigmoid(x)) applied to the output

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.onednn:
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, self.activation, [], "")
        out = x @ self.weight
        if self.bias is not None:
            out = out + self.bias
        return F.silu(out) if self.activation == "swish" else out


@dataclass
class PreparedLayer:
    """An encoder layer with its linear maps prepared. Its layer norms and any unfused activation run as its own."""

    layer: nn.Module
    qkv: PreparedLinear
    out: PreparedLinear
    fc1: PreparedLinear
    fc2: PreparedLinear
    heads: int

    def attention_input(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return the query, key and value of every token, each (batch, heads, tokens, head_dim)."""
        batch, tokens, _ = hidden.shape
        projected = self.qkv(self.layer.layer_norm1(hidden))
        return projected.view(batch, tokens, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)

    def mlp(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = self.fc1(self.layer.layer_norm2(hidden))
        if self.fc1.activation == "none":
            hidden = self.layer.mlp.activation_fn(hidden)
        return self.fc2(hidden)


def _encode(
    encoder, hidden: torch.Tensor, mask: torch.Tensor | None, pooled_rows: torch.Tensor | None, pooled_columns: torch.Tensor
) -> torch.Tensor:
    """Run the encoder's layers and return the last hidden state of the pooled tokens (pooled, width).

    pooled_rows=None pools column `pooled_columns[0]` of every row (the class token); otherwise token
    (pooled_rows[i], pooled_columns[i]) is the i-th pooled token.
    """
    layers = prepared_layers(encoder)
    for layer in layers[:-1]:
        query, key, value = layer.attention_input(hidden)
        attended = F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
        hidden = hidden + layer.out(attended.transpose(1, 2).flatten(2))
        hidden = hidden + layer.mlp(hidden)
    last = layers[-1]
    rows = torch.arange(hidden.shape[0], device=hidden.device) if pooled_rows is None else pooled_rows
    columns = pooled_columns.expand(rows.shape[0])
    query, key, value = last.attention_input(hidden)
    # One query per pooled token, against the keys and values of its own row.
    query = query[rows, :, columns].unsqueeze(2)  # (pooled, heads, 1, head_dim)
    row_mask = None if mask is None else mask[rows, :, columns].unsqueeze(2)  # (pooled, 1, 1, tokens)
    attended = F.scaled_dot_product_attention(query, key[rows], value[rows], attn_mask=row_mask)
    pooled = hidden[rows, columns] + last.out(attended.flatten(1))
    return pooled + last.mlp(pooled)


def prepared_layers(encoder) -> list[PreparedLayer]:
    """Return the encoder's layers with prepared linear weights, rebuilt only after its weights change."""
    # The layer norms run as the layer's own modules and the activations have no weights, so only the linear maps
    # are fingerprinted.
    parameters = [
        tensor
        for layer in encoder.layers
        for linear in _linear_maps(layer)
        for tensor in (linear.weight, linear.bias)
        if tensor is not None
    ]
    fingerprint = weights_fingerprint(parameters)
    with _LOCK:
        cached = _PREPARED.get(encoder)
        if cached is not None and cached[0] == fingerprint:
            return cached[1]
    with torch.no_grad():
        layers = [_prepare_layer(layer) for layer in encoder.layers]
    with _LOCK:
        _PREPARED[encoder] = (fingerprint, layers)
    return layers


QUICK_GELU_SCALE = 1.702  # quick_gelu(x) = x * sigmoid(1.702 x), the activation of OpenAI's CLIP


def _prepare_layer(layer) -> PreparedLayer:
    attention, mlp = layer.self_attn, layer.mlp
    projections = (attention.q_proj, attention.k_proj, attention.v_proj)
    weight = torch.cat([projection.weight for projection in projections])
    biases = [
        projection.bias if projection.bias is not None else projection.weight.new_zeros(projection.out_features)
        for projection in projections
    ]
    if type(mlp.activation_fn).__name__ == "QuickGELUActivation":
        # quick_gelu(h) = swish(1.702 h) / 1.702, so fc1 scaled by 1.702 runs with oneDNN's fused swish and fc2
        # takes the division.
        scale = QUICK_GELU_SCALE
        fc1 = _prepare_linear(mlp.fc1.weight * scale, _scaled(mlp.fc1.bias, scale), activation="swish")
        fc2 = _prepare_linear(mlp.fc2.weight / scale, mlp.fc2.bias)
    else:
        fc1 = _prepare_linear(mlp.fc1.weight, mlp.fc1.bias)
        fc2 = _prepare_linear(mlp.fc2.weight, mlp.fc2.bias)
    return PreparedLayer(
        layer=layer,
        qkv=_prepare_linear(weight, torch.cat(biases)),
        out=_prepare_linear(attention.out_proj.weight, attention.out_proj.bias),
        fc1=fc1,
        fc2=fc2,
        heads=attention.num_heads,
    )


def _scaled(bias: torch.Tensor | None, scale: float) -> torch.Tensor | None:
    return None if bias is None else bias * scale


def _prepare_linear(weight: torch.Tensor, bias: torch.Tensor | None, activation: str = "none") -> PreparedLinear:
    weight = weight.detach()
    bias = None if bias is None else bias.detach().clone()
    if _onednn_usable(weight):
        prepared = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), LAYOUT_ROWS_HINT)
        return PreparedLinear(prepared, bias, True, activation)
    return PreparedLinear(weight.t().contiguous(), bias, False, activation)


def _onednn_usable(weight: torch.Tensor) -> bool:
    return (
        weight.device.type == "cpu"
        and weight.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    )
