"""The two row formats that travel between the service's parts, named here and nowhere else.

- A request travels as seeds, not latents: one float64 row per image, ``[seed, label, truncation, line]`` (label -1:
  none; truncation inf: none; line: ``service.lines.line_id`` of the model line). float64 holds every seed below
  2**53 exactly. The model's own graph draws the latents
  (``service.latents``), so a promotion to another latent size cannot break a request in flight.
- Images come back as one uint8 row per image: its pixels, then the class it was drawn for as a little-endian int32
  (-1 for an unconditional model), then the ``VERSION_BYTES`` ASCII bytes of the version of the model that drew it,
  so a request never mislabels an image across a swap. Rows of several lines in one batch are padded to the widest
  image with zeros before the label: the request knows its own image size and reads only its pixels.
"""

from __future__ import annotations

import numpy as np

__all__ = ["VERSION_BYTES", "Images", "pack_images", "pack_request", "unpack_images", "unpack_request", "widen"]

VERSION_BYTES = 12  # a model version is the first 12 hex digits of its ONNX file's sha256
_LABEL = np.dtype("<i4")


def pack_request(seeds: list[int], label: int | None, truncation: float | None, line: int) -> np.ndarray:
    rows = np.empty((len(seeds), 4), dtype=np.float64)
    rows[:, 0] = seeds
    rows[:, 1] = -1 if label is None else label
    rows[:, 2] = np.inf if truncation is None else truncation
    rows[:, 3] = line
    return rows


def unpack_request(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Seeds (int64), labels (int64, -1: none), truncations (float32, inf: none) and line ids (int64) of rows,
    possibly of many requests."""
    return (rows[:, 0].astype(np.int64), rows[:, 1].astype(np.int64), rows[:, 2].astype(np.float32),
            rows[:, 3].astype(np.int64))  # fmt: skip


class Images:
    """What ``unpack_images`` reads back: uint8 pixels (one flat row per image), labels (None: unconditional) and
    the version of the model that drew them."""

    __slots__ = ("labels", "pixels", "version")

    def __init__(self, pixels: np.ndarray, labels: list[int] | None, version: str) -> None:
        self.pixels, self.labels, self.version = pixels, labels, version


def pack_images(images: np.ndarray, labels: np.ndarray | None, version: str) -> np.ndarray:
    """uint8 images and the class each was drawn for (None: unconditional) -> one row per image."""
    n = len(images)
    tag = np.broadcast_to(np.frombuffer(version.encode("ascii"), dtype=np.uint8), (n, VERSION_BYTES))
    label = np.full(n, -1, _LABEL) if labels is None else np.asarray(labels, _LABEL)
    return np.concatenate([images.reshape(n, -1), label.view(np.uint8).reshape(n, 4), tag], axis=1)


def unpack_images(rows: np.ndarray) -> Images:
    """Rows made by ``pack_images`` for one request (pixels with any padding: keep the first H x W x C)."""
    labels = np.ascontiguousarray(rows[:, -VERSION_BYTES - 4 : -VERSION_BYTES]).view(_LABEL).ravel()
    version = bytes(rows[0, -VERSION_BYTES:]).decode("ascii")
    return Images(rows[:, : -VERSION_BYTES - 4], None if labels[0] < 0 else labels.tolist(), version)


def widen(rows: np.ndarray, width: int) -> np.ndarray:
    """Image rows padded to ``width`` bytes in all, with zeros between their pixels and their label and version."""
    if rows.shape[1] >= width:
        return rows
    trailer = 4 + VERSION_BYTES
    pad = np.zeros((len(rows), width - rows.shape[1]), np.uint8)
    return np.concatenate([rows[:, :-trailer], pad, rows[:, -trailer:]], axis=1)
