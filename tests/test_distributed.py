"""Two CPU processes under torchrun (gloo): the path a user takes to several GPUs, exercised for real."""

import json
import subprocess
import sys

import pytest
from conftest import tiny_config

from training.checkpoint import load_checkpoint


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["nonsaturating", "wgan-gp"])
def test_two_process_torchrun_on_cpu(idx_dir, tmp_path, loss):
    cfg = tiny_config(idx_dir, loss__name=loss, model__conditional=True)
    config = tmp_path / "tiny.yaml"
    config.write_text(cfg.model_dump_json())  # JSON is YAML
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    runs = tmp_path / "runs"
    ganserve = ["-m", "training", "train", "--config", str(config), "--runs-dir", str(runs), "--no-progress"]
    done = subprocess.run([*torchrun, *ganserve], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    folders = list(runs.iterdir())
    assert len(folders) == 1  # rank 0 made one folder; rank 1 wrote none of its own
    state = load_checkpoint(folders[0])
    assert state["step"] == 16 and len(state["rng"]["noise"]) == 2  # each process's noise state is kept
    rows = [json.loads(line) for line in (folders[0] / "stats.jsonl").read_text().splitlines()]
    assert len([r for r in rows if r["kind"] == "step"]) == 8  # one writer, no duplicates
