"""Selective tuning of CLIP's text encoder: choose layers, make them trainable (full or LoRA), save and load.

A full-mode adapter folder contains `negclip_adapter.safetensors` (only the tensors that were trained, under the
base model's state_dict names) and `negclip_adapter.json`. A LoRA adapter folder is a plain peft adapter
(`adapter_config.json`, `adapter_model.safetensors`) with the same `negclip_adapter.json` beside it.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from negclip.models import NEGATION_WORLD_ADAPTER_DIR, LoadedClip, ModelLoadError

logger = logging.getLogger(__name__)

FULL_WEIGHTS_FILE = "negclip_adapter.safetensors"
# Embedding matrices saved as the rows that training changed: (vocabulary x width) floats would make a ViT-B/32
# adapter about 100 MB, while a data set touches a few thousand of CLIP's 49,408 tokens.
SPARSE_ROW_PARAMETERS = ("text_model.embeddings.token_embedding.weight",)
ROWS_SUFFIX = ".changed_rows"
VALUES_SUFFIX = ".changed_values"
ADAPTER_INFO_FILE = "negclip_adapter.json"
LAYER_PRESETS = ("front", "middle", "back", "all")
LORA_TARGETS = r"self_attn\.(q_proj|k_proj|v_proj|out_proj)|mlp\.(fc1|fc2)"
BUILTIN_ADAPTERS = {"negation-world": NEGATION_WORLD_ADAPTER_DIR}


class AdapterError(RuntimeError):
    """An adapter folder is missing, malformed or does not fit the base model."""


def select_layers(spec: str, num_layers: int) -> list[int]:
    """Turn a layer preset or range into sorted layer indices.

    `front` is the first half (layers 0-5 of 12, as the authors tune). `back` is the second half, `middle` the
    central half and `all` every layer. A range such as `0-3` is inclusive, and `0,2,5` lists layers.
    """
    spec = spec.strip().lower()
    half = max(1, num_layers // 2)
    if spec == "front":
        return list(range(0, half))
    if spec == "back":
        return list(range(num_layers - half, num_layers))
    if spec == "middle":
        start = (num_layers - half) // 2
        return list(range(start, start + half))
    if spec == "all":
        return list(range(num_layers))
    indices: set[int] = set()
    try:
        for part in spec.split(","):
            if "-" in part:
                first, last = (int(value) for value in part.split("-", 1))
                indices.update(range(first, last + 1))
            else:
                indices.add(int(part))
    except ValueError:
        raise ValueError(
            f"invalid layer selection {spec!r}; use front, middle, back, all, a range like 0-5 or a list like 0,2,4"
        ) from None
    out_of_range = sorted(i for i in indices if not 0 <= i < num_layers)
    if not indices:
        raise ValueError(f"layer selection {spec!r} names no layers; write ranges low to high, as in 0-5")
    if out_of_range:
        shown = ", ".join(str(i) for i in out_of_range[:5]) + (", ..." if len(out_of_range) > 5 else "")
        raise ValueError(
            f"layer selection {spec!r} names layers {shown}, but the text encoder has layers 0-{num_layers - 1}"
        )
    return sorted(indices)


def trainable_parameter_names(model, layers: list[int], config) -> list[str]:
    """Names (as in model.named_parameters) that full-mode tuning trains for these layers and switches."""
    prefixes = [f"text_model.encoder.layers.{index}." for index in layers]
    if config.train_embeddings:
        prefixes += ["text_model.embeddings.token_embedding.", "text_model.embeddings.position_embedding."]
    if config.train_final_layer_norm:
        prefixes.append("text_model.final_layer_norm.")
    if config.train_text_projection:
        prefixes.append("text_projection.")
    names = [name for name, _ in model.named_parameters() if name.startswith(tuple(prefixes))]
    if config.train_logit_scale:
        names.append("logit_scale")
    return names


def prepare_for_training(model, layers: list[int], config):
    """Freeze everything except the selected text layers (and the switched-on extras); return the model to train.

    In full mode that is `model` itself. In LoRA mode it is a peft model that wraps it, with LoRA on the
    attention and MLP projections of the selected layers only.
    """
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    if config.mode == "full":
        names = set(trainable_parameter_names(model, layers, config))
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name in names)
        return model

    from peft import LoraConfig, get_peft_model

    layer_pattern = "|".join(str(index) for index in layers)
    modules_to_save = []
    if config.train_embeddings:
        modules_to_save += ["token_embedding", "position_embedding"]
    if config.train_final_layer_norm:
        modules_to_save.append("final_layer_norm")
    if config.train_text_projection:
        modules_to_save.append("text_projection")
    lora_config = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=rf"text_model\.encoder\.layers\.({layer_pattern})\.({LORA_TARGETS})",
        modules_to_save=modules_to_save or None,
        bias="none",
    )
    return get_peft_model(model, lora_config)


def count_parameters(model) -> tuple[int, int]:
    """Return (trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def _write_atomically(folder: Path, write) -> None:
    """Run write(temporary_folder), then move the result to `folder`, so a crash or a full disk never leaves a
    half-written adapter where a good one was."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        write(staging)
        backup = None
        if folder.exists():
            backup = folder.with_name(f".{folder.name}.old")
            if backup.exists():
                shutil.rmtree(backup)
            os.replace(folder, backup)
        os.replace(staging, folder)
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def sparse_row_reference(model) -> dict[str, torch.Tensor]:
    """Copy the embedding matrices that save_adapter stores row by row, to compare against after training."""
    state = dict(model.named_parameters())
    return {name: state[name].detach().clone() for name in SPARSE_ROW_PARAMETERS if name in state}


def _full_mode_tensors(trained_model, names: list[str], row_reference: dict[str, torch.Tensor]) -> dict:
    state = dict(trained_model.named_parameters())
    tensors = {}
    for name in names:
        tensor = state[name].detach().to("cpu", torch.float32)
        reference = row_reference.get(name)
        if reference is None:
            tensors[name] = tensor.contiguous()
            continue
        rows = (tensor != reference.to("cpu", torch.float32)).any(dim=1).nonzero().flatten()
        tensors[name + ROWS_SUFFIX] = rows.contiguous()
        tensors[name + VALUES_SUFFIX] = tensor[rows].contiguous()
    return tensors


def save_adapter(
    trained_model,
    folder: str | Path,
    info: dict,
    model_card: str | None = None,
    row_reference: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Save only what was trained, plus `info` (base model, layers, mode, ...) and an optional README.md.

    In full mode, matrices named in `row_reference` (see sparse_row_reference) are saved as the rows that
    differ from it.
    """
    folder = Path(folder)
    mode = info["mode"]

    def write(staging: Path) -> None:
        if mode == "lora":
            trained_model.save_pretrained(str(staging))
        else:
            tensors = _full_mode_tensors(trained_model, info["parameters"], row_reference or {})
            save_file(tensors, str(staging / FULL_WEIGHTS_FILE), metadata={"format": "pt"})
        (staging / ADAPTER_INFO_FILE).write_text(json.dumps(info, indent=2, default=str))
        if model_card:
            (staging / "README.md").write_text(model_card)

    _write_atomically(folder, write)
    logger.info("saved %s adapter to %s", mode, folder)
    return folder


def resolve_adapter_path(adapter: str) -> Path:
    """Return the folder of a built-in adapter name, a local folder, or a Hub id downloaded to the cache."""
    if adapter in BUILTIN_ADAPTERS:
        path = BUILTIN_ADAPTERS[adapter]
        if not (path / ADAPTER_INFO_FILE).is_file():
            raise AdapterError(
                f"the bundled {adapter} adapter is missing from {path}; restore assets/ from the repository"
            )
        return path
    path = Path(adapter).expanduser()
    if path.is_dir():
        return path
    if adapter.count("/") == 1 and not adapter.startswith((".", "/", "~")):
        from huggingface_hub import snapshot_download

        if Path(adapter).parent.is_dir():
            raise AdapterError(f"adapter folder not found: {adapter}; pass the adapter/ folder that `train` wrote")
        try:
            return Path(snapshot_download(adapter))
        except Exception as error:  # huggingface_hub raises many types for offline and missing repos
            raise AdapterError(
                f"could not download adapter {adapter!r} from the Hugging Face Hub ({type(error).__name__}); "
                "without network access, copy the adapter folder to this machine and pass its path"
            ) from error
    raise AdapterError(f"adapter not found: {adapter}; pass an adapter folder written by `python -m negclip train`")


def read_adapter_info(folder: str | Path) -> dict:
    folder = Path(folder)
    info_path = folder / ADAPTER_INFO_FILE
    if info_path.is_file():
        return json.loads(info_path.read_text())
    if (folder / "adapter_config.json").is_file():
        return {"mode": "lora"}
    raise AdapterError(
        f"{folder} is not an adapter folder: it has neither {ADAPTER_INFO_FILE} nor adapter_config.json"
    )


def load_adapter(clip: LoadedClip, adapter: str | Path) -> LoadedClip:
    """Return a new LoadedClip with the adapter applied to a copy of the base model; `clip` is left untouched."""
    folder = resolve_adapter_path(str(adapter))
    info = read_adapter_info(folder)
    model = copy.deepcopy(clip.model)
    if info["mode"] == "lora":
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
        except (ValueError, KeyError, RuntimeError) as error:
            raise AdapterError(f"LoRA adapter {folder} does not fit model {clip.name}: {error}") from error
    else:
        weights_path = folder / FULL_WEIGHTS_FILE
        if not weights_path.is_file():
            raise AdapterError(f"adapter {folder} has no {FULL_WEIGHTS_FILE}")
        tensors = load_file(str(weights_path))
        state = dict(model.named_parameters())
        row_updates = _pop_row_updates(tensors)
        unknown = sorted((set(tensors) | set(row_updates)) - set(state))
        mismatched = sorted(n for n in tensors if n in state and tensors[n].shape != state[n].shape)
        mismatched += sorted(
            n for n, (rows, values) in row_updates.items()
            if n in state and (values.shape[1:] != state[n].shape[1:] or (rows.numel() and rows.max() >= state[n].shape[0]))
        )
        if unknown or mismatched:
            raise AdapterError(
                f"adapter {folder} does not fit model {clip.name}: unknown tensors {unknown[:3]}, "
                f"shape mismatches {mismatched[:3]}; load it onto the base model it was trained from "
                f"({info.get('base_model', 'see negclip_adapter.json')})"
            )
        with torch.no_grad():
            for name, tensor in tensors.items():
                state[name].copy_(tensor.to(state[name].dtype))
            for name, (rows, values) in row_updates.items():
                state[name][rows] = values.to(state[name].dtype)
    model.eval()
    base = info.get("base_model")
    if base and base != clip.name:
        logger.warning("adapter %s was trained on %s but is applied to %s", folder, base, clip.name)
    return dataclasses.replace(
        clip, model=model, adapter=str(adapter), note=f"{clip.note}; adapter {adapter} ({info['mode']})"
    )


def _pop_row_updates(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Take the (rows, values) pairs of row-wise saved matrices out of a loaded adapter file."""
    updates = {}
    for key in [key for key in tensors if key.endswith(ROWS_SUFFIX)]:
        name = key[: -len(ROWS_SUFFIX)]
        values_key = name + VALUES_SUFFIX
        if values_key not in tensors:
            raise AdapterError(f"adapter file has {key} without {values_key}; save the adapter again")
        updates[name] = (tensors.pop(key).long(), tensors.pop(values_key))
    return updates


def trained_state_names(model) -> list[str]:
    """Names of parameters that currently require gradients."""
    return [name for name, parameter in model.named_parameters() if parameter.requires_grad]


def layer_indices_from_names(names: list[str]) -> list[int]:
    found = {int(m.group(1)) for n in names if (m := re.search(r"encoder\.layers\.(\d+)\.", n))}
    return sorted(found)
