"""The models shipped in models/: present, intact, and as good as the README says."""

import json
from pathlib import Path

import numpy as np

from service.latents import PROTOCOL
from service.manifest import read_manifest
from service.runtime import GeneratorRuntime
from training.judging.evaluator import Evaluator

MODELS = Path(__file__).parent.parent / "models"


def test_the_evaluator_is_frozen_and_accurate():
    evaluator = Evaluator(MODELS / "evaluator")  # checks the sha256 in its manifest
    assert evaluator.manifest.test_accuracy >= 0.90
    assert evaluator.manifest.class_names[7] == "sneaker"


def test_the_default_generator_is_intact_conditional_and_judged():
    manifest = read_manifest(MODELS / "default")  # checks the sha256 in its manifest
    assert manifest.conditional and len(manifest.class_names) == 10 and manifest.latent_dim == 100
    assert manifest.training.config["name"] == "default" and manifest.gate.decision == "pass"
    assert manifest.latent_protocol == PROTOCOL and "seeds" in manifest.inputs
    drawn = GeneratorRuntime(MODELS / "default").generate(range(20))
    assert drawn.images.shape == (20, 28, 28, 1) and drawn.images.dtype == np.uint8
    assert drawn.labels.tolist() == [s % 10 for s in range(20)]  # no label asked for: by seed
    predicted = Evaluator(MODELS / "evaluator")(drawn.images)[0].argmax(1)
    assert (predicted == drawn.labels).mean() >= 0.7  # a sneaker asked for is a sneaker drawn


def test_the_default_draws_its_pinned_pixels():
    """Row 14, columns 8-19 of three images: a sneaker (seed 0), seed 1 by seed (a trouser), a dress at t = 0.7.
    A change to the protocol, the export or the weights changes them; so would a model drawing off-protocol."""
    drawn = GeneratorRuntime(MODELS / "default").generate([0, 1, 2], [7, -1, 3], [np.inf, np.inf, 0.7])
    assert drawn.labels.tolist() == [7, 1, 3]
    expected = [
        [167, 188, 164, 168, 150, 162, 209, 211, 215, 207, 203, 195],
        [0, 2, 224, 204, 243, 3, 3, 243, 191, 227, 82, 0],
        [0, 171, 199, 181, 184, 184, 185, 181, 180, 182, 219, 13],
    ]
    # one level of slack: another CPU's float32 log or convolution may round a pixel the other way
    assert np.abs(drawn.images[:, 14, 8:20, 0].astype(int) - expected).max() <= 1


def test_the_default_beats_the_plain_dcgan_baseline():
    """Its gate report judged it against the baseline (10 epochs, plain non-saturating DCGAN) as production."""
    report = json.loads((MODELS / "default" / "report.json").read_text())
    assert report["decision"] == "pass" and report["production"] is not None
    cand, base = report["figures"]["candidate"], report["figures"]["production"]
    assert cand["fid"] <= 0.7 * base["fid"]  # at least 30 % better by classifier-FID
    assert cand["feature_judge"]["accuracy"] < base["feature_judge"]["accuracy"]  # the feature judge prefers it
    assert report["evaluator"]["sha256"] == Evaluator(MODELS / "evaluator").manifest.sha256
    for name in ("report.md", "grid.png"):
        assert (MODELS / "default" / name).stat().st_size > 0


def test_the_default_carries_a_fitted_discriminator_judged_with_and_without_drs():
    """Its D was fitted to it after training (ganserve fit-discriminator, 3,000 steps from scratch), and its gate report
    judged DRS against plain sampling on the same seeds: the verdict in the manifest is what the service defaults to."""
    manifest = read_manifest(MODELS / "default")  # both files against their sha256
    d = manifest.discriminator
    assert d.fit.steps == 3000 and d.fit.start == "scratch" and d.target_acceptance == 0.5
    assert d.fit.calibration.accuracy > 0.7 and not d.fit.calibration.seen_in_training
    report = json.loads((MODELS / "default" / "report.json").read_text())
    drs = report["figures"]["drs"]
    assert report["figures"]["candidate_drs"]["fid"] == drs["fid"]["drs"] and drs["max_candidates"] == 16
    assert manifest.gate.drs.verdict == drs["verdict"] == "no detectable difference"
    assert manifest.gate.drs.sampler == "plain"  # so requests without a sampler get plain sampling
    drawn = GeneratorRuntime(MODELS / "default").rejection_sample(range(1000))
    assert 1.8 < drawn.candidates.mean() < 2.7 and drawn.accepted.mean() > 0.98
