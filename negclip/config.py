"""Settings for fine-tuning, shared by the command line and the app."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from negclip.models import DEFAULT_MODEL

# The authors' published setting, for reference: lr 1e-6, 50 warm-up steps, batch 128, 30 epochs on one GPU.
PUBLISHED_SETTINGS = {"learning_rate": 1e-6, "warmup_steps": 50, "batch_size": 128, "epochs": 30}


@dataclass
class TrainConfig:
    """Every setting of a fine-tuning run. Defaults suit runs of a few hundred steps on a laptop; the published
    values are in PUBLISHED_SETTINGS."""

    data: str = field(default="", metadata={"help": "training data: the project's JSONL, or a NegBench/COCO file"})
    image_root: str | None = field(default=None, metadata={"help": "folder to resolve image paths against"})
    model: str = field(default=DEFAULT_MODEL, metadata={"help": "Hub id, local folder, tiny-random or negation-world"})
    output_dir: str = field(default="runs/negclip", metadata={"help": "folder for the adapter, config and metrics"})

    layers: str = field(default="front", metadata={"help": "text layers to tune: front, middle, back, all, or 0-5 / 0,2,4"})
    mode: str = field(default="full", metadata={"help": "full: train those layers' weights (the paper); lora: peft LoRA on them"})
    train_embeddings: bool | None = field(
        default=None, metadata={"help": "also train token and position embeddings (default: on in full mode, off in lora)"}
    )
    train_final_layer_norm: bool | None = field(
        default=None, metadata={"help": "also train the text encoder's final layer norm (default: on in full, off in lora)"}
    )
    train_text_projection: bool | None = field(
        default=None, metadata={"help": "also train the text projection (default: on in full, off in lora)"}
    )
    train_logit_scale: bool | None = field(
        default=None, metadata={"help": "also train logit_scale (default: on in full mode; lora cannot save it)"}
    )
    lora_rank: int = field(default=8, metadata={"help": "LoRA rank r"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling alpha"})
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA branch"})

    epochs: int = field(default=5, metadata={"help": "passes over the presence examples"})
    max_steps: int | None = field(default=None, metadata={"help": "stop after this many optimiser steps (overrides epochs)"})
    batch_size: int = field(default=32, metadata={"help": "examples per presence batch and per absence batch"})
    learning_rate: float = field(default=1e-5, metadata={"help": "peak AdamW learning rate"})
    weight_decay: float = field(default=0.2, metadata={"help": "AdamW weight decay"})
    warmup_steps: int = field(default=10, metadata={"help": "linear warm-up steps before the cosine decay"})
    max_grad_norm: float | None = field(default=1.0, metadata={"help": "clip gradients to this norm; none to disable"})

    lambda_abs: float = field(default=1.0, metadata={"help": "weight of the absence objective in the total"})
    lambda_orig: float = field(default=1.0, metadata={"help": "weight of CLIP(I, T+) inside the absence objective"})
    lambda_text: float = field(default=1.0, metadata={"help": "weight of the caption-separation hinge"})
    margin: float = field(default=0.9, metadata={"help": "margin m in max(0, cos(T+, Ta) + m)"})
    use_presence: bool = field(default=True, metadata={"help": "train with the presence objective"})
    use_absence: bool = field(default=True, metadata={"help": "train with the absence objective"})

    seed: int = field(default=0, metadata={"help": "seed for shuffling and initialisation"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:1 or auto"})
    precision: str = field(default="fp32", metadata={"help": "fp32, bf16 or fp16 (autocast; fp16 on GPU only)"})
    zeroshot_max_drop: float | None = field(
        default=5.0,
        metadata={"help": "warn when held-out zero-shot mAP or top-1 falls by more than this many points; none to skip"},
    )
    eval_fraction: float = field(
        default=0.1, metadata={"help": "share of images held out for the before/after evaluation (0 to skip)"}
    )
    save_every: int = field(default=100, metadata={"help": "write a resumable checkpoint every N steps"})
    log_every: int = field(default=10, metadata={"help": "record the loss every N steps"})

    def resolved(self) -> "TrainConfig":
        """Return a copy with the mode-dependent defaults filled in."""
        full = self.mode == "full"
        updates = {}
        for name in ("train_embeddings", "train_final_layer_norm", "train_text_projection", "train_logit_scale"):
            if getattr(self, name) is None:
                updates[name] = full
        return dataclasses.replace(self, **updates)

    def validate(self) -> None:
        """Raise ValueError naming the first setting that cannot work."""
        if self.mode not in ("full", "lora"):
            raise ValueError(f"mode must be 'full' or 'lora', not {self.mode!r}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32, bf16 or fp16, not {self.precision!r}")
        positive = {"batch_size": self.batch_size, "epochs": self.epochs, "lora_rank": self.lora_rank}
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name} must be at least 1, not {value}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, not {self.max_steps}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, not {self.learning_rate}")
        if not 0 <= self.eval_fraction < 1:
            raise ValueError(f"eval_fraction must be in [0, 1), not {self.eval_fraction}")
        if not (self.use_presence or self.use_absence):
            raise ValueError("use_presence and use_absence are both off; turn on at least one objective")
        if self.mode == "lora" and self.train_logit_scale:
            raise ValueError("train_logit_scale cannot be saved in a LoRA adapter; turn it off or use mode 'full'")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training settings: {', '.join(unknown)}")
        return cls(**values)

    @classmethod
    def from_json(cls, path: str | Path) -> "TrainConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))
