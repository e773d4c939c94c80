"""Image input: every accepted form comes back as RGB uint8 of the same size; bad input fails clearly."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from segmenter.image_io import MAX_PIXELS, ImageError
from segmenter.study_io import load_image


def test_grey_rgb_rgba_arrays_become_rgb():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert load_image(grey).shape == (3, 4, 3)
    assert (load_image(grey)[..., 0] == grey).all()
    rgba = np.zeros((5, 6, 4), np.uint8)
    rgba[..., 0] = 200
    out = load_image(rgba)
    assert out.shape == (5, 6, 3) and (out[..., 0] == 200).all()


def test_sixteen_bit_png_is_windowed_to_full_range(tmp_path):
    ramp = (np.linspace(0, 4000, 64 * 64).reshape(64, 64)).astype(np.uint16)
    path = tmp_path / "ct.png"
    Image.fromarray(ramp).save(path)
    out = load_image(path)
    assert out.dtype == np.uint8 and out.shape == (64, 64, 3)
    assert out.min() == 0 and out.max() == 255
    # monotone ramp stays monotone after windowing
    assert (np.diff(out[..., 0].ravel().astype(int)) >= 0).all()


def test_pil_and_bytes_inputs(tmp_path):
    image = Image.new("RGB", (7, 5), (10, 20, 30))
    assert load_image(image).shape == (5, 7, 3)
    path = tmp_path / "x.jpg"
    image.save(path)
    assert load_image(path.read_bytes()).shape == (5, 7, 3)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_bytes(b""), "file is empty"),
        (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20), "not a readable image"),
        (lambda p: p.write_text("just text", encoding="utf-8"), "not a readable image"),
    ],
)
def test_bad_files_raise_clear_errors(tmp_path, make, message):
    path = tmp_path / "bad.png"
    make(path)
    with pytest.raises(ImageError, match=message):
        load_image(path)


def test_missing_file_folder_and_wrong_type(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="is a folder"):
        load_image(tmp_path)
    with pytest.raises(ImageError, match="unsupported image type"):
        load_image(42)
    with pytest.raises(ImageError, match="image bytes are empty"):
        load_image(b"")


def test_zero_pixel_and_wrong_shape_arrays():
    with pytest.raises(ImageError, match="no pixels"):
        load_image(np.zeros((0, 10), np.uint8))
    with pytest.raises(ImageError, match="shape"):
        load_image(np.zeros((4, 4, 4, 4), np.uint8))
    with pytest.raises(ImageError, match="no finite value"):
        load_image(np.full((4, 4), np.nan))


def test_nan_and_inf_pixels_of_a_float_image_are_background_with_a_warning():
    data = np.linspace(0, 1000, 64, dtype=np.float32).reshape(8, 8)
    data[0, 0], data[3, 3], data[7, 7] = np.nan, np.inf, -np.inf  # e.g. a registered map or a float TIFF
    with pytest.warns(UserWarning, match=r"3 NaN or infinite pixel\(s\) of 64 treated as background"):
        rgb = load_image(data)
    clean = data.copy()
    clean[~np.isfinite(clean)] = data[np.isfinite(data)].min()
    assert rgb.dtype == np.uint8 and np.array_equal(rgb, load_image(clean))  # as if those pixels were the floor
    assert rgb[0, 0, 0] == rgb[3, 3, 0] == rgb[7, 7, 0] == 0


def test_huge_image_is_refused_before_decoding(tmp_path):
    side = int(MAX_PIXELS**0.5) + 100
    path = tmp_path / "huge.png"
    Image.new("1", (side, side)).save(path)  # 1-bit: tiny on disk, enormous decoded
    with pytest.raises(ImageError, match="too large|above the limit"):
        load_image(path)
