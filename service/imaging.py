"""Pure numpy image helpers shared by training (sample grids) and serving (grid responses, PNG encoding)."""

from __future__ import annotations

import math
import struct
import zlib

import numpy as np

__all__ = ["encode_png", "grid_shape", "tile", "to_uint8"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> gray, gray+alpha, RGB, RGBA


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


def encode_png(image: np.ndarray, *, level: int = 1, text: dict[str, str] | None = None) -> bytes:
    """uint8 HWC (1 to 4 channels) -> PNG bytes, with zlib at ``level`` and a ``tEXt`` chunk per ``text`` entry
    (keyword -> Latin-1 text).

    Written out with zlib rather than through Pillow: for the small images a GAN draws, Pillow's per-call work is
    most of the cost (60 vs 25 µs for 28x28 gray), and a single-image response spends more on PNG than on anything
    but the model. Every row uses filter 0 (none), which compresses such images about as well as the adaptive ones.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in _PNG_COLOR_TYPE or 0 in image.shape:
        raise ValueError(f"expected a non-empty uint8 HWC image with 1 to 4 channels, got {image.dtype} {image.shape}")
    height, width, channels = image.shape
    text = text or {}
    rows = np.zeros((height, 1 + width * channels), dtype=np.uint8)  # column 0: each row's filter type, 0
    rows[:, 1:] = image.reshape(height, width * channels)
    header = struct.pack(">IIBBBBB", width, height, 8, _PNG_COLOR_TYPE[channels], 0, 0, 0)
    return b"".join((
        _PNG_SIGNATURE,
        _chunk(b"IHDR", header),
        *(_chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1")) for key, value in text.items()),
        _chunk(b"IDAT", zlib.compress(rows.tobytes(), level)),
        _chunk(b"IEND", b""),
    ))  # fmt: skip


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))
