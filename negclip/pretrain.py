"""Pretrain the small negation-world CLIP from scratch on procedural scenes.

The model is trained with symmetric InfoNCE on affirmative captions only, as CLIP was trained on web
captions. No training caption contains "no", so the model learns objects and stays blind to negation, which
is the behaviour the fine-tuning method has to fix.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from transformers import CLIPConfig, CLIPModel

from negclip import world
from negclip.encode import image_features, text_features
from negclip.images import CLIP_MEAN, CLIP_STD
from negclip.losses import clip_loss
from negclip.models import BOS_TOKEN_ID, EOS_TOKEN_ID, MAX_TEXT_LENGTH, TOKENIZER_DIR, VOCAB_SIZE, load_tokenizer

logger = logging.getLogger(__name__)

# Scene streams of world.scene_rng: splits written by `negclip world` use stream 0, so pretraining scenes
# never coincide with a split's scenes, whatever the seeds.
PRETRAIN_STREAM = 1
MONITOR_STREAM = 2

# Largest logit scale, as in CLIP: exp(logit_scale) is clamped to 100.
MAX_LOGIT_SCALE = math.log(100.0)

# Tokenizer files copied next to the weights, so the folder loads like any saved CLIP.
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "LICENSE-open_clip")


@dataclass
class PretrainConfig:
    """Settings of a world-pretraining run; the defaults made the bundled model."""

    output_dir: str = "assets/negation-world/model"
    steps: int = 1000
    batch_size: int = 128
    learning_rate: float = 1e-3
    warmup_steps: int = 60
    weight_decay: float = 0.1
    scenes: int = 30_000  # size of the rendered scene pool; captions are redrawn at every use
    image_size: int = world.DEFAULT_IMAGE_SIZE
    text_width: int = 128
    text_layers: int = 8
    vision_width: int = 128
    vision_layers: int = 5  # 6 would take the folder past 20 MB with the tokenizer files
    patch_size: int = 16
    projection_dim: int = 128
    seed: int = 0
    threads: int = 2  # torch CPU threads, set by the command line only
    monitor_every: int = 250
    monitor_scenes: int = 512


def world_clip_config(settings: PretrainConfig) -> CLIPConfig:
    """Return the CLIPConfig of the negation-world model: the real CLIP vocabulary and special tokens."""
    return CLIPConfig(
        text_config=dict(
            vocab_size=VOCAB_SIZE,
            hidden_size=settings.text_width,
            intermediate_size=4 * settings.text_width,
            num_hidden_layers=settings.text_layers,
            num_attention_heads=max(1, settings.text_width // 32),
            max_position_embeddings=MAX_TEXT_LENGTH,
            bos_token_id=BOS_TOKEN_ID,
            eos_token_id=EOS_TOKEN_ID,
            pad_token_id=EOS_TOKEN_ID,
        ),
        vision_config=dict(
            hidden_size=settings.vision_width,
            intermediate_size=4 * settings.vision_width,
            num_hidden_layers=settings.vision_layers,
            num_attention_heads=max(1, settings.vision_width // 32),
            image_size=settings.image_size,
            patch_size=settings.patch_size,
        ),
        projection_dim=settings.projection_dim,
    )


class ScenePool:
    """Rendered scenes kept in memory as uint8 pixels, with their object lists and rooms.

    Rendering once and redrawing only the captions keeps the training loop from spending its time in PIL.
    """

    def __init__(self, count: int, seed: int, stream: int, image_size: int):
        self.pixels = np.empty((count, image_size, image_size, 3), dtype=np.uint8)
        self.objects: list[list[str]] = []
        self.rooms: list[str] = []
        for index in tqdm(range(count), desc="rendering scenes", disable=None, leave=False):
            scene = world.sample_scene(world.scene_rng(seed, index, stream), image_size)
            self.pixels[index] = np.asarray(world.render_scene(scene))
            self.objects.append(scene.object_names)
            self.rooms.append(scene.room)

    def __len__(self) -> int:
        return len(self.objects)

    def pixel_values(self, indices: np.ndarray) -> torch.Tensor:
        """Return CLIP-normalised pixel_values (batch, 3, size, size), as ImagePreprocessor computes them."""
        pixels = torch.from_numpy(self.pixels[indices]).permute(0, 3, 1, 2).float() / 255.0
        mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        return (pixels - mean) / std


def _tokenize(tokenizer, captions: list[str]) -> dict[str, torch.Tensor]:
    return tokenizer(captions, padding="longest", truncation=True, max_length=MAX_TEXT_LENGTH, return_tensors="pt")


def _learning_rate(step: int, settings: PretrainConfig) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < settings.warmup_steps:
        return settings.learning_rate * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    return settings.learning_rate * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def measure_world(model: CLIPModel, tokenizer, pool: ScenePool, seed: int) -> dict[str, float]:
    """Measure presence accuracy and image-to-caption R@1 on a scene pool, for progress reports.

    Presence accuracy is the share of scenes whose affirmative caption outscores a presence-negated one.
    """
    model.eval()
    rng = np.random.default_rng(seed)
    indices = np.arange(len(pool))
    captions, negated = [], []
    for index in indices:
        names, room = pool.objects[index], pool.rooms[index]
        captions.append(world.affirmative_caption(rng, names, room))
        negated_object = names[int(rng.integers(len(names)))]
        negated.append(world.presence_negated_caption(rng, names, negated_object, room))
    image_embeds = torch.nn.functional.normalize(image_features(model, pool.pixel_values(indices)), dim=-1)
    text_embeds = torch.nn.functional.normalize(text_features(model, **_tokenize(tokenizer, captions)), dim=-1)
    negated_embeds = torch.nn.functional.normalize(text_features(model, **_tokenize(tokenizer, negated)), dim=-1)
    positive = (image_embeds * text_embeds).sum(-1)
    negative = (image_embeds * negated_embeds).sum(-1)
    similarity = image_embeds @ text_embeds.t()
    recall = (similarity.argmax(dim=1) == torch.arange(len(indices))).float().mean()
    model.train()
    return {"presence_accuracy": float((positive > negative).float().mean()), "image_to_text_r1": float(recall)}


def pretrain(settings: PretrainConfig) -> dict:
    """Train a negation-world CLIP from scratch and save it as fp16 safetensors with its tokenizer."""
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng([settings.seed, PRETRAIN_STREAM])
    tokenizer = load_tokenizer()

    started = time.monotonic()
    pool = ScenePool(settings.scenes, settings.seed, PRETRAIN_STREAM, settings.image_size)
    monitor_pool = ScenePool(settings.monitor_scenes, settings.seed, MONITOR_STREAM, settings.image_size)
    logger.info("rendered %d scenes in %.0f s", len(pool), time.monotonic() - started)

    config = world_clip_config(settings)
    config._attn_implementation = "sdpa"
    model = CLIPModel(config)
    model.train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay, betas=(0.9, 0.98)
    )

    history = []
    order = rng.permutation(len(pool))
    cursor = 0
    progress = tqdm(range(settings.steps), desc="world-pretrain", disable=None)
    for step in progress:
        if cursor + settings.batch_size > len(order):
            order, cursor = rng.permutation(len(pool)), 0
        indices = order[cursor : cursor + settings.batch_size]
        cursor += settings.batch_size
        captions = [world.affirmative_caption(rng, pool.objects[i], pool.rooms[i]) for i in indices]

        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, settings)
        image_embeds = image_features(model, pool.pixel_values(indices))
        text_embeds = text_features(model, **_tokenize(tokenizer, captions))
        loss = clip_loss(
            torch.nn.functional.normalize(image_embeds, dim=-1),
            torch.nn.functional.normalize(text_embeds, dim=-1),
            model.logit_scale.exp(),
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        progress.set_postfix(loss=f"{loss.item():.3f}")

        if (step + 1) % settings.monitor_every == 0 or step + 1 == settings.steps:
            measured = measure_world(model, tokenizer, monitor_pool, seed=settings.seed)
            seconds = round(time.monotonic() - started)
            record = {"step": step + 1, "loss": round(loss.item(), 4), **measured, "seconds": seconds}
            history.append(record)
            logger.info("step %d: %s", step + 1, record)

    summary = {
        "settings": asdict(settings),
        "parameters": sum(p.numel() for p in model.parameters()),
        "seconds": round(time.monotonic() - started),
        "torch": torch.__version__,
        "history": history,
    }
    save_world_model(model, settings, summary)
    return summary


def save_world_model(model: CLIPModel, settings: PretrainConfig, summary: dict) -> Path:
    """Write fp16 safetensors, config, tokenizer files, preprocessor_config.json and pretrain.json."""
    out = Path(settings.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.eval().half().save_pretrained(out, safe_serialization=True)
    model.float()
    for name in TOKENIZER_FILES:
        source = TOKENIZER_DIR / name
        (out / name).write_bytes(source.read_bytes())
    # Written as plain JSON: constructing CLIPImageProcessor logs a torchvision warning in every command.
    preprocessor = {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": settings.image_size},
        "resample": 3,
        "do_center_crop": True,
        "crop_size": {"height": settings.image_size, "width": settings.image_size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD),
        "do_convert_rgb": True,
    }
    (out / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2) + "\n")
    (out / "pretrain.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_model_card(out, summary)
    return out


def write_model_card(folder: Path, summary: dict) -> None:
    """Write README.md: what the model is, how it was trained and its last progress measurement."""
    settings = summary["settings"]
    last = summary["history"][-1] if summary["history"] else {}
    command = (
        f"python -m negclip world-pretrain --out {settings['output_dir']} --steps {settings['steps']} "
        f"--warmup-steps {settings['warmup_steps']} --seed {settings['seed']}"
    )
    lines = [
        "# negation-world CLIP",
        "",
        "A small CLIP pretrained from scratch by the Omni-NegCLIP workbench on procedural scenes of coloured",
        "shapes (`negclip/world.py`), with symmetric InfoNCE on affirmative captions only. It recognises the",
        "scenes' objects and was never shown a negated caption; it is the base model on which the workbench",
        "demonstrates negation fine-tuning without network access. docs/negation-world.md in the workbench",
        "measures how it scores negated captions before and after fine-tuning.",
        "",
        f"- Parameters: {summary['parameters']:,}; text encoder {settings['text_layers']} layers of width "
        f"{settings['text_width']}, vision encoder {settings['vision_layers']} layers of width "
        f"{settings['vision_width']} on {settings['image_size']} px images in {settings['patch_size']} px patches.",
        "- Tokenizer: the CLIP BPE tokenizer (vocabulary 49,408, bos 49406, eos and padding 49407).",
        f"- Training: {settings['steps']} steps of {settings['batch_size']} scenes, AdamW at peak learning rate "
        f"{settings['learning_rate']}, seed {settings['seed']}, {summary['seconds'] / 60:.0f} minutes on CPU "
        f"(torch {summary['torch']}).",
        f"- Last progress check ({last.get('step', '?')} steps, {settings['monitor_scenes']} held-out scenes): "
        f"presence accuracy {last.get('presence_accuracy', float('nan')):.3f}, image-to-caption R@1 "
        f"{last.get('image_to_text_r1', float('nan')):.3f} among those scenes.",
        "- Weights are stored in fp16; `negclip.models.load_clip` converts them to fp32.",
        "",
        f"Rebuild: `{command}`",
        "",
    ]
    (folder / "README.md").write_text("\n".join(lines))


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `world-pretrain` on the CLI's subparsers."""
    defaults = PretrainConfig()
    parser = subparsers.add_parser(
        "world-pretrain",
        help="pretrain the small negation-world CLIP from scratch on procedural scenes",
        description=__doc__,
    )
    parser.add_argument("--out", default=defaults.output_dir, help="folder to save the model in (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="optimiser steps (default: %(default)s)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=defaults.batch_size,
        help="scenes per step (default: %(default)s)",
    )
    parser.add_argument(
        "--lr",
        type=float,
        default=defaults.learning_rate,
        help="peak AdamW learning rate (default: %(default)s)",
    )
    parser.add_argument(
        "--warmup-steps",
        type=int,
        default=defaults.warmup_steps,
        help="linear warm-up steps (default: %(default)s)",
    )
    parser.add_argument(
        "--scenes",
        type=int,
        default=defaults.scenes,
        help="scenes rendered once and reused (default: %(default)s)",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=defaults.image_size,
        help="image side in pixels (default: %(default)s)",
    )
    parser.add_argument(
        "--text-width",
        type=int,
        default=defaults.text_width,
        help="text encoder width (default: %(default)s)",
    )
    parser.add_argument(
        "--text-layers",
        type=int,
        default=defaults.text_layers,
        help="text encoder layers (default: %(default)s)",
    )
    parser.add_argument(
        "--vision-width",
        type=int,
        default=defaults.vision_width,
        help="vision encoder width (default: %(default)s)",
    )
    parser.add_argument(
        "--patch-size",
        type=int,
        default=defaults.patch_size,
        help="vision patch side in pixels (default: %(default)s)",
    )
    parser.add_argument(
        "--vision-layers",
        type=int,
        default=defaults.vision_layers,
        help="vision encoder layers (default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=defaults.seed,
        help="seed for scenes, captions and initialisation (default: %(default)s)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=defaults.threads,
        help="torch CPU threads (default: %(default)s)",
    )
    parser.add_argument(
        "--monitor-every",
        type=int,
        default=defaults.monitor_every,
        help="log presence accuracy and R@1 every N steps (default: %(default)s)",
    )
    parser.set_defaults(func=run_pretrain)
    return parser


def run_pretrain(args: argparse.Namespace) -> int:
    settings = PretrainConfig(
        output_dir=args.out,
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        warmup_steps=args.warmup_steps,
        scenes=args.scenes,
        image_size=args.image_size,
        text_width=args.text_width,
        text_layers=args.text_layers,
        vision_width=args.vision_width,
        vision_layers=args.vision_layers,
        patch_size=args.patch_size,
        seed=args.seed,
        threads=args.threads,
        monitor_every=args.monitor_every,
    )
    torch.set_num_threads(settings.threads)
    summary = pretrain(settings)
    last = summary["history"][-1] if summary["history"] else {}
    print(
        f"saved {settings.output_dir}: {summary['parameters']:,} parameters, {summary['seconds']} s; "
        f"monitor presence accuracy {last.get('presence_accuracy', float('nan')):.3f}, "
        f"image-to-text R@1 {last.get('image_to_text_r1', float('nan')):.3f}"
    )
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    main_parser = argparse.ArgumentParser(prog="python -m negclip.pretrain")
    arguments = main_parser.add_subparsers(dest="command", required=True)
    add_parser(arguments)
    parsed = main_parser.parse_args()
    raise SystemExit(parsed.func(parsed))
