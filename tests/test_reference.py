"""What judging compares with on small data: the reference set, and the self-test's evaluator-free groups."""

import numpy as np
import torch

from training.data import ImageSet, Splits
from training.judging.reference import POOL_BELOW, reference_images, reference_labels, uses_all
from training.judging.selftest import pixel_groups


def splits(train: int, heldout: int, *, labelled: bool = False) -> Splits:
    def part(n: int, level: int) -> ImageSet:
        labels = torch.arange(n) % 2 if labelled else None
        return ImageSet(torch.full((n, 1, 2, 2), level, dtype=torch.uint8), labels, ("a", "b") if labelled else ())

    return Splits(part(train, 10), part(heldout, 200))


def test_a_small_heldout_split_pools_every_image_train_first():
    small = splits(30, 10, labelled=True)
    assert uses_all(small) and not uses_all(small, "heldout") and uses_all(small, "all")
    pooled = reference_images(small)
    assert pooled.shape == (40, 2, 2, 1) and pooled.dtype == np.uint8  # NHWC, as the evaluator takes them
    assert (pooled[:30] == 10).all() and (pooled[30:] == 200).all()
    assert reference_labels(small).tolist() == [0, 1] * 20
    assert reference_images(small, "heldout").shape[0] == 10


def test_a_large_heldout_split_is_the_reference_alone():
    large = splits(5, POOL_BELOW)
    assert not uses_all(large) and (reference_images(large) == 200).all()
    assert reference_labels(large) is None  # unlabelled data


def test_pixel_groups_ignore_where_things_sit():
    # small or large bright squares on dark, at the far left or the far right: two kinds by size. Place moves
    # more pixels than size does (k-means on the images at 8x8 split them left/right), and the evaluator is
    # trained to ignore place, so the groups must follow size.
    rng = np.random.default_rng(0)
    images = np.zeros((40, 16, 16, 3), dtype=np.uint8)
    large = np.arange(40) % 2 == 0
    for i, (right, y) in enumerate(zip(rng.integers(0, 2, 40), rng.integers(0, 10, 40), strict=True)):
        side = 6 if large[i] else 3
        x = 16 - side if right else 0
        images[i, y : y + side, x : x + side] = 230
    groups = pixel_groups(images, k=2, seed=0)
    assert len(set(groups[large])) == 1 and len(set(groups[~large])) == 1 and groups[0] != groups[1]
    moved = np.roll(images[:, ::-1], 5, axis=2)  # flipped and shifted: the same groups
    assert (pixel_groups(moved, k=2, seed=0) == groups).all()
