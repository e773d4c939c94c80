"""MedSAM3-Lite's background work: the fast runtime loads in the background (``ready``), and ``prefetch``
encodes the next image while the current one is decoded (volumes do it slice by slice): each slice's
embedding must be its own, made once. Speed is bench's business, never asserted here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from segmenter.base import image_key
from segmenter.lite.backend import _Encoded
from segmenter.study import Study
from segmenter.volume import segment_volume

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _drawn_slices(n: int, size: int = 160) -> np.ndarray:
    """Slices that differ: a disc that grows slice by slice, on a gradient."""
    yy, xx = np.mgrid[:size, :size]
    slices = np.zeros((n, size, size, 3), np.uint8)
    for i in range(n):
        disc = (yy - size // 2) ** 2 + (xx - size // 2 + 7 * i) ** 2 < (20 + 9 * i) ** 2
        slices[i] = (disc * 160 + xx // 3 + 11 * i)[..., None]
    return slices


def test_a_volume_prefetches_each_slice_once_with_its_own_embedding(segmenter):
    backend = segmenter.backend
    backend.ready()
    slices = _drawn_slices(3)
    before = backend.encode_count
    result = segment_volume(segmenter.handle(), Study(slices=slices), "liver")
    assert result.concepts["liver"].labels.shape == (3, 160, 160)
    assert backend.encode_count - before == 3  # one encode per slice, prefetched or not
    for image in slices:
        entry = backend._cache.get(image_key(image))
        assert entry is not None and entry.full is not None and entry.pending is None
        assert np.allclose(entry.full[0], backend._embed(image)[0], atol=1e-5)  # this slice's, not a neighbour's


def test_a_blank_slice_is_neither_encoded_nor_given_a_mask(segmenter):
    backend = segmenter.backend
    slices = _drawn_slices(4, size=152)  # a size no other test encodes
    slices[1] = 0  # air beyond the body
    slices[3] = 37  # padding of one value
    before = backend.encode_count
    result = segment_volume(segmenter.handle(), Study(slices=slices), ["liver", "spleen"])
    assert backend.encode_count - before == 2  # slices 0 and 2 only
    for concept in ("liver", "spleen"):
        volume = result.concepts[concept]
        assert volume.presence[1] == volume.presence[3] == 0.0 and not volume.mask[[1, 3]].any()
        assert volume.presence[0] is not None and volume.presence[0] > 0.0  # the drawn slices were asked


def test_a_prefetched_image_gives_the_masks_of_a_plain_one(segmenter):
    backend = segmenter.backend
    xray = Image.open(EXAMPLES / "chest_xray_pa_radiopaedia_9171.jpg").convert("RGB").resize((256, 256))
    image = np.ascontiguousarray(np.asarray(xray)[:, ::-1])  # mirrored: pixels no other test has encoded
    before = backend.encode_count
    segmenter.prefetch(image)  # encoded in the background ...
    prefetched = segmenter.segment(image, concept="lung")  # ... and taken here
    backend._cache.put(image_key(image), _Encoded(image=image))  # the same pixels, not encoded yet
    plain = segmenter.segment(image, concept="lung")
    assert backend.encode_count - before == 2
    assert plain.union_mask.any() and np.array_equal(prefetched.union_mask, plain.union_mask)
    assert abs(prefetched.presence - plain.presence) < 1e-5
