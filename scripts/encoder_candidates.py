"""The image encoder's candidate runtimes side by side: accuracy against the PyTorch reference and speed.

Not shipped as a choice: this is how the runtimes that lost were measured (model card, "Why the others
lost"). Candidates: PyTorch fp32 (the reference), OpenVINO fp32 under several CPU configs (the
shipped one is LATENCY with the process's thread count), OpenVINO int8 from NNCF post-training
quantisation (``--int8``, needs ``pip install nncf``; calibrated on the shipped chest X-rays,
augmented, and drawn images, so no shared data is needed) and ``torch.compile`` (``--compile``).

Accuracy on the shipped examples plus ``--per-dataset`` val images of each dataset under ``--data``
(where present): relative L2 error of the embedding and the IoU of the concept and box masks that
PyTorch's decoders draw from it, against the reference embedding's. Speed: every candidate encodes the
same images in turn (round robin, the first image not counted), wall ms median / p90 and CPU seconds
(process time, less sensitive to other jobs on a shared machine). Run from the repository root:

    .venv/bin/python scripts/encoder_candidates.py --int8 --compile --data ../shared/data --per-dataset 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from segmenter.lite.backend import LiteBackend
from segmenter.lite.frame import letterbox
from segmenter.lite.model import BoxDecoder
from segmenter.lite.runtime import cache_root, import_openvino, litemedsam_checkpoint, part_folder

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = (("chest_xray_pa_radiopaedia_9171.jpg", "lung"),
            ("chest_xray_pa_wikimedia_pcp_cyst.jpg", "cardiomediastinum"))
OV_CONFIGS = {  # the first is what runtime.py ships
    "openvino fp32, LATENCY, 2 threads": {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 2},
    "openvino fp32, default config": {},
    "openvino fp32, THROUGHPUT": {"PERFORMANCE_HINT": "THROUGHPUT"},
    "openvino fp32, 1 stream, no pinning": {"NUM_STREAMS": 1, "INFERENCE_NUM_THREADS": 2,
                                            "ENABLE_CPU_PINNING": False},
}
Encode = Callable[[torch.Tensor], torch.Tensor]


def _augment(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A crop, maybe mirrored, with gamma, maybe a colour tint, and noise."""
    h, w = img.shape[:2]
    y0, x0 = rng.integers(0, h // 4), rng.integers(0, w // 4)
    y1, x1 = h - rng.integers(0, h // 4), w - rng.integers(0, w // 4)
    out = img[y0:y1, x0:x1].astype(np.float32)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    out = 255 * (out / 255) ** rng.uniform(0.6, 1.6)
    if rng.random() < 0.5:
        out = out * rng.uniform(0.5, 1.2, size=3)
    out = out + rng.normal(0, rng.uniform(0, 8), out.shape)
    return np.clip(out, 0, 255).astype(np.uint8)


def _drawn(rng: np.random.Generator) -> np.ndarray:
    """Blurred coloured ellipses on a dark ground, with noise."""
    s = 320
    img = np.full((s, s, 3), rng.uniform(0, 80, size=3), np.float32)
    for _ in range(rng.integers(2, 7)):
        centre = (int(rng.integers(0, s)), int(rng.integers(0, s)))
        axes = (int(rng.integers(10, 120)), int(rng.integers(10, 120)))
        cv2.ellipse(img, centre, axes, float(rng.uniform(0, 180)), 0, 360, rng.uniform(0, 255, 3).tolist(), -1)
    img = cv2.GaussianBlur(img, (0, 0), rng.uniform(1, 6))
    img += rng.normal(0, rng.uniform(2, 15), img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def calibration_set(n: int = 24) -> list[np.ndarray]:
    """The two shipped X-rays, then augmented copies of them and drawn images (every third)."""
    rng = np.random.default_rng(0)
    images = [np.asarray(Image.open(ROOT / "examples" / name).convert("RGB")) for name, _ in sorted(EXAMPLES)]
    out = [letterbox(i)[0][None] for i in images]
    while len(out) < n:
        src = _augment(images[len(out) % 2], rng) if len(out) % 3 else _drawn(rng)
        out.append(letterbox(src)[0][None])
    return out


def _ov(xml: Path, config: dict) -> Encode:
    ov = import_openvino()

    compiled = ov.Core().compile_model(str(xml), "CPU", config)
    request = compiled.create_infer_request()

    def encode(x: torch.Tensor) -> torch.Tensor:
        out = request.infer({0: np.ascontiguousarray(x.numpy(), dtype=np.float32)})
        return torch.from_numpy(np.array(out[compiled.outputs[0]], copy=True))

    return encode


def _fp32_folder() -> Path:
    """The shipped OpenVINO encoder's cache folder (runtime.part_folder)."""
    return part_folder("image encoder", "openvino", [litemedsam_checkpoint()])


def _int8(fp32_xml: Path, module: torch.nn.Module) -> Path:
    """NNCF int8 PTQ of the fp32 IR (transformer preset: SmoothQuant, fast bias correction), made once."""
    import nncf
    ov = import_openvino()

    target = cache_root() / "image-encoder-int8" / _fp32_folder().name / f"nncf{nncf.__version__}" / "model.xml"
    if not target.is_file():
        print(f"quantising to int8 with NNCF (minutes); cached in {target.parent}", file=sys.stderr)
        quantized = nncf.quantize(ov.Core().read_model(str(fp32_xml)), nncf.Dataset(calibration_set()),
                                  subset_size=24, model_type=nncf.ModelType.TRANSFORMER)
        ov.save_model(quantized, str(target), compress_to_fp16=False)
    return target


def candidates(backend: LiteBackend, configs: int, int8: bool, compile_: bool) -> dict[str, Encode]:
    module = backend.net.image_encoder
    backend.ready()  # converts the encoder where it is not cached yet
    fp32_xml = _fp32_folder() / "model.xml"
    encoders: dict[str, Encode] = {
        "pytorch fp32 (reference)": lambda x: torch.from_numpy(backend.reference_encoder(x.numpy()))}
    encoders |= {name: _ov(fp32_xml, config) for name, config in list(OV_CONFIGS.items())[:configs]}
    if int8:
        encoders["openvino int8 (NNCF PTQ)"] = _ov(_int8(fp32_xml, module), OV_CONFIGS[next(iter(OV_CONFIGS))])
    if compile_:
        start = time.perf_counter()
        compiled = torch.compile(module.to(memory_format=torch.channels_last))
        with torch.no_grad():
            compiled(torch.rand(1, 3, 256, 256).to(memory_format=torch.channels_last))
        print(f"torch.compile: first call (the compile) took {time.perf_counter() - start:.1f} s", file=sys.stderr)
        encoders["torch.compile (inductor, channels-last)"] = lambda x: compiled(
            x.to(memory_format=torch.channels_last))
    return encoders


def cases(data: Path | None, per_dataset: int) -> list[tuple[np.ndarray, str]]:
    out = [(np.asarray(Image.open(ROOT / "examples" / name).convert("RGB")), concept) for name, concept in EXAMPLES]
    for manifest in sorted(data.glob("*/manifest.jsonl")) if data and data.is_dir() else []:
        rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]
        rows = [r for r in rows if r.get("split") == "val" and r.get("masks") and "image" in r][:per_dataset]
        for r in rows:
            if str(r["image"]).lower().endswith((".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")):
                image = np.asarray(Image.open(manifest.parent / r["image"]).convert("RGB"))
                out.append((image, next(iter(r["masks"]))))
    return out


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


def accuracy(backend: LiteBackend, encoders: dict[str, Encode], images: list[tuple[np.ndarray, str]]) -> dict:
    """Per candidate: the largest embedding error and the smallest concept / box mask IoU over the images."""
    worst = {name: {"rel_err": 0.0, "iou_concept": 1.0, "iou_box": 1.0} for name in encoders}
    box = torch.tensor([[[40.0, 40.0, 216.0, 216.0]]])
    box_decoder = BoxDecoder(backend.net)  # LiteMedSAM's own box path, as the segmenter runs it
    with torch.no_grad():
        for image, concept in images:
            x, text = torch.from_numpy(letterbox(image)[0][None]), torch.from_numpy(backend._text(concept))
            ref = encoders["pytorch fp32 (reference)"](x)
            masks = (backend.net.decode_concept(ref, text)[0] > 0, box_decoder(ref, box)[0] > 0)
            for name, encode in encoders.items():
                emb = encode(x)
                w = worst[name]
                w["rel_err"] = max(w["rel_err"], float((emb - ref).norm() / ref.norm()))
                w["iou_concept"] = min(w["iou_concept"], _iou(backend.net.decode_concept(emb, text)[0] > 0, masks[0]))
                w["iou_box"] = min(w["iou_box"], _iou(box_decoder(emb, box)[0] > 0, masks[1]))
    return worst


def speed(encoders: dict[str, Encode], images: list[tuple[np.ndarray, str]], n: int) -> dict:
    """Round robin over the candidates on the same images; the first image warms up and is not counted."""
    xs = [torch.from_numpy(letterbox(image)[0][None]) for image, _ in images]
    wall: dict[str, list[float]] = {name: [] for name in encoders}
    cpu: dict[str, list[float]] = {name: [] for name in encoders}
    with torch.no_grad():
        for i in range(n + 1):
            for name, encode in encoders.items():
                start, start_cpu = time.perf_counter(), time.process_time()
                encode(xs[i % len(xs)])
                if i:
                    wall[name].append((time.perf_counter() - start) * 1000)
                    cpu[name].append(time.process_time() - start_cpu)
    p90 = max(0, -(-9 * n // 10) - 1)
    return {name: {"ms_median": statistics.median(v), "ms_p90": sorted(v)[p90],
                   "cpu_s_median": statistics.median(cpu[name])} for name, v in wall.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="shared data root (optional): val images too")
    parser.add_argument("--per-dataset", type=int, default=1)
    parser.add_argument("--encodes", type=int, default=10, help="timed encodes per candidate")
    parser.add_argument("--configs", type=int, default=len(OV_CONFIGS), help="how many OpenVINO configs to time")
    parser.add_argument("--int8", action="store_true", help="add OpenVINO int8 from NNCF (pip install nncf)")
    parser.add_argument("--compile", action="store_true", help="add torch.compile (inductor)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    backend = LiteBackend(encoder="openvino")
    encoders = candidates(backend, max(1, args.configs), args.int8, args.compile)
    images = cases(args.data, args.per_dataset)
    worst, times = accuracy(backend, encoders, images), speed(encoders, images, args.encodes)
    print(f"{len(images)} images for accuracy, {args.encodes} timed encodes each (round robin, same images)")
    print("| runtime | ms median / p90 | CPU s median | max rel. error | min IoU concept / box |")
    print("|---|---|---|---|---|")
    for name in encoders:
        t, w = times[name], worst[name]
        print(f"| {name} | {t['ms_median']:.0f} / {t['ms_p90']:.0f} | {t['cpu_s_median']:.2f} | {w['rel_err']:.2g} "
              f"| {w['iou_concept']:.3f} / {w['iou_box']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
