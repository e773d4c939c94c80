"""The fast image encoder and concept decoder (OpenVINO on CPU) against the PyTorch reference, and fallbacks.

Masks are compared in the model's 256 frame on the shipped chest X-rays (always present) and on a
few real shared val images (where present): the same decoder on both embeddings must give the
same masks (IoU >= 0.98). Timings are never asserted here; `medsam3-agent bench` prints them.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import val_rows
from PIL import Image

from segmenter.lite.fast_encoder import CACHE_ENV, build_encoder, resolve_choice, weights_hash
from segmenter.lite.model import letterbox

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
    if backend.encoder_name == "torch" and backend.concept_decoder_fast() is backend.box_decoder_fast is None:
        pytest.skip("no fast encoder runtime on this machine (the segmenter runs the PyTorch reference)")
    for path, concept in _cases():
        x, _ = letterbox(np.asarray(Image.open(path).convert("RGB")))
        fast, reference = backend.encoder(x[None]), backend.reference_encoder(x[None])
        text = backend._text(concept)
        box = torch.tensor([[[40.0, 40.0, 216.0, 216.0]]])  # a box prompt too: LiteMedSAM's own decoder
        with torch.no_grad():  # the fast path end to end (its concept decoder too) against PyTorch's
            masks = [(backend._decode_concept(fast, text) > 0, backend._decode_boxes(fast, box)[0] > 0),
                     (backend.net.decode_concept(reference, text)[0] > 0,
                      backend.net.decode_geometry(reference, boxes=box)[0] > 0)]
        for kind, a, b in zip(("concept", "box"), masks[0], masks[1], strict=True):
            assert b.any(), f"{path.name}: the reference {kind} mask is empty, nothing compared"
            assert _iou(a.numpy(), b.numpy()) >= 0.98, f"{path.name} {concept} {kind}"


def test_choice_comes_from_the_argument_then_the_environment(monkeypatch):
    monkeypatch.setenv("MEDSAM3_ENCODER", "Torch")
    assert resolve_choice() == "torch" and resolve_choice("openvino") == "openvino"
    monkeypatch.delenv("MEDSAM3_ENCODER")
    assert resolve_choice() == "auto"
    with pytest.raises(ValueError, match="choose auto, torch, openvino, onnx"):
        resolve_choice("tensorrt")


def test_a_runtime_that_cannot_convert_falls_back_to_torch_with_one_line(segmenter, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(CACHE_ENV, str(blocker / "cache"))  # the cache cannot be made under a file
    module = segmenter.backend.net.image_encoder
    name, _ = build_encoder(module, torch.device("cpu"), "openvino")
    assert name == "torch"
    warning = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warning) == 1 and "openvino image encoder unavailable" in warning[0] and "using PyTorch" in warning[0]


def test_the_cache_key_follows_the_weights():
    a, b = torch.nn.Linear(4, 2), torch.nn.Linear(4, 2)
    b.load_state_dict(a.state_dict())
    assert weights_hash(a) == weights_hash(b)
    with torch.no_grad():
        b.bias[0] += 1e-3
    assert weights_hash(a) != weights_hash(b)


@pytest.mark.parametrize(("runtime", "package", "label"), [("openvino", "openvino", "OpenVINO"),
                                                           ("onnx", "onnxruntime", "ONNX Runtime")])
def test_a_conversion_is_made_once_per_weights_and_reused(runtime, package, label, tmp_path, monkeypatch, capsys):
    pytest.importorskip(package)  # onnxruntime is optional
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    module = torch.nn.Conv2d(3, 8, 3, padding=1).eval()  # small, so converting it takes a second
    x = torch.rand(1, 3, 256, 256)

    def build() -> tuple[str, torch.Tensor, str]:
        name, encode = build_encoder(module, torch.device("cpu"), runtime)
        return name, encode(x), capsys.readouterr().err

    name, out, err = build()
    assert name == runtime and f"converting image encoder for {label} once" in err
    with torch.no_grad():
        assert torch.allclose(out, module(x), atol=1e-5)
    assert (tmp_path / "image-encoder" / weights_hash(module)).is_dir()
    assert "converting" not in build()[2]  # the second build reads the cache
    with torch.no_grad():
        module.bias[0] += 1.0  # new weights: a new conversion, under their own hash
    name, out, err = build()
    assert "converting" in err and len(list((tmp_path / "image-encoder").iterdir())) == 2
    with torch.no_grad():
        assert torch.allclose(out, module(x), atol=1e-5)
