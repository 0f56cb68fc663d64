"""The ``ganserve`` command as a user runs it: a real process, its exit codes, messages and files."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FASHION_MNIST, interrupt_after, tiny_config

from training.checkpoint import load_checkpoint

ROOT = Path(__file__).parent.parent
GANSERVE = [sys.executable, "-m", "release"]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*GANSERVE, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.fixture
def tiny_yaml(idx_dir, tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(tiny_config(idx_dir, epochs=1).model_dump_json())
    return path


def test_train_prints_the_run_folder(tiny_yaml, tmp_path):
    done = run("train", "--config", str(tiny_yaml), "--set", "seed=3", "--runs-dir", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    run_dir = tmp_path / done.stdout.strip().splitlines()[-1]
    assert run_dir.name == "00000-tiny" and json.loads((run_dir / "config.json").read_text())["seed"] == 3
    assert "epoch 1/1" in done.stderr  # the progress bar


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "pass --config FILE"),
        (("--set", "epoch=2"), "epoch: unknown key; valid keys here: name, seed, epochs"),
        (("--set", "data.path=/nonexistent"), "data folder /nonexistent does not exist"),
        (("--resume", "x"), "--resume takes the run's own config; drop --config"),
    ],
)
def test_errors_exit_2_with_a_message(tiny_yaml, tmp_path, args, message):
    with_config = () if args == () else ("--config", str(tiny_yaml))
    done = run("train", *with_config, *args, cwd=tmp_path)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (("export", "nowhere", "--out", "x"), {}, "no checkpoint at nowhere"),
        (("train-evaluator", "--config", "missing.yaml"), {}, "config file missing.yaml does not exist"),
        (("evaluate", "nowhere"), {}, "nowhere has no manifest.json: not an exported ganserve model"),
        (("fit-discriminator", "nowhere", "--out", "x"), {}, "nowhere has no manifest.json"),
        (
            ("fit-discriminator", "nowhere", "--out", "x", "--set", "steps=0"),
            {},
            "bad FitConfig setting: steps: Input should be greater than or equal to 1",
        ),
        (("models",), {"GANSERVE_KEEP_RETIRED": "abc"}, "use a whole number of versions"),
        (("import", "nowhere"), {}, "refusing a model that fails verification"),
        (("promote", "nope"), {}, "no model versions match 'ganserve-candidate:nope'"),
        (("rollback",), {}, "there is no earlier promotion to roll back to"),
        (("retrain", "--config", "missing.yaml"), {}, "config file missing.yaml does not exist"),
    ],
    ids=lambda v: v[0] if isinstance(v, tuple) else None,
)
def test_every_command_says_a_user_error_in_one_line(tmp_path, args, env, message):
    """``train``'s errors are above; every other command's too: one line, exit 2, no traceback."""
    done = subprocess.run([*GANSERVE, *args], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env={**os.environ, "BENTOML_HOME": str(tmp_path / "home"), **env})  # fmt: skip
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2 and last.startswith("error: ") and message in last, done.stderr
    assert "Traceback" not in done.stderr


def test_ctrl_c_checkpoints_and_resume_finishes(idx_dir, tmp_path):
    config = tmp_path / "long.yaml"
    config.write_text(tiny_config(idx_dir, epochs=500, checkpoint_every=10_000).model_dump_json())
    proc = subprocess.Popen([*GANSERVE, "train", "--config", str(config), "--no-progress"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    stats = tmp_path / "runs" / "00000-tiny" / "stats.jsonl"
    stderr = interrupt_after(proc, stats, lines=3)
    assert proc.returncode == 130, stderr
    assert "continue with --resume" in stderr
    stopped = load_checkpoint(stats.parent)
    assert stopped["step"] >= 6  # the checkpoint holds the step it stopped at, not the last periodic one

    target = stopped["step"] + 3
    done = run("train", "--resume", str(stats.parent), "--set", f"max_steps={target}", "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert load_checkpoint(stats.parent)["step"] == target


@pytest.mark.slow
@pytest.mark.skipif(not (FASHION_MNIST / "train-images-idx3-ubyte.gz").exists(), reason="make test installs it")
def test_shipped_config_on_real_fashion_mnist(tmp_path):
    """The README's quick start on the real data, cut to 2,048 images so it takes seconds."""
    done = run("train", "--config", str(ROOT / "configs/fashion-mnist.yaml"), "--set", "epochs=1",
               "--set", "data.limit=2048", "--set", "log_every=4", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    run_dir = tmp_path / "runs" / "00000-fashion-mnist"
    for name in ("config.json", "dataset.json", "stats.jsonl", "checkpoint.pt", "grid-epoch0001.png", "losses.png"):
        assert (run_dir / name).stat().st_size > 0, name
    assert json.loads((run_dir / "dataset.json").read_text())["heldout"]["images"] == 10000
    assert load_checkpoint(run_dir)["step"] == 16
