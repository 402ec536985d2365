"""Per-session state: each browser session's working folder, uploaded data and fine-tuned adapter.

The app keeps a Session in a gr.State, so one user's uploads and adapter never reach another user. The
folder is removed when Gradio deletes the state (the tab is closed or the session expires).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)


def work_root() -> Path:
    """Return the folder of all session folders: $NEGCLIP_APP_WORK_DIR, else negclip-app in the temp dir.

    Gradio serves files from the temp dir, which the adapter download needs.
    """
    return Path(os.environ.get("NEGCLIP_APP_WORK_DIR") or Path(tempfile.gettempdir()) / "negclip-app")


@dataclass
class Session:
    """One browser session's photo, uploaded data and fine-tuned adapter."""

    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    photo: str | None = None  # checked path of the photo on the Compare tab
    upload: object | None = None  # webapp.inputs.UploadedData of the last data upload
    adapter_dir: str | None = None  # adapter fine-tuned in this session
    adapter_zip: str | None = None

    @property
    def folder(self) -> Path:
        folder = work_root() / self.id
        folder.mkdir(parents=True, exist_ok=True)
        return folder


def new_session() -> Session:
    return Session()


def delete_session(session: Session | None) -> None:
    """Remove a session's folder; Gradio calls this when it deletes the session's state."""
    if session is None:
        return
    from webapp.finetune import JOBS
    from webapp.models import STORE

    if session.adapter_dir:
        STORE.forget_adapter(session.adapter_dir)
    folder = work_root() / session.id
    if JOBS.end_session(session.id, folder):
        logger.info("session %s closed while fine-tuning; its folder goes when the run stops", session.id)
    elif folder.exists():
        shutil.rmtree(folder, ignore_errors=True)
        logger.info("removed session folder %s", folder)
