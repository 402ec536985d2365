"""Models shared by every session of the app: each base model and each (model, adapter) pair loads once.

At start-up the app requests a model (by default the Hub's CLIP ViT-B/32). Without network that fails, and
the app falls back to a model the project bundles, saying so in the page.
"""

from __future__ import annotations

import html
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from negclip.models import (
    DEFAULT_MODEL,
    NEGATION_WORLD_ADAPTER_DIR,
    NEGATION_WORLD_MODEL_DIR,
    LoadedClip,
    ModelLoadError,
    load_clip,
)
from negclip.tuning import ADAPTER_INFO_FILE, AdapterError, load_adapter

logger = logging.getLogger(__name__)

NO_ADAPTER = "none"
SESSION_ADAPTER = "fine-tuned in this session"
BUNDLED_ADAPTER = "negation-world"
# Offline fallbacks in order of preference; negation-world only once its folder is bundled.
OFFLINE_MODELS = ("negation-world", "tiny-random")
# Adapters given on the command line, offered in every session's picker.
STARTUP_ADAPTERS: list[str] = []
# Loaded models kept in memory. ViT-B/32 has 151 M parameters (about 600 MB in fp32), so six take about 3.6 GB.
MAX_LOADED_MODELS = 6


def local_paths_allowed() -> bool:
    """Check whether visitors may type server folders as models or adapters.

    Allowed by default on a local launch. On a Hugging Face Space (SPACE_ID is set) a visitor could otherwise
    make the server read any folder, so there it takes NEGCLIP_ALLOW_LOCAL_PATHS=1.
    """
    setting = os.environ.get("NEGCLIP_ALLOW_LOCAL_PATHS")
    if setting is not None:
        return setting.strip().lower() in {"1", "true", "yes"}
    return "SPACE_ID" not in os.environ


def check_typed_name(name: str, kind: str, allowed: list[str]) -> None:
    """Reject a typed local folder when local paths are off; names in `allowed`, built-ins and Hub ids pass."""
    if name in allowed or local_paths_allowed():
        return
    looks_like_hub_id = name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).exists()
    if not looks_like_hub_id:
        error = ModelLoadError if kind == "model" else AdapterError
        raise error(
            f"{kind} {name!r} is a server folder, and this app does not load server folders; pick a listed "
            f"{kind} or type a Hugging Face Hub id (set NEGCLIP_ALLOW_LOCAL_PATHS=1 to allow folders)"
        )


def negation_world_available() -> bool:
    return (NEGATION_WORLD_MODEL_DIR / "config.json").is_file()


def negation_world_adapter_available() -> bool:
    return negation_world_available() and (NEGATION_WORLD_ADAPTER_DIR / ADAPTER_INFO_FILE).is_file()


def model_choices() -> list[str]:
    """Model names for the picker; any Hub id or local folder may be typed as well."""
    choices = [DEFAULT_MODEL]
    if negation_world_available():
        choices.append("negation-world")
    return choices + ["tiny-random"]


def adapter_choices(has_session_adapter: bool = False) -> list[str]:
    """Adapter names for the picker; any adapter folder or Hub id may be typed as well."""
    choices = [NO_ADAPTER]
    if negation_world_adapter_available():
        choices.append(BUNDLED_ADAPTER)
    choices += [adapter for adapter in STARTUP_ADAPTERS if adapter not in choices]
    if has_session_adapter:
        choices.append(SESSION_ADAPTER)
    return choices


class ModelStore:
    """A cache of loaded models, shared between sessions and safe to use from the server's worker threads.

    Loading holds a per-name lock, so two sessions that ask for the same model at once load it once. Models
    are only read after loading (scoring runs under torch.no_grad and training copies the base first).
    """

    def __init__(self, max_entries: int = MAX_LOADED_MODELS):
        self.max_entries = max_entries
        self._models: OrderedDict[tuple[str, str | None], LoadedClip] = OrderedDict()
        self._pinned: set[tuple[str, str | None]] = set()
        self._lock = threading.Lock()
        self._key_locks: dict[tuple[str, str | None], threading.Lock] = {}

    def base(self, name: str) -> LoadedClip:
        """Return the base model `name`, loading it on first use; raises ModelLoadError with the fix."""
        check_typed_name(name, "model", model_choices() + [key[0] for key in self._pinned])
        return self._get((name, None), lambda: load_clip(name))

    def tuned(self, name: str, adapter: str | Path) -> LoadedClip:
        """Return model `name` with `adapter` applied, loading both on first use; raises AdapterError."""
        adapter = str(adapter)
        return self._get((name, adapter), lambda: load_adapter(self.base(name), adapter))

    def pin(self, name: str, adapter: str | None = None) -> None:
        """Keep a model in memory for the life of the server (the start-up default)."""
        with self._lock:
            self._pinned.add((name, adapter))

    def forget_adapter(self, adapter: str | Path) -> None:
        """Drop every model loaded with this adapter, e.g. when a session that trained it ends."""
        with self._lock:
            for key in [key for key in self._models if key[1] == str(adapter)]:
                del self._models[key]

    def loaded(self) -> list[tuple[str, str | None]]:
        with self._lock:
            return list(self._models)

    def _get(self, key: tuple[str, str | None], load) -> LoadedClip:
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._models:
                    return self._models[key]
            clip = load()
            with self._lock:
                self._models[key] = clip
                self._evict()
            return clip

    def _evict(self) -> None:
        for key in list(self._models):
            if len(self._models) <= self.max_entries:
                break
            if key not in self._pinned:
                logger.info("unloading %s (adapter %s) to stay within %d models", key[0], key[1], self.max_entries)
                del self._models[key]


STORE = ModelStore()


@dataclass
class StartupModel:
    """The model and adapter the app starts with, and the notice the page shows about them."""

    model: str
    adapter: str
    notice: str  # Markdown: when and why the app fell back to an offline model, or empty


def load_startup_model(
    store: ModelStore, requested: str = DEFAULT_MODEL, adapter: str | None = None
) -> StartupModel:
    """Load the requested model, or fall back to a bundled offline model when it cannot be loaded.

    Raises ModelLoadError only when no offline model can be loaded either.
    """
    try:
        store.base(requested)
        store.pin(requested)
        return StartupModel(requested, adapter or NO_ADAPTER, "")
    except ModelLoadError as error:
        reason = str(error)
        logger.warning("could not load %s, falling back to an offline model: %s", requested, reason)

    for fallback in OFFLINE_MODELS:
        if fallback == "negation-world" and not negation_world_available():
            continue
        store.base(fallback)
        store.pin(fallback)
        fallback_adapter = adapter or NO_ADAPTER
        if fallback == "negation-world" and adapter is None and negation_world_adapter_available():
            fallback_adapter = BUNDLED_ADAPTER
        notice = offline_notice(requested, fallback, reason)
        return StartupModel(fallback, fallback_adapter, notice)
    raise ModelLoadError(f"no model could be loaded: {reason}")


def offline_notice(requested: str, fallback: str, reason: str) -> str:
    """Write the page's notice that the app runs on an offline model instead of the requested one."""
    description = {
        "negation-world": "the project's small CLIP pretrained on procedural scenes of coloured shapes; its "
        "scores on photos mean little, but its negation behaviour can be compared before and after tuning",
        "tiny-random": "a tiny CLIP with random weights: every score is meaningless, and the app only "
        "demonstrates its controls",
    }[fallback]
    return (
        f"⚠️ **Offline mode: running `{fallback}` instead of `{requested}`, which could not be loaded.** "
        f"`{fallback}` is {description}. To use real CLIP without network, download it on a connected machine "
        f"(`hf download {requested} --local-dir <folder>`) and start the app with `--model <folder>`.\n\n"
        f"<details><summary>Why the model could not be loaded</summary>\n\n{html.escape(reason, quote=False)}\n\n</details>"
    )


def resolve_adapter(choice: str | None, session_adapter: str | None) -> str | None:
    """Turn the adapter picker's value into a name or folder for load_adapter, or None for no adapter."""
    choice = (choice or "").strip()
    if not choice or choice == NO_ADAPTER:
        return None
    if choice == SESSION_ADAPTER:
        if not session_adapter:
            raise AdapterError("no adapter has been fine-tuned in this session yet; run Fine-tune first or pick another")
        return session_adapter
    check_typed_name(choice, "adapter", adapter_choices() + STARTUP_ADAPTERS)
    return choice
