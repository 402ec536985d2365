"""Fine-tuning jobs started from the app: one background thread per job, stoppable, polled for progress.

The server runs one job at a time, because the Start event has a concurrency limit of 1. `JOBS` maps each
session to its job, so the Cancel button of that session, and only that one, can stop it.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import pandas as pd

from analysis.figures import loss_curve_figure
from negclip.config import TrainConfig
from negclip.evaluate import lookup
from negclip.models import LoadedClip
from negclip.train import TrainResult, train
from webapp import datasets
from webapp.errors import PAGE_ERRORS, page_errors, warn
from webapp.inputs import load_upload
from webapp.models import SESSION_ADAPTER, STORE, adapter_choices
from webapp.session import Session

logger = logging.getLogger(__name__)

LAYER_CHOICES = ("front", "middle", "back", "all", "custom")


def build_train_config(
    *,
    data: str,
    image_root: str | None,
    model: str,
    output_dir: str,
    layers: str,
    custom_layers: str,
    mode: str,
    epochs: int,
    max_steps: int | None,
    batch_size: int,
    learning_rate: float,
    lambda_abs: float,
    lambda_orig: float,
    lambda_text: float,
    margin: float,
    seed: int,
) -> TrainConfig:
    """Build and validate a TrainConfig from the Fine-tune tab's widgets; raises ValueError naming the field."""
    if layers not in LAYER_CHOICES:
        raise ValueError(f"layer range must be one of {', '.join(LAYER_CHOICES)}, not {layers!r}")
    if layers == "custom":
        layers = (custom_layers or "").strip()
        if not layers:
            raise ValueError("custom layer range is empty; type layers such as 0-3 or 0,2,4")
    numbers = {"epochs": epochs, "batch size": batch_size, "seed": seed}
    for name, value in numbers.items():
        if value is None or float(value) != int(value):
            raise ValueError(f"{name} must be a whole number, not {value!r}")
    for name, value in {"learning rate": learning_rate, "margin": margin, "lambda_abs": lambda_abs,
                        "lambda_orig": lambda_orig, "lambda_text": lambda_text}.items():
        if value is None:
            raise ValueError(f"{name} is empty; type a number")
    if lambda_abs < 0 or lambda_orig < 0 or lambda_text < 0:
        raise ValueError("loss weights must be zero or positive")
    config = TrainConfig(
        data=data,
        image_root=image_root,
        model=model,
        output_dir=output_dir,
        layers=layers,
        mode=mode,
        epochs=int(epochs),
        max_steps=int(max_steps) if max_steps else None,
        batch_size=int(batch_size),
        learning_rate=float(learning_rate),
        lambda_abs=float(lambda_abs),
        lambda_orig=float(lambda_orig),
        lambda_text=float(lambda_text),
        margin=float(margin),
        use_absence=lambda_abs > 0,
        seed=int(seed),
        log_every=1,
    )
    config.resolved().validate()
    return config


@dataclass
class FinetuneJob:
    """One running or finished fine-tuning run, updated by its thread and read by the polling handler."""

    session_id: str
    config: TrainConfig
    stop: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    records: list[dict] = field(default_factory=list)
    step: int = 0
    total_steps: int = 0
    started: float = field(default_factory=time.perf_counter)
    result: TrainResult | None = None
    error: BaseException | None = None
    remove_when_done: Path | None = None  # a closed session's folder, deleted once the thread is finished

    def on_step(self, step: int, total_steps: int, record: dict) -> None:
        self.step = step
        self.total_steps = total_steps
        self.records.append(record)

    def run(self, clip: LoadedClip) -> None:
        try:
            self.result = train(self.config, on_step=self.on_step, should_stop=self.stop.is_set, clip=clip)
        except PAGE_ERRORS as error:  # invalid settings or data: the page shows the message, the log one line
            self.error = error
            logger.warning("fine-tuning job of session %s rejected its settings: %s", self.session_id, error)
        except Exception as error:  # reported to the page by the polling handler
            self.error = error
            logger.warning("fine-tuning job of session %s failed: %s", self.session_id, error, exc_info=True)
        finally:
            self.done.set()
            if self.remove_when_done is not None:
                shutil.rmtree(self.remove_when_done, ignore_errors=True)


class JobBoard:
    """Fine-tuning jobs by session; a Cancel click before the queued job starts cancels it too."""

    def __init__(self) -> None:
        self._jobs: dict[str, FinetuneJob] = {}
        self._cancelled_while_queued: set[str] = set()
        self._lock = threading.Lock()

    def request(self, session_id: str) -> None:
        """Note a Start click, which clears an earlier Cancel of this session."""
        with self._lock:
            self._cancelled_while_queued.discard(session_id)

    def start(self, session_id: str, config: TrainConfig, clip: LoadedClip) -> FinetuneJob | None:
        """Start a job in a thread; return None when the session pressed Cancel while the job waited in the queue."""
        with self._lock:
            if session_id in self._cancelled_while_queued:
                self._cancelled_while_queued.discard(session_id)
                return None
            running = self._jobs.get(session_id)
            if running is not None and not running.done.is_set():
                raise ValueError("a fine-tuning run of this session is still running; cancel it or wait")
            job = FinetuneJob(session_id, config)
            self._jobs[session_id] = job
        thread = threading.Thread(target=job.run, args=(clip,), name=f"finetune-{session_id[:8]}", daemon=True)
        thread.start()
        logger.info("session %s started fine-tuning %s on %s", session_id, config.model, config.data)
        return job

    def cancel(self, session_id: str) -> str:
        """Ask this session's job to stop after its current step; return a message for the page."""
        with self._lock:
            job = self._jobs.get(session_id)
            if job is None or job.done.is_set():
                self._cancelled_while_queued.add(session_id)
                return "No run of this session is training; a run still waiting in the queue will not start."
            job.stop.set()
        logger.info("session %s cancelled fine-tuning at step %d", session_id, job.step)
        return f"Stopping after step {job.step}; the adapter trained so far is saved and evaluated."

    def end_session(self, session_id: str, folder: Path) -> bool:
        """Forget a closed session; return True when its running job will stop and then delete `folder`."""
        with self._lock:
            self._cancelled_while_queued.discard(session_id)
            job = self._jobs.pop(session_id, None)
            if job is None or job.done.is_set():
                return False
            job.remove_when_done = folder
            job.stop.set()
            return True

    def get(self, session_id: str) -> FinetuneJob | None:
        with self._lock:
            return self._jobs.get(session_id)


JOBS = JobBoard()


def zip_adapter(adapter_dir: str | Path, destination: str | Path) -> Path:
    """Write the adapter folder as a zip at `destination` (.zip added) and return its path."""
    archive = shutil.make_archive(str(Path(destination).with_suffix("")), "zip", root_dir=str(adapter_dir))
    return Path(archive)


# ---------------------------------------------------------------------------------------------------------
# The Fine-tune tab's handlers

POLL_SECONDS = 1.0
BEFORE_AFTER_METRICS = [
    ("presence accuracy", "presence.accuracy"),
    ("absence accuracy (Ta over T-)", "absence.accuracy"),
    ("image-to-text R@1", "retrieval.image_to_text.R@1"),
    ("text-to-image R@1", "retrieval.text_to_image.R@1"),
]


def before_after_table(before: dict | None, after: dict | None) -> pd.DataFrame:
    """Held-out numbers before and after tuning, in percent, with the change in points."""
    rows = []
    for label, key in BEFORE_AFTER_METRICS:
        base = lookup(before or {}, key)
        tuned = lookup(after or {}, key)
        rows.append(
            {
                "metric": label,
                "before (%)": None if base is None else round(100 * base, 1),
                "after (%)": None if tuned is None else round(100 * tuned, 1),
                "change (points)": None if base is None or tuned is None else round(100 * (tuned - base), 1),
            }
        )
    return pd.DataFrame(rows)


@page_errors
def upload_data(data_file: str | None, images_zip: str | None, session: Session) -> tuple[str, Session]:
    """Check an uploaded data file and zip of images and keep them as this session's data set."""
    session.upload = load_upload(data_file, images_zip, session.folder / "upload")
    logger.info("session %s uploaded %s", session.id, session.upload.describe())
    return f"Uploaded {session.upload.describe()}; choose “{datasets.UPLOADED}” to use it.", session


def select_custom_layers(custom_layers: str | None) -> dict:
    """Select "custom" in the layer radio once the Custom layers box has text, so the typed range is used."""
    if (custom_layers or "").strip():
        return gr.update(value="custom")
    return gr.skip()


def describe_layers(layers: str, custom_layers: str | None) -> str:
    """Name the layer setting a run uses, warning when a typed custom range is ignored."""
    typed = (custom_layers or "").strip()
    if layers == "custom":
        return f"custom layers {typed}"
    if typed:
        warn(f"the Custom layers box ({typed}) is ignored because “{layers}” is selected; select custom to use it")
    return f"{layers} layers"


def request_finetune(session: Session) -> None:
    JOBS.request(session.id)


def cancel_finetune(session: Session) -> str:
    return JOBS.cancel(session.id)


def _progress_text(job: FinetuneJob, layer_text: str) -> str:
    if not job.records:
        return (
            f"Preparing to tune {layer_text}: reading the data, encoding the images once and measuring the model "
            "before tuning."
        )
    record = job.records[-1]
    elapsed = time.perf_counter() - job.started
    return (
        f"Step {job.step} of {job.total_steps}: loss {record['loss']:.4f} (presence {record['presence_loss']:.4f}, "
        f"absence {record['absence_loss']:.4f}), {elapsed:.0f} s so far, tuning {layer_text}."
    )


@page_errors
def run_finetune(
    data_source: str,
    layers: str,
    custom_layers: str,
    mode: str,
    epochs: int,
    max_steps: int,
    batch_size: int,
    learning_rate: float,
    lambda_abs: float,
    lambda_orig: float,
    lambda_text: float,
    margin: float,
    seed: int,
    model_name: str,
    session: Session,
    progress=gr.Progress(),
):
    """Fine-tune in a background thread and yield (status, loss curve, table, zip, adapter picker, session).

    Yields about once a second while training. When the run ends (or Cancel stops it), the adapter becomes
    this session's "fine-tuned" adapter and the picker selects it.
    """
    data, image_root = datasets.training_data(data_source, session.upload)
    base = STORE.base((model_name or "").strip())
    run_dir = session.folder / f"finetune-{time.strftime('%Y%m%d-%H%M%S')}"
    config = build_train_config(
        data=data, image_root=image_root, model=base.name, output_dir=str(run_dir), layers=layers,
        custom_layers=custom_layers, mode=mode, epochs=epochs, max_steps=max_steps, batch_size=batch_size,
        learning_rate=learning_rate, lambda_abs=lambda_abs, lambda_orig=lambda_orig, lambda_text=lambda_text,
        margin=margin, seed=seed,
    )
    layer_text = describe_layers(layers, custom_layers)
    job = JOBS.start(session.id, config, base)
    if job is None:
        yield "Cancelled before it started.", gr.skip(), gr.skip(), gr.skip(), gr.skip(), session
        return

    try:
        while not job.done.wait(POLL_SECONDS):
            if job.total_steps:
                progress((job.step, job.total_steps), desc="fine-tuning", unit="steps")
            else:
                progress(None, desc="preparing")
            yield _progress_text(job, layer_text), loss_curve_figure(job.records), gr.skip(), gr.skip(), gr.skip(), session
    finally:
        # The page was closed or the event was cancelled, so no one will see the result: stop the thread.
        if not job.done.is_set():
            job.stop.set()

    if job.error is not None:
        raise job.error
    result = job.result
    session.adapter_dir = str(result.adapter_dir)
    session.adapter_zip = str(zip_adapter(result.adapter_dir, run_dir / f"negclip-adapter-{run_dir.name}.zip"))
    STORE.forget_adapter(session.adapter_dir)
    stopped = " (stopped early by Cancel)" if result.stopped_early else ""
    status = (
        f"Finished {result.steps} of {result.total_steps} steps of tuning {layer_text} in {result.seconds:.0f} s"
        f"{stopped}. The adapter is "
        f"now “{SESSION_ADAPTER}” in the adapter picker, used by Compare, Embedding map, Layer analysis and Evaluate."
    )
    picker = gr.update(choices=adapter_choices(has_session_adapter=True), value=SESSION_ADAPTER)
    yield (
        status,
        loss_curve_figure(job.records),
        before_after_table(result.before, result.after),
        session.adapter_zip,
        picker,
        session,
    )
