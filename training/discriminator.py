"""A discriminator fitted to an exported generator, for discriminator rejection sampling (``service/drs.py``).

DRS needs D's logit to estimate log(p_data / p_g) for the generator that is served. The D saved with a training run
does so poorly: it was chasing a moving G, it scored the raw G while the served one is its EMA average, and its
batch-norm statistics in eval mode are not those it was trained with. So ``fit_discriminator`` trains D further (from
the run's D, or from scratch) against the exported generator itself, frozen, drawn through the serving runtime; then
calibrates its logit by logistic regression (``a * logit + b``, Platt scaling) on training images kept out of the
fit and fresh samples, so that sigmoid(logit) is a probability of "real" and the logit a log density ratio. Started
from a run's D, those images were still seen by it in training (the run trained on every training image), which
the manifest records (``seen_in_training``): its accuracy is then optimistic. The gate's held-out images are never
used: they judge the result.

The result is a new model folder: the same generator file (same version), the fitted D beside it, and the manifest
without a gate report, since DRS with the new D has not been judged yet.

    ganserve fit-discriminator models/default --out runs/default-drs [--from RUN_DIR] [--set steps=3000]
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from service.errors import GanserveError
from service.manifest import (
    MODEL_NAME,
    SCHEMA_VERSION,
    Calibration,
    DiscriminatorFit,
    Manifest,
    read_manifest,
    write_manifest,
)
from service.runtime import GeneratorRuntime
from training.artifacts import staged, to_unit
from training.checkpoint import load_checkpoint
from training.config import DataConfig, RunConfig
from training.data import load_splits
from training.export import ExportError, ServedDiscriminator, export_discriminator
from training.losses import LOSSES
from training.networks import Discriminator

__all__ = ["FitConfig", "FitError", "fit_discriminator"]

log = logging.getLogger("ganserve.discriminator")
FIT_SEEDS = 3 * 2**30  # image seeds of the samples D is fitted on: apart from the gate's, the burn-in's and parity's


class FitError(GanserveError, ValueError):
    """The model cannot be given a fitted discriminator; the message says why."""


class FitConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: int = Field(2000, ge=1, description="D updates against the frozen generator")
    batch_size: int = Field(128, ge=8)
    lr: float = Field(2e-4, gt=0)
    betas: tuple[float, float] = (0.5, 0.999)
    calibration_images: int = Field(5000, ge=100, description="training images kept out of the fit to calibrate on")
    seed: int = 0


class Calibrated(torch.nn.Module):
    """D's logit, scaled and shifted: a * D(x) + b."""

    def __init__(self, d: torch.nn.Module, a: float, b: float) -> None:
        super().__init__()
        self.d, self.a, self.b = d, a, b

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.d(x, labels) * self.a + self.b


def fit_discriminator(
    model_dir: Path,
    out_dir: Path,
    *,
    cfg: FitConfig | None = None,
    run: Path | None = None,
    data: DataConfig | None = None,
    progress: bool = True,
) -> Manifest:
    """Write ``model_dir``'s generator with a D fitted to it into the new folder ``out_dir``; its manifest."""
    cfg = cfg or FitConfig()
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FitError(f"{out_dir} is not empty; choose a new folder")
    manifest = read_manifest(model_dir)
    if manifest.training is None:
        raise FitError(f"{model_dir}'s manifest names no training run, so D's shape and data are unknown")
    run_cfg = RunConfig.model_validate(manifest.training.config)
    splits = load_splits(data or run_cfg.data)
    if len(splits.train) < cfg.calibration_images + cfg.batch_size:
        raise FitError(f"{len(splits.train)} training images: too few to fit on and keep {cfg.calibration_images} "
                       "to calibrate with; lower calibration_images")  # fmt: skip
    torch.manual_seed(cfg.seed)
    d = Discriminator(run_cfg.model)
    started_from = "scratch"
    if run is not None:
        state = load_checkpoint(run)
        if state["config"]["model"] != manifest.training.config["model"]:
            raise FitError(f"{run} trained another architecture than {model_dir}'s generator: its D does not fit")
        if Path(run).name != manifest.training.run_id:
            log.warning("starting from %s's D, though %s was trained by run %s", run, model_dir,
                        manifest.training.run_id)  # fmt: skip
        d.load_state_dict(state["D"])
        started_from = f"{Path(run).name} step {state['step']}"
    generator = GeneratorRuntime(model_dir, providers=["CPUExecutionProvider"])
    conditional = manifest.conditional
    images, labels = splits.train.images, splits.train.labels
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(cfg.seed))
    fit, held = order[cfg.calibration_images :], order[: cfg.calibration_images]

    def fakes(start: int, n: int, classes: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        drawn = generator.generate(np.arange(start, start + n), None if classes is None else classes.numpy())
        x = to_unit(torch.from_numpy(drawn.images), channels_last=True)
        return x, None if drawn.labels is None else torch.from_numpy(drawn.labels)

    d_loss = LOSSES["nonsaturating"].d_loss  # binary cross-entropy: its optimum is the log density ratio
    opt = torch.optim.Adam(d.parameters(), lr=cfg.lr, betas=cfg.betas)
    d.train()
    bar = _bar(cfg.steps, progress)
    for step in range(cfg.steps):
        idx = fit[torch.randint(len(fit), (cfg.batch_size,))]
        real = to_unit(images[idx])
        real_labels = labels[idx] if conditional else None
        fake, fake_labels = fakes(FIT_SEEDS + step * cfg.batch_size, cfg.batch_size, real_labels)
        # one batch of both: a batch-normalised D then learns with the statistics of the mixture, which are what
        # its running averages hold when it scores samples alone at serve time (two batches would not be)
        both = d(torch.cat([real, fake]), None if real_labels is None else torch.cat([real_labels, fake_labels]))
        loss = d_loss(both[: len(real)], both[len(real) :])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.update(1)
        if step % 100 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    d.eval()
    calibration = _calibrate(d, to_unit(images[held]), labels[held] if conditional else None, fakes,
                             seen=run is not None)  # fmt: skip
    served = ServedDiscriminator(Calibrated(d, calibration.a, calibration.b), conditional).eval()
    fit = DiscriminatorFit(steps=cfg.steps, start=started_from, calibration=calibration)
    return _write(model_dir, out_dir, manifest, served, generator, fit)


def _calibrate(d: torch.nn.Module, real: torch.Tensor, real_labels, fakes, *, seen: bool) -> Calibration:
    """a and b minimising the cross-entropy of sigmoid(a * logit + b) on held-back real images and as many fresh
    samples; with D's accuracy there, before and after (the instrument's strength: near 0.5, DRS cannot help)."""
    n = len(real)
    fake, fake_labels = fakes(FIT_SEEDS - n, n, real_labels)  # seeds below those fitted on
    with torch.no_grad():
        scores = torch.cat([torch.cat([d(real[i : i + 500], None if real_labels is None else real_labels[i : i + 500]),
                                       d(fake[i : i + 500], None if fake_labels is None else fake_labels[i : i + 500])])
                            for i in range(0, n, 500)])  # fmt: skip
        truth = torch.cat([torch.cat([torch.ones(min(500, n - i)), torch.zeros(min(500, n - i))])
                           for i in range(0, n, 500)])  # fmt: skip
    if not torch.isfinite(scores).all():
        raise ExportError("the fitted discriminator gives non-finite logits; nothing written")
    a = torch.ones((), requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    lbfgs = torch.optim.LBFGS([a, b], max_iter=200, line_search_fn="strong_wolfe")
    bce = torch.nn.functional.binary_cross_entropy_with_logits

    def closure() -> torch.Tensor:
        lbfgs.zero_grad()
        loss = bce(a * scores + b, truth)
        loss.backward()
        return loss

    before = bce(scores, truth).item()
    lbfgs.step(closure)
    with torch.no_grad():
        after = bce(a * scores + b, truth).item()
        accuracy = ((a * scores + b > 0).float() == truth).float().mean().item()
    log.info("calibrated D: a %.3f, b %.3f; cross-entropy %.4f -> %.4f (log 2 = %.4f), accuracy %.4f",
             a.item(), b.item(), before, after, math.log(2), accuracy)  # fmt: skip
    return Calibration(a=a.item(), b=b.item(), images=n, bce_before=before, bce=after, accuracy=accuracy,
                       jsd_lower_bound_nats=max(0.0, math.log(2) - after), seen_in_training=seen)  # fmt: skip


def _write(model_dir: Path, out_dir: Path, manifest: Manifest, discriminator: ServedDiscriminator,
           generator: GeneratorRuntime, fit: DiscriminatorFit) -> Manifest:  # fmt: skip
    """The generator file and manifest copied, the fitted D exported and calibrated beside them; whole or nothing."""
    with staged(out_dir, prefix=".fit-") as staging:
        shutil.copy2(model_dir / MODEL_NAME, staging / MODEL_NAME)
        step = manifest.training.step
        info = export_discriminator(discriminator, staging, generator, manifest.image, step=step)
        fitted = manifest.model_copy(update={
            "schema_version": SCHEMA_VERSION, "discriminator": info.model_copy(update={"fit": fit}), "gate": None,
        })  # fmt: skip
        write_manifest(staging, fitted)
        read_manifest(staging)  # both files against their sha256
    log.info("wrote %s: %s's generator with a D fitted to it (from %s)", out_dir, model_dir, fit.start)
    return fitted


def _bar(total: int, progress: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="fitting D", unit="step", disable=not progress, leave=False)
