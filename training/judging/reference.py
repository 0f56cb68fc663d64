"""The real images judging compares generated ones with.

Two jobs need real images, and they need different ones:

- the distribution statistics (FID, clusters, coverage, the judges) and the evaluator's self-test ask "is this
  sample drawn like the data?". Their noise falls with the number of real images, and any real image answers:
  StyleGAN2-ADA computes FID against the whole training set on small data for this reason;
- memorization asks "are samples closer to the training set than unseen images are?", which only held-out images
  can answer, and a median of 100 of them is already stable.

So the reference set is the held-out split where it is large enough to fill the self-test's two halves on its own
(``POOL_BELOW``), and every real image (training and held-out) below that. On a 1,000-image folder that is the
difference between halves of 125 images, where the self-test's verdict depended on the draw, and halves of 500,
where it passed (bench/selftest_pool.py, docs/SMALL_DATA.md). Memorization always uses the held-out split.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from training.data import Splits

__all__ = ["POOL_BELOW", "Reference", "reference_images", "reference_labels", "uses_all"]

Reference = Literal["auto", "heldout", "all"]
POOL_BELOW = 4000  # held-out images: from here on the held-out split alone gives two self-test halves of 2,000


def uses_all(splits: Splits, mode: Reference = "auto") -> bool:
    """Whether the reference set is every real image (``"all"``, or ``"auto"`` on a small held-out split)."""
    return mode == "all" or (mode == "auto" and len(splits.heldout) < POOL_BELOW)


def reference_images(splits: Splits, mode: Reference = "auto") -> np.ndarray:
    """The reference images, uint8 NHWC: the held-out split, or the training split followed by it."""
    parts = [splits.train.images, splits.heldout.images] if uses_all(splits, mode) else [splits.heldout.images]
    return torch.cat(parts).permute(0, 2, 3, 1).contiguous().numpy()


def reference_labels(splits: Splits, mode: Reference = "auto") -> np.ndarray | None:
    """Their labels, in the same order, or None for unlabelled data."""
    if splits.heldout.labels is None:
        return None
    parts = [splits.train.labels, splits.heldout.labels] if uses_all(splits, mode) else [splits.heldout.labels]
    return torch.cat(parts).numpy()
