"""Input limits outside HTTP: the pixel budget read from PNG/JPEG/TIFF headers, error messages free of
object reprs, the same prompt caps in the Python API, and `run` on a folder."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image
from service_helpers import blank_png, disc_image

from agent.cli import main as cli
from segmenter.image_io import ImageError, ImageTooLarge
from segmenter.study_io import load_image


def header_only_tiff(width: int, height: int) -> bytes:
    """A TIFF whose header promises width x height 8-bit grey pixels and holds none of them."""
    tags = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1),
            (273, 4, 8 + 2 + 12 * 8 + 4), (278, 4, height), (279, 4, width * height)]
    entries = b"".join(struct.pack("<HHII", tag, kind, 1, value) for tag, kind, value in tags)
    ifd = struct.pack("<H", len(tags)) + entries
    return b"II*\0" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0)


def header_only_jpeg(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header (SOF0) is rewritten to claim width x height."""
    buffer = io.BytesIO()
    Image.new("L", (16, 16), 128).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@pytest.mark.parametrize("make", [blank_png, header_only_jpeg, header_only_tiff])
def test_pixel_budget_is_read_from_the_header(make, tmp_path):
    data = make(8000, 8000)
    with pytest.raises(ImageTooLarge, match="8000x8000 = 64000000 pixels, above the limit of 16000000"):
        load_image(data, max_pixels=16_000_000)
    path = tmp_path / "big.img"
    path.write_bytes(make(9000, 9000))
    with pytest.raises(ImageTooLarge, match="9000x9000"):  # the library default (64 MP) holds too
        load_image(path)


def test_arrays_and_pil_images_share_the_budget():
    with pytest.raises(ImageTooLarge, match="above the limit of 100"):
        load_image(np.zeros((11, 10), np.uint8), max_pixels=100)
    with pytest.raises(ImageTooLarge):
        load_image(Image.new("RGB", (20, 20)), max_pixels=100)
    assert load_image(np.zeros((10, 10), np.uint8), max_pixels=100).shape == (10, 10, 3)


def test_messages_about_bytes_name_no_python_object():
    for data in (b"hello", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, header_only_jpeg(20, 20)[:40]):
        with pytest.raises(ImageError) as caught:
            load_image(data)
        message = str(caught.value)
        assert message.startswith("image bytes: not a readable image")
        assert "0x" not in message and "BytesIO" not in message and "<" not in message


@pytest.fixture(scope="module")
def seg(segmenter):
    segmenter.set_image(disc_image(seed=41))
    return segmenter


@pytest.mark.parametrize("kwargs, message", [
    ({"points": [(5.0, 5.0)] * 65}, "at most 64"),
    ({"boxes": [[1, 1, 20, 20]] * 65}, "at most 64"),
    ({"concept": "x" * 201}, "at most 200 characters"),
    ({"concept": "\ud800 polyp"}, "concept"),
    ({"boxes": [[float("nan"), 0, 100, 100]]}, "finite number"),
    ({"boxes": [[0, 0, float("inf"), 100]]}, "finite number"),
    ({"points": [(float("nan"), 5.0)]}, "finite number"),
])
def test_python_api_shares_the_service_caps(seg, kwargs, message):
    with pytest.raises(ValueError, match=message):
        seg.segment(**kwargs)


def test_run_on_a_folder_says_it_is_a_folder(tmp_path, capsys):
    assert cli(["run", str(tmp_path), "find the polyps", "--out", str(tmp_path / "out"), "--planner", "offline"]) == 2
    err = capsys.readouterr().err
    assert "is a folder, not an image file" in err and "no such" not in err
