"""The Gradio Blocks app: a chat about one image at a time, the agent's steps streamed in, masks to take away.

One event, ``ask`` (also the API endpoint ``/ask`` that tests drive with ``gradio_client``),
validates the upload and the settings, streams the agent's step events into the chat, and ends
with the final overlay, the legend and the downloads. Every failure becomes a chat message; the
input box is always given back.
"""

from __future__ import annotations

import shutil
import signal
import threading
import time
import uuid
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
from pydantic import BaseModel, Field, SecretStr, ValidationError

from agent.results import AgentResult
from agent.ui.auth import LoopbackHostOnly, check_exposure
from agent.ui.downloads import write_downloads
from agent.ui.render import (
    LEGEND_HEADERS,
    Transcript,
    describe_study,
    final_overlay,
    legend_rows,
    save_png,
    slice_overlay,
    window_label,
)
from agent.ui.retention import RunFiles
from agent.ui.runner import AgentPool
from agent.ui.settings import AUTO_WINDOW, BACKENDS, KEY_ENV, UiSettings, is_loopback, key_status
from agent.ui.uploads import UploadBox, UploadPolicy
from agent.volume_output import VolumeOutput
from segmenter.image_io import MAX_PIXELS
from segmenter.study import Study
from segmenter.windows import PRESETS

# what the one loader (segmenter.study_io.load_study) reads: 2D images, DICOM (a file or a zip of one series), NIfTI
INPUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom", ".zip", ".nii", ".nii.gz")
UPLOAD_TYPES = ["image", *INPUT_SUFFIXES]
PLANNER_CHOICES = [("offline (no LLM, no key)", "offline"), ("OpenAI-compatible endpoint", "openai")]


class UiConfig(BaseModel):
    """What `medsam3-agent ui` was started with."""

    host: str = "127.0.0.1"
    port: int = Field(7860, ge=0, le=65535)
    examples: list[Path] = Field(default_factory=list)
    max_upload_mb: float = Field(20.0, gt=0)
    concurrency: int = Field(4, ge=1)
    queue_size: int = Field(16, ge=1)
    defaults: UiSettings = Field(default_factory=UiSettings)
    workdir: Path | None = None  # where the run's private folder is made; the system temp folder by default
    auth: list[tuple[str, str]] = Field(default_factory=list, repr=False)  # USER:PASS pairs; none: no login
    insecure: bool = False  # serve a non-loopback host without auth (another layer protects it)
    debug: bool = False  # show Python errors in the browser
    cache_ttl: int = Field(3600, ge=60, le=7 * 24 * 3600)  # seconds a chat's files outlive its last use
    max_voxels: int = Field(MAX_PIXELS, ge=1)  # decoded pixels of one upload (all slices of a volume), at most
    api_key: SecretStr | None = None  # $OPENAI_API_KEY at launch (agent.config.Settings); never shown


@dataclass
class ChatSession:
    """One browser tab's conversation: its thread, its image (or volume) and its files."""

    folder: Path
    thread_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    study: Study | None = None  # the upload as the loader read it: one slice (2D) or a volume
    image_name: str = ""
    volume: VolumeOutput | None = None  # the last volume answer's 3D masks, which the slice slider draws
    window: str = ""  # the window setting the study was read with ("auto", "lung", "-600,1500")
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
            found += sorted(p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(INPUT_SUFFIXES))
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
        return (f"the planner endpoint failed ({name}: {text}). "
                "Check the base URL and model in Settings, or use the offline planner.")
    if isinstance(exc, (ValueError, FileNotFoundError, RuntimeError, TimeoutError)):
        return text
    return f"{name}: {text}"


class _Turn:
    """One ``ask``: the values every yield carries (the chat so far, the outputs, the input box)."""

    def __init__(self, session: ChatSession, folder: Path) -> None:
        self.session, self.folder = session, folder
        self.transcript = Transcript(folder)
        self.overlay: Any = gr.skip()
        self.legend: Any = gr.skip()
        self.files: Any = gr.skip()
        self.slider: Any = gr.skip()
        self.steps = 0
        self.busy_box = gr.MultimodalTextbox(value=None, interactive=False)
        self.free_box = gr.MultimodalTextbox(value=None, interactive=True)

    def state(self, box: Any, status: str) -> tuple:
        history = self.session.history + self.transcript.messages
        return history, box, self.overlay, self.legend, self.files, self.session, status, self.slider

    def final(self, status: str = "") -> tuple:
        self.session.history.extend(self.transcript.messages)
        self.transcript.messages = []
        return self.state(self.free_box, status)


def _working(steps: int, event: Any, progress: Any) -> str:
    """The status line while a turn runs; a volume run's slice progress also drives Gradio's progress bar."""
    done, total = (event.data or {}).get("done"), (event.data or {}).get("total")
    if isinstance(done, int) and isinstance(total, int) and total > 0:
        if progress is not None:
            progress((done, total), desc="slices", unit="slices")
        return f"Working ... slices {done}/{total}"
    return f"Working ... step {steps}: {event.kind}"


def _problem(exc: ValueError | OSError) -> str:
    """A refused turn in one line: bad settings (which field, never the value), else the error's own words."""
    if isinstance(exc, ValidationError):
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}"
                             for e in exc.errors())
        return f"settings: {problems}"
    return _readable(exc)


class ChatApp:
    """The handlers, kept apart from the layout so they are plain methods over plain values."""

    def __init__(self, config: UiConfig, pool: AgentPool | None = None, files: RunFiles | None = None) -> None:
        self.config = config
        self.files = files or RunFiles(config.workdir)
        self.root = self.files.root
        key = config.api_key.get_secret_value() if config.api_key else None
        self.pool = pool or AgentPool(self.files.checkpoint_db, launch_base_url=config.defaults.base_url,
                                      host=config.host, api_key=key)
        self.max_bytes = int(config.max_upload_mb * 1024 * 1024)
        self.uploads = UploadPolicy([self.files.gradio_cache], find_examples(config.examples))

    def new_session(self) -> ChatSession:
        return ChatSession(folder=self.files.new_session_folder())

    def shutdown(self) -> None:
        """Remove every file of the run (uploads, Gradio's cache, turns, threads.sqlite) when the server stops."""
        self.files.remove()

    def end_session(self, session: ChatSession | None) -> None:
        """Forget a chat's thread (checkpoints, masks, image) and files: new chat, bin icon, or its state expired."""
        if isinstance(session, ChatSession):
            self.pool.forget(session.thread_id)
            shutil.rmtree(session.folder, ignore_errors=True)

    # --- validation ---------------------------------------------------------------
    def _load_upload(self, file: Path, window: str | None = None) -> tuple[Study, str]:
        """Read an upload that ``self.uploads`` allowed (an image, a DICOM file or zip of one series, a NIfTI)
        with the one loader, within the voxel budget, through ``window`` (None: the loader's own choice; a 2D
        image has none); named by its file name, as the user knows it."""
        from segmenter.study_io import load_study

        name = file.name
        size = file.stat().st_size
        if size > self.max_bytes:
            raise ValueError(
                f"{name} is {size / 1e6:.1f} MB, above the upload limit of {self.config.max_upload_mb:g} MB"
            )
        try:
            return load_study(file, window=window, max_pixels=self.config.max_voxels), name
        except ValueError as exc:  # name the file as the user knows it, not by its upload cache path
            raise ValueError(str(exc).replace(str(file), name)) from None

    def _take_upload(self, session: ChatSession, uploads: list[str], turn_dir: Path,
                     user_content: list, notes: list[str], settings: UiSettings) -> None:
        """Check and read the turn's upload into ``session`` through the settings' window (a new image starts a
        new thread). Without an upload, a changed window is only noted: the image read earlier stays as it is."""
        if len(uploads) > 1:
            raise ValueError("upload one image at a time")
        if not uploads:
            if session.study is not None and session.study.window is not None and session.window != settings.window:
                notes.append(f"The window setting ({settings.window}) applies when a file is read: "
                             f"{session.image_name} is still shown through {window_label(session.study.window)}. "
                             "Attach it again to see it through the new window.")
            return
        file = self.uploads.check(uploads[0])  # before anything about the path is opened or shown
        user_content.append(f"(uploaded {file.name})")  # shown if it cannot be read
        study, name = self._load_upload(file, settings.load_window())
        user_content.pop()
        if session.study is not None:
            self.pool.forget(session.new_thread())
            notes.append(f"New image ({name}): starting a new thread.")
        session.study, session.image_name, session.volume = study, name, None
        session.window = settings.window
        if study.is_volume:
            notes.append(describe_study(name, study))
        elif study.window is not None:  # one DICOM slice in grey values: the window it is shown through
            notes.append(f"{name}: shown through {window_label(study.window)}.")
        # a volume is previewed by its middle slice
        preview = save_png(study.slices[study.shape[0] // 2], turn_dir / "input.png")
        user_content.append({"path": str(preview), "mime_type": "image/png", "alt_text": name})

    def _turn_settings(self, planner: str, base_url: str, model: str, backend: str, max_rounds: float,
                       calibrated: bool, score_threshold: float, window: str | None) -> UiSettings:
        """The turn's settings, checked by pydantic before the upload is read (the window decides how); its
        errors name the field, and echo only the window's own value. ``calibrated``: each concept's calibrated
        presence threshold, the slider ignored."""
        if not isinstance(calibrated, bool):
            raise ValueError("the calibrated presence threshold setting must be true or false")
        return UiSettings.model_validate({
            "planner": planner, "base_url": base_url, "model": model, "backend": backend,
            "max_rounds": max_rounds, "score_threshold": None if calibrated else score_threshold, "window": window,
            # the operator's, not the browser's
            "timeout": self.config.defaults.timeout, "retries": self.config.defaults.retries,
        })

    @staticmethod
    def _turn_study(session: ChatSession, text: str) -> Study:
        """The study to ask about, once there are an image and a question."""
        if session.study is None:
            raise ValueError("upload an image first (PNG, JPEG, TIFF, DICOM, a zip of one DICOM series or NIfTI), "
                             "then ask about it")
        if not text:
            raise ValueError('type a question about the image, e.g. "find the polyps"')
        return session.study

    def _stream(self, turn: _Turn, settings: UiSettings, text: str, study: Study,
                progress: Any = None) -> Generator[tuple, None, AgentResult | None]:
        """The agent's steps, as they happen; returns the run's result, or None once a failure is in the chat."""
        result = None
        try:
            for event in self.pool.stream(settings, text, study, turn.session.thread_id):
                turn.steps += 1
                turn.transcript.add(event)
                if event.result is not None:  # the last event, "answer", carries the run's result
                    result = event.result
                yield turn.state(turn.busy_box, _working(turn.steps, event, progress))
        except Exception as exc:  # noqa: BLE001  (endpoint down, bad reply, missing backend: say so, stay usable)
            turn.transcript.error(_readable(exc))
            yield turn.final()
            return None
        turn.transcript.finish()
        if result is None:
            turn.transcript.error("the agent stopped without an answer")
            yield turn.final()
        return result

    @staticmethod
    def _finish(turn: _Turn, result: AgentResult, study: Study) -> tuple:
        """The measurements, the final overlay, the legend, the downloads and, for a volume, the slice slider
        (at the key slice: the legend numbers its masks); or the reason they could not be made."""
        volume = result.volume
        image = study.slices[0] if volume is None else volume.study.slices[volume.key_slice]
        turn.transcript.measurements(result.measurements)
        try:
            rows = legend_rows(result, image.shape)
            turn.overlay = str(save_png(final_overlay(image, result), turn.folder / "final_overlay.png"))
            turn.legend = rows
            turn.files = write_downloads(result, turn.folder).files()
        except Exception as exc:  # noqa: BLE001  (the answer is shown; only the files failed)
            turn.transcript.error(f"could not prepare the downloads: {_readable(exc)}")
            return turn.final()
        found = f"{len(rows)} instance(s)" if rows else "no mask"
        where = ""
        if volume is not None:
            turn.session.volume = volume
            last = volume.study.shape[0] - 1
            shown = "" if volume.study.window is None else f", {window_label(volume.study.window)}"
            turn.slider = gr.Slider(minimum=0, maximum=last, value=volume.key_slice, step=1, visible=True,
                                    label=f"Slice (0-{last}; the overlay opens on key slice {volume.key_slice}"
                                          f"{shown})")
            where = f" on key slice {volume.key_slice}"
        return turn.final(f"Done: {found}{where}, {turn.steps} step(s).")

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
        calibrated: bool,
        score_threshold: float,
        window: str | None,
        progress: Any = gr.Progress(),  # noqa: B008  (Gradio's marker: slice progress of a volume run)
    ) -> Iterator[tuple]:
        """Stream one turn. Yields (chat, input box, overlay, legend, downloads, session, status, slider)."""
        session = session if isinstance(session, ChatSession) else self.new_session()
        text, uploads = _message_parts(message)
        turn = _Turn(session, session.folder / f"turn_{session.turn + 1:02d}")

        # 1. the upload and the question
        user_content: list = []
        notes: list[str] = []
        settings: UiSettings | None = None
        try:
            settings = self._turn_settings(planner, base_url, model, backend, max_rounds, calibrated,
                                           score_threshold, window)
            self._take_upload(session, uploads, turn.folder, user_content, notes, settings)
            if text:
                user_content.append(text)
            study = self._turn_study(session, text)
        except (ValueError, OSError) as exc:  # bad settings, a bad file or a missing question: say so, stay usable
            problem = _problem(exc)
            if settings is None:  # refused before the upload was read
                if text:
                    user_content.append(text)
                if uploads:
                    problem += " (the attached file was not read: attach it again with the settings fixed)"
            if user_content:
                session.history.append({"role": "user", "content": user_content})
            turn.transcript.error(problem)
            yield turn.final()
            return

        session.history.append({"role": "user", "content": user_content})
        session.turn += 1
        for note in notes:
            turn.transcript.note(f"_{note}_")
        # no stale downloads, nor a slider over the last answer's masks, while the new turn runs
        turn.overlay, turn.legend, turn.files, turn.slider = None, [], None, gr.Slider(visible=False)
        session.volume = None
        yield turn.state(turn.busy_box, f"Working ({settings.describe()}) ...")

        # 2. the agent's steps, as they happen; 3. the final overlay, the legend, the downloads
        result = yield from self._stream(turn, settings, text, study, progress)
        if result is not None:
            yield self._finish(turn, result, study)

    def show_slice(self, index: float, session: ChatSession | None) -> Any:
        """Slice ``index`` of the last volume answer with its masks (what the slider shows); unchanged without one.

        The array goes to Gradio, which writes it as a PNG in its cache, inside the run's folder."""
        volume = session.volume if isinstance(session, ChatSession) else None
        if volume is None:
            return gr.skip()
        last = volume.study.shape[0] - 1
        return slice_overlay(volume, min(max(int(index), 0), last))

    def new_chat(self, session: ChatSession | None) -> tuple:
        self.end_session(session)
        return ([], gr.MultimodalTextbox(value=None, interactive=True), None, [], None, self.new_session(), "",
                gr.Slider(visible=False))


def _threshold_slider(calibrated: bool) -> Any:
    """The score threshold slider: usable only while the calibrated per-concept thresholds are off."""
    return gr.Slider(interactive=not calibrated)


def build_app(config: UiConfig, pool: AgentPool | None = None,
              files: RunFiles | None = None) -> tuple[gr.Blocks, ChatApp]:
    """The Blocks layout and its wiring; ``launch_app`` starts it with the queue and upload limit."""
    files = files or RunFiles(config.workdir)
    files.point_gradio_here()  # before any component exists: each keeps the cache folder it was built with
    app = ChatApp(config, pool, files)
    d = config.defaults
    examples = find_examples(config.examples)
    ttl = config.cache_ttl
    # delete_cache: Gradio's uploads and its copies of results go once older than the TTL (checked every
    # few minutes), and all of them at shutdown
    with gr.Blocks(title="MedSAM3 Agent", analytics_enabled=False, delete_cache=(min(ttl, 300), ttl)) as demo:
        gr.Markdown(
            "## MedSAM3 Agent\nUpload a medical image (PNG, JPEG, TIFF, DICOM) or a volume (a zip of one DICOM "
            "series, NIfTI `.nii`/`.nii.gz`), ask what to find, watch the agent work, and download the masks. "
            "Follow-up questions refine the last answer on a 2D image; a volume is answered per question."
        )
        # a chat unused for the TTL is forgotten (thread, masks, image, files); a closed tab's after Gradio's hour
        session = gr.State(None, delete_callback=app.end_session, time_to_live=ttl)
        with gr.Row():
            with gr.Column(scale=3):
                chat = gr.Chatbot(label="Conversation", height=560, elem_id="chat", buttons=["copy"])
                box = UploadBox(
                    placeholder='Upload an image and ask, e.g. "find the polyps"',
                    file_types=UPLOAD_TYPES, file_count="single",
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
                # PNG: the slider's slices come as arrays, and a lossy format would blur the mask outlines
                overlay = gr.Image(label="Final overlay", type="filepath", interactive=False, height=420, format="png",
                                   elem_id="final-overlay", buttons=["download", "fullscreen"])
                # a volume answer's slices, each with the masks; hidden for a 2D image
                slider = gr.Slider(0, 1, value=0, step=1, label="Slice", visible=False, elem_id="slice")
                legend = gr.Dataframe(headers=LEGEND_HEADERS, label="Masks", interactive=False, elem_id="legend",
                                      value=[])
                downloads = gr.File(label="Downloads: masks (zip: PNG; NIfTI and DICOM SEG for volumes) and "
                                          "result.json", file_count="multiple",
                                    interactive=False, elem_id="downloads")
                with gr.Accordion("Settings", open=False):
                    planner = gr.Radio(PLANNER_CHOICES, value=d.planner, label="Planner")
                    base_url = gr.Textbox(d.base_url, label="Endpoint base URL", placeholder="http://127.0.0.1:8000/v1")
                    model = gr.Textbox(d.model, label="Model", placeholder="e.g. Qwen2.5-VL-7B-Instruct")
                    gr.Markdown(key_status(config.api_key is not None)
                                + f" Set `{KEY_ENV}` before starting the UI; it is never shown here.")
                    backend = gr.Dropdown(list(BACKENDS), value=d.backend, label="Segmenter backend")
                    max_rounds = gr.Slider(1, 10, value=d.max_rounds, step=1, label="Round limit")
                    # on: each concept's presence threshold calibrated for the weights (as the CLI gates);
                    # off: the slider's one threshold for every concept
                    fixed = d.score_threshold
                    calibrated = gr.Checkbox(fixed is None, label="Calibrated presence threshold per concept",
                                             elem_id="calibrated-threshold")
                    score_threshold = gr.Slider(0.0, 1.0, value=0.5 if fixed is None else fixed, step=0.05,
                                                label="Score threshold (every concept, when the box above is off)",
                                                interactive=fixed is not None, elem_id="score-threshold")
                    # read with the next DICOM / NIfTI upload; the handler checks it with segmenter.windows' parser
                    window = gr.Dropdown(
                        [AUTO_WINDOW, *PRESETS], value=d.window, allow_custom_value=True, elem_id="window",
                        label="Window (DICOM / NIfTI uploads; CT in HU)",
                        info='"auto": a CT DICOM\'s own window, else abdomen; other DICOM and NIfTI: the 0.5-99.5 '
                             'percentile window. Or a preset, or "level,width" such as -600,1500. Applies to the next '
                             'upload.')
        outputs = [chat, box, overlay, legend, downloads, session, status, slider]
        box.submit(
            app.ask,
            inputs=[box, session, planner, base_url, model, backend, max_rounds, calibrated, score_threshold,
                    window],
            outputs=outputs, api_name="ask", show_progress="minimal",
        )
        slider.input(app.show_slice, inputs=[slider, session], outputs=[overlay], api_name="show_slice",
                     trigger_mode="always_last", show_progress="hidden")
        calibrated.change(_threshold_slider, inputs=[calibrated], outputs=[score_threshold], queue=False,
                          api_visibility="private")
        new_chat.click(app.new_chat, inputs=[session], outputs=outputs, api_name="new_chat", queue=False)
        # its bin icon; not an API endpoint
        chat.clear(app.new_chat, inputs=[session], outputs=outputs, api_visibility="private", queue=False)
    return demo, app


class RunningUi:
    """A served UI: its URL, its handlers, and ``close()`` (which removes every file of the run)."""

    def __init__(self, demo: gr.Blocks, app: ChatApp, server: Any, thread: threading.Thread | None, url: str) -> None:
        self.demo, self.app, self.server, self.thread, self.url = demo, app, server, thread, url

    def close(self) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=30)
        self.demo.close()
        self.app.shutdown()


class _Stop(BaseException):
    """SIGTERM or SIGINT, raised once uvicorn has shut down (it re-raises the signal it caught)."""


def _raise_stop(signum: int, frame: Any) -> None:
    raise _Stop(signum)


def _serve(config: UiConfig, pool: AgentPool | None, files: RunFiles, preload: bool) -> RunningUi:
    """Build the app and its uvicorn server (not started)."""
    import uvicorn
    from fastapi import FastAPI

    demo, app = build_app(config, pool, files)
    if preload:
        app.pool.agent(config.defaults)
    demo.queue(default_concurrency_limit=config.concurrency, max_size=config.queue_size)
    web = gr.mount_gradio_app(
        FastAPI(), demo, path="/",
        server_name=config.host, server_port=config.port,
        max_file_size=int(config.max_upload_mb * 1024 * 1024),
        auth=list(config.auth) or None,
        show_error=config.debug, ssr_mode=False, mcp_server=False, footer_links=["api"],
        run_history=False,  # never keep patients' images in the browser's storage
        # system fonts: the default theme fetches Google Fonts, which a closed network cannot reach
        theme=gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                                font_mono=["ui-monospace", "monospace"]),
    )
    if is_loopback(config.host) and not config.auth and not config.insecure:
        web = LoopbackHostOnly(web)  # no login: only this machine's own names (no DNS rebinding from a web page)
    # a bounded graceful shutdown: an open event stream must not keep SIGTERM from cleaning up
    server = uvicorn.Server(uvicorn.Config(web, host=config.host, port=config.port, log_level="warning",
                                           timeout_graceful_shutdown=10))
    host = f"[{config.host}]" if ":" in config.host else config.host
    return RunningUi(demo, app, server, None, f"http://{host}:{config.port}/")


def launch_app(config: UiConfig, pool: AgentPool | None = None, *, block: bool = True,
               preload: bool = False) -> RunningUi | None:
    """Serve the app (queued, with the upload limit) with uvicorn; ``preload`` builds the default Agent first.

    Served through ``gr.mount_gradio_app`` rather than ``Blocks.launch``: launch gives up when its
    3-second probe of the page times out, which happens on a busy CPU while the server is fine.
    With ``block``, the run's folder is removed however the server stops: normal exit, Ctrl+C or
    SIGTERM (uvicorn shuts down gracefully, then the signal ends ``server.run`` here); it returns
    None when a signal came before the server was up.
    """
    check_exposure(config.host, bool(config.auth), config.insecure)
    if not block:
        return _serve_in_background(config, pool, preload)
    return _serve_until_stopped(config, pool, preload)


def _serve_in_background(config: UiConfig, pool: AgentPool | None, preload: bool) -> RunningUi:
    """Start the server in a daemon thread and wait (up to 2 minutes) until it answers."""
    files = RunFiles(config.workdir)
    try:
        ui = _serve(config, pool, files, preload)
        ui.thread = threading.Thread(target=ui.server.run, name="medsam3-ui", daemon=True)
        ui.thread.start()
        deadline = time.monotonic() + 120
        while not ui.server.started:
            if not ui.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the UI server did not start on {ui.url}")
            time.sleep(0.05)
    except BaseException:
        files.remove()
        raise
    return ui


def _serve_until_stopped(config: UiConfig, pool: AgentPool | None, preload: bool) -> RunningUi | None:
    """Serve in this thread until the server exits or a signal stops it; the run's files go either way."""
    stop_signals = (signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.signal(sig, _raise_stop) for sig in stop_signals}  # also while the model loads
    files: RunFiles | None = None
    ui: RunningUi | None = None
    try:
        files = RunFiles(config.workdir)
        ui = _serve(config, pool, files, preload)
        print(f"MedSAM3 Agent UI on {ui.url} (Ctrl+C stops it)", flush=True)
        ui.server.run()  # uvicorn catches the signal, shuts down, restores _raise_stop and re-raises the signal
    except _Stop:
        print("stopping: removing the run's files", flush=True)
    finally:
        for sig in stop_signals:  # a second signal must not cut the clean-up short
            signal.signal(sig, signal.SIG_IGN)
        if ui is not None:
            ui.demo.close()
        if files is not None:
            files.remove()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return ui
