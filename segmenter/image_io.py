"""Image input: a path, bytes, numpy array or PIL image -> an RGB uint8 array, with clear errors.

Grey, RGB and RGBA, 8 or 16 bit, are accepted. 16-bit and float data are windowed to
8 bits with a 0.5-99.5 percentile stretch (what a radiologist's default window does).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, UnidentifiedImageError

MAX_PIXELS = 64_000_000  # 8k x 8k; refuse decompression bombs and accidental volumes

ImageInput = Union[str, Path, bytes, np.ndarray, Image.Image]


class ImageError(ValueError):
    """The image could not be used; the message says why."""


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    data = array.astype(np.float64)
    if not np.isfinite(data).all():
        raise ImageError("image contains NaN or infinite values")
    lo, hi = np.percentile(data, [0.5, 99.5])
    if hi <= lo:
        lo, hi = float(data.min()), float(data.max())
    if hi <= lo:
        return np.zeros(array.shape, dtype=np.uint8)
    return (np.clip((data - lo) / (hi - lo), 0, 1) * 255).round().astype(np.uint8)


def to_rgb_array(array: np.ndarray) -> np.ndarray:
    """Any 2D grey or HxWx{1,3,4} array -> HxWx3 uint8."""
    if not isinstance(array, np.ndarray):
        raise ImageError(f"expected a numpy array, got {type(array).__name__}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        grey = _to_uint8(array)
        rgb = np.repeat(grey[:, :, None], 3, axis=2)
    elif array.ndim == 3 and array.shape[2] in (3, 4):
        rgb = _to_uint8(array[:, :, :3])
    else:
        raise ImageError(f"expected a 2D grey or HxWx3/4 colour image, got an array of shape {array.shape}")
    h, w = rgb.shape[:2]
    if h == 0 or w == 0:
        raise ImageError(f"image has no pixels ({w}x{h})")
    if h * w > MAX_PIXELS:
        raise ImageError(f"image is {w}x{h} = {h * w} pixels, above the limit of {MAX_PIXELS}")
    return np.ascontiguousarray(rgb)


def _from_pil(image: Image.Image) -> np.ndarray:
    if image.width * image.height > MAX_PIXELS:
        raise ImageError(f"image is {image.width}x{image.height}, above the limit of {MAX_PIXELS} pixels")
    if image.width == 0 or image.height == 0:
        raise ImageError(f"image has no pixels ({image.width}x{image.height})")
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return to_rgb_array(np.asarray(image))
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("L", "LA"):
        return to_rgb_array(np.asarray(image.convert("L")))
    return to_rgb_array(np.asarray(image.convert("RGB")))


def _open(source: Path | io.BytesIO, name: str) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            # PIL only warns between its limit and twice it; we refuse those ourselves below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(source)
        with image:
            if image.width * image.height > MAX_PIXELS:  # refuse before decoding a single pixel
                raise ImageError(f"{name}: image is {image.width}x{image.height}, above the limit of {MAX_PIXELS} pixels")
            image.load()
            return _from_pil(image)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{name}: image is too large ({exc})") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{name}: not a readable image ({exc.__class__.__name__}: {exc})") from exc


def load_image(image: ImageInput) -> np.ndarray:
    """Return an HxWx3 uint8 RGB array; raise ImageError naming the problem otherwise."""
    if isinstance(image, np.ndarray):
        return to_rgb_array(image)
    if isinstance(image, Image.Image):
        return _from_pil(image)
    if isinstance(image, (bytes, bytearray)):
        if not image:
            raise ImageError("image bytes are empty")
        return _open(io.BytesIO(image), "image bytes")
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.exists():
            raise ImageError(f"{path}: no such file")
        if path.is_dir():
            raise ImageError(f"{path}: is a folder, not an image file")
        if path.stat().st_size == 0:
            raise ImageError(f"{path}: file is empty")
        return _open(path, str(path))
    raise ImageError(f"unsupported image type {type(image).__name__}; pass a path, bytes, numpy array or PIL image")
