"""The models shipped in models/: present, intact, and as good as the README says."""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.latents import latents_for_seeds
from service.manifest import read_manifest
from training.judging.evaluator import Evaluator

MODELS = Path(__file__).parent.parent / "models"


def test_the_evaluator_is_frozen_and_accurate():
    evaluator = Evaluator(MODELS / "evaluator")  # checks the sha256 in its manifest
    assert evaluator.manifest.test_accuracy >= 0.90
    assert evaluator.manifest.class_names[7] == "sneaker"


def test_the_default_generator_is_intact_conditional_and_judged():
    manifest = read_manifest(MODELS / "default")  # checks the sha256 in its manifest
    assert manifest.conditional and len(manifest.class_names) == 10 and manifest.latent_dim == 100
    assert manifest.training.config["name"] == "default" and manifest.gate["decision"] == "pass"
    session = ort.InferenceSession(str(MODELS / "default" / "generator.onnx"), providers=["CPUExecutionProvider"])
    images = session.run(["images"], {"z": latents_for_seeds(range(20), 100), "labels": np.arange(20) % 10})[0]
    assert images.shape == (20, 28, 28, 1) and images.dtype == np.uint8
    predicted = Evaluator(MODELS / "evaluator")(images)[0].argmax(1)
    assert (predicted == np.arange(20) % 10).mean() >= 0.7  # a sneaker asked for is a sneaker drawn


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
