"""The simulated other-site shift (evals/shift.py): deterministic per case, image only, same size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_evals_loaders import write_coco

from evals.runner import EvalConfig, run_eval
from evals.shift import shift_image


def _image(seed: int = 0, grey: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(90, 120, 1 if grey else 3), dtype=np.uint8)
    return np.repeat(image, 3, axis=2) if grey else image


def test_shift_is_deterministic_per_case_and_keeps_size_and_dtype():
    image = _image()
    before = image.copy()
    first = shift_image(image, "other-hospital", "kvasir_seg/a")
    assert np.array_equal(first, shift_image(image, "other-hospital", "kvasir_seg/a"))  # same case, same image
    assert np.array_equal(image, before)  # the input is not changed in place
    assert first.shape == image.shape and first.dtype == np.uint8
    assert not np.array_equal(first, image)
    others = [shift_image(image, "other-hospital", f"kvasir_seg/{k}") for k in "bcd"]
    assert not all(np.array_equal(first, o) for o in others)  # another case draws another mix
    grey = shift_image(_image(1, grey=True), "other-hospital", "covid_cxr_lungs/x")
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 1], grey[..., 2])


def test_unknown_shift_is_refused():
    with pytest.raises(ValueError, match="unknown shift 'mars'"):
        shift_image(_image(), "mars", "k")
    with pytest.raises(ValueError, match="--shift 'mars': choose from other-hospital"):
        EvalConfig(out=Path("o"), shift="mars")


def test_a_shifted_run_scores_against_the_untouched_masks_and_says_so(tmp_path, segmenter):
    from evals.loaders import load_coco
    from evals.modes import MeteredSegmenter

    coco = write_coco(tmp_path / "coco")
    metered = MeteredSegmenter(segmenter.backend)
    out = tmp_path / "shifted"
    run_eval(EvalConfig(data=[coco], split=None, out=out, shift="other-hospital", save_masks=True),
             segmenter=metered, progress=False, log=lambda _: None)
    records = [json.loads(x) for x in (out / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    assert json.loads((out / "summary.json").read_text(encoding="utf-8"))["identity"]["shift"] == "other-hospital"
    assert all(r["identity"]["shift"] == "other-hospital" and r["error"] is None for r in records)
    targets = [c.load_target(c.load_image().shape[:2]) for c in load_coco(coco)]  # as written, never shifted
    areas = [int((t.mask if t.ignore is None else t.mask & ~t.ignore).sum()) for t in targets]
    assert [r["target_area"] for r in records] == areas and all(areas)
    mask = Image.open(out / "masks" / "direct" / "coco_instances_val_1_polyp.png")
    assert np.asarray(mask).shape == (40, 60)  # the shifted image kept its size
    # one results folder never mixes shifted and clean records
    with pytest.raises(ValueError, match="shift: 'other-hospital' -> None"):
        run_eval(EvalConfig(data=[coco], split=None, out=out), segmenter=metered, progress=False, log=lambda _: None)
