"""DCGAN-class generator and discriminator, sized by ``ModelConfig``.

The networks only compute ``forward``: drawing latents, choosing labels, eval mode and I/O live elsewhere.
Both grow or shrink a base grid of 4..7 pixels by factors of two, so one design covers 28x28 (Fashion-MNIST:
7 -> 14 -> 28) and 32 or 64 (4 -> 8 -> ... ). G conditions on a class by a learned embedding concatenated to z;
D by projection (Miyato & Koyama 2018), which adds <embed(y), features> to its unconditional score.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from training.config import ModelConfig

__all__ = ["Discriminator", "Generator", "build_networks", "init_weights"]


def _plan(image_size: int) -> tuple[int, int]:
    """Base grid side and number of x2 steps that reach ``image_size``."""
    steps, side = 0, image_size
    while side > 7:
        if side % 2:
            break
        side, steps = side // 2, steps + 1
    if not 4 <= side <= 7 or steps < 1:
        raise ValueError(f"image_size {image_size} is not a base of 4..7 pixels doubled at least once")
    return side, steps


class Generator(nn.Module):
    """z (N x latent_dim) [+ labels (N,)] -> images (N x C x H x W) in [-1, 1]."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.latent_dim, self.num_classes = cfg.latent_dim, cfg.num_classes if cfg.conditional else 0
        self.base, steps = _plan(cfg.image_size)
        self.base_channels = cfg.g_width * 2 ** (steps - 1)
        in_dim = cfg.latent_dim
        if self.num_classes:
            self.embed = nn.Embedding(self.num_classes, cfg.embed_dim)
            in_dim += cfg.embed_dim
        self.project = nn.Sequential(
            nn.Linear(in_dim, self.base_channels * self.base**2, bias=False),
            nn.BatchNorm1d(self.base_channels * self.base**2),
            nn.ReLU(inplace=True),
        )
        layers: list[nn.Module] = []
        channels = self.base_channels
        for _ in range(steps - 1):
            layers += [
                nn.ConvTranspose2d(channels, channels // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(channels // 2),
                nn.ReLU(inplace=True),
            ]
            channels //= 2
        layers += [nn.ConvTranspose2d(channels, cfg.channels, 4, 2, 1), nn.Tanh()]
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.num_classes:
            if labels is None:
                raise ValueError("this generator is class-conditional: pass labels")
            z = torch.cat([z, self.embed(labels)], dim=1)
        h = self.project(z).view(-1, self.base_channels, self.base, self.base)
        return self.body(h)


class Discriminator(nn.Module):
    """images [+ labels] -> one unnormalised score (logit) per image."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        base, steps = _plan(cfg.image_size)
        self.num_classes = cfg.num_classes if cfg.conditional else 0
        wrap = spectral_norm if cfg.d_norm == "spectral" else (lambda m: m)
        layers: list[nn.Module] = []
        in_ch, out_ch = cfg.channels, cfg.d_width
        for i in range(steps):
            layers.append(wrap(nn.Conv2d(in_ch, out_ch, 4, 2, 1, bias=cfg.d_norm in ("spectral", "none"))))
            if i > 0 and cfg.d_norm == "batch":  # DCGAN: no normalisation on the input layer
                layers.append(nn.BatchNorm2d(out_ch))
            elif i > 0 and cfg.d_norm == "layer":
                layers.append(nn.GroupNorm(1, out_ch))  # layer norm over C x H x W, per-channel affine
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            in_ch, out_ch = out_ch, out_ch * 2
        self.body = nn.Sequential(*layers, nn.Flatten())
        features = in_ch * base * base
        self.score = wrap(nn.Linear(features, 1))
        if self.num_classes:
            self.embed = wrap(nn.Embedding(self.num_classes, features))

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.body(images)
        out = self.score(h).squeeze(1)
        if self.num_classes:
            if labels is None:
                raise ValueError("this discriminator is class-conditional: pass labels")
            out = out + (self.embed(labels) * h).sum(dim=1)
        return out


def init_weights(module: nn.Module) -> None:
    """DCGAN init: N(0, 0.02) for conv, linear and embedding weights; BN scale N(1, 0.02), shift 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)):
        weight = getattr(module, "parametrizations", None)
        target = weight.weight.original if weight is not None else module.weight
        nn.init.normal_(target, 0.0, 0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def build_networks(cfg: ModelConfig) -> tuple[Generator, Discriminator]:
    g, d = Generator(cfg), Discriminator(cfg)
    g.apply(init_weights)
    d.apply(init_weights)
    return g, d
