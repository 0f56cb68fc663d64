"""Discriminator rejection sampling's arithmetic (service.drs) and the discriminator's place in a model folder."""

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import BlobGenerator, ConstantJudge, SquareJudge, tiny_config

from service.drs import acceptance, gamma_for, reported_score, shifted_logit
from service.latents import candidate_seeds
from service.manifest import DISCRIMINATOR_NAME, ImageSpec, ManifestError, read_manifest, write_manifest
from service.runtime import GeneratorRuntime
from training.discriminator import FitConfig, FitError, fit_discriminator
from training.export import export_checkpoint, export_module
from training.train import train


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


# --- rejection sampling through the runtime, on hand-made models with a known density ratio -------------------------

IMAGE = ImageSpec(height=28, width=28, channels=1)
LATENT = 800


def square_class(images: np.ndarray) -> np.ndarray:
    """Which of the blob generator's four squares each image shows (the squares sit on the diagonal, 7 px each)."""
    levels = np.stack([images[:, 7 * k : 7 * k + 7, 7 * k : 7 * k + 7, 0].mean(axis=(1, 2)) for k in range(4)], 1)
    return levels.argmax(axis=1)


@pytest.fixture(scope="module")
def judged(tmp_path_factory) -> dict[str, GeneratorRuntime]:
    """Blob generators with a D that favours class 0 fourfold (at gamma 0), with one that learned nothing, and with
    none."""
    root = tmp_path_factory.mktemp("drs")
    export_module(BlobGenerator(), root / "square", latent_dim=LATENT, image=IMAGE, discriminator=SquareJudge())
    export_module(BlobGenerator(), root / "constant", latent_dim=LATENT, image=IMAGE, discriminator=ConstantJudge())
    export_module(BlobGenerator(), root / "none", latent_dim=LATENT, image=IMAGE)
    exact = root / "square-gamma0"  # the paper's gamma = 0: acceptance exp(logit - max), the exact density ratio
    shutil.copytree(root / "square", exact)
    manifest = read_manifest(exact)
    write_manifest(exact, manifest.model_copy(update={"discriminator": manifest.discriminator.model_copy(
        update={"gamma": 0.0})}))  # fmt: skip
    return {name: GeneratorRuntime(root / name) for name in ("square", "square-gamma0", "constant", "none")}


def test_an_image_drawn_with_drs_is_the_same_alone_and_in_any_batch(judged):
    model = judged["square"]
    batch = model.rejection_sample(range(100, 164))
    assert batch.candidates.max() > 1  # some seeds needed more than one candidate
    for i in (0, int(np.argmax(batch.candidates)), 63):
        alone = model.rejection_sample([100 + i])
        np.testing.assert_array_equal(alone.images[0], batch.images[i])
        assert (alone.score[0], alone.candidates[0], alone.accepted[0]) == (
            batch.score[i], batch.candidates[i], batch.accepted[i])  # fmt: skip
    shuffled = model.rejection_sample([163, 100, 131])
    np.testing.assert_array_equal(shuffled.images, batch.images[[63, 0, 31]])


def test_drs_draws_the_density_ratio_its_discriminator_states(judged):
    """At gamma 0 a sample is accepted with probability exp(logit - max): class 0 (logit log 4) always, the others
    a quarter of the time, so class 0 makes 4 / 7 of the images where plain sampling gives it 1 / 4."""
    seeds = range(4000)
    plain = square_class(judged["square"].generate(seeds).images)
    drawn = judged["square-gamma0"].rejection_sample(seeds)
    share = np.mean(square_class(drawn.images) == 0)
    assert abs(np.mean(plain == 0) - 0.25) < 4 * np.sqrt(0.25 * 0.75 / 4000)
    assert abs(share - 4 / 7) < 4 * np.sqrt(4 / 7 * 3 / 7 / 4000), share
    # a candidate is accepted with probability 1/4 + 3/4 x 1/4 = 7/16: none of 16 for (9/16)^16 = 1e-4 of images
    assert drawn.candidates.mean() == pytest.approx(16 / 7, rel=0.05) and np.mean(~drawn.accepted) < 1e-3


def test_a_discriminator_that_learned_nothing_degrades_to_plain_sampling(judged):
    """A constant logit accepts every candidate alike (the calibrated 50 %): the images are plain samples, drawn
    from other seeds of the stream, with the plain class shares."""
    seeds = range(4000)
    drawn = judged["constant"].rejection_sample(seeds)
    plain = judged["constant"].generate(seeds)
    assert np.unique(drawn.score).tolist() == [1.5]
    assert drawn.candidates.mean() == pytest.approx(2.0, rel=0.05)  # 1 / acceptance
    kept_first = drawn.candidates == 1
    np.testing.assert_array_equal(drawn.images[kept_first], plain.images[kept_first])  # candidate 0: the plain image
    shares = np.bincount(square_class(drawn.images), minlength=4) / len(seeds)
    np.testing.assert_allclose(shares, 0.25, atol=4 * np.sqrt(0.25 * 0.75 / 4000))


def test_the_candidate_bound_is_enforced_and_a_fallback_is_the_best_scored_candidate(judged):
    model = judged["square"]
    seeds = np.arange(500, 700)
    one = model.rejection_sample(seeds, candidates=1)
    assert (one.candidates == 1).all() and not one.accepted.all()  # some first candidates were rejected: kept anyway
    np.testing.assert_array_equal(one.images, model.generate(seeds).images)  # with one candidate: plain sampling
    bound = model.rejection_sample(seeds, candidates=3)
    assert bound.candidates.max() == 3 and (bound.candidates[~bound.accepted] == 3).all()
    fell_back = np.flatnonzero(~bound.accepted)
    assert fell_back.size, "no image exhausted its 3 candidates: pick seeds that do"
    for i in fell_back[:5]:  # the best of its three candidates, by the discriminator's own score
        tries = [model.generate(candidate_seeds([seeds[i]], j), labels=None) for j in range(3)]
        scores = [model.discriminate(t.images)[0] for t in tries]
        assert bound.score[i] == max(scores)
        np.testing.assert_array_equal(bound.images[i], tries[int(np.argmax(scores))].images[0])
    per_row = model.rejection_sample(seeds[:4], candidates=np.array([1, 2, 3, 4]))
    assert (per_row.candidates <= [1, 2, 3, 4]).all()
    np.testing.assert_array_equal(per_row.images[0], one.images[0])  # one candidate allowed: the plain image
    with pytest.raises(ValueError, match="at least one candidate"):
        model.rejection_sample([1], candidates=0)


def test_a_model_without_a_discriminator_says_how_to_get_one(judged):
    assert judged["none"].discriminator is None
    with pytest.raises(ManifestError, match="has no discriminator.*ganserve export"):
        judged["none"].rejection_sample([1])


# --- a discriminator fitted to an exported generator -----------------------------------------------------------------


def test_fit_discriminator_keeps_the_generator_and_calibrates_a_d_that_can_tell(idx_dir, tmp_path):
    """Two epochs of a tiny GAN draw images far from the blobs: a D fitted to that frozen generator tells them from
    real ones almost always, and the folder it writes serves DRS with the very same generator file."""
    run = train(tiny_config(idx_dir, model__conditional=True), runs_dir=tmp_path / "runs", progress=False)
    exported = export_checkpoint(run, tmp_path / "model")
    cfg = FitConfig(steps=40, batch_size=16, calibration_images=100)
    fitted = fit_discriminator(tmp_path / "model", tmp_path / "fitted", cfg=cfg, run=run, progress=False)
    assert fitted.sha256 == exported.sha256 and fitted.gate is None  # the same G; DRS with this D not judged yet
    assert fitted.schema_version == 2
    fit = fitted.discriminator.fit
    assert fit.steps == 40 and fit.start.startswith(run.name) and fit.calibration.seen_in_training
    assert fit.calibration.accuracy > 0.9 and fit.calibration.bce <= fit.calibration.bce_before
    assert read_manifest(tmp_path / "fitted") == fitted  # both files verify
    model = GeneratorRuntime(tmp_path / "fitted")
    drawn = model.rejection_sample(range(50))
    assert np.isfinite(drawn.score).all() and (drawn.candidates >= 1).all()
    with pytest.raises(FitError, match="is not empty"):
        fit_discriminator(tmp_path / "model", tmp_path / "fitted", cfg=cfg, progress=False)


def test_a_nan_logit_ranks_lowest_and_travels_as_null():
    """Export refuses a D with non-finite logits on its parity and burn-in samples; should one still give NaN for
    some image, that candidate is never accepted nor kept over another, and its score is sent as null."""
    from service.runtime import _ranked

    ranked = _ranked(np.array([np.nan, -2.0, np.inf], np.float32))
    assert ranked.tolist() == [-np.inf, -2.0, np.inf]
    assert acceptance(ranked, 1.0, 0.0).tolist()[0] == 0.0 and np.argmax(ranked) == 2
    assert [reported_score(v) for v in (float("nan"), float("-inf"), 1.23456789)] == [None, None, 1.234568]
