"""Pure numpy image helpers shared by training (sample grids) and serving (grid responses)."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["grid_shape", "tile", "to_uint8"]


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Map generator output in [-1, 1] (NCHW float) to uint8 NHWC, the layout PNG encoders take."""
    scaled = np.clip((images + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(scaled.transpose(0, 2, 3, 1))


def grid_shape(n: int) -> tuple[int, int]:
    """Rows and columns of the most square grid that holds ``n`` images, filled row by row."""
    cols = math.ceil(math.sqrt(n))
    return math.ceil(n / cols), cols


def tile(images: np.ndarray, *, cols: int | None = None, padding: int = 2, fill: int = 0) -> np.ndarray:
    """Lay out uint8 NHWC images row by row into one HWC image with ``padding`` pixels between them."""
    n, h, w, c = images.shape
    rows, default_cols = grid_shape(n)
    if cols is not None:
        rows = math.ceil(n / cols)
    else:
        cols = default_cols
    out = np.full((rows * h + (rows + 1) * padding, cols * w + (cols + 1) * padding, c), fill, dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        top, left = padding + r * (h + padding), padding + q * (w + padding)
        out[top : top + h, left : left + w] = images[i]
    return out
