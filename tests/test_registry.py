"""The registry on a real BentoML store in a temporary home: promotion, atomicity, rollback and the lock."""

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import ROOT, BlobGenerator, corrupt

from release.registry import CANDIDATE_NAME, PRODUCTION_NAME, Registry, RegistryError, RegistryLocked
from service.manifest import ImageSpec
from training.export import export_module

IMAGE = ImageSpec(height=28, width=28, channels=1)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two exported models (A and B) to store and promote."""
    root = tmp_path_factory.mktemp("models")
    for name, square in (("a", 230.0), ("b", 200.0)):
        export_module(BlobGenerator(square=square), root / name, latent_dim=800, image=IMAGE)
    return root


def judged(folder: Path, into: Path, decision: str = "pass", sha256: str | None = None) -> Path:
    """A copy of an exported model with a gate report of ``decision`` that judged ``sha256`` (its own file's)."""
    copy = into / f"{folder.name}-{uuid.uuid4().hex[:8]}"
    shutil.copytree(folder, copy)
    judged_sha = sha256 or json.loads((folder / "manifest.json").read_text())["sha256"]
    (copy / "report.json").write_text(json.dumps({"decision": decision, "candidate": {"sha256": judged_sha}}))
    return copy


def add(registry, folder, decision="pass"):
    """Store a candidate whose report says ``decision`` about it."""
    return registry.add_candidate(judged(folder, registry.home, decision), metadata={"decision": decision})


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
        [sys.executable, "-c", "import sys, time; from release.registry import Registry; "
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


# --- nothing unverified reaches production ----------------------------------------------------------------------------


def test_a_corrupt_candidate_is_refused_even_with_force(models, tmp_path):
    reg = Registry(tmp_path)
    candidate = add(reg, models / "a")
    corrupt(candidate.path)  # in the store, after it was stored
    for force in (False, True):
        with pytest.raises(RegistryError, match="fails verification: .*generator.onnx has sha256"):
            reg.promote(candidate.version, force=force)
    assert reg.production() is None


def test_a_report_of_another_model_counts_as_no_report(models, tmp_path):
    reg = Registry(tmp_path)
    other = json.loads((models / "b" / "manifest.json").read_text())["sha256"]
    mixed_up = reg.add_candidate(judged(models / "a", tmp_path, "pass", sha256=other), metadata={"decision": "pass"})
    with pytest.raises(RegistryError, match=f"not judged: its report judged {other[:12]}, not this file"):
        reg.promote(mixed_up.version)
    assert reg.promote(mixed_up.version, force=True).metadata["decision"].startswith("not judged")


@pytest.mark.parametrize("report", ["{not json", "[1, 2]", '{"decision": "pass"}'])
def test_a_report_that_is_not_a_gate_report_is_a_clear_error(models, tmp_path, report):
    folder = judged(models / "a", tmp_path)
    (folder / "report.json").write_text(report)
    with pytest.raises(RegistryError, match="report.json is not a gate report"):
        Registry(tmp_path).import_model(folder)


def test_the_store_records_the_verified_hash_not_the_callers(models, tmp_path):
    entry = Registry(tmp_path).add_candidate(models / "a", metadata={"sha256": "made up", "decision": "pass"})
    assert entry.sha256 == json.loads((models / "a" / "manifest.json").read_text())["sha256"]


def test_import_refuses_a_corrupt_folder_and_promotes_only_a_report_of_this_file(models, tmp_path):
    """Through the real command, as `make serve` runs it: one line, exit 2, and production untouched."""
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "home")}

    def ganserve(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "release", *args]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)

    broken = judged(models / "a", tmp_path)
    corrupt(broken)
    done = ganserve("import", str(broken), "--promote-if-empty")
    assert done.returncode == 2 and "fails verification" in done.stderr and "Traceback" not in done.stderr
    other = json.loads((models / "b" / "manifest.json").read_text())["sha256"]
    mixed_up = judged(models / "a", tmp_path, "pass", sha256=other)  # a generator carrying another's "pass"
    done = ganserve("import", str(mixed_up), "--promote-if-empty")
    assert done.returncode == 2 and "did not pass the quality gate (not judged: its report judged" in done.stderr
    assert Registry(tmp_path / "home").production() is None
    done = ganserve("import", str(judged(models / "a", tmp_path)), "--promote-if-empty")
    assert done.returncode == 0 and "production is ganserve-generator:" in done.stdout, done.stderr


def test_a_promotion_cleans_what_a_killed_one_left_in_staging_but_not_a_live_jobs(models, tmp_path):
    reg = Registry(tmp_path)
    candidate = add(reg, models / "a")
    killed = subprocess.run(
        [sys.executable, "-c", "import os, signal; from release.registry import Registry; "
         f"r = Registry({str(tmp_path)!r}); "
         "r._hook = lambda step: os.kill(os.getpid(), signal.SIGKILL) if step == 'staged' else None; "
         f"r.promote({candidate.version!r})"],
        cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert killed.returncode == -9
    staging = tmp_path / "ganserve-staging"
    (left,) = list(staging.iterdir())  # kill -9 mid-promotion: its half-built version is still there
    assert any(left.rglob("generator.onnx")) and reg.production() is None

    live = subprocess.Popen(
        [sys.executable, "-c", "import time; from pathlib import Path; from release.registry import Registry; "
         f"r = Registry({str(tmp_path)!r}); cm = r._staging(shared=True); cm.__enter__(); "
         f"Path({str(staging / 'live')!r}).mkdir(); print('building', flush=True); time.sleep(30)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert live.stdout.readline().strip() == "building"
        reg.promote(candidate.version)  # a job is building a version: nothing in staging is touched
        assert {p.name for p in staging.iterdir()} == {left.name, "live"}
    finally:
        live.kill()
        live.wait()
    reg.promote(add(reg, models / "b").version)  # alone now: the leftovers go
    assert list(staging.iterdir()) == [] and reg.production().metadata["decision"] == "pass"


def test_retired_versions_are_pruned_past_the_retention(models, tmp_path):
    reg = Registry(tmp_path, keep_retired=2)
    for _ in range(4):  # each promote-and-rollback retires one version
        reg.promote(add(reg, models / "a").version)
        reg.promote(add(reg, models / "b").version)
        reg.rollback()
    retired = tmp_path / "ganserve-retired" / PRODUCTION_NAME
    assert len(list(retired.iterdir())) == 2
    with pytest.raises(RegistryError, match="keep_retired must be 0 or more"):
        Registry(tmp_path, keep_retired=-1)
