"""The evaluator's self-test: does it see known damage to real images, beyond the noise of real-vs-real?

The real images the gate compares with (``reference.py``: the held-out split, or every real image on small data)
are split in two halves, A and B. Each degradation is applied to B and compared with A, by the statistics the gate
decides with:

- ``blur``: Gaussian blur, sigma 3.5 % of the image side (1 pixel at 28x28, 2.2 at 64x64).
- ``noise``: additive Gaussian noise, sd 8 levels of 255 (3 %: seen when one looks closely). A network at its
  random initialisation sees blur as well as a trained one, but not this noise (FID 1.06x real-vs-real against 2.9x
  for the shipped evaluator, measured on Fashion-MNIST): it is the test an untrained evaluator fails.
- ``shuffle``: pixels scrambled within blocks of 1/14 of the side (2x2 at 28x28): local texture destroyed, the
  coarse image kept.
- ``clusters``: half of the data's classes (labelled data) or of the k-means clusters of its images' intensity
  quantiles (unlabelled; ``pixel_groups``) removed: mode dropping.
- ``copies``: training images in place of B. Copies are a sample of the data distribution, so no distribution
  statistic can tell them apart, by construction; they are the memorization check's job, and the self-test checks
  that check's power too (pixel nearest-neighbour distance, evaluator-free), against held-out images as the gate
  does.

The rules, each the gate's own decision asked of a known answer:

- blur, noise, shuffle: the paired FID difference FID(A, damaged B) - FID(A, B), with a bootstrap interval over
  both sets, must lie above the gate's default margin (``fid_margin`` x FID(A, B), 2 %): the gate would reject a
  generator this damaged against a production as good as real data. The default, not a gate's own setting: the
  instrument's record must not change with how lenient one gate is. Paired, like the gate's comparison with
  production: the same images with and without the damage share their sampling noise (measured on emoji, 491
  images a side: unpaired, real-vs-real FID spread by ~10 % of its value, more than 8-level noise adds; paired, the
  noise's interval lay at 2.2..5.3 against a limit of 0.14).
  And the feature judge's accuracy on A against damaged B must exceed its accuracy on A against B by ``z``
  binomial standard errors.
- clusters: NDB, the gate's mode-dropping statistic. Of the k clusters of A's features, more must differ
  significantly in share (at 5 %) than the 5 % of false positives real data gives, by ``z`` binomial sd. FID and
  the judge are recorded, not required: the judge's accuracy on a dropped half is at most 0.75 and needs the
  dropped modes to be linearly separable, and FID's unpaired spread hides a dropped half on small data.

All degradations are computed from the images alone, never from the evaluator, so an evaluator cannot pass by
defining its own test.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from training.data import Splits
from training.judging import metrics
from training.judging.reference import POOL_BELOW, Reference, reference_images, reference_labels, uses_all

__all__ = ["DEGRADATIONS", "run_selftest"]

MAX_HALF = POOL_BELOW // 2  # images per half; the FID of 128-d features is stable well below this
GROUPS = 4  # unlabelled data: pixel groups, half of them dropped (two big modes removed, not four small ones)


def _nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float()


def _nhwc(x: torch.Tensor) -> np.ndarray:
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def blur(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    sigma = 0.035 * images.shape[1]
    radius = max(1, math.ceil(3 * sigma))
    taps = torch.exp(-(torch.arange(-radius, radius + 1).float() ** 2) / (2 * sigma**2))
    taps /= taps.sum()
    x, c = _nchw(images), images.shape[3]
    x = F.conv2d(
        F.pad(x, (radius, radius, 0, 0), mode="replicate"), taps.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c
    )
    x = F.conv2d(
        F.pad(x, (0, 0, radius, radius), mode="replicate"), taps.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c
    )
    return _nhwc(x)


def noise(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.clip(images + rng.normal(0, 8, images.shape), 0, 255).round().astype(np.uint8)


def shuffle(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n, h, w, c = images.shape
    b = max(2, h // 14)
    hh, ww = h - h % b, w - w % b
    out = images.copy()
    blocks = out[:, :hh, :ww].reshape(n, hh // b, b, ww // b, b, c).transpose(0, 1, 3, 2, 4, 5)
    blocks = blocks.reshape(n, hh // b, ww // b, b * b, c)
    order = rng.permuted(np.broadcast_to(np.arange(b * b), blocks.shape[:4]), axis=3)
    blocks = np.take_along_axis(blocks, order[..., None], axis=3)
    out[:, :hh, :ww] = blocks.reshape(n, hh // b, ww // b, b, b, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, hh, ww, c)
    return out


def drop_clusters(images: np.ndarray, groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Keep the images outside half of the groups (at least one group dropped)."""
    present = np.unique(groups)
    dropped = rng.choice(present, max(1, len(present) // 2), replace=False)
    return images[~np.isin(groups, dropped)]


DEGRADATIONS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "blur": blur,
    "noise": noise,
    "shuffle": shuffle,
}


def pixel_groups(images: np.ndarray, *, k: int, seed: int) -> np.ndarray:
    """k-means clusters of each image's per-channel intensity quantiles (5 % to 95 %, 16 of them): a grouping that
    owes nothing to any evaluator. Quantiles, not the pixels in place: the evaluator is trained to ignore shifts
    and flips (its views), so groups that differ only in where things sit are modes it is built not to see.
    Measured on 1,000 shapes on noise (bench/small_gate.py), NDB's clusters that differ, of 20 (limit 3.9), after
    three or four random drops: the images at 8x8 in 8 groups (which sort by place) 0, 0, 5; these quantiles in 8
    groups 7, 7, 8 on one draw of the folder but 6, 1, 5, 3 on another; in ``GROUPS`` = 4, 7, 9, 8, 11 there."""
    x = torch.from_numpy(metrics.pixel_fractions(images)).flatten(1, 2)
    q = torch.quantile(x, torch.linspace(0.05, 0.95, 16), dim=1).permute(1, 0, 2).flatten(1).numpy()
    return metrics.nearest_centre(q, metrics.kmeans(q, k, seed=seed))


def run_selftest(
    evaluator,
    splits: Splits,
    *,
    seed: int = 0,
    reference: Reference = "auto",
    z: float = 3.0,
    fid_margin: float = 0.02,
    rounds: int = 50,
    judge_seeds=(0, 1),
) -> dict:
    """Run the self-test of ``evaluator`` (an ``Evaluator``) on ``splits``, with halves of the ``reference`` images
    the gate would compare with; return the record."""
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    real = reference_images(splits, reference)
    half = min(len(real) // 2, MAX_HALF)
    order = rng.permutation(len(real))
    a, b = real[order[:half]], real[order[half : 2 * half]]
    f_a, f_b = evaluator.features(a), evaluator.features(b)
    real_fid = metrics.fid(f_a, f_b)
    null_judge = metrics.logistic_judge(f_a, f_b, seeds=list(judge_seeds))["accuracy"]
    tests, failures = {}, []
    for name, damage in DEGRADATIONS.items():
        f_d = evaluator.features(damage(b, rng))
        paired = metrics.fid_paired_difference(f_a, f_d, f_b, rounds=rounds, seed=seed)
        judge = metrics.logistic_judge(f_a, f_d, seeds=list(judge_seeds))
        fid_limit, acc_limit = fid_margin * real_fid, max(null_judge, 0.5) + z * judge["binomial_se"]
        passed = paired["ci95"][0] > fid_limit and judge["accuracy"] > acc_limit
        tests[name] = {
            "images": len(b), "fid_difference": round(paired["difference"], 4),
            "fid_difference_ci95": [round(v, 4) for v in paired["ci95"]], "fid_limit": round(fid_limit, 4),
            "judge_accuracy": round(judge["accuracy"], 4), "judge_limit": round(acc_limit, 4), "passed": passed,
        }  # fmt: skip
        if not passed:
            failures.append(
                f"{name}: FID +{paired['difference']:.3g} (interval from {paired['ci95'][0]:.3g}, limit "
                f"{fid_limit:.3g}), judge {judge['accuracy']:.3f} (limit {acc_limit:.3f})"
            )
    labels = reference_labels(splits, reference)
    groups = labels[order[half : 2 * half]] if labels is not None else pixel_groups(b, k=GROUPS, seed=seed)
    tests["clusters"] = _clusters(evaluator, b, groups, f_a, rng, seed=seed, z=z, judge_seeds=judge_seeds)
    if not tests["clusters"]["passed"]:
        c = tests["clusters"]
        failures.append(f"clusters: {c['ndb']} of {c['ndb_k']} clusters differ (limit {c['ndb_limit']:.3g})")
    tests["learned"] = _learned(evaluator, splits, z=z)
    if not tests["learned"]["passed"]:
        t = tests["learned"]
        failures.append(f"learned: {t['statistic']} {t['value']:.3f}, limit {t['limit']:.3f} ({t['baseline']})")
    tests["copies"] = _copies(splits, rng)
    if not tests["copies"]["passed"]:
        failures.append(f"copies: memorization ratio {tests['copies']['ratio']:.3f} is not below 0.9")
    return {
        "passed": not failures,
        "failures": failures,
        "heldout_images": len(splits.heldout),
        "reference": "all" if uses_all(splits, reference) else "heldout",
        "reference_images": len(real),
        "half": half,
        "z": z,
        "real_fid": round(real_fid, 4),
        "real_judge_accuracy": round(null_judge, 4),
        "tests": tests,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _clusters(evaluator, b: np.ndarray, groups: np.ndarray, f_a: np.ndarray, rng, *, seed: int, z: float,
              judge_seeds) -> dict:  # fmt: skip
    """B without half of its ``groups`` against A, by NDB on k-means clusters of A's features (the gate's k)."""
    kept = drop_clusters(b, groups, rng)
    f_k = evaluator.features(kept)
    k = metrics.cluster_count(2 * len(f_a))
    result = metrics.ndb(f_a, f_k, centres=metrics.kmeans(f_a, k, seed=seed))
    alpha = 0.05  # NDB's per-cluster test level: real data shows this share of "different" clusters by chance
    limit = alpha * k + z * math.sqrt(k * alpha * (1 - alpha))
    judge = metrics.logistic_judge(f_a, f_k, seeds=list(judge_seeds))
    return {
        "images": len(kept), "ndb": result["ndb"], "ndb_k": k, "ndb_limit": round(limit, 4),
        "dropped_share": round(result["dropped_share"], 4), "fid": round(metrics.fid(f_a, f_k), 4),
        "judge_accuracy": round(judge["accuracy"], 4), "passed": result["ndb"] > limit,
    }  # fmt: skip


def _learned(evaluator, splits: Splits, *, z: float, n: int = 2000, min_gain: float = 0.05) -> dict:
    """Has training taught the evaluator anything beyond what its architecture sees untrained? A network at its
    random initialisation already sees most low-level damage (measured on blobs: a 1-step evaluator passes blur,
    noise, shuffle and clusters), so power alone cannot refuse an untrained one. A classifier must beat the majority
    class on held-out labels by ``z`` binomial SE; a contrastive evaluator's validation loss must have fallen by
    ``min_gain`` of its value at the starting weights (both recorded in its manifest, which its sha256 pins)."""
    if evaluator.labelled:
        held = splits.heldout.images[:n].permute(0, 2, 3, 1).contiguous().numpy()
        logits, _ = evaluator(held)
        labels = splits.heldout.labels[:n].numpy()
        value = float((logits.argmax(1) == labels).mean())
        chance = float(np.bincount(labels).max() / len(labels))
        limit = chance + z * math.sqrt(chance * (1 - chance) / len(labels))
        return {"statistic": "held-out accuracy (must exceed the limit)", "value": round(value, 4),
                "limit": round(limit, 4), "baseline": f"majority class {chance:.3f}",
                "passed": value > limit}  # fmt: skip
    record = evaluator.manifest.validation or {}
    start, end = record.get("start"), record.get("end")
    if start is None or end is None:
        return {"statistic": "validation loss", "value": math.nan, "limit": math.nan,
                "baseline": "no record in the manifest", "passed": False}  # fmt: skip
    limit = start * (1 - min_gain)
    return {"statistic": "validation loss (must fall below the limit)", "value": round(end, 4),
            "limit": round(limit, 4), "baseline": f"{start:.3f} at the starting weights",
            "passed": end < limit}  # fmt: skip


def _copies(splits: Splits, rng: np.random.Generator) -> dict:
    """Training images against held-out ones, by the gate's memorization statistic."""
    train, held = splits.train.images, splits.heldout.images
    n = min(len(held), 500, len(train))
    copies = train[np.sort(rng.choice(len(train), n, replace=False))].permute(0, 2, 3, 1).contiguous().numpy()
    unseen = held[np.sort(rng.choice(len(held), n, replace=False))].permute(0, 2, 3, 1).contiguous().numpy()
    reference = train.permute(0, 2, 3, 1).contiguous().numpy()
    copied = float(np.median(metrics.nearest_neighbour_distances(copies, reference)))
    real = float(np.median(metrics.nearest_neighbour_distances(unseen, reference)))
    ratio = copied / real if real > 0 else 1.0
    return {"images": n, "ratio": round(ratio, 4), "passed": ratio < 0.9}
