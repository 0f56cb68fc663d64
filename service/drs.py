"""Discriminator rejection sampling (Azadi et al., "Discriminator Rejection Sampling", ICLR 2019), as arithmetic.

For a fixed generator the best discriminator is D*(x) = p_data / (p_data + p_g), so its logit is log(p_data / p_g):
accepting a sample x with probability proportional to p_data(x) / p_g(x) = exp(logit(x)) turns p_g into p_data.
With M the largest logit (estimated on a burn-in of samples, stored in the manifest at export), exp(logit - M) is
that probability scaled into (0, 1]. It accepts very few samples, so the paper shifts it in logit space:

    F(x) = logit(x) - M - log(1 - exp(logit(x) - M - eps)) - gamma,    accept when u < sigmoid(F(x)), u ~ U(0, 1)

where the log term makes sigmoid(F) equal exp(logit - M) when gamma = 0, and gamma trades fidelity for acceptance.
Here gamma is chosen at export so that a target share of burn-in samples would be accepted (``gamma_for``), since a
fixed gamma would accept 1 % of one model's samples and 90 % of another's. Pure numpy: shared by export and serving.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "DEFAULT_CANDIDATES",
    "EPSILON",
    "MAX_CANDIDATES",
    "acceptance",
    "gamma_for",
    "reported_score",
    "shifted_logit",
]

EPSILON = 1e-6  # the paper's: keeps the log finite for the burn-in's own maximum
# Candidates per image: at the calibrated 50 % mean acceptance, 16 leave about 1 image in 65,000 to the fallback when
# acceptance is even; the bound matters for images the discriminator scores low, which is the point of DRS.
DEFAULT_CANDIDATES = 16
MAX_CANDIDATES = 64  # per image: a request's cost stays a bounded multiple of plain sampling's


def shifted_logit(logits: np.ndarray, logit_max: float, gamma: float = 0.0) -> np.ndarray:
    """F(x) for discriminator logits (float64). Logits above ``logit_max`` count as the maximum: the burn-in is an
    estimate, and a later sample that beats it is accepted as surely as the best seen."""
    d = np.minimum(np.asarray(logits, np.float64) - logit_max, 0.0)
    return d - np.log1p(-np.exp(d - EPSILON)) - gamma


def acceptance(logits: np.ndarray, logit_max: float, gamma: float) -> np.ndarray:
    """The probability of accepting each sample: sigmoid(F(x))."""
    return _sigmoid(shifted_logit(logits, logit_max, gamma))


def gamma_for(logits: np.ndarray, logit_max: float, target: float) -> float:
    """The gamma at which the burn-in's mean acceptance is ``target`` (0 < target < 1), by bisection: the mean falls
    monotonically as gamma grows."""
    if not 0.0 < target < 1.0:
        raise ValueError(f"the target acceptance must be between 0 and 1, got {target}")
    shifted = shifted_logit(logits, logit_max)
    low, high = float(shifted.min()) - 50.0, float(shifted.max()) + 50.0  # mean acceptance ~1 and ~0 there
    for _ in range(200):
        mid = 0.5 * (low + high)
        if np.mean(_sigmoid(shifted - mid)) > target:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)


def reported_score(logit: float) -> float | None:
    """A D logit as the API reports it: 6 decimals, None where D gave NaN or an infinity (JSON has neither)."""
    return round(logit, 6) if math.isfinite(logit) else None


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)) without overflow for very negative x (a logit far below the maximum)."""
    return np.exp(-np.logaddexp(0.0, -x))
