"""The one folder that owns a UI run's files, and its removal.

Everything the UI writes lives under one private folder (``medsam3-ui-*``, mode 0700):

* ``gradio/``: Gradio's upload and cache folder for this app (uploads, and the copies of
  previews, overlays and downloads it serves);
* ``sessions/``: each chat's turn folders (input preview, step overlays, ``masks.zip``,
  ``result.json``), removed when the chat is cleared or its tab's state expires;
* ``threads.sqlite``: the checkpointed threads with their images and masks.

``remove()`` deletes the folder; the UI calls it on normal exit, Ctrl+C and SIGTERM. A process
killed with SIGKILL cannot clean up: the next UI started on the machine removes folders whose
owner process is gone (``sweep_stale``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

PREFIX = "medsam3-ui-"
OWNER_FILE = "owner.pid"
GRADIO_ENV = "GRADIO_TEMP_DIR"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def sweep_stale(parent: Path) -> list[Path]:
    """Remove ``medsam3-ui-*`` folders under ``parent`` whose owner process no longer runs; return them."""
    removed = []
    for folder in Path(parent).glob(f"{PREFIX}*"):
        try:
            pid = int((folder / OWNER_FILE).read_text(encoding="utf-8").strip())
        except (OSError, ValueError):
            continue  # not ours, or still being created: leave it
        if not _alive(pid):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


class RunFiles:
    """A UI run's private folder; ``parent`` defaults to the system temp folder."""

    def __init__(self, parent: Path | None = None) -> None:
        parent = Path(parent or tempfile.gettempdir())
        parent.mkdir(parents=True, exist_ok=True)
        sweep_stale(parent)
        self.root = Path(tempfile.mkdtemp(prefix=PREFIX, dir=parent)).resolve()  # mkdtemp makes it 0700
        (self.root / OWNER_FILE).write_text(str(os.getpid()), encoding="utf-8")
        self.gradio_cache = self.root / "gradio"
        self.sessions = self.root / "sessions"
        self.checkpoint_db = self.root / "threads.sqlite"
        for folder in (self.gradio_cache, self.sessions):
            folder.mkdir(mode=0o700)
        self._saved_env: str | None = None
        self._env_set = False

    def new_session_folder(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="session-", dir=self.sessions))

    def point_gradio_here(self) -> None:
        """Make Gradio keep this app's uploads and cache under ``gradio/`` (read when Blocks and the app are built)."""
        if not self._env_set:
            self._saved_env, self._env_set = os.environ.get(GRADIO_ENV), True
        os.environ[GRADIO_ENV] = str(self.gradio_cache)

    def remove(self) -> None:
        """Delete every file of the run, and give Gradio its previous cache setting back."""
        shutil.rmtree(self.root, ignore_errors=True)
        if self._env_set:
            if self._saved_env is None:
                os.environ.pop(GRADIO_ENV, None)
            else:
                os.environ[GRADIO_ENV] = self._saved_env
            self._env_set = False
