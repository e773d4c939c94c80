"""Record every MLLM request and reply of a run, and replay a run from its recording without a network.

A recording is a folder:

* ``recording.json``: the client settings the requests depend on (model, temperature, max_tokens,
  whether native tool calls were on at the start, the planner's coordinate convention);
* ``images/<sha256>.png``: every image sent, stored once by the sha256 of its bytes (these are the
  patient's pixels: the image, overlays, crops);
* ``requests/<request sha256>.<n>.json``: one exchange: the canonical request (the JSON body sent,
  each image's data URL replaced by ``image:sha256:<hex>``), and the endpoint's reply (its JSON body)
  or the error it ended in. ``n`` counts identical requests (0, 1, ...). No API key, header or
  endpoint URL is stored.

The request's key is the sha256 of its canonical JSON (sorted keys). A replay answers a request with
the recorded reply to the same key (the n-th identical request the n-th reply, the last one after
that); a request that is not in the recording is a ``ReplayMismatch`` naming where it differs from
the nearest recorded one: never a different answer. Each entry holds the sha256 of its own content,
so an entry edited after recording is refused too.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import threading
from collections.abc import Iterator
from itertools import takewhile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from agent.errors import PlannerError
from agent.mllm.base import ToolsUnsupported
from agent.mllm.openai_client import OpenAIClient

FORMAT = "medsam3-agent MLLM recording 1"
_DATA_URL = re.compile(r"data:image/([a-z0-9.+-]+);base64,", re.IGNORECASE)
_IMAGE_REF = "image:sha256:"
_ENTRY = re.compile(r"([0-9a-f]{64})\.(\d+)\.json")


class ReplayMismatch(PlannerError):
    """The replayed run asked something the recording does not hold (or the recording is broken)."""


class RecordingMeta(BaseModel):
    """The client settings a recorded run's requests depend on (a replay uses the same)."""

    format: str = FORMAT
    model: str
    temperature: float
    max_tokens: int
    native_tools: bool
    coordinate_convention: str | None = None


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def canonical_request(request: Any, images: dict[str, bytes] | None = None) -> Any:
    """``request`` with every image data URL replaced by ``image:sha256:<hex>`` (its bytes go to ``images``)."""
    if isinstance(request, dict):
        return {str(k): canonical_request(v, images) for k, v in request.items()}
    if isinstance(request, (list, tuple)):
        return [canonical_request(v, images) for v in request]
    if isinstance(request, str) and _DATA_URL.match(request):
        try:
            data = base64.b64decode(request.split(",", 1)[1], validate=True)
        except (binascii.Error, ValueError):
            return request  # not an image we could store: kept (and hashed) as sent
        digest = hashlib.sha256(data).hexdigest()
        if images is not None:
            images[digest] = data
        return _IMAGE_REF + digest
    return request


def request_key(canonical: Any) -> str:
    return _sha256(_canonical_json(canonical))


def _entry_hash(entry: dict[str, Any]) -> str:
    return _sha256(_canonical_json({k: v for k, v in entry.items() if k != "entry_sha256"}))


def _short(value: Any) -> str:
    if isinstance(value, str) and value.startswith(_IMAGE_REF):
        return f"image sha256 {value.removeprefix(_IMAGE_REF)[:12]}…"
    text = _canonical_json(value)
    return text if len(text) <= 60 else text[:57] + "…"


def first_difference(a: Any, b: Any, path: str = "") -> tuple[str, str] | None:
    """Where two JSON values first differ (keys sorted, lists in order) and how, or None when equal."""
    where = path or "the request"
    if type(a) is not type(b):
        return where, f"{_short(a)} vs {_short(b)}"
    if isinstance(a, dict):
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                return f"{path}.{key}".lstrip("."), "only in " + ("this run" if key in a else "the recording")
            found = first_difference(a[key], b[key], f"{path}.{key}".lstrip("."))
            if found:
                return found
        return None
    if isinstance(a, list):
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            found = first_difference(x, y, f"{path}[{i}]")
            if found:
                return found
        return None if len(a) == len(b) else (where, f"{len(a)} items vs {len(b)} recorded")
    return None if a == b else (where, f"{_short(a)} vs {_short(b)}")


def _closeness(a: dict[str, Any], b: dict[str, Any]) -> tuple[int, bool, int]:
    """How alike two requests are: leading messages in common, as many messages, other fields in common."""
    ours, theirs = a.get("messages", []), b.get("messages", [])
    lead = sum(1 for _ in takewhile(lambda pair: pair[0] == pair[1], zip(ours, theirs, strict=False)))
    return lead, len(ours) == len(theirs), sum(1 for k in a if k != "messages" and a.get(k) == b.get(k))


def _write_new(path: Path, data: bytes) -> bool:
    """Write ``path`` unless it exists (atomic for processes sharing the folder); False if it existed."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return True


class Recorder:
    """Writes a run's exchanges into a recording folder (thread- and process-safe: each entry is a new file).

    A folder that already holds a recording with the same settings is added to (a resumed benchmark);
    one with other settings is refused."""

    def __init__(self, folder: str | Path, meta: RecordingMeta) -> None:
        self.folder = Path(folder)
        self.meta = meta
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        for folder in (self.folder, self.folder / "images", self.folder / "requests"):
            folder.mkdir(exist_ok=True, mode=0o700)  # patient pixels: the owner's alone (before the umask)
        text = meta.model_dump_json(indent=1)
        path = self.folder / "recording.json"
        if not _write_new(path, text.encode()):
            try:
                stored = RecordingMeta.model_validate_json(path.read_text(encoding="utf-8"))
            except ValidationError:
                raise ValueError(f"{path} is not a recording's settings file; choose another folder") from None
            differ = [f"{k}: {v!r} -> {getattr(meta, k)!r}" for k, v in stored.model_dump().items()
                      if v != getattr(meta, k)]
            if differ:
                raise ValueError(f"{self.folder} holds a recording made with other settings ({'; '.join(differ)}); "
                                 "record into another folder")
        self._lock = threading.Lock()

    @classmethod
    def attach(cls, client: OpenAIClient, folder: str | Path, *, coordinate_convention: str | None = None,
               ) -> Recorder:
        """Record ``client``'s exchanges into ``folder`` from now on."""
        meta = RecordingMeta(model=client.model, temperature=client.temperature, max_tokens=client.max_tokens,
                             native_tools=client.native_tools, coordinate_convention=coordinate_convention)
        recorder = cls(folder, meta)
        client.recorder = recorder
        return recorder

    def save(self, request: dict[str, Any], *, response: dict[str, Any] | None = None,
             error: PlannerError | None = None) -> Path:
        images: dict[str, bytes] = {}
        canonical = canonical_request(request, images)
        key = request_key(canonical)
        for digest, data in images.items():
            _write_new(self.folder / "images" / f"{digest}.png", data)
        failure = None if error is None else {
            "kind": "tools_unsupported" if isinstance(error, ToolsUnsupported) else "planner_error",
            "message": str(error)}
        entry: dict[str, Any] = {"request_sha256": key, "request": canonical, "response": response, "error": failure}
        entry["entry_sha256"] = _entry_hash(entry)
        data = json.dumps(entry, ensure_ascii=False, default=str).encode()
        with self._lock:  # threads of one process; other processes are kept apart by O_EXCL
            n = 0
            while not _write_new(self.folder / "requests" / f"{key}.{n}.json", data):
                n += 1
        return self.folder / "requests" / f"{key}.{n}.json"


class Recording:
    """A recording folder read for replay: every entry checked against its hashes when it is opened."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        path = self.folder / "recording.json"
        if not path.is_file():
            raise ReplayMismatch(f"no recording at {self.folder} (it has no recording.json); make one with "
                                 "--record DIR (Agent(record=DIR))")
        try:
            self.meta = RecordingMeta.model_validate_json(path.read_text(encoding="utf-8"))
        except ValidationError:
            raise ReplayMismatch(f"{path} is not a recording's settings file") from None
        if self.meta.format != FORMAT:
            raise ReplayMismatch(f"{path}: unknown recording format {self.meta.format[:60]!r}")
        numbered: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        for n, entry in self._read_entries():
            numbered.setdefault(entry["request_sha256"], []).append((n, entry))
        self.entries = {key: [e for _, e in sorted(group, key=lambda p: p[0])] for key, group in numbered.items()}
        self._served: dict[str, int] = {}
        self._asked = 0
        self._lock = threading.Lock()

    def _read_entries(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """(n, entry) for every recorded request file, each checked against its hashes."""
        folder = self.folder / "requests"
        for name in sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []:
            match = _ENTRY.fullmatch(name)
            where = f"recording {self.folder}: requests/{name}"
            if match is None:
                raise ReplayMismatch(f"{where} is not a recorded request (name <sha256>.<n>.json)")
            try:
                entry = json.loads((folder / name).read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise ReplayMismatch(f"{where} is not valid JSON (cut off?)") from None
            key = match.group(1)
            if not isinstance(entry, dict) or entry.get("entry_sha256") != _entry_hash(entry) or \
                    entry.get("request_sha256") != key or request_key(entry.get("request")) != key:
                raise ReplayMismatch(f"{where} was changed after it was recorded (its content no longer matches "
                                     "its hash)")
            yield int(match.group(2)), entry

    def sha256(self) -> str:
        """One hash over the settings and every entry: what a benchmark's identity names a replay by."""
        lines = [_canonical_json(self.meta.model_dump())]
        lines += sorted(e["entry_sha256"] for group in self.entries.values() for e in group)
        return _sha256("\n".join(lines))

    def reply_to(self, request: dict[str, Any]) -> dict[str, Any]:
        """The recorded reply's JSON body; a recorded endpoint error is raised again."""
        canonical = canonical_request(request)
        key = request_key(canonical)
        with self._lock:
            self._asked += 1
            asked = self._asked
            group = self.entries.get(key)
            if not group:
                raise self._mismatch(canonical, key, asked)
            n = self._served.get(key, 0)
            self._served[key] = n + 1
        entry = group[min(n, len(group) - 1)]
        self._check_images(entry)
        failure = entry.get("error")
        if failure:
            error = ToolsUnsupported if failure.get("kind") == "tools_unsupported" else PlannerError
            raise error(str(failure.get("message", "")))
        return dict(entry.get("response") or {})

    def _check_images(self, entry: dict[str, Any]) -> None:
        refs = re.findall(re.escape(_IMAGE_REF) + r"([0-9a-f]{64})", _canonical_json(entry["request"]))
        for digest in dict.fromkeys(refs):
            path = self.folder / "images" / f"{digest}.png"
            if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
                raise ReplayMismatch(f"recording {self.folder}: images/{digest[:12]}….png is missing or was changed "
                                     "after it was recorded")

    def _mismatch(self, canonical: dict[str, Any], key: str, asked: int) -> ReplayMismatch:
        recorded = [group[0]["request"] for group in self.entries.values()]
        head = (f"replay: request {asked} of this run (sha256 {key[:12]}…) is not in the recording {self.folder} "
                f"({len(recorded)} recorded request(s))")
        if not recorded:
            return ReplayMismatch(head)
        nearest = max(recorded, key=lambda r: _closeness(canonical, r))
        where, how = first_difference(canonical, nearest) or ("the request", "?")
        return ReplayMismatch(f"{head}; the nearest recorded request differs at {where}: {how} (this run vs the "
                              "recording). The question, image, prompts, settings or the segmenter's masks differ "
                              "from the recorded run")


class ReplayClient(OpenAIClient):
    """An OpenAI-compatible client that answers from a recording: the same request building and reply
    parsing as a live run, no network."""

    def __init__(self, folder: str | Path) -> None:  # no super().__init__: there is no endpoint to reach
        self.recording = Recording(folder)
        meta = self.recording.meta
        self.base_url, self.model, self.timeout, self.max_retries = None, meta.model, 0.0, 0
        self.native_tools, self.temperature, self.max_tokens = meta.native_tools, meta.temperature, meta.max_tokens
        self.recorder = None

    @property
    def where(self) -> str:
        return f"the recording {self.recording.folder}"

    def _send(self, request: dict[str, Any]) -> dict[str, Any]:
        return self.recording.reply_to(request)
