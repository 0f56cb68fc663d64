"""The gate on data without labels: a contrastive evaluator that proves its power, and a label-free verdict.

The blob data (four modes: a bright square in one of four places on a noisy background) is written without label
files, so nothing here can lean on classes. Its true generator is known (``BlobGenerator``), so every rejection below
is of a generator that is wrong in one known way.
"""

import subprocess
import sys

import pytest
from conftest import Black, BlobGenerator, Blurred, Noise, Replay, blob_dataset, tiny_config

from service.manifest import ImageSpec, file_sha256, read_manifest, write_manifest
from training.config import DataConfig
from training.data import load_splits
from training.export import export_module
from training.judging.evaluator import Evaluator, EvaluatorConfig, EvaluatorError, evaluator_for, train_evaluator
from training.judging.gate import GateConfig, GateError, evaluate

LATENT = 800
IMAGE = ImageSpec(height=28, width=28, channels=1)
FAST = GateConfig(samples=600, guard_samples=300, fid_rounds=3, judge_seeds=[0, 1], pixel_judge_seeds=[0],
                  pixel_judge_epochs=1, pixel_judge_min_steps=0, interval_rounds=30)  # fmt: skip
EVALUATOR = dict(max_steps=400, min_steps=200, check_every=50, batch_size=64, width=8, feature_dim=16, flip=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("label-free")
    data = DataConfig(kind="idx", path=blob_dataset(root / "data", train=2000, test=1000, labelled=False))
    manifest = train_evaluator(EvaluatorConfig(data=data, **EVALUATOR), root / "evaluator", progress=False)
    export_module(BlobGenerator(), root / "production", latent_dim=LATENT, image=IMAGE)
    return {"root": root, "data": data, "evaluator": root / "evaluator", "manifest": manifest,
            "production": root / "production"}  # fmt: skip


def judge(world, model_dir, *, production=None, evaluator=None):
    return evaluate(model_dir, evaluator=evaluator or world["evaluator"], production=production, data=world["data"],
                    cfg=FAST)  # fmt: skip


def failed(report) -> set[str]:
    return {c["name"] for c in report["checks"] if not c["passed"]}


def test_without_labels_the_evaluator_is_contrastive_and_passes_its_self_test(world):
    manifest = world["manifest"]
    assert manifest.method == "contrastive" and manifest.class_names == [] and manifest.test_accuracy is None
    assert manifest.steps <= EVALUATOR["max_steps"]
    selftest = manifest.selftest
    assert selftest["passed"] and set(selftest["tests"]) == {
        "blur",
        "noise",
        "shuffle",
        "clusters",
        "learned",
        "copies",
    }
    for name in ("blur", "noise", "shuffle"):  # the paired FID interval above the gate's margin, and the judge
        test = selftest["tests"][name]
        assert test["fid_difference_ci95"][0] > test["fid_limit"] and test["judge_accuracy"] > test["judge_limit"]
    clusters = selftest["tests"]["clusters"]
    assert clusters["ndb"] > clusters["ndb_limit"]  # NDB sees the dropped half beyond its false-positive rate
    logits, features = Evaluator(world["evaluator"])(
        load_splits(world["data"]).heldout.images[:5].permute(0, 2, 3, 1).numpy()
    )
    assert logits is None and features.shape == (5, 8 + 16 + 16) == (5, manifest.feature_dim)  # block means, embedding
    assert abs(float(features.mean())) < 1 and 0.2 < float(features.std()) < 3  # standardised on the training split


def test_an_equal_model_passes_alone_and_against_production(world, tmp_path):
    export_module(BlobGenerator(), tmp_path / "again", latent_dim=LATENT, image=IMAGE)
    report = judge(world, tmp_path / "again", production=world["production"])
    assert report["decision"] == "pass", report["reasons"]
    assert report["evaluator"]["method"] == "contrastive" and report["evaluator"]["selftest"]["passed"]
    cand = report["figures"]["candidate"]
    assert cand["clusters"]["dropped_share"] == 0 and cand["coverage"] > 0.8
    assert report["power"]["heldout_images"] == 1000 and report["power"]["feature_judge_detectable"] > 0


@pytest.mark.parametrize(
    ("name", "make", "expected"),
    [
        ("all-black", lambda splits: Black(), {"mean_level", "near_black_share", "coverage"}),
        ("clusters-removed", lambda splits: BlobGenerator(allowed=(0, 1, 2)), {"dropped_share"}),
        ("one-mode", lambda splits: BlobGenerator(allowed=(0,)), {"dropped_share", "recall"}),
        ("heavy-blur", lambda splits: Blurred(sigma=1.5), {"coverage", "feature_judge_ceiling"}),
        ("replay", lambda splits: Replay(splits.train.images), {"memorization_ratio"}),
        ("noise", lambda splits: Noise(), {"coverage", "feature_judge_ceiling"}),
    ],
)
def test_the_label_free_gate_rejects(world, tmp_path, name, make, expected):
    export_module(make(load_splits(world["data"])), tmp_path / name, latent_dim=LATENT, image=IMAGE)
    report = judge(world, tmp_path / name)
    assert report["decision"] == "reject"
    assert expected <= failed(report), report["reasons"]


def test_a_weak_evaluator_is_refused_by_the_gate(world, tmp_path):
    weak = tmp_path / "weak"
    cfg = EvaluatorConfig(data=world["data"], **{**EVALUATOR, "max_steps": 1, "min_steps": 0, "selftest": False})
    train_evaluator(cfg, weak, progress=False)
    with pytest.raises(GateError, match="fails its self-test"):
        judge(world, world["production"], evaluator=weak)
    with pytest.raises(EvaluatorError, match="failed its self-test after 1 steps"):
        train_evaluator(cfg.model_copy(update={"selftest": True}), tmp_path / "weak2", progress=False)
    assert not (tmp_path / "weak2").exists()  # nothing is saved that could be trusted later

    # the CLI says it in one line and exits 2
    config = tmp_path / "run.yaml"
    config.write_text(f"data: {{kind: idx, path: {world['data'].path}}}\n")
    cmd = [sys.executable, "-m", "release", "evaluate", str(world["production"]), "--against", "none",
           "--evaluator", str(weak), "--config", str(config)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: cannot judge: the evaluator")


def test_an_evaluator_is_found_by_the_data_key_or_trained_once(world, tmp_path, monkeypatch):
    import training.judging.evaluator as module

    template = EvaluatorConfig(**EVALUATOR)
    first = evaluator_for(world["data"], store=tmp_path, template=template, progress=False)
    assert first.parent == tmp_path and Evaluator(first).manifest.method == "contrastive"
    monkeypatch.setattr(module, "train_evaluator", lambda *a, **k: pytest.fail("trained again"))
    assert evaluator_for(world["data"], store=tmp_path, template=template, progress=False) == first
    fashion = DataConfig()  # the shipped evaluator's data: found by its key, never retrained
    if fashion.path.is_dir():
        assert evaluator_for(fashion, store=tmp_path, progress=False) == module.SHIPPED


def test_the_gate_refuses_an_onnx_file_that_is_not_a_generator(world, tmp_path):
    folder = tmp_path / "impostor"
    export_module(BlobGenerator(), folder, latent_dim=LATENT, image=IMAGE)
    (folder / "generator.onnx").write_bytes((world["evaluator"] / "evaluator.onnx").read_bytes())
    manifest = read_manifest(folder, verify=False)
    write_manifest(folder, manifest.model_copy(update={"sha256": file_sha256(folder / "generator.onnx")}))
    with pytest.raises(GateError, match="is not a ganserve generator .*input seeds must be tensor"):
        judge(world, folder)


def test_retrain_judges_and_stores_a_model_of_unlabelled_data(world, tmp_path):
    """The offline job end to end on data without labels: its headline has no class figures to read."""
    from release.registry import Registry
    from release.retrain import retrain

    lenient = FAST.model_copy(update={
        "max_dropped_share": 1, "min_coverage": 0, "min_recall": 0, "max_feature_judge_accuracy": 1,
        "min_memorization_ratio": 0, "min_pixel_std": 0, "max_duplicate_share": 1,
    })  # fmt: skip
    cfg = tiny_config(world["data"].path, epochs=1)
    registry = Registry(tmp_path / "home")
    result = retrain(cfg, evaluator=world["evaluator"], runs_dir=tmp_path / "runs", registry=registry, gate=lenient,
                     progress=False)  # fmt: skip
    assert result.status == "promoted", result.reasons
    headline = read_manifest(result.model_dir).gate
    assert headline.decision == "pass" and headline.class_entropy is None
    assert registry.production().sha256 == read_manifest(result.model_dir).sha256
