"""Export, the evaluator and the quality gate on a synthetic dataset whose true generator is known."""

import json
import re

import numpy as np
import pytest
import torch
from conftest import Black, BlobGenerator, ConstantJudge, Replay, SquareJudge, blob_dataset, tiny_config

from release.report import write_report
from service.latents import PROTOCOL, latents_for_seeds
from service.manifest import ImageSpec, Manifest, ManifestError, file_sha256, read_manifest, write_manifest
from service.runtime import GeneratorRuntime
from training.config import DataConfig
from training.data import load_splits
from training.export import BURN_IN, ExportError, export_checkpoint, export_module
from training.judging.evaluator import EvaluatorConfig, train_evaluator
from training.judging.gate import SMALLEST, GateConfig, GateError, evaluate
from training.train import train

LATENT = 800  # BlobGenerator draws its background from z[1:785]
IMAGE = ImageSpec(height=28, width=28, channels=1)
FAST = GateConfig(samples=600, guard_samples=300, fid_rounds=3, judge_seeds=[0, 1], pixel_judge_seeds=[0],
                  pixel_judge_epochs=1, pixel_judge_min_steps=0)  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Blob data (2,000 train, 1,000 held-out), an evaluator trained on it, and the true generator exported."""
    root = tmp_path_factory.mktemp("gate")
    data = blob_dataset(root / "data", train=2000, test=1000)
    data_cfg = DataConfig(kind="idx", path=data)
    evaluator = root / "evaluator"
    cfg = EvaluatorConfig(data=data_cfg, max_steps=90, min_steps=90, batch_size=64, width=8, feature_dim=16, flip=False)
    manifest = train_evaluator(cfg, evaluator, progress=False)
    production = root / "production"
    export_module(BlobGenerator(), production, latent_dim=LATENT, image=IMAGE)
    return {"root": root, "data": data_cfg, "evaluator": evaluator, "accuracy": manifest.test_accuracy,
            "production": production}  # fmt: skip


def judge(world, model_dir, *, production=None, cfg=FAST):
    return evaluate(model_dir, evaluator=world["evaluator"], production=production, data=world["data"], cfg=cfg)


def failed(report) -> set[str]:
    return {c["name"] for c in report["checks"] if not c["passed"]}


# --- export ---------------------------------------------------------------------------------------------------------


def test_export_writes_a_checked_onnx_with_its_manifest(idx_dir, tmp_path):
    run = train(tiny_config(idx_dir, model__conditional=True), runs_dir=tmp_path / "runs", progress=False)
    manifest = export_checkpoint(run, tmp_path / "model")
    assert read_manifest(tmp_path / "model") == manifest  # sha256 verified on read
    assert manifest.latent_dim == 16 and manifest.image == IMAGE and manifest.class_names == ["0", "1", "2", "3"]
    assert manifest.parity_levels <= 1
    assert manifest.inputs == {"seeds": "int64[N]", "labels": "int64[N]", "truncation": "float32[N]"}
    assert manifest.training.run_id == run.name and manifest.training.step == 16
    assert manifest.training.dataset["heldout"]["images"] == 64
    assert manifest.latent_protocol == PROTOCOL
    d = manifest.discriminator  # the run's D beside G, calibrated for rejection sampling
    assert (tmp_path / "model" / d.file).is_file() and d.step == 16 and d.parity <= 1e-3 and d.burn_in == BURN_IN
    assert np.isfinite(d.logit_max) and np.isfinite(d.gamma) and d.target_acceptance == 0.5

    runtime = GeneratorRuntime(tmp_path / "model")
    batch = runtime.generate([5, 9, 11], [1, 2, 3])
    alone = runtime.generate([9], 2)
    assert batch.images.dtype == np.uint8 and batch.images.shape == (3, 28, 28, 1)
    np.testing.assert_array_equal(batch.images[1], alone.images[0])  # seed 9 gives the same image in any batch
    assert batch.labels.tolist() == [1, 2, 3] and runtime.generate([5, 6]).labels.tolist() == [1, 2]  # by seed
    # the latents the graph drew are the numpy reference's, within float32 rounding
    feeds = {"seeds": np.array([5, 9]), "labels": np.array([-1, -1]), "truncation": np.array([np.inf, 0.5], np.float32)}
    z = runtime.session.run(["z"], feeds)[0]
    np.testing.assert_allclose(z, latents_for_seeds([5, 9], 16, truncation=[np.inf, 0.5]), rtol=0, atol=2e-6)

    with pytest.raises(ExportError, match="exists and is not empty"):
        export_checkpoint(run, tmp_path / "model")


def test_export_leaves_out_a_critic_whose_score_is_no_density_ratio(idx_dir, tmp_path):
    run = train(tiny_config(idx_dir, loss__name="hinge"), runs_dir=tmp_path / "runs", progress=False)
    assert export_checkpoint(run, tmp_path / "model").discriminator is None
    assert not (tmp_path / "model" / "discriminator.onnx").exists()


def test_upgrade_puts_the_sampler_in_front_of_a_v1_model(tmp_path):
    """A model exported before protocol v2 took z: upgrade re-exports it to take seeds, with the same weights."""
    import contextlib
    import io

    import torch

    from training.export import _ServedGenerator, upgrade

    v1 = tmp_path / "v1"
    v1.mkdir()
    z = torch.from_numpy(latents_for_seeds(range(2), LATENT))
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(_ServedGenerator(BlobGenerator(), False).eval(), (z,), v1 / "generator.onnx", dynamo=True,
                          input_names=["z"], output_names=["images", "finite"], external_data=False,
                          dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},))  # fmt: skip
    old = Manifest(
        sha256=file_sha256(v1 / "generator.onnx"), latent_dim=LATENT, image=IMAGE, parity_levels=0,
        inputs={"z": f"float32[N,{LATENT}]"}, latent_protocol="numpy-default_rng-standard_normal-float32/v1",
    )  # fmt: skip
    write_manifest(v1, old)
    with pytest.raises(ManifestError, match="re-export it with `ganserve upgrade`"):
        GeneratorRuntime(v1)

    manifest = upgrade(v1, tmp_path / "v2")
    assert manifest.latent_protocol == PROTOCOL and manifest.parity_levels <= 1 and manifest.gate is None
    assert manifest.inputs == {"seeds": "int64[N]", "truncation": "float32[N]"}
    drawn = GeneratorRuntime(tmp_path / "v2").generate([3, 4], truncation=0.5)
    assert drawn.images.shape == (2, 28, 28, 1) and drawn.labels is None
    with pytest.raises(ExportError, match="already takes seeds"):
        upgrade(tmp_path / "v2", tmp_path / "again")


def test_manifest_catches_a_swapped_onnx_file(world, tmp_path):
    export_module(BlobGenerator(square=100), tmp_path / "other", latent_dim=LATENT, image=IMAGE)
    (tmp_path / "other" / "generator.onnx").write_bytes((world["production"] / "generator.onnx").read_bytes())
    with pytest.raises(ManifestError, match="its manifest says"):
        read_manifest(tmp_path / "other")


def test_export_refuses_a_model_that_onnx_does_not_reproduce(tmp_path, monkeypatch):
    import training.export as export

    monkeypatch.setattr(export, "parity", lambda *a, **k: 7)  # as if onnxruntime disagreed by 7 levels
    with pytest.raises(ExportError, match="differs from PyTorch by 7 levels"):
        export_module(BlobGenerator(), tmp_path / "m", latent_dim=LATENT, image=IMAGE)
    assert not (tmp_path / "m").exists()


def test_export_refuses_a_discriminator_that_onnx_does_not_reproduce(tmp_path):
    """A D whose graph disagrees with PyTorch: here one that behaves differently once exported (the exporter traces
    a branch that eager mode does not take), as a mis-exported operator would."""

    class Shifty(torch.nn.Module):
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            score = images.float().mean(dim=(1, 2, 3))
            return score + 5.0 if torch.compiler.is_exporting() else score

    with pytest.raises(ExportError, match="discriminator's ONNX logits differ from PyTorch"):
        export_module(BlobGenerator(), tmp_path / "m", latent_dim=LATENT, image=IMAGE, discriminator=Shifty())
    assert not (tmp_path / "m").exists()


# --- the evaluator --------------------------------------------------------------------------------------------------


def test_evaluator_is_accurate_and_frozen(world):
    assert world["accuracy"] >= 0.95
    manifest = json.loads((world["evaluator"] / "manifest.json").read_text())
    assert manifest["feature_dim"] == 16 and len(manifest["sha256"]) == 64


# --- the gate -------------------------------------------------------------------------------------------------------


def test_the_true_generator_passes_alone_and_against_itself(world, tmp_path):
    alone = judge(world, world["production"])
    assert alone["decision"] == "pass", alone["reasons"]
    assert alone["mode"].startswith("absolute")
    re_export = tmp_path / "again"
    export_module(BlobGenerator(), re_export, latent_dim=LATENT, image=IMAGE)
    report = judge(world, re_export, production=world["production"])
    assert report["decision"] == "pass", report["reasons"]  # an equal model is never rejected
    cand, prod = report["figures"]["candidate"], report["figures"]["production"]
    assert cand["fid"] == pytest.approx(prod["fid"])  # same seeds, same images
    assert cand["feature_judge"]["accuracy"] < 0.6  # the judge cannot tell it from real data
    write_report(re_export, report)
    for name in ("report.json", "report.md", "grid.png"):
        assert (re_export / name).stat().st_size > 0
    assert "PASS" in (re_export / "report.md").read_text()


def test_rejects_an_all_black_generator(world, tmp_path):
    export_module(Black(), tmp_path / "black", latent_dim=LATENT, image=IMAGE)
    report = judge(world, tmp_path / "black", cfg=FAST.model_copy(update={"pixel_judge_epochs": 8}))
    assert report["decision"] == "reject"
    assert {"mean_level", "near_black_share", "pixel_std"} <= failed(report)
    pixel = report["figures"]["candidate"]["pixel_judge"]
    assert pixel["accuracy"] > 0.99 and pixel["jsd_lower_bound_nats"] > 0.4  # towards log 2 = 0.693


@pytest.mark.parametrize("allowed", [(0,), (1, 2)])
def test_rejects_a_generator_collapsed_to_one_or_two_classes(world, tmp_path, allowed):
    export_module(BlobGenerator(allowed=allowed), tmp_path / "collapsed", latent_dim=LATENT, image=IMAGE)
    report = judge(world, tmp_path / "collapsed")
    assert report["decision"] == "reject" and {"class_entropy", "min_class_share"} <= failed(report)


def test_rejects_a_generator_that_replays_training_images(world, tmp_path):
    train_images = load_splits(world["data"]).train.images
    export_module(Replay(train_images), tmp_path / "replay", latent_dim=LATENT, image=IMAGE)
    report = judge(world, tmp_path / "replay")
    assert report["decision"] == "reject" and "memorization_ratio" in failed(report)
    assert report["figures"]["candidate"]["memorization_ratio"] < 0.1


def test_rejects_a_worse_generator_when_production_is_better(world, tmp_path):
    # a quarter of the images come out as classes 0-2 instead of 3: plausible images, a skewed class mix
    export_module(BlobGenerator(allowed=(0, 0, 1, 1, 2, 2, 3)), tmp_path / "weak", latent_dim=LATENT, image=IMAGE)
    alone = judge(world, tmp_path / "weak")
    assert alone["decision"] == "pass", alone["reasons"]  # it passes the absolute checks on its own...
    report = judge(world, tmp_path / "weak", production=world["production"])
    assert report["decision"] == "reject"  # ...but not against a better production
    assert "fid" in failed(report)  # beyond its interval; the judges see a class mix only weakly (TV 0.11)
    assert report["figures"]["difference"]["fid"]["ci95"][0] > 0


def test_the_gate_judges_with_and_without_drs_and_picks_the_sampler_by_the_evidence(world, tmp_path):
    """A generator that draws class 3 at 1/7 instead of 1/4, with a D that knows the density ratio (class 3: 1.75,
    the others 0.875): rejection sampling restores the class mix, and the gate sees it on the same seeds. A D that
    learned nothing changes nothing, and the gate does not claim that it helps."""
    skewed = BlobGenerator(allowed=(0, 0, 1, 1, 2, 2, 3))
    export_module(skewed, tmp_path / "knows", latent_dim=LATENT, image=IMAGE,
                  discriminator=SquareJudge((0.875, 0.875, 0.875, 1.75)))  # fmt: skip
    export_module(skewed, tmp_path / "blind", latent_dim=LATENT, image=IMAGE, discriminator=ConstantJudge())
    report = judge(world, tmp_path / "knows", cfg=FAST.model_copy(update={"samples": 2000}))
    plain, drs = report["figures"]["candidate"], report["figures"]["candidate_drs"]
    verdict = report["figures"]["drs"]
    assert verdict["verdict"] == "helps" and verdict["sampler"] == "drs", json.dumps(verdict)
    assert drs["fid"] < plain["fid"] and verdict["fid"]["ci95"][1] < 0
    assert drs["min_class_share"] > plain["min_class_share"] + 0.05  # class 3, from 1/7 towards 1/4
    assert verdict["candidates_per_image"] == pytest.approx(2.0, rel=0.1) and verdict["fallback_share"] < 0.01
    write_report(tmp_path / "knows", report)
    assert read_manifest(tmp_path / "knows").gate.drs.sampler == "drs"  # what the service defaults to
    assert "## Rejection sampling (DRS): helps" in (tmp_path / "knows" / "report.md").read_text()
    blind = judge(world, tmp_path / "blind")["figures"]["drs"]
    assert blind["verdict"] != "helps" and blind["sampler"] == "plain"
    assert blind["candidates_per_image"] == pytest.approx(2.0, rel=0.1)
    off = judge(world, tmp_path / "knows", cfg=FAST.model_copy(update={"drs": False}))
    assert "drs" not in off["figures"] and "candidate_drs" not in off["figures"]


def test_gate_refuses_an_evaluator_of_another_shape(world, tmp_path):
    export_module(BlobGenerator(size=32), tmp_path / "big", latent_dim=LATENT + 300,
                  image=ImageSpec(height=32, width=32, channels=1))  # fmt: skip
    with pytest.raises(GateError, match="the evaluator takes 28x28x1 images"):
        judge(world, tmp_path / "big")


def test_gate_refuses_too_few_real_images_and_quotes_the_smallest_judgeable_folder(world):
    with pytest.raises(GateError, match=r"3000 real images to compare with, at least 5000 are needed .*"
                                        r"docs/SMALL_DATA.md: " + re.escape(SMALLEST)):  # fmt: skip
        judge(world, world["production"], cfg=FAST.model_copy(update={"min_reference": 5000}))
    with pytest.raises(GateError, match=r"1000 held-out images, at least 2000 are needed for the memorization check; "
                                        r"raise data.holdout_fraction \(at most 30%\)"):  # fmt: skip
        judge(world, world["production"], cfg=FAST.model_copy(update={"min_heldout": 2000}))
    with pytest.raises(GateError, match=r"1000 held-out images to compare with, at least 2000"):
        judge(world, world["production"], cfg=FAST.model_copy(update={"min_reference": 2000, "reference": "heldout"}))
