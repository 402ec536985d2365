"""Two-dimensional UMAP maps of embeddings, and a background warm-up of UMAP's numba compilation.

umap-learn compiles its numba kernels on the first fit in a process, which took about 16 s on a 2-core
machine (umap-learn 0.5.12, numba 0.68) against well under a second for later fits of a few hundred points.
A server starts `UmapWarmup` once at start-up, and every map request waits for it instead of compiling again.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings

import numpy as np
from scipy.linalg import orthogonal_procrustes

logger = logging.getLogger(__name__)

MIN_POINTS = 4
DEFAULT_NEIGHBORS = 15
# Below this many points spectral initialisation can fail on a disconnected graph, so random init is used.
SPECTRAL_MIN_POINTS = 10


def umap_layout(embeds, seed: int = 0, n_neighbors: int = DEFAULT_NEIGHBORS) -> np.ndarray:
    """Project embeddings (points, dim) to (points, 2) with UMAP under the cosine metric, the same for the same seed."""
    import umap

    points = np.asarray(embeds, dtype=np.float32)
    if points.ndim != 2 or len(points) < MIN_POINTS:
        raise ValueError(
            f"a UMAP map needs at least {MIN_POINTS} points, got {len(points)}; add captions or examples"
        )
    reducer = umap.UMAP(
        n_components=2,
        n_neighbors=max(2, min(n_neighbors, len(points) - 1)),
        metric="cosine",
        init="spectral" if len(points) >= SPECTRAL_MIN_POINTS else "random",
        random_state=seed,
    )
    with warnings.catch_warnings():
        # A fixed random_state makes umap-learn run single-threaded and warn that it does.
        warnings.filterwarnings("ignore", message="n_jobs value", category=UserWarning)
        return reducer.fit_transform(points)


def align_layout(reference: np.ndarray, layout: np.ndarray) -> np.ndarray:
    """Rotate, reflect, scale and shift `layout` onto `reference` (same points, same order) by Procrustes.

    UMAP's axes are arbitrary, so two maps of the same points can only be compared side by side after this.
    """
    reference_centre = reference.mean(axis=0)
    layout_centre = layout.mean(axis=0)
    centred_reference = reference - reference_centre
    centred_layout = layout - layout_centre
    rotation, _ = orthogonal_procrustes(centred_layout, centred_reference)
    rotated = centred_layout @ rotation
    scale = np.linalg.norm(centred_reference) / max(np.linalg.norm(rotated), 1e-12)
    return rotated * scale + reference_centre


class UmapWarmup:
    """Compile UMAP's numba kernels once in a background thread; `wait()` blocks until that is done."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.seconds: float | None = None
        self.error: BaseException | None = None

    def start(self) -> "UmapWarmup":
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="umap-warmup", daemon=True)
                self._thread.start()
        return self

    def _run(self) -> None:
        started = time.perf_counter()
        try:
            points = np.random.default_rng(0).standard_normal((3 * SPECTRAL_MIN_POINTS, 8))
            umap_layout(points, seed=0)
        except Exception as error:  # a failed warm-up only means the first real map compiles instead
            self.error = error
            logger.warning("UMAP warm-up failed (%s); the first map will compile numba kernels itself", error)
        finally:
            self.seconds = time.perf_counter() - started
            logger.info("UMAP warm-up finished in %.1f s", self.seconds)
            self._done.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the warm-up if it was started; return True when no compilation is pending."""
        if self._thread is None:
            return True
        return self._done.wait(timeout)

    @property
    def done(self) -> bool:
        return self._done.is_set()
