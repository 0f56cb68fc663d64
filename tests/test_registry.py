"""The registry on a real BentoML store in a temporary home: promotion, atomicity, rollback and the lock."""

import subprocess
import sys
import time

import pytest
from conftest import BlobGenerator

from service.manifest import ImageSpec
from training.export import export_module
from training.registry import CANDIDATE_NAME, PRODUCTION_NAME, Registry, RegistryError, RegistryLocked

IMAGE = ImageSpec(height=28, width=28, channels=1)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two exported models (A and B) to store and promote."""
    root = tmp_path_factory.mktemp("models")
    for name, square in (("a", 230.0), ("b", 200.0)):
        export_module(BlobGenerator(square=square), root / name, latent_dim=800, image=IMAGE)
    return root


def add(registry, folder, decision="pass"):
    return registry.add_candidate(folder, metadata={"sha256": folder.name * 8, "decision": decision})


def test_promote_and_rollback(models, tmp_path):
    reg = Registry(tmp_path)
    assert reg.production() is None
    a, b = add(reg, models / "a"), add(reg, models / "b")
    assert a.name == CANDIDATE_NAME and (a.path / "generator.onnx").is_file() and (a.path / "manifest.json").is_file()
    reg.promote(a.version, expected_production=None)
    assert reg.production().metadata["promoted_from"] == a.tag
    reg.promote(b.tag)
    current = reg.production()
    assert current.name == PRODUCTION_NAME and current.metadata["promoted_from"] == b.tag
    assert (tmp_path / "models" / PRODUCTION_NAME / "latest").read_text() == current.version  # what BentoML reads
    assert reg.rollback().metadata["promoted_from"] == a.tag
    assert reg.production().metadata["promoted_from"] == a.tag
    with pytest.raises(RegistryError, match="no earlier promotion"):
        reg.rollback()


def test_bentoml_sees_the_promoted_model_as_latest(models, tmp_path):
    reg = Registry(tmp_path)
    reg.promote(add(reg, models / "a").version)
    code = ("import bentoml, sys; m = bentoml.models.get('ganserve-generator:latest'); "
            "print(m.info.metadata['promoted_from'])")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"BENTOML_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith(CANDIDATE_NAME)


def test_a_rejected_candidate_needs_force(models, tmp_path):
    reg = Registry(tmp_path)
    bad = add(reg, models / "a", decision="reject")
    with pytest.raises(RegistryError, match="did not pass the quality gate"):
        reg.promote(bad.version)
    assert reg.promote(bad.version, force=True).metadata["decision"] == "reject"


def test_promotion_refuses_when_production_moved_since_judging(models, tmp_path):
    reg = Registry(tmp_path)
    reg.promote(add(reg, models / "a").version)
    with pytest.raises(RegistryError, match="production changed"):
        reg.promote(add(reg, models / "b").version, expected_production=None)


@pytest.mark.parametrize("crash_at", ["staged", "renamed"])
def test_a_crash_mid_promotion_leaves_production_as_it_was(models, tmp_path, crash_at):
    reg = Registry(tmp_path)
    reg.promote(add(reg, models / "a").version)
    before = reg.production()
    b = add(reg, models / "b")

    def crash(step):
        if step == crash_at:
            raise KeyboardInterrupt  # as abrupt as it gets inside Python; a kill -9 leaves the same files

    reg._hook = crash
    with pytest.raises(KeyboardInterrupt):
        reg.promote(b.version)
    reg._hook = None
    assert reg.production() == before
    assert Registry(tmp_path).production() == before  # a fresh reader agrees
    promoted = reg.promote(b.version)  # and the registry still works; any orphan is retired
    assert reg.production() == promoted
    assert [e.version for e in reg.entries(PRODUCTION_NAME)] == [before.version, promoted.version]


def test_a_crash_mid_rollback_leaves_a_consistent_production(models, tmp_path):
    reg = Registry(tmp_path)
    a = reg.promote(add(reg, models / "a").version)
    reg.promote(add(reg, models / "b").version)
    reg._hook = lambda step: (_ for _ in ()).throw(KeyboardInterrupt) if step == "rolled-back" else None
    with pytest.raises(KeyboardInterrupt):
        reg.rollback()
    reg._hook = None
    assert reg.production() == a  # the pointer moved; the retired version is cleaned up next time
    with pytest.raises(RegistryError, match="no earlier promotion"):
        reg.rollback()


def test_two_jobs_cannot_promote_at_once(models, tmp_path):
    reg = Registry(tmp_path)
    candidate = add(reg, models / "a")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from training.registry import Registry; "
         f"r = Registry({str(tmp_path)!r}); cm = r.lock(); cm.__enter__(); print('held', flush=True); time.sleep(30)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RegistryLocked, match=f"another job is promoting \\(pid {holder.pid}\\)"):
            reg.promote(candidate.version)
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    assert reg.promote(candidate.version).metadata["promoted_from"] == candidate.tag  # the lock died with the job


def test_unknown_versions_list_the_known_ones(models, tmp_path):
    reg = Registry(tmp_path)
    a = add(reg, models / "a")
    with pytest.raises(RegistryError, match=f"no model versions match 'nope'; known: {a.tag}"):
        reg.get("nope")
