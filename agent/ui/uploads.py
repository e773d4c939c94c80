"""Which files a UI request may name: this server's uploads and the operator's example images, nothing else.

A client of the Gradio API sends files as ``{"path": ...}``. Gradio's own check that such a path
was uploaded is off when the app is mounted with ``gr.mount_gradio_app`` (it only runs after
``Blocks.launch``), and Gradio would copy any readable server file into its cache before the
handler runs. So the check is made twice here: ``UploadBox`` never copies a file from outside
the upload folder, and ``UploadPolicy.check`` refuses such a path in the handler, with one
message whether the path exists or not.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gradio as gr

REFUSED = ("only an image uploaded on this page can be used: attach it with the paperclip "
           "or drag it into the box")


class UploadRefused(ValueError):
    """A path this server did not receive as an upload; the message never says whether it exists."""

    def __init__(self) -> None:
        super().__init__(REFUSED)


class UploadPolicy:
    """Allowed: regular files inside the upload folders (after resolving symlinks), and the example files."""

    def __init__(self, upload_roots: Sequence[Path], examples: Sequence[Path] = ()) -> None:
        self.roots = [Path(root).resolve() for root in upload_roots]
        self.examples = {Path(path).resolve() for path in examples}

    def allows(self, path: Any) -> bool:
        if not isinstance(path, (str, Path)) or not str(path) or "\0" in str(path):
            return False
        try:
            real = Path(path).resolve()
            return (real in self.examples or any(_inside(real, root) for root in self.roots)) and real.is_file()
        except (OSError, RuntimeError, ValueError):  # a symlink loop, a name too long, ...
            return False

    def check(self, path: Any) -> Path:
        """The resolved file, or ``UploadRefused``."""
        if not self.allows(path):
            raise UploadRefused()
        return Path(path).resolve()


def _inside(path: Any, root: Path) -> bool:
    try:
        return Path(path).resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError, ValueError, TypeError):  # a symlink loop, a name too long, a NUL byte, ...
        return False


class UploadBox(gr.MultimodalTextbox):
    """A MultimodalTextbox that never lets Gradio copy (or download) a file from outside its upload folder.

    Such a path is passed on unchanged, never opened, and the handler answers it with
    ``UploadRefused`` in the chat (the example files, which the handler allows, are read from
    where the operator keeps them). ``is_template`` makes the browser draw the usual box.
    """

    is_template = True

    def _cacheable(self, path: str | Path) -> bool:
        return _inside(path, Path(self.GRADIO_CACHE))

    def move_resource_to_block_cache(self, url_or_file_path: str | Path | None) -> str | None:
        if url_or_file_path is not None and not self._cacheable(url_or_file_path):
            return str(url_or_file_path)
        return super().move_resource_to_block_cache(url_or_file_path)

    async def async_move_resource_to_block_cache(self, url_or_file_path: str | Path | None) -> str | None:
        if url_or_file_path is not None and not self._cacheable(url_or_file_path):
            return str(url_or_file_path)
        return await super().async_move_resource_to_block_cache(url_or_file_path)
