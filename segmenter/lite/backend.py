"""MedSAM3-Lite backend: the offline default. CPU, weights shipped with the install.

A prompt is NumPy around four parts of the network (segmenter/lite/runtime.py): the image encoder, the
presence gate, the concept decoder (one phrase) and LiteMedSAM's box decoder. On CPU each part is a cached
OpenVINO conversion, so questions are answered without importing PyTorch. The PyTorch network
(segmenter/lite/model.py) is built only where it is needed: to convert a part the first time, for the reference
path (``reference_path``, bench), where a runtime fails, and for the rare prompt of a concept with boxes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segmenter.base import EmbeddingCache, SegmenterBackend, image_key
from segmenter.catalog import Concept, Refine, load_catalog
from segmenter.lite.frame import MODEL_SIZE, Letterbox, letterbox, sigmoid, tile_windows, unletterbox_logits
from segmenter.lite.parts import PartSpec, build_part, part_spec
from segmenter.lite.refine import refine_choice, refine_drawn, refine_mode
from segmenter.lite.runtime import Run, resolve_choice
from segmenter.lite.thresholds import DEFAULT_THRESHOLD, load_thresholds
from segmenter.postprocess import split_instances
from segmenter.text import shared_embedder
from segmenter.types import Instance, Prompt, SegmentationResult

if TYPE_CHECKING:
    from segmenter.lite.model import MedSAM3Lite

WEIGHTS_FILE = "medsam3_lite.safetensors"


def default_weights_path() -> Path:
    return Path(str(resources.files("segmenter.lite") / "weights" / WEIGHTS_FILE))


def expert_weights_path(main: Path, expert: str) -> Path:
    """Where an expert's weights live: a train-lite output folder named after it, beside the main weights."""
    return main.parent / expert / main.name


def _missing(path: Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"MedSAM3-Lite concept weights not found at {path}. Reinstall medsam3-agent, or train them with "
        "`medsam3-agent train-lite --data ../shared/data` and pass --weights.")


def weights_header(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a safetensors file, read from its header only; a ValueError where it is not one."""
    from safetensors import safe_open

    if not path.is_file():
        raise _missing(path)
    try:
        with safe_open(str(path), framework="np") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - not a dict
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"{path}: not a valid safetensors weight file ({exc})") from exc


def fit_errors(path: Path, expected: dict[str, tuple[int, ...]], got: dict[str, tuple[int, ...]]) -> None:
    """A ValueError naming what does not fit where ``got`` (a weights file's tensors) is not ``expected``."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    bad_shape = [k for k in expected if k in got and tuple(got[k]) != tuple(expected[k])]
    if missing or unexpected or bad_shape:
        raise ValueError(
            f"{path}: weights do not fit MedSAM3-Lite (missing {missing[:3]}, unexpected {unexpected[:3]}, "
            f"wrong shape {bad_shape[:3]})")


def check_weights(path: Path) -> None:
    """Refuse, before any network is built, a weights file that is absent, corrupt or of another model: its
    tensors must be those of the shipped weights (the same network), by name and shape."""
    got = weights_header(path)
    shipped = default_weights_path()
    if shipped.is_file() and path.resolve() != shipped.resolve():
        fit_errors(path, weights_header(shipped), got)


def load_model(weights: str | Path | None = None, shared: MedSAM3Lite | None = None) -> MedSAM3Lite:
    """The PyTorch network: LiteMedSAM from its package + our concept weights (safetensors). Clear error if missing.

    ``shared``: a loaded network whose frozen LiteMedSAM parts (encoder, prompt encoder, box decoder) the new
    one uses as they are, so an expert's weights (``expert_weights_path``) cost only their trained parts."""
    from safetensors.torch import load_file

    from segmenter.lite.model import build_network, load_litemedsam_weights

    path = Path(weights) if weights is not None else default_weights_path()
    weights_header(path)  # absent or corrupt: its own clear error
    net = build_network()
    if shared is None:
        load_litemedsam_weights(net)
    else:  # every concept part is in the weights file (checked below); the frozen parts are shared's
        net.image_encoder, net.prompt_encoder, net.mask_decoder = (
            shared.image_encoder, shared.prompt_encoder, shared.mask_decoder)
    state = load_file(str(path))
    expected = net.trainable_state_dict()
    fit_errors(path, {k: tuple(v.shape) for k, v in expected.items()}, {k: tuple(v.shape) for k, v in state.items()})
    net.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    return net.eval()


def _holds(mask: np.ndarray, points: list[tuple[float, float]]) -> list[bool]:
    """Whether each (x, y) point of the 256 frame falls inside the mask."""
    return [bool(mask[min(int(y), 255), min(int(x), 255)]) for x, y in points]


Embedded = tuple[np.ndarray, Letterbox]  # (1, 256, 64, 64) embeddings and the image's place in the frame


@dataclass
class _Encoded:
    """Embeddings of one image: the whole image, and native-resolution tiles made on demand."""

    image: np.ndarray
    full: Embedded | None = None
    pending: Future | None = None  # the whole-image encode, started in the background by ``prefetch``
    tiles: dict[int, list[tuple[tuple[int, int, int, int], np.ndarray, Letterbox]]] = field(default_factory=dict)


class LiteBackend(SegmenterBackend):
    name = "medsam3-lite"

    def __init__(
        self,
        weights: str | Path | None = None,
        device: str = "cpu",
        presence_threshold: float | None = None,
        mask_threshold: float = 0.5,
        min_area: int = 16,
        bf16: bool | None = None,
        cache_images: int = 4,
        cache_mb: float = 512.0,
        encoder: str | None = None,
        refine: str | None = None,
    ) -> None:
        """``encoder``: the parts' runtime, ``auto`` (default, or ``MEDSAM3_ENCODER``), ``torch``, ``openvino`` or
        ``onnx`` (segmenter/lite/runtime.py). ``refine``: how concept masks are drawn, ``catalog`` (default, or
        ``MEDSAM3_REFINE``: each concept's own), ``none``, ``box``, ... (refine.py). ``bf16``: autocast of the
        PyTorch parts (default: where the CPU has bf16 units, precision.py)."""
        self.device = str(device)
        self.weights_path = Path(weights) if weights is not None else default_weights_path()
        check_weights(self.weights_path)
        # None: each concept's threshold calibrated for its weights (thresholds.py), else 0.5
        self.presence_threshold = presence_threshold
        self.concept_thresholds = load_thresholds(self.weights_path)
        self.mask_threshold = mask_threshold
        self.min_area = min_area
        self.refine = refine_choice(refine)
        self._bf16 = bf16
        self._choice = resolve_choice(encoder)
        self.catalog = load_catalog()
        # PyTorch networks, built on first need: "" the main weights', else an expert's (catalog ``expert``: a
        # folder beside the main weights; one whose folder is absent is served by the main weights)
        self._nets: dict[str, MedSAM3Lite] = {}
        self._nets_lock = threading.RLock()
        self._expert_thresholds: dict[str, dict[str, float]] = {}
        shared_embedder().load()  # load the text model now, so prompt timings measure prompts only
        # images with their embeddings (4 MB each, more with tiles), bounded by bytes and by count
        self._cache_limits = (int(cache_mb * 2**20), cache_images)
        self._cache: EmbeddingCache[_Encoded] = EmbeddingCache(self._cache_limits[0], max_items=cache_images)
        self._current: _Encoded | None = None
        self._encode_count = 0
        self._last_encode_ms = 0.0
        self._start_parts()

    # --- the PyTorch network, built where needed ------------------------------------
    def _net(self, expert: str = "") -> MedSAM3Lite:
        """The PyTorch network of the main weights ("") or of ``expert`` (sharing the main one's frozen parts)."""
        with self._nets_lock:
            if expert not in self._nets:
                if expert:
                    net = load_model(expert_weights_path(self.weights_path, expert), shared=self._net(""))
                else:
                    net = load_model(self.weights_path)
                self._nets[expert] = net.to(self.device)
            return self._nets[expert]

    @property
    def net(self) -> MedSAM3Lite:
        """The main weights' PyTorch network (built on first use: the fast path does not need it)."""
        return self._net("")

    def _use_bf16(self) -> bool:
        if self._bf16 is None:
            import torch

            from segmenter.lite.precision import fast_bf16

            self._bf16 = fast_bf16(torch.device(self.device))
        return self._bf16

    # --- the parts -------------------------------------------------------------------
    def _start_parts(self) -> None:
        """Load (or convert, the first time) the encoder, the main weights' gate and concept decoder in a background
        thread, so the constructor returns at once; the first prompt waits for what it needs. The box decoder and
        the experts' parts load on their first use."""
        self._reference = False  # inside reference_path(): PyTorch for every part
        self._reference_parts: dict[str, Run] = {}
        self._load_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medsam3-load")
        self._prefetch_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medsam3-prefetch")
        self._parts: dict[str, Future] = {}
        self._parts_lock = threading.Lock()
        for key in ("encoder", "gate", "draw"):
            self._part_future(key)

    def _part_future(self, key: str) -> Future:
        """The build of part ``key`` ("encoder", "box", "gate[/expert]", "draw[/expert]"), started once."""
        with self._parts_lock:
            if key not in self._parts:
                self._parts[key] = self._load_pool.submit(self._build_part, key)
            return self._parts[key]

    def _spec(self, key: str) -> PartSpec:
        """(what, source files, PyTorch module factory, test input factory) of part ``key``."""
        kind, _, expert = key.partition("/")
        weights = expert_weights_path(self.weights_path, expert) if expert else self.weights_path

        def module() -> Any:
            from segmenter.lite.model import BoxDecoder, DrawPart, GatePart

            net = self._net(expert)
            return {"encoder": lambda: net.image_encoder, "box": lambda: BoxDecoder(net),
                    "gate": lambda: GatePart(net), "draw": lambda: DrawPart(net)}[kind]()

        return part_spec(kind, self.device, module, weights)

    def _build_part(self, key: str) -> tuple[str, Run]:
        what, sources, module, test = self._spec(key)
        return build_part(self._choice, self.device, what, sources, module, test, self._use_bf16)

    def _part(self, key: str) -> Run:
        if self._reference:
            if key not in self._reference_parts:
                from segmenter.lite.convert import torch_runner

                self._reference_parts[key] = torch_runner(self._spec(key)[2](), self._use_bf16())
            return self._reference_parts[key]
        run: Run = self._part_future(key).result()[1]
        return run

    def ready(self) -> None:
        """Wait until the encoder and the main weights' gate and concept decoder are loaded (bench times the load)."""
        for key in ("encoder", "gate", "draw"):
            self._part_future(key).result()

    def runtime_of(self, key: str) -> str:
        """The runtime part ``key`` runs on (``torch`` where it fell back to PyTorch)."""
        return str(self._part_future(key).result()[0])

    @property
    def encoder_name(self) -> str:
        """The image encoder's runtime (``torch`` where it fell back to PyTorch)."""
        return self.runtime_of("encoder")

    def encoder(self, x: np.ndarray) -> np.ndarray:
        """(1, 3, 256, 256) letterboxed image -> (1, 256, 64, 64) embeddings, on the current path."""
        return self._part("encoder")(x)[0]

    def reference_encoder(self, x: np.ndarray) -> np.ndarray:
        """The same on PyTorch, the reference (bench and the accuracy test compare the two)."""
        with self.reference_path():
            return self.encoder(x)

    @contextmanager
    def reference_path(self) -> Iterator[None]:
        """PyTorch for every part while inside, with an embedding cache of its own (so nothing the fast path
        encoded is reused): `medsam3-agent bench --dice` compares the two paths."""
        saved = (self._reference, self._cache, self._current)
        self._reference = True
        self._cache, self._current = EmbeddingCache(self._cache_limits[0], max_items=self._cache_limits[1]), None
        try:
            yield
        finally:
            self._reference, self._cache, self._current = saved

    @staticmethod
    def _key(kind: str, expert: str) -> str:
        return f"{kind}/{expert}" if expert else kind

    def _presence(self, emb: np.ndarray, text: np.ndarray, expert: str = "") -> float:
        """The presence gate's probability that the phrase's concept is in the image."""
        return float(self._part(self._key("gate", expert))(emb, text)[0].reshape(-1)[0])

    def _decode_concept(self, emb: np.ndarray, text: np.ndarray, expert: str = "") -> np.ndarray:
        """Mask logits (1, 1, 256, 256) for one phrase without a box, by the main weights or ``expert``'s."""
        return self._part(self._key("draw", expert))(emb, text)[0]

    def _decode_boxes(self, emb: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 1, 256, 256) mask logits and (N, 1) IoU for N boxes (N, 1, 4): one box per call (fixed shapes)."""
        run = self._part("box")
        outs = [run(emb, boxes[i : i + 1]) for i in range(len(boxes))]
        return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])

    def _decode_concept_in_boxes(self, emb: np.ndarray, text: np.ndarray, boxes: np.ndarray,
                                 expert: str) -> np.ndarray:
        """(N, 1, 256, 256) logits of one phrase within each of N boxes: PyTorch (a rare prompt, no fixed shape)."""
        import torch

        net = self._net(expert)
        device = torch.device(self.device)
        with torch.no_grad():
            logits = net.decode_concept(torch.from_numpy(emb).to(device),
                                        torch.from_numpy(text).to(device).expand(len(boxes), -1),
                                        torch.from_numpy(boxes).to(device))[0]
        return logits.float().cpu().numpy()

    # --- images ------------------------------------------------------------------
    def _encode(self, image: np.ndarray) -> Embedded:
        start = time.perf_counter()
        encoded = self._embed(image)
        self._encode_count += 1
        self._last_encode_ms += (time.perf_counter() - start) * 1000
        return encoded

    def _embed(self, image: np.ndarray) -> Embedded:
        x, box = letterbox(image, MODEL_SIZE)
        return self.encoder(x[None]), box

    def prefetch(self, image: np.ndarray) -> None:
        """Start encoding ``image`` in a background thread (the runtimes release the GIL); a later ``set_image`` of
        the same pixels takes the result, waiting for it if unfinished. Volume and eval loops call it with the next
        slice or image, so its encode overlaps the current one's decoding."""
        key = image_key(image)
        if self._cache.get(key) is not None:
            return
        encoded = _Encoded(image=image)
        encoded.pending = self._prefetch_pool.submit(self._embed, image)
        self._cache.put(key, encoded)

    def set_image(self, image: np.ndarray) -> str:
        key = image_key(image)
        encoded = self._cache.get(key)
        if encoded is None:
            encoded = _Encoded(image=image)
            self._cache.put(key, encoded)
        self._current = encoded
        return key

    def _full(self, enc: _Encoded) -> Embedded:
        if enc.full is None and enc.pending is not None:  # prefetched: the encode counts as long as it is waited for
            start = time.perf_counter()
            enc.full, enc.pending = enc.pending.result(), None
            self._encode_count += 1
            self._last_encode_ms += (time.perf_counter() - start) * 1000
        if enc.full is None:
            enc.full = self._encode(enc.image)
            self._cache.fit()  # the entry just grew
        return enc.full

    def _tiles(self, enc: _Encoded, tile: int) -> list[tuple[tuple[int, int, int, int], np.ndarray, Letterbox]]:
        if tile not in enc.tiles:
            h, w = enc.image.shape[:2]
            enc.tiles[tile] = [
                (win, *self._encode(enc.image[win[0] : win[2], win[1] : win[3]])) for win in tile_windows(h, w, tile)
            ]
            self._cache.fit()
        return enc.tiles[tile]

    # --- prompts -----------------------------------------------------------------
    def concepts(self) -> list[str]:
        return self.catalog.names

    def info(self) -> dict[str, Any]:
        experts = sorted({name for c in self.catalog.concepts for name in c.experts if self._has_expert(name)})
        return {**super().info(), "device": self.device, "model": "MedSAM3-Lite (LiteMedSAM + concept head)",
                "encoder": self.encoder_name, "experts": experts}

    def _has_expert(self, name: str) -> bool:
        return expert_weights_path(self.weights_path, name).is_file()

    def _expert_name(self, concept: Concept | None, modality: str | None = None) -> str:
        """The expert that segments ``concept`` on an image of ``modality`` ("" for the main weights): the
        concept's expert for that modality if it is installed, else its own if installed."""
        if concept is None:
            return ""
        for name in (concept.expert_for(modality), concept.expert):
            if name and self._has_expert(name):
                return name
        return ""

    def _thresholds(self, expert: str) -> dict[str, float]:
        """Calibrated presence thresholds of the main weights ("") or of ``expert``'s."""
        if not expert:
            return self.concept_thresholds
        with self._nets_lock:
            if expert not in self._expert_thresholds:
                self._expert_thresholds[expert] = load_thresholds(expert_weights_path(self.weights_path, expert))
            return self._expert_thresholds[expert]

    def segment(self, prompt: Prompt, *, presence_threshold: float | None = None) -> SegmentationResult:
        """``presence_threshold``: this call's, else the backend's own (a shared backend is never changed)."""
        if self._current is None:
            raise RuntimeError("no image set: call set_image(image) first")
        enc = self._current
        self._last_encode_ms = 0.0
        start = time.perf_counter()
        if prompt.concept is not None:
            gate = self.gate(prompt.concept, prompt.modality) if presence_threshold is None else presence_threshold
            prob, presence, refine = self._concept_prob(enc, prompt, prompt.concept, gate)
            instances = self._instances(prob, presence) if prob is not None else []
        else:
            instances, presence, refine = self._geometry_instances(enc, prompt), 1.0, "none"
        total = (time.perf_counter() - start) * 1000
        h, w = enc.image.shape[:2]
        return SegmentationResult(
            prompt=prompt,
            instances=instances,
            presence=presence,
            image_size=(h, w),
            backend=self.name,
            timings_ms={"encode": self._last_encode_ms, "decode": total - self._last_encode_ms},
            refine=refine,
        )

    def gate(self, phrase: str, modality: str | None = None) -> float:
        """The presence threshold for ``phrase`` (on an image of ``modality``, where known): the backend's own if
        set, else its concept's calibrated one, from the weights that segment it."""
        if self.presence_threshold is not None:
            return self.presence_threshold
        concept = self.catalog.get(phrase)
        thresholds = self._thresholds(self._expert_name(concept, modality))
        return thresholds.get(concept.name if concept else phrase, DEFAULT_THRESHOLD)

    def _instances(self, prob: np.ndarray, presence: float) -> list[Instance]:
        return split_instances(prob, presence=presence, mask_threshold=self.mask_threshold, min_area=self.min_area)

    def _text(self, phrase: str) -> np.ndarray:
        return shared_embedder().embed([phrase])

    def _concept_prob(self, enc: _Encoded, prompt: Prompt, phrase: str,
                      gate: float) -> tuple[np.ndarray | None, float, Refine]:
        """Probability map at image size, presence probability and the refine mode that drew the map (every
        part of it: else "none") for the prompt's concept ``phrase`` (+ box: not refined). Presence comes
        first: below ``gate`` no map is drawn (None, "none"), as no mask would be kept; a decode and its box
        refine are most of a prompt's time, and most slices of a volume lack most organs."""
        text = self._text(phrase)
        concept = self.catalog.get(phrase)
        expert = self._expert_name(concept, prompt.modality)
        h, w = enc.image.shape[:2]
        tile = concept.tile if concept is not None else None
        if tile and max(h, w) > tile and not prompt.boxes:
            tiles = self._tiles(enc, tile)
            presence = max(self._presence(emb, text, expert) for _, emb, _ in tiles)
            if presence < gate:
                return None, presence, "none"
            prob = np.zeros((h, w), dtype=np.float32)
            modes: set[Refine] = set()
            for (y0, x0, y1, x1), emb, box in tiles:
                logits, mode = self._refined(self._decode_concept(emb, text, expert), emb, box, concept)
                modes.add(mode)
                tile_prob = sigmoid(unletterbox_logits(logits, box))[0]
                prob[y0:y1, x0:x1] = np.maximum(prob[y0:y1, x0:x1], tile_prob)
            return prob, presence, modes.pop() if len(modes) == 1 else "none"
        emb, box = self._full(enc)
        presence = self._presence(emb, text, expert)
        if presence < gate:
            return None, presence, "none"
        boxes = self._model_boxes(prompt, box)
        if boxes is None:
            logits, mode = self._refined(self._decode_concept(emb, text, expert), emb, box, concept)
            return sigmoid(unletterbox_logits(logits, box))[0], presence, mode
        # concept + box(es): one decode per box, union of the results
        logits = self._decode_concept_in_boxes(emb, text, boxes, expert)
        return sigmoid(unletterbox_logits(logits, box)).max(axis=0), presence, "none"

    def _refined(self, logits: np.ndarray, emb: np.ndarray, box: Letterbox,
                 concept: Concept | None) -> tuple[np.ndarray, Refine]:
        """The concept's mask logits as its refine mode draws them (segmenter/lite/refine.py), and that mode
        ("none" where it drew nothing: components under refine.MIN_AREA only)."""
        mode = refine_mode(self.refine, concept)
        return refine_drawn(logits, mode, lambda b: self._decode_boxes(emb, b)[0], box.new_size, self.mask_threshold)

    @staticmethod
    def _model_boxes(prompt: Prompt, box: Letterbox) -> np.ndarray | None:
        if not prompt.boxes:
            return None
        return np.array([b.as_list() for b in prompt.boxes], dtype=np.float32)[:, None, :] * np.float32(box.scale)

    def _geometry_instances(self, enc: _Encoded, prompt: Prompt) -> list[Instance]:
        emb, box = self._full(enc)
        boxes = self._model_boxes(prompt, box)
        if boxes is None:
            return self._click_instances(emb, box, prompt)
        logits, iou = self._decode_boxes(emb, boxes)
        results: list[Instance] = []
        for i in range(len(boxes)):  # one object per box
            results += self._geometry_to_instances(logits[i : i + 1], float(iou[i, 0]), box)
        return results

    # Box sides (fractions of the model frame) tried around a click, small to large.
    CLICK_BOX_SIDES = (0.12, 0.25, 0.45)

    def _click_instances(self, emb: np.ndarray, box: Letterbox, prompt: Prompt) -> list[Instance]:
        """Clicks -> one object. LiteMedSAM was trained on boxes only (its point output is nearly
        empty), so each positive click seeds boxes of a few sizes; each mask is re-boxed once
        around the part that holds the click; the best-scoring mask that holds every positive
        click and no negative one wins."""
        pos = [(p.x * box.scale, p.y * box.scale) for p in prompt.points if p.positive]
        neg = [(p.x * box.scale, p.y * box.scale) for p in prompt.points if not p.positive]
        if not pos:
            raise ValueError("point prompts need at least one positive (foreground) point")
        nh, nw = box.new_size
        xs, ys = [x for x, _ in pos], [y for _, y in pos]
        best: tuple[float, np.ndarray] | None = None
        for side in self.CLICK_BOX_SIDES:
            half = side * MODEL_SIZE / 2
            seed = [max(0, min(xs) - half), max(0, min(ys) - half), min(nw, max(xs) + half), min(nh, max(ys) + half)]
            for _ in range(2):
                logits, iou = self._decode_boxes(emb, np.array([[seed]], dtype=np.float32))
                mask = logits[0, 0] > 0
                if not all(_holds(mask, pos)) or any(_holds(mask, neg)):
                    break
                score = float(iou[0, 0])
                if best is None or score > best[0]:
                    best = (score, logits)
                yy, xx = np.nonzero(mask)
                seed = [float(xx.min()), float(yy.min()), float(xx.max() + 1), float(yy.max() + 1)]
        if best is None:
            return []
        return self._geometry_to_instances(best[1], best[0], box)

    def _geometry_to_instances(self, logits: np.ndarray, iou: float, box: Letterbox) -> list[Instance]:
        prob = sigmoid(unletterbox_logits(logits, box))[0]
        binary = prob > self.mask_threshold
        if not binary.any():
            return []
        # a box/point prompt names one object: keep it whole, scored by SAM's IoU estimate
        return [Instance.from_mask(binary, float(np.clip(iou, 0.0, 1.0)))]
