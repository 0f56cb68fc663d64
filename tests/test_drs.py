"""Discriminator rejection sampling's arithmetic (service.drs) and the discriminator's place in a model folder."""

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import BlobGenerator

from service.drs import acceptance, gamma_for, shifted_logit
from service.manifest import DISCRIMINATOR_NAME, ImageSpec, ManifestError, read_manifest
from training.export import export_module


def test_at_gamma_zero_acceptance_is_the_density_ratio_scaled_by_its_maximum():
    """sigmoid(F) = exp(logit - M): with D* = p_data / (p_data + p_g), exp(logit) = p_data / p_g, the ratio that
    turns p_g into p_data."""
    logits = np.random.default_rng(0).normal(0, 2, 1000)
    m = logits.max()
    np.testing.assert_allclose(acceptance(logits, m, 0.0), np.exp(logits - m), rtol=1e-5)
    assert acceptance(np.array([m + 3]), m, 0.0)[0] == pytest.approx(1.0, abs=1e-5)  # past the burn-in's maximum
    assert np.all(np.diff(shifted_logit(np.sort(logits), m)) >= 0)  # a higher logit is never accepted less


@pytest.mark.parametrize("target", [0.3, 0.5, 0.7])
def test_gamma_holds_the_target_acceptance_and_a_constant_d_accepts_uniformly(target):
    logits = np.random.default_rng(1).normal(1, 3, 10_000)
    gamma = gamma_for(logits, logits.max(), target)
    assert acceptance(logits, logits.max(), gamma).mean() == pytest.approx(target, abs=1e-6)
    flat = np.full(100, 2.5)  # a D that learned nothing: every sample alike, so rejection changes no distribution
    chance = acceptance(flat, 2.5, gamma_for(flat, 2.5, target))
    np.testing.assert_allclose(chance, target, rtol=1e-6)
    with pytest.raises(ValueError, match="between 0 and 1"):
        gamma_for(logits, logits.max(), 1.0)


class Brightness(torch.nn.Module):
    """A discriminator that scores the mean brightness: a real D's contract, uint8 images in via the export."""

    def forward(self, images):
        return images.mean(dim=(1, 2, 3)) * 4.0


def test_the_discriminator_travels_verified_beside_the_generator(tmp_path):
    image = ImageSpec(height=28, width=28, channels=1)
    manifest = export_module(BlobGenerator(), tmp_path / "m", latent_dim=800, image=image, discriminator=Brightness())
    d = manifest.discriminator
    assert (tmp_path / "m" / DISCRIMINATOR_NAME).is_file() and d.parity <= 1e-3 and d.burn_in == 10_000
    assert manifest.schema_version == 2 and d.target_acceptance == 0.5 and np.isfinite(d.gamma)
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "m", copy)
    with open(copy / DISCRIMINATOR_NAME, "r+b") as fh:  # bit rot in D alone
        fh.seek(200)
        byte = fh.read(1)
        fh.seek(200)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ManifestError, match="discriminator.onnx has sha256"):
        read_manifest(copy)
    (copy / DISCRIMINATOR_NAME).unlink()
    with pytest.raises(ManifestError, match="has no discriminator.onnx"):
        read_manifest(copy)
    old = json.loads((tmp_path / "m" / "manifest.json").read_text())
    old.pop("discriminator")
    old["schema_version"] = 1
    (copy / "manifest.json").write_text(json.dumps(old))
    assert read_manifest(copy).discriminator is None  # a schema-1 folder reads as one without D
