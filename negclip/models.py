"""Load CLIP models: Hub ids, local folders and the project's own offline models."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

from negclip import inference
from negclip.images import CLIP_MEAN, CLIP_STD, ImagePreprocessor

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "openai/clip-vit-base-patch32"
TOKENIZER_DIR = Path(__file__).resolve().parent / "tokenizer"
ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
NEGATION_WORLD_MODEL_DIR = ASSETS_DIR / "negation-world" / "model"
NEGATION_WORLD_ADAPTER_DIR = ASSETS_DIR / "negation-world" / "adapter"

# Token ids of the CLIP BPE vocabulary shipped in negclip/tokenizer.
BOS_TOKEN_ID = 49406
EOS_TOKEN_ID = 49407
VOCAB_SIZE = 49408
MAX_TEXT_LENGTH = 77

BUILTIN_MODELS = {
    "tiny-random": "a small randomly initialised CLIP with the real CLIP tokenizer, for smoke tests only",
    "vit-b32-random": "a randomly initialised CLIP shaped like ViT-B/32, for speed measurements only",
    "negation-world": "the project's small CLIP pretrained offline on procedural scenes (assets/negation-world)",
}


class ModelLoadError(RuntimeError):
    """A model name or folder could not be turned into a CLIP model."""


@dataclass
class LoadedClip:
    """A CLIP model with the tokenizer and image preprocessing that belong to it."""

    model: CLIPModel
    tokenizer: CLIPTokenizer
    preprocess: ImagePreprocessor
    name: str
    note: str = ""
    adapter: str | None = None
    weights_stamp: str = ""  # size and modification time of a folder's weights files, so a rewrite is noticed

    def __post_init__(self) -> None:
        # Version counters of the image side at creation. A tuned copy of a model shares its base's image
        # features until an image-side weight changes in place (copy_, load_state_dict, mul_).
        # NOTE: a weight replaced by a new Parameter object, or changed through `.data`, is not noticed.
        clip_model = inference.clip_model(self.model)
        self._image_parameters = list(clip_model.vision_model.parameters()) + list(
            clip_model.visual_projection.parameters()
        )
        self._image_versions = [parameter._version for parameter in self._image_parameters]

    @property
    def image_cache_key(self) -> str:
        """Key of this model's image features in ImageFeatureCache, shared by models with the same image side."""
        changes = tuple(
            parameter._version - start for parameter, start in zip(self._image_parameters, self._image_versions)
        )
        key = f"{self.name}@{self.weights_stamp}" if self.weights_stamp else self.name
        if any(changes):
            key += f"#{id(self.model)}:{hash(changes)}"
        return key

    @property
    def device(self) -> torch.device:
        return self.model.logit_scale.device

    @property
    def num_text_layers(self) -> int:
        return self.model.config.text_config.num_hidden_layers

    @property
    def key(self) -> str:
        """Identify the weights for feature caches: the model name plus the adapter, if any."""
        return f"{self.name}+{self.adapter}" if self.adapter else self.name


def load_tokenizer(folder: str | os.PathLike | None = None) -> CLIPTokenizer:
    """Load the CLIP tokenizer from `folder`, or the one bundled with the project."""
    return CLIPTokenizer.from_pretrained(str(folder or TOKENIZER_DIR), model_max_length=MAX_TEXT_LENGTH)


def _clip_config(text: tuple[int, int, int, int], vision: tuple[int, int, int, int], image_size: int,
                 patch_size: int, projection_dim: int) -> CLIPConfig:
    """Build a CLIPConfig for the bundled tokenizer; `text` and `vision` are (width, MLP width, layers, heads)."""
    text_width, text_mlp, text_layers, text_heads = text
    vision_width, vision_mlp, vision_layers, vision_heads = vision
    return CLIPConfig(
        text_config=dict(
            vocab_size=VOCAB_SIZE,
            hidden_size=text_width,
            intermediate_size=text_mlp,
            num_hidden_layers=text_layers,
            num_attention_heads=text_heads,
            max_position_embeddings=MAX_TEXT_LENGTH,
            bos_token_id=BOS_TOKEN_ID,
            eos_token_id=EOS_TOKEN_ID,
            pad_token_id=EOS_TOKEN_ID,
        ),
        vision_config=dict(
            hidden_size=vision_width,
            intermediate_size=vision_mlp,
            num_hidden_layers=vision_layers,
            num_attention_heads=vision_heads,
            image_size=image_size,
            patch_size=patch_size,
        ),
        projection_dim=projection_dim,
    )


def tiny_random_config() -> CLIPConfig:
    """Return the configuration of `tiny-random`: 4 text and 2 vision layers, 32 px images."""
    return _clip_config(text=(64, 128, 4, 4), vision=(64, 128, 2, 4), image_size=32, patch_size=8, projection_dim=32)


def vit_b32_config() -> CLIPConfig:
    """Return the configuration of openai/clip-vit-base-patch32 (12+12 layers, 224 px, 512-d embeddings)."""
    return _clip_config(
        text=(512, 2048, 12, 8), vision=(768, 3072, 12, 12), image_size=224, patch_size=32, projection_dim=512
    )


def build_random_clip(config: CLIPConfig, seed: int = 0, attn_implementation: str = "sdpa") -> CLIPModel:
    """Build a randomly initialised CLIPModel, the same for the same seed."""
    config._attn_implementation = attn_implementation
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    return model.eval()


def _preprocessor_for_folder(folder: Path, image_size: int) -> ImagePreprocessor:
    """Read resize and normalisation settings from a Hugging Face preprocessor_config.json, if present."""
    config_path = folder / "preprocessor_config.json"
    if not config_path.is_file():
        return ImagePreprocessor(image_size=image_size)
    settings = json.loads(config_path.read_text())
    crop = settings.get("crop_size", image_size)
    if isinstance(crop, dict):
        crop = crop.get("height", crop.get("shortest_edge", image_size))
    return ImagePreprocessor(
        image_size=int(crop),
        mean=tuple(settings.get("image_mean", CLIP_MEAN)),
        std=tuple(settings.get("image_std", CLIP_STD)),
    )


def _load_folder(folder: Path, name: str, note: str, attn_implementation: str) -> LoadedClip:
    try:
        model = CLIPModel.from_pretrained(str(folder), attn_implementation=attn_implementation)
    except (OSError, ValueError) as error:
        raise ModelLoadError(
            f"could not load a CLIP model from folder {folder}: {error}. The folder must hold the files "
            "written by CLIPModel.save_pretrained (config.json and model.safetensors)."
        ) from error
    has_tokenizer = (folder / "vocab.json").is_file() or (folder / "tokenizer.json").is_file()
    if (folder / "vocab.json").is_file() and not (folder / "tokenizer.json").is_file():
        missing = [file for file in ("merges.txt",) if not (folder / file).is_file()]
        if missing:
            raise ModelLoadError(
                f"tokenizer file missing in {folder}: {', '.join(missing)}; copy it from the model's original "
                "folder, or remove vocab.json to use the bundled CLIP tokenizer"
            )
    tokenizer = load_tokenizer(folder if has_tokenizer else None)
    preprocess = _preprocessor_for_folder(folder, model.config.vision_config.image_size)
    stamps = [
        f"{path.name}:{path.stat().st_size}:{path.stat().st_mtime_ns}"
        for path in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
    ]
    return LoadedClip(
        model.float().eval(), tokenizer, preprocess, name=name, note=note, weights_stamp=",".join(stamps)
    )


def _load_hub(model_id: str, attn_implementation: str) -> LoadedClip:
    """Load a CLIP from the Hugging Face Hub cache or the network."""
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(
            model_id, allow_patterns=["*.json", "*.txt", "*.safetensors"], local_files_only=_hub_offline()
        )
    except Exception as error:  # huggingface_hub raises many types for offline, missing and gated repos
        raise ModelLoadError(
            f"could not load model {model_id!r} from the Hugging Face Hub ({type(error).__name__}: {error}). "
            "Without network access, download the model on a connected machine with "
            f"`hf download {model_id} --local-dir <folder>` (or CLIPModel.save_pretrained) and pass "
            "--model <folder>; or pass --model negation-world or --model tiny-random, which need no download."
        ) from error
    return _load_folder(Path(folder), model_id, note=f"Hugging Face Hub model {model_id}", attn_implementation=attn_implementation)


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}


def load_clip(
    name: str = DEFAULT_MODEL, device: str | torch.device = "cpu", attn_implementation: str = "sdpa"
) -> LoadedClip:
    """Load a CLIP by Hub id, local folder or built-in name (`tiny-random`, `vit-b32-random`, `negation-world`).

    Raises ModelLoadError with the fix when the model cannot be found or downloaded.
    """
    if name == "tiny-random":
        model = build_random_clip(tiny_random_config(), attn_implementation=attn_implementation)
        clip = LoadedClip(model, load_tokenizer(), ImagePreprocessor(image_size=32), name, BUILTIN_MODELS[name])
    elif name == "vit-b32-random":
        model = build_random_clip(vit_b32_config(), attn_implementation=attn_implementation)
        clip = LoadedClip(model, load_tokenizer(), ImagePreprocessor(image_size=224), name, BUILTIN_MODELS[name])
    elif name == "negation-world":
        if not (NEGATION_WORLD_MODEL_DIR / "config.json").is_file():
            raise ModelLoadError(
                f"the bundled negation-world model is missing from {NEGATION_WORLD_MODEL_DIR}; "
                "restore assets/ from the repository or rebuild it with `python -m negclip world-pretrain`"
            )
        clip = _load_folder(NEGATION_WORLD_MODEL_DIR, name, BUILTIN_MODELS[name], attn_implementation)
    elif Path(name).expanduser().is_dir():
        folder = Path(name).expanduser()
        clip = _load_folder(folder, name, f"local model folder {folder}", attn_implementation)
    elif Path(name).expanduser().exists():
        raise ModelLoadError(f"model path {name} is a file; pass the folder that contains config.json")
    elif name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).parent.is_dir():
        clip = _load_hub(name, attn_implementation)
    elif Path(name).parent.is_dir() and name.count("/") >= 1:
        raise ModelLoadError(f"model folder not found: {name}; pass a folder written by CLIPModel.save_pretrained")
    else:
        raise ModelLoadError(
            f"model {name!r} is neither a folder nor a Hugging Face Hub id (owner/name); "
            f"pass a folder, a Hub id such as {DEFAULT_MODEL}, or one of: {', '.join(BUILTIN_MODELS)}"
        )
    clip.model.to(device)
    logger.info("loaded %s (%s)", clip.name, clip.note)
    return clip
