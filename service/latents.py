"""The seed-to-latent protocol, defined once for training, export and serving.

Image seed ``s`` always gives the same latent ``z``, whatever batch or request it travels in: each image draws its
latent from its own ``numpy.random.default_rng(s)``. Drawing per image costs ~6 µs (see shared/design/performance.md),
far below inference, and buys exact reproducibility of every image from its seed alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["MAX_SEED", "PROTOCOL", "latents_for_seeds"]

PROTOCOL = "numpy-default_rng-standard_normal-float32/v1"
MAX_SEED = 2**32  # seeds are 0 <= s < 2**32, what an HTTP client can send as a plain JSON integer


def latents_for_seeds(seeds: Sequence[int], latent_dim: int, *, truncation: float | None = None) -> np.ndarray:
    """Return a float32 array of shape ``(len(seeds), latent_dim)``; row i is z ~ N(0, I) drawn from seed i.

    With ``truncation`` t, entries with |z| > t are redrawn from the same generator until none is left (the
    truncation trick: fidelity for variety); the result still depends on the seed and t alone.
    """
    out = np.empty((len(seeds), latent_dim), dtype=np.float32)
    for row, seed in enumerate(seeds):
        if not 0 <= seed < MAX_SEED:
            raise ValueError(f"seed {seed} is out of range: seeds are integers with 0 <= seed < 2**32")
        rng = np.random.default_rng(seed)
        z = rng.standard_normal(latent_dim, dtype=np.float32)
        if truncation is not None:
            while (outside := np.abs(z) > truncation).any():
                z[outside] = rng.standard_normal(int(outside.sum()), dtype=np.float32)
        out[row] = z
    return out
