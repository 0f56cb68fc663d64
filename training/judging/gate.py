"""The quality gate: judge a candidate generator, and production beside it, against real images.

Protocol (../shared/design/quality-gate.md): both models draw the same image seeds, are scored by the same frozen
evaluator against the same real images, in one run. The distribution statistics compare with the reference images
(``reference.py``: the held-out split, or every real image when it is small, as StyleGAN2-ADA does); memorization
compares with the held-out images the GAN never trained on.

0. The instrument: the evaluator must be the one trained on this data, and pass its self-test again here
   (``selftest.py``, on the same reference images); there must be at least ``min_reference`` reference images and
   ``min_heldout`` held-out ones. Otherwise the gate cannot judge and says so (GateError), rather than pass.
1. Hard guards (absolute): finite output, not near-black or constant, no near-duplicate samples, ONNX parity.
2. Coverage (absolute), without labels: k-means clusters of the reference features (k from the data size),
   NDB's per-cluster proportion tests, the share of clusters the generator drops, density, coverage and recall;
   with a classifier evaluator also class entropy, smallest class share and, for a conditional model, label
   accuracy.
3. Memorization (absolute): samples are not closer to the training set than held-out real images are.
4. Fidelity (relative): feature FID, rejected only when a paired bootstrap interval of (candidate - production)
   lies above a small tolerance: worse beyond the noise this data size allows.
5. Discriminator checks: a feature-space judge (the primary statistic) and fresh pixel-space judges; relative to
   production with margin plus interval, and an absolute ceiling on the feature judge. They also give JSD bounds.
6. Rejection sampling (``service/drs.py``): a candidate exported with its D is judged a second time on the same
   seeds sampled with DRS, every figure and absolute check again, plus the paired FID difference DRS - plain and
   what DRS cost (candidates per image, fallbacks). The verdict (helps / hurts / no detectable difference)
   decides the sampler the service uses for the model by default; the gate's decision itself judges plain sampling.
The GAN's own discriminator, when its checkpoint is at hand, is scored as a diagnostic only. The report's ``power``
section states the reference and held-out sizes and the smallest differences this run could have detected.
With no production model the absolute checks alone decide. Every threshold lives in ``GateConfig``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from service.drs import DEFAULT_CANDIDATES, MAX_CANDIDATES
from service.errors import GanserveError
from service.manifest import Manifest, ManifestError
from service.rows import version_of
from service.runtime import Drawn, GeneratorRuntime
from training.config import MAX_HOLDOUT_FRACTION, DataConfig
from training.data import Splits, load_splits
from training.judging import metrics
from training.judging.evaluator import EVALUATORS, Evaluator, data_key, find_evaluator, store_folder
from training.judging.reference import Reference, reference_images, uses_all
from training.judging.selftest import run_selftest

__all__ = ["DRS_SHOWN", "GateConfig", "GateError", "evaluate", "open_model", "sample"]

log = logging.getLogger("ganserve.gate")
REPORT_SCHEMA = 2
Z_95 = 1.96
Z_POWER = 2.8  # 1.96 + 0.84: a difference this many sd away is detected 80 % of the time at 5 %
MIN_REFERENCE = 1000  # the smallest folder whose verdicts held on every draw measured (docs/SMALL_DATA.md)
MIN_HELDOUT = 100  # memorization compares medians of nearest-neighbour distances: 100 unseen images steady one
SMALLEST = "at 1,000 images the verdicts held on 3 draws of 3"


class GateError(GanserveError, RuntimeError):
    """The gate cannot judge: wrong evaluator, missing data, or a model folder that is not a model."""


class GateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    samples: int = Field(5000, ge=100, description="images drawn from each model, seeds seed..seed+samples-1")
    seed: int = Field(1_000_000, ge=0, description="first image seed (apart from the seeds grids use)")
    guard_samples: int = Field(2000, ge=10, description="images used for the duplicate and memorization checks")
    fid_rounds: int = Field(10, ge=2)
    judge_seeds: list[int] = [0, 1, 2, 3, 4]
    pixel_judge_seeds: list[int] = [0, 1, 2]
    pixel_judge_epochs: int = Field(2, ge=1)
    pixel_judge_min_steps: int = Field(300, ge=0, description="more epochs until this many batches, on small data")
    # absolute thresholds
    min_mean_level: float = 6.4  # mean pixel above -0.95 in [-1, 1]
    max_near_black_share: float = 0.01
    min_pixel_std: float = 2.0
    max_duplicate_share: float = 0.01
    max_parity_levels: int = 1
    min_class_entropy: float = 0.97
    min_class_share: float = 0.05
    min_label_accuracy: float = 0.6
    min_memorization_ratio: float = 0.9
    max_dropped_share: float = Field(0.1, description="share of real clusters the generator (nearly) never visits")
    min_coverage: float = Field(0.5, description="share of real samples with a generated one in their k-NN ball")
    min_recall: float = Field(0.5, description="share of real samples inside some generated sample's k-NN ball")
    max_feature_judge_accuracy: float = Field(0.95, description="absolute: above this, generated images are obvious")
    # the instrument
    reference: Reference = Field(
        "auto", description="compared with: auto = the held-out split if it has 4,000+ images, else all (reference.py)"
    )
    min_reference: int = Field(MIN_REFERENCE, ge=20, description="fewer reference images: the gate cannot judge")
    min_heldout: int = Field(MIN_HELDOUT, ge=20, description="fewer held-out images (memorization): cannot judge")
    selftest: bool = Field(True, description="re-run the evaluator's self-test and refuse to judge if it fails")
    interval_rounds: int = Field(100, ge=10, description="bootstrap rounds of the paired FID interval")
    # tolerances against production (non-inferiority: ties and noise-level differences pass)
    fid_margin: float = Field(0.02, description="relative: reject when FID(c) - FID(p) > margin x FID(p) beyond noise")
    feature_judge_margin: float = 0.01
    pixel_judge_margin: float = 0.03
    # rejection sampling
    drs: bool = Field(True, description="also judge the candidate sampled with DRS, when it was exported with its D")
    drs_candidates: int = Field(DEFAULT_CANDIDATES, ge=1, le=MAX_CANDIDATES, description="DRS bound per image")


def open_model(folder: Path) -> GeneratorRuntime:
    """The model through the serving path (the one path from seeds to images), on the CPU: judging is offline."""
    try:
        return GeneratorRuntime(folder, providers=["CPUExecutionProvider"])
    except ManifestError as err:
        raise GateError(str(err)) from None


def sample(model: GeneratorRuntime, seeds: range, drs: int = 0) -> Drawn:
    """The images for the seeds, 500 at a time, with finite flags; with ``drs`` (candidates per image), by
    rejection sampling."""

    def draw(part: range) -> Drawn:
        if drs:
            return model.rejection_sample(part, candidates=drs, finite=True)
        return model.generate(part, finite=True)

    parts = [draw(seeds[i : i + 500]) for i in range(0, len(seeds), 500)]
    joined = {f.name: [getattr(p, f.name) for p in parts] for f in dataclasses.fields(Drawn)}
    return Drawn(**{k: None if v[0] is None else np.concatenate(v) for k, v in joined.items()})


@dataclasses.dataclass(frozen=True)
class _Context:
    """What one gate run compares with, made once: the models, the data and the instrument's view of the real
    images. Both models are measured against this same context."""

    candidate: GeneratorRuntime
    production: GeneratorRuntime | None
    data: DataConfig
    splits: Splits
    evaluator: Evaluator
    selftest: dict | None  # the evaluator's self-test on this data, None when GateConfig.selftest is off
    real: np.ndarray  # the reference images (reference.py), NHWC uint8
    real_features: np.ndarray
    heldout: int
    train: np.ndarray  # NHWC uint8, for the memorization check
    real_nn: float  # median nearest-neighbour distance of held-out images to the training set
    centres: np.ndarray  # one set of clusters of the real features, for both models


def evaluate(
    candidate: Path,
    *,
    evaluator: Path | None = None,
    evaluators: Path = Path("runs") / EVALUATORS,
    production: Path | None = None,
    data: DataConfig | None = None,
    checkpoint: Path | None = None,
    cfg: GateConfig | None = None,
) -> dict[str, Any]:
    """Judge ``candidate`` (and ``production`` when given) and return the report; nothing is written. Without an
    ``evaluator`` the one for the data is used: the shipped one, or one in ``evaluators`` (found by the data's key).
    Three stages: the context (models, data, instrument), the figures and checks, the report."""
    cfg = cfg or GateConfig()
    started = time.perf_counter()
    ctx = _context(candidate, production=production, evaluator=evaluator, evaluators=evaluators, data=data, cfg=cfg)
    figures = _measure(ctx, cfg, checkpoint=checkpoint)
    checks = _checks(figures, ctx.candidate.manifest, ctx.evaluator.labelled, cfg)
    report = _report(ctx, figures, checks, cfg, candidate=candidate, production=production)
    report["seconds"] = round(time.perf_counter() - started, 1)
    log.info("gate: %s in %.0f s (%s)", report["decision"], report["seconds"], "; ".join(report["reasons"]))
    return report


def _context(
    candidate: Path,
    *,
    production: Path | None,
    evaluator: Path | None,
    evaluators: Path,
    data: DataConfig | None,
    cfg: GateConfig,
) -> _Context:
    """Open the models, load the data, find and check the instrument, and compute what both models are compared
    with. Raises GateError when the gate cannot judge."""
    cand = open_model(candidate)
    prod = open_model(production) if production is not None else None
    data = data or _data_config(cand.manifest)
    splits = load_splits(data)
    net = _open_evaluator(evaluator, evaluators, splits, data)
    _check_compatible(cand.manifest, net, splits, data)
    selftest = _check_instrument(net, splits, cfg)
    heldout = splits.heldout.images.permute(0, 2, 3, 1).contiguous().numpy()
    train = splits.train.images.permute(0, 2, 3, 1).contiguous().numpy()
    real = reference_images(splits, cfg.reference)
    real_features = net.features(real)
    rng = np.random.default_rng(cfg.seed)
    real_guard = heldout[rng.choice(len(heldout), min(cfg.guard_samples, len(heldout)), replace=False)]
    return _Context(
        candidate=cand,
        production=prod,
        data=data,
        splits=splits,
        evaluator=net,
        selftest=selftest,
        real=real,
        real_features=real_features,
        heldout=len(heldout),
        train=train,
        real_nn=float(np.median(metrics.nearest_neighbour_distances(real_guard, train))),
        centres=metrics.kmeans(real_features, metrics.cluster_count(len(real)), seed=cfg.seed),
    )


def _open_evaluator(folder: Path | None, store: Path, splits: Splits, data: DataConfig) -> Evaluator:
    if folder is None:
        folder = find_evaluator(data, store=store)
        if folder is None:
            raise GateError(
                f"no evaluator for this data in {store} (nor the shipped one): train one with "
                f"ganserve train-evaluator --config RUN.yaml --out {store_folder(store, data_key(splits, data))}, "
                "or let ganserve retrain train it"
            )
    try:
        return Evaluator(folder)
    except GanserveError as err:
        raise GateError(str(err)) from None


def _measure(ctx: _Context, cfg: GateConfig, *, checkpoint: Path | None = None) -> dict[str, Any]:
    """Every figure of the report: the candidate's, production's and their paired difference, DRS's and its
    verdict when the candidate has a D, and the GAN's own D as a diagnostic when its checkpoint is given."""
    cand, prod = ctx.candidate, ctx.production
    figures = {}
    figures["candidate"], cand_features = _figures(cand, ctx, cfg)
    if prod is not None:
        figures["production"], prod_features = _figures(prod, ctx, cfg)
        figures["difference"] = {
            "fid": metrics.fid_paired_difference(
                ctx.real_features, cand_features, prod_features, rounds=cfg.interval_rounds, seed=cfg.seed
            )
        }
    if cfg.drs and cand.discriminator is not None:
        figures["candidate_drs"], drs_features = _figures(cand, ctx, cfg, drs=cfg.drs_candidates)
        drs_checks = _checks({"candidate": figures["candidate_drs"]}, cand.manifest, ctx.evaluator.labelled, cfg)
        figures["drs"] = _drs_verdict(figures, ctx.real_features, drs_features, cand_features, drs_checks, cfg)
    if checkpoint is not None:
        figures["candidate"]["own_discriminator"] = _own_discriminator(checkpoint, ctx.splits, cand, cfg)
    return figures


def _report(
    ctx: _Context, figures: dict, checks: list[dict], cfg: GateConfig, *, candidate: Path, production: Path | None
) -> dict[str, Any]:
    """The report: the decision and its reasons first, then what was compared (models, evaluator, data), the
    run's power, every check and figure, and the config that made it."""
    cand, prod, em, splits = ctx.candidate, ctx.production, ctx.evaluator.manifest, ctx.splits
    failed = [c for c in checks if not c["passed"]]
    return {
        "schema_version": REPORT_SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(),
        "decision": "reject" if failed else "pass",
        "reasons": [c["rule"] for c in failed] or ["every check passed"],
        "mode": "against production" if prod is not None else "absolute checks only (no production model)",
        "candidate": {
            "folder": str(candidate),
            "sha256": cand.manifest.sha256,
            **_run_of(cand.manifest),
            "discriminator_sha256": cand.manifest.discriminator_sha256,
        },
        "production": None if prod is None else {"folder": str(production), "sha256": prod.manifest.sha256},
        "evaluator": {
            "sha256": em.sha256,
            "method": em.method,
            "test_accuracy": em.test_accuracy,
            "selftest": ctx.selftest,
        },
        "data": {
            "path": str(ctx.data.path),
            "heldout_sha256": splits.heldout.sha256,
            "heldout_images": len(splits.heldout),
            "train_sha256": splits.train.sha256,
            "reference": "all" if uses_all(splits, cfg.reference) else "heldout",
            "reference_images": len(ctx.real),
        },
        "power": _power(figures, len(ctx.real), ctx.heldout, cfg),
        "checks": checks,
        "figures": figures,
        "config": cfg.model_dump(),
        "seeds": {"first": cfg.seed, "count": cfg.samples},
    }


def _data_config(manifest: Manifest) -> DataConfig:
    if manifest.training is None:
        raise GateError("the model's manifest names no training run, so its data is unknown: pass data=")
    return DataConfig.model_validate(manifest.training.config["data"])


def _check_compatible(manifest: Manifest, evaluator: Evaluator, splits: Splits, data: DataConfig) -> None:
    em = evaluator.manifest
    if (em.image_size, em.channels) != (manifest.image.height, manifest.image.channels):
        raise GateError(
            f"the evaluator takes {em.image_size}x{em.image_size}x{em.channels} images; "
            f"the generator makes {manifest.image.height}x{manifest.image.width}x{manifest.image.channels}"
        )
    if em.data_key != data_key(splits, data):
        raise GateError(
            f"the evaluator in {evaluator.folder} was trained on other data than {data.path} at this size; "
            "train one for it with: ganserve train-evaluator --config <your run config> (retrain does it by itself)"
        )
    if evaluator.labelled and list(splits.train.class_names) != em.class_names:
        raise GateError(f"the evaluator knows classes {em.class_names}; the data at {data.path} has others")
    if manifest.training is not None:
        recorded = manifest.training.dataset.get("heldout", {}).get("sha256")
        if recorded and recorded != splits.heldout.sha256:
            raise GateError("the held-out images differ from those recorded at training: the judge would be unfair")


def _check_instrument(evaluator: Evaluator, splits: Splits, cfg: GateConfig) -> dict | None:
    """Refuse to judge with too few real images or an evaluator that cannot see known damage."""
    real = len(splits.train) + len(splits.heldout) if uses_all(splits, cfg.reference) else len(splits.heldout)
    if real < cfg.min_reference:
        kind = "real" if uses_all(splits, cfg.reference) else "held-out"
        raise GateError(
            f"cannot judge: {real} {kind} images to compare with, at least {cfg.min_reference} are needed for the "
            f"evaluator's self-test and the gate's intervals to mean anything (docs/SMALL_DATA.md: {SMALLEST}); "
            "add images"
        )
    if len(splits.heldout) < cfg.min_heldout:
        raise GateError(
            f"cannot judge: {len(splits.heldout)} held-out images, at least {cfg.min_heldout} are needed for the "
            f"memorization check; raise data.holdout_fraction (at most {MAX_HOLDOUT_FRACTION:.0%}) or add images"
        )
    if not cfg.selftest:
        return None
    result = run_selftest(evaluator, splits, seed=evaluator.manifest.config.seed, reference=cfg.reference)
    if not result["passed"]:
        raise GateError(
            f"cannot judge: the evaluator {version_of(evaluator.manifest.sha256)} fails its self-test on this data "
            f"({'; '.join(result['failures'])}); train a stronger one: ganserve train-evaluator --set max_steps=..."
        )
    return {k: v for k, v in result.items() if k != "tests"} | {
        "tests": {name: t["passed"] for name, t in result["tests"].items()}
    }


def _run_of(manifest: Manifest) -> dict:
    t = manifest.training
    return {} if t is None else {"run_id": t.run_id, "step": t.step}


def _figures(
    model: GeneratorRuntime, ctx: _Context, cfg: GateConfig, *, drs: int = 0
) -> tuple[dict[str, Any], np.ndarray]:
    """The model's figures, and its samples' features (for the paired intervals); ``drs``: sampled by rejection
    sampling with that many candidates per image at most."""
    drawn = sample(model, range(cfg.seed, cfg.seed + cfg.samples), drs)
    images, finite, requested = drawn.images, drawn.finite, drawn.labels
    logits, features = ctx.evaluator(images)
    guard = images[: cfg.guard_samples]
    nn_fake = float(np.median(metrics.nearest_neighbour_distances(guard, ctx.train)))
    real_features = ctx.real_features
    coverage = {} if logits is None else metrics.class_coverage(logits, requested)
    figures = {
        "finite_share": float(finite.mean()),
        **metrics.pixel_guards(guard, black_level=cfg.min_mean_level),
        **coverage,
        "clusters": metrics.ndb(real_features, features, centres=ctx.centres),
        **metrics.density_coverage(real_features[: cfg.samples], features[: len(real_features)]),
        **metrics.fid_bootstrap(real_features, features, rounds=cfg.fid_rounds, seed=cfg.seed),
        "kid": metrics.kid(real_features, features, seed=cfg.seed),
        **metrics.precision_recall(real_features[: cfg.guard_samples], features[: cfg.guard_samples]),
        "nn_distance_median": nn_fake,
        "nn_distance_real_median": ctx.real_nn,
        "memorization_ratio": nn_fake / ctx.real_nn,
        "feature_judge": metrics.logistic_judge(real_features, features, seeds=cfg.judge_seeds),
        "pixel_judge": metrics.pixel_judge(
            ctx.real,
            images,
            seeds=cfg.pixel_judge_seeds,
            epochs=cfg.pixel_judge_epochs,
            min_steps=cfg.pixel_judge_min_steps,
        ),
        "parity_levels": model.manifest.parity_levels,
    }
    if drs:
        figures["sampling"] = {
            "max_candidates": drs,
            "candidates_per_image": float(drawn.candidates.mean()),
            "acceptance_rate": float(len(images) / drawn.candidates.sum()),
            "fallback_share": float(1.0 - drawn.accepted.mean()),
        }
    return figures, features


DRS_SHOWN = ("kid", "precision", "recall", "density", "coverage", "class_entropy", "label_accuracy")


def _drs_verdict(
    figures: dict, real: np.ndarray, drs: np.ndarray, plain: np.ndarray, checks: list[dict], cfg: GateConfig
) -> dict:
    """Does DRS help this model? The paired FID difference (DRS - plain, same seeds) and the feature and pixel
    judges' accuracies, each against its noise: "helps" when FID's interval lies below 0, no judge finds DRS's
    images easier to tell from real ones, and DRS's images pass every absolute check (``checks``) that plain ones
    must; "hurts" when FID's interval lies above 0, a judge finds them easier, or a check fails; else no
    difference."""
    c, d = figures["candidate"], figures["candidate_drs"]
    fid = metrics.fid_paired_difference(real, drs, plain, rounds=cfg.interval_rounds, seed=cfg.seed)
    judges = {}
    for key in ("feature_judge", "pixel_judge"):
        noise = _judge_noise(c[key], d[key])
        judges[key] = {"plain": c[key]["accuracy"], "drs": d[key]["accuracy"], "noise": noise,
                       "difference": d[key]["accuracy"] - c[key]["accuracy"]}  # fmt: skip
    failed = [c["rule"] for c in checks if not c["passed"]]
    worse = any(j["difference"] > j["noise"] for j in judges.values()) or bool(failed)
    if fid["ci95"][1] < 0 and not worse:
        verdict = "helps"
    elif fid["ci95"][0] > 0 or worse:
        verdict = "hurts"
    else:
        verdict = "no detectable difference"
    return {
        "verdict": verdict,
        "sampler": "drs" if verdict == "helps" else "plain",
        "failed_checks": failed,
        "fid": {"plain": c["fid"], "drs": d["fid"], **fid},
        **judges,
        **{k: {"plain": c[k], "drs": d[k]} for k in DRS_SHOWN if k in c},
        "dropped_share": {"plain": c["clusters"]["dropped_share"], "drs": d["clusters"]["dropped_share"]},
        **d["sampling"],
    }


def _power(figures: dict, reference: int, heldout: int, cfg: GateConfig) -> dict:
    """The smallest differences this run could have detected (80 % power at 5 %), from its own spreads."""
    c = figures["candidate"]
    fid_sd = figures["difference"]["fid"]["sd"] if "difference" in figures else c["fid_sd"]
    judge_se = c["feature_judge"]["binomial_se"]
    return {
        "reference_images": reference,
        "heldout_images": heldout,
        "samples": cfg.samples,
        "fid_detectable": round(Z_POWER * fid_sd, 4),
        "feature_judge_detectable": round(Z_POWER * math.sqrt(2) * judge_se, 4),
        "cluster_share_detectable": round(c["clusters"]["min_detectable_share"], 4),
        "note": "differences smaller than these are within this data's noise: the gate cannot tell them apart",
    }


def _own_discriminator(checkpoint: Path, splits: Splits, model: GeneratorRuntime, cfg: GateConfig) -> dict:
    """The GAN's own trained D on held-out real vs generated images: a diagnostic, never a gate."""
    import torch

    from training.artifacts import to_unit
    from training.checkpoint import load_checkpoint
    from training.config import RunConfig
    from training.networks import Discriminator

    state = load_checkpoint(checkpoint)
    d = Discriminator(RunConfig.model_validate(state["config"]).model)
    d.load_state_dict(state["D"])
    d.eval()
    n = min(2000, len(splits.heldout))
    drawn = sample(model, range(cfg.seed, cfg.seed + n))
    images, labels = drawn.images, drawn.labels
    conditional = labels is not None
    real_x = to_unit(splits.heldout.images[:n])
    fake_x = to_unit(torch.from_numpy(images), channels_last=True)
    with torch.no_grad():  # each image is scored with its own label: the true one, or the one it was drawn for
        real = d(real_x, splits.heldout.labels[:n] if conditional else None).numpy()
        fake = d(fake_x, torch.from_numpy(labels) if conditional else None).numpy()
    return {
        "mean_score_real": float(real.mean()),
        "mean_score_fake": float(fake.mean()),
        "accuracy": float(((real > 0).sum() + (fake <= 0).sum()) / (2 * n)),
    }


def _checks(figures: dict, manifest: Manifest, labelled: bool, cfg: GateConfig) -> list[dict]:
    c, p = figures["candidate"], figures.get("production")
    checks = []

    def check(name: str, value: float, op: str, limit: float, why: str) -> None:
        passed = value >= limit if op == ">=" else value <= limit
        rule = f"{name} {value:.4g} must be {op} {limit:.4g}: {why}"
        checks.append({"name": name, "value": value, "op": op, "limit": limit, "passed": bool(passed), "rule": rule})

    check("finite_share", c["finite_share"], ">=", 1.0, "NaN or Inf in the output")
    check("mean_level", c["mean_level"], ">=", cfg.min_mean_level, "near-black output")
    check("near_black_share", c["near_black_share"], "<=", cfg.max_near_black_share, "too many near-black images")
    check("pixel_std", c["pixel_std"], ">=", cfg.min_pixel_std, "near-constant output: G ignores z")
    check("duplicate_share", c["duplicate_share"], "<=", cfg.max_duplicate_share, "near-identical samples")
    check("parity_levels", c["parity_levels"], "<=", cfg.max_parity_levels, "ONNX differs from PyTorch")
    check("dropped_share", c["clusters"]["dropped_share"], "<=", cfg.max_dropped_share,
          "whole clusters of the real data are missing (mode dropping)")  # fmt: skip
    check("coverage", c["coverage"], ">=", cfg.min_coverage, "much of the real data has no generated neighbour")
    # recall, not only coverage and clusters: a generator that draws one kind of shape of three, in every colour,
    # size and place, visits every colour-led cluster and leaves a generated neighbour near most real images
    # (coverage 0.80), but two thirds of the real images lie outside its own k-NN balls (recall 0.45, 0.94 for the
    # true generator; bench/small_gate.py)
    check(
        "recall", c["recall"], ">=", cfg.min_recall, "most of the real data lies outside what G draws (modes dropped)"
    )
    if labelled:
        check("class_entropy", c["class_entropy"], ">=", cfg.min_class_entropy, "classes are missing (mode collapse)")
        check("min_class_share", c["min_class_share"], ">=", cfg.min_class_share, "a class is nearly dropped")
        if manifest.conditional:
            check("label_accuracy", c["label_accuracy"], ">=", cfg.min_label_accuracy, "images ignore the label")
    check("memorization_ratio", c["memorization_ratio"], ">=", cfg.min_memorization_ratio, "replays training images")
    check("feature_judge_ceiling", c["feature_judge"]["accuracy"], "<=", cfg.max_feature_judge_accuracy,
          "the feature judge tells generated from real almost always")  # fmt: skip
    if p is not None:
        # worse beyond the noise: the interval of the paired difference lies above the tolerance
        diff = figures["difference"]["fid"]
        check("fid", diff["ci95"][0], "<=", cfg.fid_margin * p["fid"],
              f"FID worse than production's {p['fid']:.4g} by {diff['difference']:.4g}, "
              f"interval {diff['ci95'][0]:.3g}..{diff['ci95'][1]:.3g}")  # fmt: skip
        for name, key, margin, who in (
            ("feature_judge_accuracy", "feature_judge", cfg.feature_judge_margin, "the feature judge"),
            ("pixel_judge_accuracy", "pixel_judge", cfg.pixel_judge_margin, "the pixel judge"),
        ):
            cj, pj = c[key], p[key]
            noise = _judge_noise(cj, pj)
            check(name, cj["accuracy"], "<=", pj["accuracy"] + margin + noise, f"{who} prefers production")
    return checks


def _judge_noise(first: dict, second: dict) -> float:
    """How far two judges' accuracies may differ by chance: 1.96 sqrt(2) x the larger of the binomial and seed
    spreads."""
    return Z_95 * math.sqrt(2) * max(first["binomial_se"], first["accuracy_sd"], second["accuracy_sd"])
