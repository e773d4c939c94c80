"""Augmented training copies (`train-lite --augment`): new framing, tone and optics; the masks follow the image."""

from __future__ import annotations

import numpy as np
import pytest

from segmenter.lite.augment import (
    AUGMENT_VERSION,
    ENHANCEMENT_HU,
    augmented_copy,
    content_box,
    contrast_phase,
    reframe,
    seeded_rng,
)


def _slice(size: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """A drawn axial 'CT slice': a grey body disc with a bright organ in it, a thin table line under it."""
    yy, xx = np.mgrid[0:size, 0:size]
    grey = np.zeros((size, size), np.uint8)
    grey[(yy - 90) ** 2 + (xx - 100) ** 2 < 55**2] = 90
    organ = (yy - 80) ** 2 + (xx - 75) ** 2 < 18**2
    grey[organ] = 220
    grey[170:172, 20:180] = 255  # the table: bright, thin, apart from the body
    return np.repeat(grey[..., None], 3, axis=2), organ


def test_the_content_box_is_the_body_not_the_table():
    image, _ = _slice()
    y0, x0, y1, x1 = content_box(image)
    assert (y0, x0, y1, x1) == (36, 46, 145, 155)  # the disc of radius 55 around (90, 100)


def test_a_copy_is_deterministic_grey_stays_grey_and_the_mask_follows_the_organ():
    image, organ = _slice()
    for k in range(1, 9):
        key = f"drawn/a_a{k}"
        out, masks = augmented_copy(image, {"organ": organ}, key)
        again, masks_again = augmented_copy(image, {"organ": organ}, key)
        assert np.array_equal(out, again) and np.array_equal(masks["organ"], masks_again["organ"])
        assert out.shape == image.shape and out.dtype == np.uint8 and masks["organ"].dtype == bool
        assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
        mask = masks["organ"]
        assert mask.any()  # the organ lies well inside the body: a window around the body keeps it
        # tone keeps the organ the brightest part of the body: the copy's mask sits on its bright pixels
        inside, outside = out[..., 0][mask].mean(), out[..., 0][~mask].mean()
        assert inside > outside + 40, (k, inside, outside)
    assert not np.array_equal(augmented_copy(image, {}, "drawn/a_a1")[0], augmented_copy(image, {}, "drawn/a_a2")[0])


def test_a_ct_copy_enhances_its_labelled_organs_as_a_contrast_phase_would():
    image, organ = _slice()
    image[organ] = 100  # an unenhanced liver, a little brighter than the body
    from scipy import ndimage

    near = ndimage.binary_dilation(organ, iterations=3)  # the organ and the 3 px its edge blur reaches
    rises = []
    for k in range(12):
        out = contrast_phase(image, {"liver": organ, "lung": ~organ}, seeded_rng("test", str(k)))
        rise = out[..., 0].astype(int) - image[..., 0]
        core = np.zeros_like(organ)
        core[74:87, 69:82] = True  # inside the organ, away from its blurred edge
        assert rise[~near].max() == 0  # "lung" has no enhancement; only the liver's edge blur spills over
        assert np.ptp(rise[core]) <= 1  # one phase for the whole organ
        rises.append(rise[core].mean())
    top = ENHANCEMENT_HU["liver"] * 1.2 * 255 / 400
    assert 0 <= min(rises) < top / 3 and top * 0.6 < max(rises) <= top + 1  # from unenhanced to a late phase
    # only a CT copy gets a phase: the same key draws another image for an MR or unknown modality
    assert not np.array_equal(augmented_copy(image, {"liver": organ}, "k", "ct")[0],
                              augmented_copy(image, {"liver": organ}, "k", "mri")[0])


def test_reframe_zooms_in_on_the_body_or_pads_around_it():
    image, organ = _slice()
    areas = set()
    for k in range(40):
        out, masks = reframe(image, {"organ": organ}, seeded_rng("test", str(k)))
        assert out.shape == image.shape and masks["organ"].shape == organ.shape
        areas.add("in" if masks["organ"].sum() > organ.sum() * 1.2 else "out" if masks["organ"].sum() < organ.sum()
                  else "same")
    assert {"in", "out"} <= areas  # both framings are drawn


def test_with_copies_adds_keyed_copies_of_untiled_items_only():
    from pathlib import Path

    from segmenter.lite.dataset import CacheItem, with_copies

    whole = CacheItem("amos_ct", "s1", Path("a.png"), {}, None)
    tile = CacheItem("monuseg", "t1", Path("b.png"), {}, (0, 0, 256, 256))
    other = CacheItem("busi", "b1", Path("c.png"), {}, None)
    items = with_copies([whole, tile, other], {"amos_ct": 2, "monuseg": 3})
    v = AUGMENT_VERSION  # in the key: a changed augmentation never reads a stale cached copy
    assert [it.key for it in items] == ["amos_ct/s1", "monuseg/t1_t0_0", "busi/b1", f"amos_ct/s1_a1v{v}",
                                        f"amos_ct/s1_a2v{v}"]


def test_the_augment_option_names_its_mistakes():
    from segmenter.lite.train_command import parse_augment

    assert parse_augment("amos_ct=8, chaos_mr_t2=1", ["amos_ct", "chaos_mr_t2"]) == {"amos_ct": 8, "chaos_mr_t2": 1}
    assert parse_augment("", ["amos_ct"]) == {}
    with pytest.raises(ValueError, match="DATASET=N"):
        parse_augment("amos_ct", ["amos_ct"])
    with pytest.raises(ValueError, match="not among --datasets"):
        parse_augment("busi=2", ["amos_ct"])


@pytest.mark.slow
def test_an_augmented_copy_is_cached_under_its_own_key(tmp_path):
    from PIL import Image

    from segmenter.lite.backend import default_weights_path, load_model
    from segmenter.lite.dataset import build_cache, load_cache, manifest_items, with_copies

    image, organ = _slice()
    ds = tmp_path / "drawn"
    (ds / "masks").mkdir(parents=True)
    Image.fromarray(image).save(ds / "a.png")
    Image.fromarray(organ.astype(np.uint8) * 255).save(ds / "masks/liver.png")
    (ds / "manifest.jsonl").write_text(
        '{"id": "a", "image": "a.png", "split": "train", "width": 200, "height": 200,'
        ' "masks": {"liver": "masks/liver.png"}}\n', encoding="utf-8")
    items = with_copies(manifest_items(tmp_path, "train", ["drawn"], None), {"drawn": 1})
    assert build_cache(load_model(default_weights_path()), items, tmp_path / "cache", progress=False) == 2
    plain, copy = load_cache(tmp_path / "cache", items)
    assert (plain.key, copy.key) == ("drawn/a", f"drawn/a_a1v{AUGMENT_VERSION}")
    assert plain.masks["liver"].any() and copy.masks["liver"].any()
    assert not np.array_equal(plain.masks["liver"], copy.masks["liver"])  # reframed with its image
    assert not np.array_equal(plain.embedding, copy.embedding)
