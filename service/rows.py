"""The two row formats that travel between the service's parts, named here and nowhere else.

- A request travels as seeds, not latents: one float64 row per image, ``[seed, label, truncation, line,
  candidates]`` (label -1: none; truncation inf: none; line: ``service.lines.line_id`` of the model line;
  candidates: the most rejection sampling may draw for the image, 0 for plain sampling). float64 holds every seed
  below 2**53 exactly. The model's own graph draws the latents (``service.latents``), so a promotion to another
  latent size cannot break a request in flight.
- Images come back as one uint8 row per image: its pixels, then a trailer of the class it was drawn for (int32, -1
  for an unconditional model) and, for rejection sampling, the discriminator's logit (float32, NaN for plain
  sampling), the candidates drawn (int32, 0 for plain) and whether one was accepted (uint8), all little-endian, then
  the ``VERSION_BYTES`` ASCII bytes of the version of the model that drew it, so a request never mislabels an image
  across a swap. Rows of several lines in one batch are padded to the widest image with zeros before the trailer:
  the request knows its own image size and reads only its pixels.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "VERSION_BYTES", "Images", "pack_images", "pack_request", "unpack_images", "unpack_request", "version_of",
    "weights", "widen",
]  # fmt: skip

VERSION_BYTES = 12  # a model version is the first 12 hex digits of its ONNX file's sha256
_TRAILER = np.dtype([("label", "<i4"), ("score", "<f4"), ("candidates", "<i4"), ("accepted", "u1")])


def version_of(sha256: str) -> str:
    """A model's version, as the image rows, the headers, the reports and the CLI show it: the first
    ``VERSION_BYTES`` hex digits of its ONNX file's sha256."""
    return sha256[:VERSION_BYTES]


def pack_request(
    seeds: list[int], label: int | None, truncation: float | None, line: int, candidates: int = 0
) -> np.ndarray:
    rows = np.empty((len(seeds), 5), dtype=np.float64)
    rows[:, 0] = seeds
    rows[:, 1] = -1 if label is None else label
    rows[:, 2] = np.inf if truncation is None else truncation
    rows[:, 3] = line
    rows[:, 4] = candidates
    return rows


def unpack_request(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Seeds (int64), labels (int64, -1: none), truncations (float32, inf: none), line ids (int64) and candidate
    bounds (int64, 0: plain sampling) of rows, possibly of many requests."""
    return (rows[:, 0].astype(np.int64), rows[:, 1].astype(np.int64), rows[:, 2].astype(np.float32),
            rows[:, 3].astype(np.int64), rows[:, 4].astype(np.int64))  # fmt: skip


def weights(rows: np.ndarray) -> np.ndarray:
    """What each request row costs to draw, in images: 1, or its candidate bound for rejection sampling."""
    return np.maximum(rows[:, 4], 1).astype(np.int64)


class Images:
    """What ``unpack_images`` reads back: uint8 pixels (one flat row per image), labels (None: unconditional), the
    version of the model that drew them, and per image its discriminator logit, the candidates drawn and whether one
    was accepted (``scores`` None: drawn by plain sampling)."""

    __slots__ = ("accepted", "candidates", "labels", "pixels", "scores", "version")

    def __init__(self, pixels: np.ndarray, trailer: np.ndarray, version: str) -> None:
        self.pixels, self.version = pixels, version
        labels = trailer["label"]
        self.labels = None if labels[0] < 0 else labels.tolist()
        drs = bool((trailer["candidates"] > 0).all())  # one request's rows: all drawn by one sampler
        self.scores = trailer["score"].tolist() if drs else None
        self.candidates = trailer["candidates"].tolist() if drs else None
        self.accepted = trailer["accepted"].astype(bool).tolist() if drs else None


def pack_images(
    images: np.ndarray,
    labels: np.ndarray | None,
    version: str,
    *,
    scores: np.ndarray | None = None,
    candidates: np.ndarray | None = None,
    accepted: np.ndarray | None = None,
) -> np.ndarray:
    """uint8 images, the class each was drawn for (None: unconditional) and, for rejection sampling, each one's
    logit, candidates drawn and acceptance -> one row per image."""
    n = len(images)
    trailer = np.zeros(n, _TRAILER)
    trailer["label"] = -1 if labels is None else labels
    trailer["score"] = np.nan if scores is None else scores
    trailer["candidates"] = 0 if candidates is None else candidates
    trailer["accepted"] = 0 if accepted is None else accepted
    tag = np.broadcast_to(np.frombuffer(version.encode("ascii"), dtype=np.uint8), (n, VERSION_BYTES))
    return np.concatenate([images.reshape(n, -1), trailer.view(np.uint8).reshape(n, _TRAILER.itemsize), tag], axis=1)


def unpack_images(rows: np.ndarray) -> Images:
    """Rows made by ``pack_images`` for one request (pixels with any padding: keep the first H x W x C)."""
    end = -VERSION_BYTES - _TRAILER.itemsize
    trailer = np.ascontiguousarray(rows[:, end:-VERSION_BYTES]).view(_TRAILER).ravel()
    version = bytes(rows[0, -VERSION_BYTES:]).decode("ascii")
    return Images(rows[:, :end], trailer, version)


def widen(rows: np.ndarray, width: int) -> np.ndarray:
    """Image rows padded to ``width`` bytes in all, with zeros between their pixels and their trailer and version."""
    if rows.shape[1] >= width:
        return rows
    trailer = _TRAILER.itemsize + VERSION_BYTES
    pad = np.zeros((len(rows), width - rows.shape[1]), np.uint8)
    return np.concatenate([rows[:, :-trailer], pad, rows[:, -trailer:]], axis=1)
