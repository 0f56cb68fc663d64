import json
import math

import pytest
import torch
from conftest import tiny_config
from PIL import Image

from training.checkpoint import CheckpointError, load_checkpoint, load_generator
from training.config import ConfigError
from training.train import resume, train


def _weights_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "overrides",
    [
        {"loss__name": "nonsaturating"},
        {"loss__name": "wgan", "loss__d_steps": 2, "optim__name": "rmsprop", "optim__lr_d": 5e-5},
        {"loss__name": "wgan-gp", "loss__d_steps": 2},
        {"loss__name": "hinge"},
    ],
    ids=lambda o: o["loss__name"],
)
def test_every_loss_trains_with_finite_figures(idx_dir, tmp_path, overrides):
    run = train(tiny_config(idx_dir, **overrides), runs_dir=tmp_path / "runs", progress=False)
    rows = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert rows and all(math.isfinite(r[k]) for r in rows for k in ("loss_d", "loss_g", "d_real", "d_fake"))
    state = load_checkpoint(run)
    d_steps = overrides.get("loss__d_steps", 1)
    assert state["step"] == 2 * (256 // 32 // d_steps) and state["epoch"] == 2
    if overrides["loss__name"] == "wgan":  # parameters (not BN's running statistics) clipped to [-c, c]
        params = [v for k, v in state["D"].items() if k.endswith(("weight", "bias"))]
        assert max(p.abs().max().item() for p in params) <= 0.01 + 1e-7


def test_run_folder_holds_config_stats_grids_checkpoint_and_plot(idx_dir, tmp_path):
    cfg = tiny_config(idx_dir)
    first = train(cfg, runs_dir=tmp_path, progress=False)
    second = train(cfg, runs_dir=tmp_path, progress=False)
    assert (first.name, second.name) == ("00000-tiny", "00001-tiny")  # nothing is overwritten
    saved = json.loads((first / "config.json").read_text())
    assert saved["model"]["image_size"] == 28 and saved["model"]["d_norm"] == "batch"  # resolved
    assert json.loads((first / "dataset.json").read_text())["heldout"]["images"] == 64
    kinds = [json.loads(line)["kind"] for line in (first / "stats.jsonl").read_text().splitlines()]
    assert kinds.count("epoch") == 2 and kinds.count("step") == 8
    row = json.loads((first / "stats.jsonl").read_text().splitlines()[0])
    assert {"step", "epoch", "loss_d", "loss_g", "d_real", "d_fake", "images_per_sec"} <= row.keys()
    assert 0 <= row["d_real"] <= 1  # a probability for the non-saturating loss
    for name in ("grid-epoch0001.png", "grid-epoch0002.png", "losses.png"):
        assert Image.open(first / name).size[0] > 0
    assert Image.open(first / "grid-epoch0001.png").size == (3 * 28 + 4 * 2,) * 2  # 8 images: 3 x 3 grid


def test_checkpoint_describes_itself_and_rebuilds_the_generator(idx_dir, tmp_path):
    run = train(tiny_config(idx_dir), runs_dir=tmp_path, progress=False)
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["schema_version"] == 1 and state["config"]["model"]["latent_dim"] == 16
    assert state["data"]["train"]["images"] == 256 and state["step"] == 16
    g, cfg = load_generator(run)  # no flags: the checkpoint carries its config
    assert not g.training and cfg.model.g_width == 8
    z = torch.randn(4, 16)
    expected = g(z)
    g2, _ = load_generator(run / "checkpoint.pt")
    assert torch.equal(g2(z), expected)
    raw, _ = load_generator(run, ema=False)
    assert not torch.equal(raw(z), expected)  # EMA weights differ from the raw ones


def test_foreign_files_are_not_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path)
    torch.save({"a": 1}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="not a ganserve checkpoint"):
        load_checkpoint(tmp_path / "x.pt")
    (tmp_path / "y.pt").write_text("junk")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "y.pt")


def test_same_config_and_seed_give_the_same_checkpoint(idx_dir, tmp_path):
    a = load_checkpoint(train(tiny_config(idx_dir), runs_dir=tmp_path, progress=False))
    b = load_checkpoint(train(tiny_config(idx_dir), runs_dir=tmp_path, progress=False))
    c = load_checkpoint(train(tiny_config(idx_dir, seed=1), runs_dir=tmp_path, progress=False))
    for key in ("G", "D", "G_ema"):
        assert _weights_equal(a[key], b[key])
    assert not _weights_equal(a["G"], c["G"])


@pytest.mark.parametrize("stop_at", [3, 8])  # mid-epoch, and exactly at an epoch boundary
def test_resume_continues_exactly_where_the_run_stopped(idx_dir, tmp_path, stop_at):
    straight = load_checkpoint(train(tiny_config(idx_dir), runs_dir=tmp_path / "a", progress=False))
    stopped = train(tiny_config(idx_dir, max_steps=stop_at), runs_dir=tmp_path / "b", progress=False)
    assert load_checkpoint(stopped)["step"] == stop_at
    resumed = load_checkpoint(resume(stopped, overrides={"max_steps": None}, progress=False))
    assert resumed["step"] == straight["step"] == 16
    for key in ("G", "D", "G_ema"):
        assert _weights_equal(resumed[key], straight[key]), key
    steps = [json.loads(line)["step"] for line in (stopped / "stats.jsonl").read_text().splitlines()]
    assert sorted(set(steps)) == [2, 4, 6, 8, 10, 12, 14, 16]


def test_resume_can_extend_but_not_change_the_model(idx_dir, tmp_path):
    run = train(tiny_config(idx_dir, epochs=1), runs_dir=tmp_path, progress=False)
    assert load_checkpoint(resume(run, overrides={"epochs": 2}, progress=False))["epoch"] == 2
    with pytest.raises(ConfigError, match="cannot change model on resume"):
        resume(run, overrides={"model": {"g_width": 16}}, progress=False)


def test_conditional_training_and_class_columns_in_the_grid(idx_dir, tmp_path):
    run = train(tiny_config(idx_dir, model__conditional=True, grid_size=8), runs_dir=tmp_path, progress=False)
    g, cfg = load_generator(run)
    assert cfg.model.num_classes == 4
    assert g(torch.randn(2, 16), torch.tensor([0, 3])).shape == (2, 1, 28, 28)
    assert Image.open(run / "grid-epoch0002.png").size == (4 * 28 + 5 * 2, 2 * 28 + 3 * 2)  # one class a column


def test_conditional_needs_labels(idx_dir, tmp_path):
    for f in idx_dir.glob("*labels*"):
        f.unlink()
    with pytest.raises(ConfigError, match="model.conditional needs labelled data"):
        train(tiny_config(idx_dir, model__conditional=True), runs_dir=tmp_path, progress=False)


def test_too_few_images_for_a_batch(idx_dir, tmp_path):
    with pytest.raises(ConfigError, match="make 0 batch"):
        train(tiny_config(idx_dir, data__limit=10), runs_dir=tmp_path, progress=False)
