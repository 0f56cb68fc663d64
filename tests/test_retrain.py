"""The offline job and the registry commands as a scheduler runs them: real processes, exit codes, final lines."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import blob_dataset, interrupt_after, tiny_config

from training.config import DataConfig
from training.judging.evaluator import EvaluatorConfig, train_evaluator

# Absolute thresholds a 2-epoch, 8-wide GAN can meet: these tests are about the job, not about GAN quality.
LENIENT = ["samples=400", "guard_samples=200", "fid_rounds=3", "judge_seeds=[0]", "pixel_judge_seeds=[0]",
           "pixel_judge_epochs=1", "pixel_judge_min_steps=0", "min_class_entropy=0", "min_class_share=0",
           "min_label_accuracy=0", "min_pixel_std=0", "max_duplicate_share=1", "min_memorization_ratio=0",
           "fid_margin=100", "feature_judge_margin=1", "pixel_judge_margin=1", "max_dropped_share=1", "min_coverage=0",
           "min_recall=0", "max_feature_judge_accuracy=1", "interval_rounds=10"]  # fmt: skip


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("job")
    data = blob_dataset(root / "data", train=512, test=512)
    # 8 wide and 90 steps: at 4 wide and 60 steps its features barely moved under 8-level noise (paired FID +0.06,
    # interval from -0.008) and it failed its self-test
    cfg = EvaluatorConfig(data=DataConfig(kind="idx", path=data), max_steps=90, min_steps=90, batch_size=64, width=8,
                          feature_dim=16, flip=False)  # fmt: skip
    train_evaluator(cfg, root / "evaluator", progress=False)
    (root / "job.yaml").write_text(tiny_config(data, model__conditional=True).model_dump_json())
    return root


def ganserve(*args: str, root: Path, home: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "BENTOML_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "release", *args], capture_output=True, text=True, cwd=root,
                          env=env, timeout=timeout)  # fmt: skip


def retrain(job: Path, home: Path, *gate: str, config: str = "job.yaml") -> subprocess.CompletedProcess:
    gate_args = [a for g in gate for a in ("--gate", g)]
    return ganserve("retrain", "--config", config, "--evaluator", "evaluator", "--runs-dir", str(home / "runs"),
                    "--no-progress", *gate_args, root=job, home=home)  # fmt: skip


@pytest.mark.slow
def test_promote_reject_and_error_exit_codes(job, tmp_path):
    first = retrain(job, tmp_path, *LENIENT)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "PROMOTED ganserve-candidate:" in first.stdout and "every check passed" in first.stdout

    second = retrain(job, tmp_path, *LENIENT, "min_mean_level=255")
    assert second.returncode == 3, second.stderr[-3000:]
    verdict = second.stdout.strip().splitlines()
    reasons = verdict[verdict.index(next(v for v in verdict if v.startswith("REJECTED ganserve-candidate:"))) + 1 :]
    assert reasons and all(r.startswith("  - ") for r in reasons)  # the last lines say which and why
    assert any("mean_level" in r and "must be >= 255" in r for r in reasons)
    report = json.loads(next((tmp_path / "runs").glob("00001-*/export/report.json")).read_text())
    assert report["mode"] == "against production" and report["decision"] == "reject"

    listing = ganserve("models", root=job, home=tmp_path)
    rows = listing.stdout.splitlines()
    assert listing.returncode == 0 and len(rows) == 4  # header, two candidates, one promotion
    assert sum("PRODUCTION (current)" in r for r in rows) == 1 and sum(" reject " in r for r in rows) == 1

    error = ganserve("retrain", "--config", "job.yaml", "--evaluator", "nowhere", "--runs-dir", str(tmp_path / "r2"),
                     "--no-progress", root=job, home=tmp_path)  # fmt: skip
    assert error.returncode == 2 and "no evaluator in nowhere" in error.stderr and "Traceback" not in error.stderr


@pytest.mark.slow
def test_promote_and_rollback_commands(job, tmp_path):
    assert retrain(job, tmp_path, *LENIENT).returncode == 0
    rejected = retrain(job, tmp_path, *LENIENT, "min_mean_level=255")
    assert rejected.returncode == 3
    version = rejected.stdout.split("REJECTED ganserve-candidate:")[1].split(":")[0]
    refused = ganserve("promote", version, root=job, home=tmp_path)
    assert refused.returncode == 2 and "did not pass the quality gate" in refused.stderr
    forced = ganserve("promote", version, "--force", root=job, home=tmp_path)
    assert forced.returncode == 0 and version in forced.stdout
    back = ganserve("rollback", root=job, home=tmp_path)
    assert back.returncode == 0 and "production is now ganserve-generator:" in back.stdout
    again = ganserve("rollback", root=job, home=tmp_path)
    assert again.returncode == 2 and "no earlier promotion" in again.stderr


@pytest.mark.slow
def test_an_interrupted_job_resumes_from_its_checkpoint(job, tmp_path):
    long = job / "long.yaml"
    config = json.loads((job / "job.yaml").read_text())
    long.write_text(json.dumps({**config, "epochs": 400, "max_steps": 400, "checkpoint_every": 5}))
    env = {**os.environ, "BENTOML_HOME": str(tmp_path)}
    gate = [a for g in LENIENT for a in ("--gate", g)]
    cmd = [sys.executable, "-m", "release", "retrain", "--config", str(long), "--evaluator", "evaluator",
           "--runs-dir", str(tmp_path / "runs"), "--no-progress", *gate]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=job, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err = interrupt_after(proc, tmp_path / "runs" / "00000-tiny" / "stats.jsonl", lines=5)
    assert proc.returncode == 130 and "run the same command again to resume" in err

    done = subprocess.run(cmd, cwd=job, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming the interrupted job's run" in done.stderr
    assert not (tmp_path / "runs" / "00001-tiny").exists()  # the same run went on; no new one was started
    assert not (tmp_path / "runs" / "retrain-tiny.json").exists()  # a finished job leaves no state behind
