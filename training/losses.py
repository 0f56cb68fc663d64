"""Adversarial objectives as pure functions of D's scores, in a registry keyed by ``LossConfig.name``.

- ``nonsaturating``: the minimax value V(D, G) for D; G maximises log D(G(z)) instead of minimising
  log(1 - D(G(z))), which keeps its gradient alive early on (Goodfellow et al. 2014).
- ``wgan``: the Wasserstein critic with weight clipping (Arjovsky et al. 2017).
- ``wgan-gp``: the same critic with a gradient penalty instead of clipping (Gulrajani et al. 2017).
- ``hinge``: hinge loss for D, meant for a spectrally normalised D (Miyato et al. 2018).

Each entry says what else its objective asks of the training step (``Loss.penalty``, ``Loss.clip``), so the step
reads the entry, never the loss's name. ``lecam_penalty`` is a regulariser that any of them can add to D's loss
(``loss.lecam``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["LOSSES", "Loss", "clip_weights", "gradient_penalty", "lecam_penalty"]


@dataclass(frozen=True)
class Loss:
    d_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (scores on real, scores on fake) -> scalar
    g_loss: Callable[[torch.Tensor], torch.Tensor]  # scores on fake -> scalar
    probabilistic: bool  # scores are logits of D(x) = P(real), so sigmoid(score) is meaningful
    penalty: bool = False  # D's loss adds ``LossConfig.gp_weight`` x ``gradient_penalty`` (WGAN-GP)
    clip: bool = False  # after each D step, D's weights are clipped to +-``LossConfig.clip`` (``clip_weights``, WGAN)


def _ns_d(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(real, torch.ones_like(real)) + F.binary_cross_entropy_with_logits(
        fake, torch.zeros_like(fake)
    )


def _ns_g(fake: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))


def _critic_d(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return fake.mean() - real.mean()


def _critic_g(fake: torch.Tensor) -> torch.Tensor:
    return -fake.mean()


def _hinge_d(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()


LOSSES: dict[str, Loss] = {
    "nonsaturating": Loss(_ns_d, _ns_g, probabilistic=True),
    "wgan": Loss(_critic_d, _critic_g, probabilistic=False, clip=True),
    "wgan-gp": Loss(_critic_d, _critic_g, probabilistic=False, penalty=True),
    "hinge": Loss(_hinge_d, _critic_g, probabilistic=False),
}


def gradient_penalty(
    critic: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
    labels: torch.Tensor | None,
    real: torch.Tensor,
    fake: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """E[(||grad_x D(x_hat)||_2 - 1)^2] on random interpolates x_hat between real and fake images of the same labels."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, generator=generator, device=real.device, dtype=real.dtype)
    x_hat = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat, labels).sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


@torch.no_grad()
def clip_weights(net: torch.nn.Module, bound: float) -> None:
    """Every weight of ``net`` clipped to [-bound, bound] in place: WGAN's crude Lipschitz constraint on its critic."""
    for p in net.parameters():
        p.clamp_(-bound, bound)


def lecam_penalty(
    real: torch.Tensor, fake: torch.Tensor, ema_real: torch.Tensor, ema_fake: torch.Tensor
) -> torch.Tensor:
    """LeCam's regulariser (Tseng et al. 2021, "Regularizing GANs under Limited Data"): D's scores on reals kept
    from rising above the moving average of its scores on fakes, and its scores on fakes from falling below that of
    the reals, E[relu(D(x) - a_F)^2] + E[relu(a_R - D(G(z)))^2]. On little data D's scores on the two drift apart
    without end; this bounds how far, which the paper shows is a weighted LeCam divergence between them."""
    return F.relu(real - ema_fake).pow(2).mean() + F.relu(ema_real - fake).pow(2).mean()
