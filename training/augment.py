"""Differentiable augmentation for D, applied with a probability that ADA may steer.

A GAN trained on a few thousand images fails in a known way: D memorises the training set, its outputs on real
images go to "certainly real", and G's gradient stops carrying information. Two papers answer it the same way,
by showing D only augmented images, real and generated alike, so it cannot memorise the exact pixels:

- DiffAugment (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training"): the same random,
  differentiable transformations on real and fake images every time D sees them, in D's step and in G's step, so
  G's gradient flows back through the augmentation. Because G is always judged on augmented images, it must
  produce images whose augmentations look like augmented reals, i.e. images like the reals: the augmentation does
  not leak into G's output. Policy "color,translation,cutout": brightness, saturation and contrast jitter;
  translation by up to 1/8 of the image size with zero padding; a cutout square of half the image size.
- ADA (Karras et al. 2020, "Training Generative Adversarial Networks with Limited Data"): each transformation is
  applied to each image independently with probability p, so p = 0 is exactly the identity and the clean images
  still dominate for p < 1; p is steered by an overfitting heuristic r_t = E[sign(D(x_real))] towards a target
  (0.6): when D is too sure of the reals, augment more. ``ada_step`` is that controller, a pure function.

The functions here take images in [-1, 1] (N x C x H x W) and a ``torch.Generator`` on the images' device for all
their randomness, so a resumed run draws exactly what an uninterrupted one would. Colour values follow DiffAugment's
reference code: brightness + U(-0.5, 0.5), saturation x U(0, 2) around the per-pixel channel mean, contrast
x U(0.5, 1.5) around the image mean. "Zero" padding and cutout fill mean 0 in [-1, 1], mid grey, as there.
The networks know nothing of this: the training loop calls ``augment`` before D.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

__all__ = ["POLICY_OPS", "ada_step", "augment"]


def _brightness(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return x + (_uniform(x, gen) - 0.5)


def _saturation(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    mean = x.mean(dim=1, keepdim=True)  # the grey value of each pixel; a 1-channel image is unchanged
    return (x - mean) * (_uniform(x, gen) * 2) + mean


def _contrast(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_uniform(x, gen) + 0.5) + mean


def _translation(x: torch.Tensor, gen: torch.Generator, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by whole pixels, up to ``ratio`` of its size each way; what moves in is zeros."""
    n, _, h, w = x.shape
    sy, sx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ty = torch.randint(-sy, sy + 1, (n, 1), generator=gen, device=x.device)
    tx = torch.randint(-sx, sx + 1, (n, 1), generator=gen, device=x.device)
    padded = torch.nn.functional.pad(x, (sx, sx, sy, sy))
    # out[i, j] = x[i - ty, j - tx] = padded[i - ty + sy, j - tx + sx]: two gathers, differentiable in x.
    rows = (torch.arange(h, device=x.device) - ty + sy)[:, None, :, None].expand(-1, x.shape[1], -1, w + 2 * sx)
    cols = (torch.arange(w, device=x.device) - tx + sx)[:, None, None, :].expand(-1, x.shape[1], h, -1)
    return padded.gather(2, rows).gather(3, cols)


def _cutout(x: torch.Tensor, gen: torch.Generator, ratio: float = 0.5) -> torch.Tensor:
    """Zero a square of ``ratio`` of the image's size, centred anywhere in the image (so clipped at the borders)."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    top = torch.randint(0, h + (1 - ch % 2), (n, 1), generator=gen, device=x.device) - ch // 2
    left = torch.randint(0, w + (1 - cw % 2), (n, 1), generator=gen, device=x.device) - cw // 2
    r, c = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    inside_r, inside_c = (r >= top) & (r < top + ch), (c >= left) & (c < left + cw)
    keep = ~(inside_r[:, :, None] & inside_c[:, None, :])
    return x * keep[:, None].to(x.dtype)


def _flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """ADA's xflip: mirror left-right half the time (so an image is mirrored with probability p / 2, as there)."""
    mirror = torch.rand(x.shape[0], generator=gen, device=x.device) < 0.5
    return torch.where(mirror[:, None, None, None], x.flip(3), x)


def _rotate(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """ADA's rotate90: a quarter turn k = 0, 1, 2 or 3 times, each equally likely (square images only)."""
    k = torch.randint(0, 4, (x.shape[0], 1, 1, 1), generator=gen, device=x.device)
    out = x
    for turns in (1, 2, 3):
        out = torch.where(k == turns, torch.rot90(x, turns, dims=(2, 3)), out)
    return out


def _uniform(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(x.shape[0], 1, 1, 1, generator=gen, device=x.device, dtype=x.dtype)


Op = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
# The transformations of each policy word, each drawn (applied or not) on its own: ADA's blit group first (flip,
# quarter turns; its integer translation is "translation"), then DiffAugment's words in DiffAugment's order.
POLICY_OPS: dict[str, tuple[Op, ...]] = {
    "flip": (_flip,),
    "rotate": (_rotate,),
    "color": (_brightness, _saturation, _contrast),
    "translation": (_translation,),
    "cutout": (_cutout,),
}


def augment(x: torch.Tensor, policy: Sequence[str], p: float, generator: torch.Generator) -> torch.Tensor:
    """Apply each transformation of ``policy`` to each image independently with probability ``p``.

    p = 1 is DiffAugment; p = 0 returns ``x`` itself and draws nothing. Gradients flow to ``x``. For each
    transformation, the apply/skip draw and the parameters are drawn for the whole batch whatever is applied, so
    the generator advances by the same amount for a given batch and policy.
    """
    if p <= 0:
        return x
    for word in policy:
        for op in POLICY_OPS[word]:
            chosen = torch.rand(x.shape[0], generator=generator, device=x.device) < p
            x = torch.where(chosen[:, None, None, None], op(x, generator), x)
    return x


def ada_step(p: float, r_t: float, *, target: float, images: float, speed_images: float) -> float:
    """ADA's controller: move p by ``images / speed_images`` towards more augmentation when r_t > target (D is
    too sure of the reals: it overfits), towards less when below, not at all when equal; clamp to [0, 1]."""
    step = math.copysign(images / speed_images, r_t - target) if r_t != target else 0.0
    return min(max(p + step, 0.0), 1.0)
