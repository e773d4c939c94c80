"""Draw a synthetic colonoscopy-like picture for `make demo` on machines without ../shared/data.

It is not a medical image: a pink, vignetted background with one raised reddish blob, enough to
run the whole pipeline end to end. Usage: python scripts/demo_image.py OUT.png
"""

import sys

import cv2
import numpy as np


def draw(size: int = 384, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    vignette = 1 - 0.8 * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2)
    image = np.stack([200 * vignette, 110 * vignette, 100 * vignette], axis=-1)
    image += rng.normal(0, 6, image.shape)
    blob = np.zeros((size, size), np.float32)
    cv2.ellipse(blob, (int(size * 0.6), int(size * 0.45)), (size // 8, size // 10), 20, 0, 360, 1.0, -1)
    blob = cv2.GaussianBlur(blob, (0, 0), size / 60)
    image = image * (1 - blob[..., None]) + np.array([170, 70, 60]) * blob[..., None]
    return np.clip(image, 0, 255).astype(np.uint8)


if __name__ == "__main__":
    cv2.imwrite(sys.argv[1], cv2.cvtColor(draw(), cv2.COLOR_RGB2BGR))
