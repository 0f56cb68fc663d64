"""The seed-to-latent protocol (v2), defined once by integer arithmetic: the numpy reference of docs/LATENTS.md.

Every exported generator carries this protocol as the first nodes of its ONNX graph (``training/sampler.py``), so
latents are drawn where the model runs, in the batch, on the GPU when there is one. This module is the reference
those nodes are tested against, and what training's sample grids draw with: nothing else maps a seed to a latent
or a label.

Entry j of image seed s (0 <= s < 2**32):

1. ``k = squares32(s * 2**32 + j)``: Widynski's counter-based generator ("Squares", arXiv:2004.06278), four rounds of
   squaring and 32-bit rotation in uint64 arithmetic with the first key of its key list. It needs only multiply, add,
   divide and remainder, which ONNX implements on CPU and CUDA alike (there is no CUDA kernel for ONNX's bitwise ops).
2. Two odd integers ``P = 2k + 1`` and ``Q = 2**33 - P``, and the float32 probabilities ``p = P / 2**33``,
   ``q = Q / 2**33``: p + q = 1, each exact near its own end, so no tail is lost to ``1 - p``.
3. Truncation t (inf: none) squeezes both into the central mass: ``a = Φ(-t)``, ``p = a + (1 - 2a) p`` and likewise q,
   with fixed work whatever t (the old redraw loop could pin a worker). A truncated latent is the untruncated one
   squashed monotonically: a seed keeps its image, made more typical as t shrinks.
4. ``z = Φ⁻¹(p) = √2·erfinv(p - q)``, evaluated as Giles ("Approximating the erfinv function", 2010) does, from
   ``w = -log(4pq)``: a polynomial in ``w - 2.5`` for w < 5, else in ``√w - 3``. The polynomials are refitted
   here (degree 7) to cover p down to 2**-33, where Giles' float version stops near 1e-8; relative error < 5e-7.

Steps 1-2 are exact integer arithmetic, identical on every machine; steps 3-4 are float32 operations, which
implementations of log, sqrt and erf may round differently in the last bits (docs/LATENTS.md has test vectors).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "CENTRE",
    "CENTRE_LIMIT",
    "KEY",
    "MAX_SEED",
    "MAX_TRUNCATION",
    "MIN_TRUNCATION",
    "PROTOCOL",
    "TAIL",
    "candidate_seeds",
    "candidate_uniforms",
    "check_seeds",
    "check_truncation",
    "interpolation_path",
    "labels_for_seeds",
    "latents_for_seeds",
    "slerp",
    "squares32",
    "walk_length",
]

PROTOCOL = "squares32-probit-float32/v2"
KEY = 0xC58EFD154CE32F6D  # the first key of the Squares paper's key list
MAX_SEED = 2**32  # seeds are 0 <= s < 2**32, what an HTTP client can send as a plain JSON integer
# Below 0.01 every seed draws practically the image of z = 0 (BigGAN shows 0.04 as its strongest setting); above 4
# truncation changes less than one latent entry in 15,000.
MIN_TRUNCATION, MAX_TRUNCATION = 0.01, 4.0
# √2·erfinv(x)/x = Φ⁻¹(p)/(p - q) as degree-7 polynomials (highest power first), least-squares fits of relative
# error in Giles' two variables: the centre in u = w - 2.5 (0 <= w < 5), the tail in v = √w - 3 (5 <= w <= 23;
# p = 2**-33 is w = 21.5). Both within 5e-7 of the exact quantile once rounded to float32.
CENTRE = (4.6426283e-07, -4.4888175e-06, -5.9787371e-06, 0.00030720496, -0.0017737596, -0.005905767, 0.34880325,
          2.1233132)  # fmt: skip
TAIL = (-0.00024245318, 0.0016438239, -0.004749016, 0.008187485, -0.010934636, 0.013341015, 1.4165951, 4.006435)
CENTRE_LIMIT = 5.0  # w below this: the centre polynomial


def squares32(counters: np.ndarray) -> np.ndarray:
    """Squares (four rounds) of uint64 counters with ``KEY``: uint64 values below 2**32, wrapping as C's uint64 does."""
    ctr = np.asarray(counters, dtype=np.uint64)
    key, half = np.uint64(KEY), np.uint64(2**32)
    y = ctr * key
    z = y + key
    x = y
    for add in (y, z, y):
        x = x * x + add
        x = x // half + x * half  # rotate by 32 bits: (x >> 32) | (x << 32), with the shift left wrapping
    return (x * x + z) // half


def latents_for_seeds(
    seeds: Sequence[int] | np.ndarray,
    latent_dim: int,
    *,
    truncation: float | Sequence[float] | np.ndarray | None = None,
) -> np.ndarray:
    """Return a float32 array of shape ``(len(seeds), latent_dim)``; row i is z ~ N(0, I) drawn from seed i.

    ``truncation`` t (one for all rows, or one per row; ``inf`` or None for none) truncates the rows to [-t, t]
    as the module docstring says, with ``MIN_TRUNCATION <= t <= MAX_TRUNCATION``.
    """
    seeds = check_seeds(seeds)
    t = check_truncation(truncation, len(seeds))
    k = squares32(seeds[:, None].astype(np.uint64) * np.uint64(2**32) + np.arange(latent_dim, dtype=np.uint64))
    twice = k * np.uint64(2)
    odd_p, odd_q = (twice + np.uint64(1)).astype(np.float32), (np.uint64(2**33 - 1) - twice).astype(np.float32)
    a = (np.float32(0.5) - _erf(t * np.float32(1 / np.sqrt(2))) * np.float32(0.5))[:, None]
    span = (np.float32(1) - a * np.float32(2)) * np.float32(2.0**-33)
    p, q = a + span * odd_p, a + span * odd_q
    w = np.float32(-np.log(4)) - np.log(p * q)
    centre = _horner(CENTRE, w - np.float32(2.5))
    with np.errstate(invalid="ignore"):  # w < 0 from rounding gives NaN where the centre polynomial is chosen
        tail = _horner(TAIL, np.sqrt(w) - np.float32(3))
    return (np.where(w < np.float32(CENTRE_LIMIT), centre, tail) * (p - q)).astype(np.float32)


def labels_for_seeds(
    seeds: Sequence[int] | np.ndarray, classes: int, labels: int | Sequence[int] | np.ndarray | None = None
) -> np.ndarray:
    """The class each image is drawn for: its label (one for all rows, or one per row) where that is one of the
    ``classes``, else seed mod classes: a conditional model asked for no label (None, or -1 in a row) cycles
    through its classes by seed."""
    seeds = np.asarray(seeds, dtype=np.int64)
    labels = np.broadcast_to(np.asarray(-1 if labels is None else labels, dtype=np.int64), seeds.shape)
    return np.where((labels >= 0) & (labels < classes), labels, seeds % classes)


def candidate_seeds(seeds: Sequence[int] | np.ndarray, j: int) -> np.ndarray:
    """The seed of candidate ``j`` of each image seed, for rejection sampling (docs/LATENTS.md §7): candidate 0 is
    the seed itself (so an image whose first candidate is accepted is its plain image), candidate j >= 1 is
    ``squares32(s * 2**32 + 2**31 + j)``, a seed again, drawn by the model's own sampler with the seed's class.
    The counters lie far above those of any latent entry, so no candidate shares a stream with its seed's latent."""
    seeds = check_seeds(seeds)
    if j == 0:
        return seeds
    return squares32(seeds.astype(np.uint64) * np.uint64(2**32) + np.uint64(2**31 + j)).astype(np.int64)


def candidate_uniforms(seeds: Sequence[int] | np.ndarray, j: int) -> np.ndarray:
    """The uniform number u in (0, 1) that decides whether candidate ``j`` of each image seed is accepted
    (``u < acceptance``): ``(squares32(s * 2**32 + 2**31 + 2**30 + j) + 0.5) / 2**32``, in float64. A function of
    the seed and j alone, so an image is the same whatever batch it was drawn in."""
    seeds = check_seeds(seeds)
    k = squares32(seeds.astype(np.uint64) * np.uint64(2**32) + np.uint64(2**31 + 2**30 + j))
    return (k.astype(np.float64) + 0.5) / 2.0**32


def interpolation_path(keys: int, frames: int, *, loop: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The frames of a walk through ``keys`` key latents, ``frames`` per segment: for each frame, the key it leaves
    (``a``), the key it heads for (``b``) and how far along it is (``t`` in [0, 1), float64). Segment s goes from key s
    to key s + 1 (and, with ``loop``, from the last key back to the first); its first frame is key s itself. Without
    ``loop`` a last frame lands on the last key: ``frames * (keys - 1) + 1`` frames, ``frames * keys`` with it."""
    if keys < 2 or frames < 1:
        raise ValueError(f"a walk needs at least 2 keys and 1 frame per segment, got {keys} and {frames}")
    step = np.arange(frames * (keys if loop else keys - 1))
    a, t = step // frames, (step % frames) / frames
    if not loop:
        a, t = np.append(a, keys - 2), np.append(t, 1.0)  # the last key, reached as its segment's end
    return a, (a + 1) % keys, t


def walk_length(keys: int, frames: int, *, loop: bool = False) -> int:
    """How many frames ``interpolation_path`` gives."""
    return frames * (keys if loop else keys - 1) + (0 if loop else 1)


def slerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Spherical interpolation between rows of latents ``a`` and ``b`` at fractions ``t`` (Shoemake 1985; White,
    "Sampling Generative Networks", 2016): the angle between each pair is swept at constant speed.

    Why not a straight line: a latent z ~ N(0, I) of d entries lies near the sphere of radius √d, and the midpoint of
    two independent ones has radius √(d/2), a region the generator never saw in training (its images go grey and
    blurry). The arc keeps the radius between the two ends. t = 0 gives ``a`` and t = 1 gives ``b`` exactly; nearly
    parallel pairs fall back to the straight line, which is then the same path."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    t = np.asarray(t, np.float64)[:, None]
    cos = np.sum(a * b, axis=1, keepdims=True) / np.maximum(
        np.linalg.norm(a, axis=1, keepdims=True) * np.linalg.norm(b, axis=1, keepdims=True), 1e-300
    )
    omega = np.arccos(np.clip(cos, -1.0, 1.0))
    sin = np.sin(omega)
    straight = sin < 1e-6
    safe = np.where(straight, 1.0, sin)
    wa = np.where(straight, 1.0 - t, np.sin((1.0 - t) * omega) / safe)
    wb = np.where(straight, t, np.sin(t * omega) / safe)
    wa, wb = np.where(t == 0, 1.0, wa), np.where(t == 0, 0.0, wb)  # the key itself, bit for bit
    wa, wb = np.where(t == 1, 0.0, wa), np.where(t == 1, 1.0, wb)
    return (wa * a + wb * b).astype(np.float32)


def check_seeds(seeds: Sequence[int] | np.ndarray) -> np.ndarray:
    """Seeds as int64, or ValueError naming the range."""
    seeds = np.asarray(seeds, dtype=np.int64).reshape(-1)
    if seeds.size and not ((seeds >= 0) & (seeds < MAX_SEED)).all():
        bad = seeds[(seeds < 0) | (seeds >= MAX_SEED)][0]
        raise ValueError(f"seed {bad} is out of range: seeds are integers with 0 <= seed < 2**32")
    return seeds


def check_truncation(truncation: float | Sequence[float] | np.ndarray | None, rows: int) -> np.ndarray:
    """Per-row float32 truncations (inf: none), or ValueError naming the range."""
    t = np.broadcast_to(np.asarray(np.inf if truncation is None else truncation, dtype=np.float32), (rows,))
    limits = t[t != np.inf]
    if not ((limits >= MIN_TRUNCATION) & (limits <= MAX_TRUNCATION)).all():
        raise ValueError(f"truncation must be between {MIN_TRUNCATION} and {MAX_TRUNCATION}, got {limits}")
    return t


def _horner(coefficients: tuple[float, ...], x: np.ndarray) -> np.ndarray:
    out = np.full_like(x, coefficients[0])
    for c in coefficients[1:]:
        out = out * x + np.float32(c)
    return out


def _erf(x: np.ndarray) -> np.ndarray:
    return np.array([math.erf(v) for v in x.tolist()], dtype=np.float32)  # one per row: numpy has no erf
