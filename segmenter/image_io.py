"""Image input: a path, bytes, numpy array or PIL image -> an RGB uint8 array, with clear errors.

Grey, RGB and RGBA, 8 or 16 bit, are accepted. 16-bit and float data are windowed to
8 bits with a 0.5-99.5 percentile stretch. A single-slice DICOM (found by its "DICM" preamble
or a .dcm name) goes through ``segmenter.study_io.load_study`` (HU, CT windows, MONOCHROME1) and
comes back as its one display slice; a volume is refused here with a pointer to the volume path.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

MAX_PIXELS = 64_000_000  # 8k x 8k; refuse decompression bombs and accidental volumes

ImageInput = str | Path | bytes | np.ndarray | Image.Image


class ImageError(ValueError):
    """The image could not be used; the message says why."""


class ImageTooLarge(ImageError):
    """The image has more pixels than the caller's budget (the HTTP service answers 413)."""


def _check_size(width: int, height: int, max_pixels: int, name: str = "") -> None:
    prefix = f"{name}: " if name else ""
    if width * height > max_pixels:
        raise ImageTooLarge(f"{prefix}image is {width}x{height} = {width * height} pixels, "
                            f"above the limit of {max_pixels}")
    if width == 0 or height == 0:
        raise ImageError(f"{prefix}image has no pixels ({width}x{height})")


def _reason(exc: Exception) -> str:
    """A decoder's complaint without object reprs (``<_io.BytesIO object at 0x...>``) and never long."""
    if isinstance(exc, UnidentifiedImageError):
        return "unknown or unsupported image format"
    text = re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "the data", str(exc))
    return f"{exc.__class__.__name__}: {text[:200]}"


def nonfinite_as_background(values: np.ndarray, unit: str = "pixel") -> np.ndarray:
    """NaN / inf (registered or derived MR and PET maps, float TIFFs) become the lowest finite value, with a
    warning naming how many; an image with no finite value at all is refused."""
    finite = np.isfinite(values)
    bad = int(values.size - np.count_nonzero(finite))
    if bad == 0:
        return values
    if bad == values.size:
        raise ImageError(f"the image holds no finite value (all {unit}s are NaN or infinite)")
    floor = values[finite].min()
    warnings.warn(f"{bad} NaN or infinite {unit}(s) of {values.size} treated as background "
                  f"(set to the lowest finite value, {float(floor):g})", stacklevel=3)
    return np.where(finite, values, floor).astype(values.dtype)


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    data = array.astype(np.float64)
    if np.issubdtype(array.dtype, np.floating):
        data = nonfinite_as_background(data)
    lo, hi = np.percentile(data, [0.5, 99.5])
    if hi <= lo:
        lo, hi = float(data.min()), float(data.max())
    if hi <= lo:
        return np.zeros(array.shape, dtype=np.uint8)
    return (np.clip((data - lo) / (hi - lo), 0, 1) * 255).round().astype(np.uint8)


def to_rgb_array(array: np.ndarray, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Any 2D grey or HxWx{1,3,4} array -> HxWx3 uint8."""
    if not isinstance(array, np.ndarray):
        raise ImageError(f"expected a numpy array, got {type(array).__name__}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim in (2, 3):
        _check_size(array.shape[1], array.shape[0], max_pixels)  # before any conversion copies it
    if array.ndim == 2:
        grey = _to_uint8(array)
        rgb = np.repeat(grey[:, :, None], 3, axis=2)
    elif array.ndim == 3 and array.shape[2] in (3, 4):
        rgb = _to_uint8(array[:, :, :3])
    else:
        raise ImageError(f"expected a 2D grey or HxWx3/4 colour image, got an array of shape {array.shape}")
    return np.ascontiguousarray(rgb)


def _from_pil(image: Image.Image, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    _check_size(image.width, image.height, max_pixels)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return to_rgb_array(np.asarray(image), max_pixels)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("L", "LA"):
        return to_rgb_array(np.asarray(image.convert("L")), max_pixels)
    return to_rgb_array(np.asarray(image.convert("RGB")), max_pixels)


def _open(source: Path | io.BytesIO, name: str, max_pixels: int) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            # PIL only warns between its limit and twice it; we refuse those ourselves below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(source)  # reads the header only (PNG IHDR, JPEG SOF, TIFF IFD)
        with image:
            _check_size(image.width, image.height, max_pixels, name)  # before decoding a single pixel
            image.load()
            return _from_pil(image, max_pixels)
    except ImageError:
        raise
    except Image.DecompressionBombError:
        raise ImageTooLarge(f"{name}: image has more pixels than the limit of {max_pixels}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{name}: not a readable image ({_reason(exc)})") from None


def read_image(image: ImageInput, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A 2D raster (PNG, JPEG, TIFF, ... or an array) as an HxWx3 uint8 RGB array; raise ImageError naming the
    problem otherwise. Entry points use ``segmenter.study_io.load_image``, which also reads a one-slice DICOM.

    ``max_pixels`` is checked from the file's header, before any pixel is decoded (ImageTooLarge).
    """
    if isinstance(image, np.ndarray):
        return to_rgb_array(image, max_pixels)
    if isinstance(image, Image.Image):
        return _from_pil(image, max_pixels)
    if isinstance(image, (bytes, bytearray)):
        if not image:
            raise ImageError("image bytes are empty")
        return _open(io.BytesIO(image), "image bytes", max_pixels)
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.exists():
            raise ImageError(f"{path}: no such file")
        if path.is_dir():
            raise ImageError(f"{path}: is a folder, not an image file")
        if path.stat().st_size == 0:
            raise ImageError(f"{path}: file is empty")
        return _open(path, str(path), max_pixels)
    raise ImageError(f"unsupported image type {type(image).__name__}; pass a path, bytes, numpy array or PIL image")
