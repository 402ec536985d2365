"""Per-session state: each browser session's working folder, uploaded data and fine-tuned adapter.

The app keeps a Session in a gr.State, so one user's uploads and adapter never reach another user. The
folder is removed when Gradio deletes the state (the tab is closed or the session expires), when the server
stops (remove_own_sessions, run at exit), and at the next start if the server was killed (remove_stale_sessions).
Each session folder contains a marker file with the server's process id, so only folders this app created are
ever removed.
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

SESSION_MARKER = ".negclip-app-session"  # contains the process id of the server that created the folder


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
        marker = folder / SESSION_MARKER
        if not marker.exists():
            marker.write_text(str(os.getpid()))
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


def _session_folders() -> list[tuple[Path, int | None]]:
    """List (folder, process id from its marker) for each folder under work_root() that has a session marker.

    The process id is None when the marker cannot be read as a number.
    """
    root = work_root()
    if not root.is_dir():
        return []
    found = []
    for marker in root.glob(f"*/{SESSION_MARKER}"):
        try:
            owner = int(marker.read_text().strip())
        except (OSError, ValueError):
            owner = None
        found.append((marker.parent, owner))
    return found


def _process_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # the process exists but belongs to another user
        return True
    return True


def _remove_folders(folders: list[Path], reason: str) -> int:
    removed = 0
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
        if folder.exists():
            logger.warning("could not remove %s session folder %s", reason, folder)
        else:
            removed += 1
    if removed:
        logger.info("removed %d %s session folder(s) from %s", removed, reason, work_root())
    return removed


def remove_own_sessions() -> int:
    """Remove the session folders that this server process created; return how many were removed."""
    pid = os.getpid()
    return _remove_folders([folder for folder, owner in _session_folders() if owner == pid], "open")


def remove_stale_sessions() -> int:
    """Remove session folders left by servers that no longer run; return how many were removed.

    A folder whose marker names a running process is kept, so two servers may share one work folder.
    NOTE: a process id reused by an unrelated process keeps its stale folders until a later start.
    """
    stale = [
        folder
        for folder, owner in _session_folders()
        if owner is None or (owner != os.getpid() and not _process_running(owner))
    ]
    return _remove_folders(stale, "stale")
