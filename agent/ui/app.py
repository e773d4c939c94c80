"""The Gradio Blocks app: a chat about one image at a time, the agent's steps streamed in, masks to take away.

One event, ``ask`` (also the API endpoint ``/ask`` that tests drive with ``gradio_client``),
validates the upload and the settings, streams the agent's step events into the chat, and ends
with the final overlay, the legend and the downloads. Every failure becomes a chat message; the
input box is always given back.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from pydantic import BaseModel, Field, ValidationError

from agent.ui.downloads import write_downloads
from agent.ui.render import LEGEND_HEADERS, Transcript, final_overlay, legend_rows, save_png
from agent.ui.runner import AgentPool
from agent.ui.settings import BACKENDS, KEY_ENV, UiSettings, key_status

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom")
PLANNER_CHOICES = [("offline (no LLM, no key)", "offline"), ("OpenAI-compatible endpoint", "openai")]


class UiConfig(BaseModel):
    """What `medsam3-agent ui` was started with."""

    host: str = "127.0.0.1"
    port: int = Field(7860, ge=0, le=65535)
    examples: list[Path] = Field(default_factory=list)
    max_upload_mb: float = Field(20.0, gt=0)
    concurrency: int = Field(1, ge=1)
    queue_size: int = Field(16, ge=1)
    defaults: UiSettings = Field(default_factory=UiSettings)
    workdir: Path | None = None  # where turns are written; a fresh temp folder by default


@dataclass
class ChatSession:
    """One browser tab's conversation: its thread, its image and its files."""

    folder: Path
    thread_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    image: np.ndarray | None = None
    image_name: str = ""
    turn: int = 0
    history: list[dict] = field(default_factory=list)  # the chat, kept here so clients cannot rewrite it

    def new_thread(self) -> str:
        """Start a new thread; return the old one's id (for the pool to forget)."""
        old, self.thread_id = self.thread_id, uuid.uuid4().hex
        return old


def find_examples(paths: list[Path], limit: int = 12) -> list[Path]:
    """Image files from the given files and folders (a folder contributes its images, sorted)."""
    found: list[Path] = []
    for path in paths:
        path = Path(path).expanduser().resolve()
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"--examples {path}: no such file or folder")
    return found[:limit]


def _message_parts(message: Any) -> tuple[str, list[str]]:
    if isinstance(message, dict):
        files = []
        for item in message.get("files") or []:
            files.append(item.get("path") if isinstance(item, dict) else str(item))
        return (message.get("text") or "").strip(), [f for f in files if f]
    return (str(message or "")).strip(), []


def _readable(exc: BaseException) -> str:
    """One line a user can act on; library exception names kept so a bug report says what broke."""
    text = str(exc).strip() or exc.__class__.__name__
    name = exc.__class__.__name__
    module = exc.__class__.__module__.split(".")[0]
    if module == "openai" or "Connection" in name or "Timeout" in name:
        return f"the planner endpoint failed ({name}: {text}). Check the base URL and model in Settings, or use the offline planner."
    if isinstance(exc, (ValueError, FileNotFoundError, RuntimeError, TimeoutError)):
        return text
    return f"{name}: {text}"


class ChatApp:
    """The handlers, kept apart from the layout so they are plain methods over plain values."""

    def __init__(self, config: UiConfig, pool: AgentPool | None = None) -> None:
        self.config = config
        self.owns_root = config.workdir is None
        self.root = Path(config.workdir or tempfile.mkdtemp(prefix="medsam3-ui-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.pool = pool or AgentPool(self.root / "threads.sqlite", launch_base_url=config.defaults.base_url,
                                      host=config.host)
        self.max_bytes = int(config.max_upload_mb * 1024 * 1024)

    def new_session(self) -> ChatSession:
        return ChatSession(folder=Path(tempfile.mkdtemp(prefix="session-", dir=self.root)))

    def shutdown(self) -> None:
        """Remove the turns' files (uploads, masks) when the server stops, if the folder is ours."""
        if self.owns_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def end_session(self, session: ChatSession | None) -> None:
        """Forget a closed tab's thread and files (Gradio calls this when the tab's state expires)."""
        if isinstance(session, ChatSession):
            self.pool.forget(session.thread_id)
            shutil.rmtree(session.folder, ignore_errors=True)

    # --- validation ---------------------------------------------------------------
    def _load_upload(self, path: str) -> tuple[np.ndarray, str]:
        from segmenter.image_io import load_image

        file = Path(path)
        name = file.name
        size = file.stat().st_size if file.exists() else 0
        if size > self.max_bytes:
            raise ValueError(
                f"{name} is {size / 1e6:.1f} MB, above the upload limit of {self.config.max_upload_mb:g} MB"
            )
        try:
            return load_image(file), name
        except ValueError as exc:  # name the file as the user knows it, not by its upload cache path
            raise ValueError(str(exc).replace(str(file), name)) from None

    # --- events ---------------------------------------------------------------------
    def ask(
        self,
        message: Any,
        session: ChatSession | None,
        planner: str,
        base_url: str,
        model: str,
        backend: str,
        max_rounds: float,
        score_threshold: float,
    ) -> Iterator[tuple]:
        """Stream one turn. Yields (chat, input box, overlay, legend, downloads, session, status)."""
        session = session if isinstance(session, ChatSession) else self.new_session()
        history = session.history
        overlay = legend = files = gr.skip()
        busy_box = gr.MultimodalTextbox(value=None, interactive=False)
        free_box = gr.MultimodalTextbox(value=None, interactive=True)
        text, uploads = _message_parts(message)
        turn_dir = session.folder / f"turn_{session.turn + 1:02d}"
        transcript = Transcript(turn_dir)

        def state(box: Any, status: str) -> tuple:
            return history + transcript.messages, box, overlay, legend, files, session, status

        def final(status: str = "") -> tuple:
            history.extend(transcript.messages)
            transcript.messages = []
            return state(free_box, status)

        # 1. the upload and the question
        user_content: list = []
        notes: list[str] = []
        try:
            if len(uploads) > 1:
                raise ValueError("upload one image at a time")
            if uploads:
                user_content.append(f"(uploaded {Path(uploads[0]).name})")  # shown if it cannot be read
                image, name = self._load_upload(uploads[0])
                user_content.pop()
                if session.image is not None:
                    self.pool.forget(session.new_thread())
                    notes.append(f"New image ({name}): starting a new thread.")
                session.image, session.image_name = image, name
                preview = save_png(image, turn_dir / "input.png")
                user_content.append({"path": str(preview), "mime_type": "image/png", "alt_text": name})
            if text:
                user_content.append(text)
            if session.image is None:
                raise ValueError("upload an image first (PNG, JPEG or TIFF), then ask about it")
            if not text:
                raise ValueError('type a question about the image, e.g. "find the polyps"')
            settings = UiSettings(
                planner=planner, base_url=base_url, model=model, backend=backend,
                max_rounds=int(max_rounds), score_threshold=float(score_threshold),
            )
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            if user_content:
                history.append({"role": "user", "content": user_content})
            transcript.error(f"settings: {problems}")
            yield final()
            return
        except (ValueError, OSError) as exc:  # a bad file or a missing question: say so, keep the chat usable
            if user_content:
                history.append({"role": "user", "content": user_content})
            transcript.error(_readable(exc))
            yield final()
            return

        history.append({"role": "user", "content": user_content})
        session.turn += 1
        for note in notes:
            transcript.note(f"_{note}_")
        overlay, legend, files = None, [], None  # no stale downloads while the new turn runs
        yield state(busy_box, f"Working ({settings.describe()}) ...")

        # 2. the agent's steps, as they happen
        result = None
        steps = 0
        try:
            for event in self.pool.stream(settings, text, session.image, session.thread_id):
                steps += 1
                transcript.add(event)
                if getattr(event, "kind", "") == "answer":
                    result = (getattr(event, "data", None) or {}).get("result")
                yield state(busy_box, f"Working ... step {steps}: {getattr(event, 'kind', '')}")
        except Exception as exc:  # noqa: BLE001  (endpoint down, bad reply, missing backend: say so, stay usable)
            transcript.error(_readable(exc))
            yield final()
            return
        transcript.finish()
        if result is None:
            transcript.error("the agent stopped without an answer")
            yield final()
            return

        # 3. the final overlay, the legend, the downloads
        try:
            rows = legend_rows(result, session.image.shape)
            overlay = str(save_png(final_overlay(session.image, result), turn_dir / "final_overlay.png"))
            legend = rows
            stem = f"{Path(session.image_name).stem or 'image'}_turn{session.turn}"
            files = write_downloads(result, turn_dir, stem).files()
        except Exception as exc:  # noqa: BLE001  (the answer is shown; only the files failed)
            transcript.error(f"could not prepare the downloads: {_readable(exc)}")
            yield final()
            return
        found = f"{len(rows)} instance(s)" if rows else "no mask"
        yield final(f"Done: {found}, {steps} step(s).")

    def new_chat(self, session: ChatSession | None) -> tuple:
        self.end_session(session)
        return [], gr.MultimodalTextbox(value=None, interactive=True), None, [], None, self.new_session(), ""


def build_app(config: UiConfig, pool: AgentPool | None = None) -> tuple[gr.Blocks, ChatApp]:
    """The Blocks layout and its wiring; ``launch_app`` starts it with the queue and upload limit."""
    app = ChatApp(config, pool)
    d = config.defaults
    examples = find_examples(config.examples)
    # delete_cache: Gradio's copies of uploads and results go after 6 hours (checked hourly) and at shutdown
    with gr.Blocks(title="MedSAM3 Agent", analytics_enabled=False, delete_cache=(3600, 6 * 3600)) as demo:
        gr.Markdown(
            "## MedSAM3 Agent\nUpload a medical image (PNG, JPEG, TIFF), ask what to find, watch the agent "
            "work, and download the masks. Follow-up questions refine the last answer."
        )
        session = gr.State(None, delete_callback=app.end_session)
        with gr.Row():
            with gr.Column(scale=3):
                chat = gr.Chatbot(label="Conversation", height=560, elem_id="chat", buttons=["copy"])
                box = gr.MultimodalTextbox(
                    placeholder='Upload an image and ask, e.g. "find the polyps"',
                    file_types=["image", ".tif", ".tiff", ".dcm"], file_count="single",
                    sources=["upload"], elem_id="ask-box", show_label=False,
                )
                with gr.Row():
                    status = gr.Markdown("", label="Status", elem_id="status")
                    new_chat = gr.Button("New chat", variant="secondary", size="sm", elem_id="new-chat", scale=0)
                if examples:
                    gr.Examples(
                        examples=[[{"text": "", "files": [str(p)]}] for p in examples],
                        inputs=[box], label="Example images", example_labels=[p.name for p in examples],
                    )
            with gr.Column(scale=2):
                overlay = gr.Image(label="Final overlay", type="filepath", interactive=False, height=420,
                                   elem_id="final-overlay", buttons=["download", "fullscreen"])
                legend = gr.Dataframe(headers=LEGEND_HEADERS, label="Masks", interactive=False, elem_id="legend",
                                      value=[])
                files = gr.File(label="Downloads: masks (zip) and result.json", file_count="multiple",
                                interactive=False, elem_id="downloads")
                with gr.Accordion("Settings", open=False):
                    planner = gr.Radio(PLANNER_CHOICES, value=d.planner, label="Planner")
                    base_url = gr.Textbox(d.base_url, label="Endpoint base URL", placeholder="http://127.0.0.1:8000/v1")
                    model = gr.Textbox(d.model, label="Model", placeholder="e.g. Qwen2.5-VL-7B-Instruct")
                    gr.Markdown(key_status() + f" Set `{KEY_ENV}` before starting the UI; it is never shown here.")
                    backend = gr.Dropdown(list(BACKENDS), value=d.backend, label="Segmenter backend")
                    max_rounds = gr.Slider(1, 10, value=d.max_rounds, step=1, label="Round limit")
                    score_threshold = gr.Slider(0.0, 1.0, value=d.score_threshold, step=0.05,
                                                label="Score threshold")
        outputs = [chat, box, overlay, legend, files, session, status]
        box.submit(
            app.ask,
            inputs=[box, session, planner, base_url, model, backend, max_rounds, score_threshold],
            outputs=outputs, api_name="ask", show_progress="minimal",
        )
        new_chat.click(app.new_chat, inputs=[session], outputs=outputs, api_name="new_chat", queue=False)
        chat.clear(app.new_chat, inputs=[session], outputs=outputs, api_name=False, queue=False)  # its bin icon
    return demo, app


class RunningUi:
    """A served UI: its URL, its handlers, and ``close()``."""

    def __init__(self, demo: gr.Blocks, app: ChatApp, server: Any, thread: threading.Thread | None, url: str) -> None:
        self.demo, self.app, self.server, self.thread, self.url = demo, app, server, thread, url

    def close(self) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=30)
        self.demo.close()
        self.app.shutdown()


def launch_app(config: UiConfig, pool: AgentPool | None = None, *, block: bool = True,
               preload: bool = False) -> RunningUi:
    """Serve the app (queued, with the upload limit) with uvicorn; ``preload`` builds the default Agent first.

    Served through ``gr.mount_gradio_app`` rather than ``Blocks.launch``: launch gives up when its
    3-second probe of the page times out, which happens on a busy CPU while the server is fine.
    """
    import uvicorn
    from fastapi import FastAPI

    demo, app = build_app(config, pool)
    if preload:
        app.pool.agent(config.defaults)
    demo.queue(default_concurrency_limit=config.concurrency, max_size=config.queue_size)
    web = gr.mount_gradio_app(
        FastAPI(), demo, path="/",
        server_name=config.host, server_port=config.port,
        max_file_size=int(config.max_upload_mb * 1024 * 1024),
        allowed_paths=[str(p) for p in find_examples(config.examples)],
        show_error=True, ssr_mode=False, mcp_server=False, footer_links=["api"],
        run_history=False,  # never keep patients' images in the browser's storage
        # system fonts: the default theme fetches Google Fonts, which a closed network cannot reach
        theme=gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                                font_mono=["ui-monospace", "monospace"]),
    )
    server = uvicorn.Server(uvicorn.Config(web, host=config.host, port=config.port, log_level="warning"))
    host = f"[{config.host}]" if ":" in config.host else config.host
    url = f"http://{host}:{config.port}/"
    if block:
        print(f"MedSAM3 Agent UI on {url} (Ctrl+C stops it)", flush=True)
        try:
            server.run()
        finally:
            app.shutdown()
        return RunningUi(demo, app, server, None, url)
    thread = threading.Thread(target=server.run, name="medsam3-ui", daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the UI server did not start on {url}")
        time.sleep(0.05)
    return RunningUi(demo, app, server, thread, url)
