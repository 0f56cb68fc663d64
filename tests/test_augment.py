import json
import subprocess
import sys

import pytest
import torch
from conftest import tiny_config
from PIL import Image

from training.augment import POLICY_OPS, ada_step, augment
from training.checkpoint import load_checkpoint
from training.config import ConfigError, validate_config
from training.losses import lecam_penalty
from training.train import resume, train

POLICY = ["color", "translation", "cutout"]


def _images(n: int = 16, channels: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_p_zero_is_the_identity_and_draws_nothing():
    x, gen = _images(), _gen()
    before = gen.get_state()
    assert augment(x, POLICY, 0.0, gen) is x
    assert torch.equal(gen.get_state(), before)


def test_shape_dtype_kept_and_gradients_reach_the_input():
    x = _images().requires_grad_(True)
    out = augment(x, POLICY, 1.0, _gen())
    assert out.shape == x.shape and out.dtype == x.dtype
    out.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_same_generator_seed_gives_the_same_augmentation():
    x = _images()
    assert torch.equal(augment(x, POLICY, 0.5, _gen(3)), augment(x, POLICY, 0.5, _gen(3)))
    assert not torch.equal(augment(x, POLICY, 0.5, _gen(3)), augment(x, POLICY, 0.5, _gen(4)))


def test_probability_is_per_image():
    x = _images(n=400, size=8)
    out = augment(x, ["translation", "cutout"], 0.5, _gen())
    changed = (out != x).flatten(1).any(dim=1).float().mean().item()
    # an image is untouched when neither op is drawn (0.25) or a drawn op is a no-op (zero shift, ...)
    assert 0.6 < changed < 0.85


def test_color_moves_values_and_keeps_a_grey_image_grey():
    x = _images()
    out = augment(x, ["color"], 1.0, _gen())
    assert not torch.allclose(out, x)
    grey = _images(channels=1).expand(-1, 3, -1, -1)
    out = augment(grey, ["color"], 1.0, _gen())
    assert torch.allclose(out[:, 0], out[:, 1]) and torch.allclose(out[:, 1], out[:, 2])  # saturation of grey is grey


def test_translation_shifts_by_at_most_an_eighth_and_pads_with_zeros():
    size = 32
    x = torch.zeros(200, 1, size, size)
    x[:, :, size // 2, size // 2] = 1.0  # one lit pixel: where it lands is the shift
    out = augment(x, ["translation"], 1.0, _gen())
    assert out.sum(dim=(1, 2, 3)).eq(1).all()  # moved, never lost (the shift is smaller than the distance to the edge)
    ys, xs = (out[:, 0] == 1).nonzero()[:, 1:].T
    shifts = torch.stack([ys - size // 2, xs - size // 2])
    assert shifts.abs().max() == size // 8  # the full range is used, and not exceeded
    full = augment(torch.ones(200, 1, size, size), ["translation"], 1.0, _gen())
    zeros_per_image = (full == 0).flatten(1).sum(dim=1)
    assert zeros_per_image.max() > 0 and set(full.unique().tolist()) <= {0.0, 1.0}  # what moves in is zeros


def test_cutout_zeroes_a_square_of_half_the_size_at_most():
    size = 32
    out = augment(torch.ones(200, 3, size, size), ["cutout"], 1.0, _gen())
    cut = (out[:, 0] == 0).flatten(1).sum(dim=1)
    assert cut.max() == (size // 2) ** 2  # a square of half the side: a quarter of the image when fully inside
    assert cut.min() >= (size // 4) ** 2  # its centre lies in the image, so at least a quarter of it remains
    assert (out[:, 0] == out[:, 2]).all()  # the same hole in every channel


def test_flip_mirrors_about_half_the_images_left_right():
    x = torch.arange(4.0).repeat(400, 1, 4, 1)  # every row reads 0 1 2 3
    out = augment(x, ["flip"], 1.0, _gen())
    mirrored = (out[:, 0, 0] == torch.tensor([3.0, 2.0, 1.0, 0.0])).all(dim=1)
    kept = (out[:, 0, 0] == torch.tensor([0.0, 1.0, 2.0, 3.0])).all(dim=1)
    assert (mirrored | kept).all() and 150 < int(mirrored.sum()) < 250  # ADA: xflip with probability 1/2


def test_rotate_turns_by_quarter_turns_only_each_about_as_often():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).repeat(400, 1, 1, 1)
    turns = {  # torch.rot90 turns counter-clockwise: the top row 1 2 becomes the left column 2 1
        0: [[1.0, 2.0], [3.0, 4.0]], 1: [[2.0, 4.0], [1.0, 3.0]], 2: [[4.0, 3.0], [2.0, 1.0]],
        3: [[3.0, 1.0], [4.0, 2.0]],
    }  # fmt: skip
    out = augment(x, ["rotate"], 1.0, _gen())[:, 0]
    counts = {k: int((out == torch.tensor(v)).flatten(1).all(dim=1).sum()) for k, v in turns.items()}
    assert sum(counts.values()) == 400 and all(60 < c < 140 for c in counts.values())


def test_lecam_penalty_against_a_hand_computed_case():
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([-1.0, 0.0])
    # relu(real - a_F)^2 = 1, 9 (mean 5); relu(a_R - fake)^2 = 9, 4 (mean 6.5)
    assert lecam_penalty(real, fake, torch.tensor(2.0), torch.tensor(0.0)).item() == pytest.approx(11.5)
    # scores already on the right side of the other's average cost nothing
    assert lecam_penalty(torch.tensor([-2.0]), torch.tensor([3.0]), torch.tensor(1.0), torch.tensor(0.0)) == 0


def test_policy_words_are_diffaugments_three_and_adas_blit():
    assert set(POLICY_OPS) == {*POLICY, "flip", "rotate"}


@pytest.mark.parametrize(
    ("r_t", "p", "expected"),
    [(0.9, 0.5, 0.5 + 0.1), (0.2, 0.5, 0.5 - 0.1), (0.6, 0.5, 0.5), (0.9, 0.95, 1.0), (-1.0, 0.05, 0.0)],
)
def test_ada_controller_steers_p_towards_the_target_and_clamps(r_t, p, expected):
    assert ada_step(p, r_t, target=0.6, images=10_000, speed_images=100_000) == pytest.approx(expected)


def test_config_resolves_p_by_mode_and_checks_the_policy():
    assert validate_config({}).augment.mode == "none"  # off unless asked for: old configs train as they did
    assert validate_config({"augment": {"mode": "fixed"}}).augment.p == 1.0  # DiffAugment
    assert validate_config({"augment": {"mode": "ada"}}).augment.p == 0.0  # ADA starts clean
    spelled = validate_config({"augment": {"mode": "ada", "policy": "cutout, color"}}).augment
    assert spelled.policy == ["color", "cutout"]
    assert validate_config({"augment": {"policy": "color,flip,rotate"}}).augment.policy == ["flip", "rotate", "color"]
    with pytest.raises(ConfigError, match="augment.policy.0: Input should be 'flip', 'rotate', 'color'"):
        validate_config({"augment": {"policy": ["scale"]}})
    with pytest.raises(ConfigError, match="names a transformation twice"):
        validate_config({"augment": {"policy": "color,color"}})


def _ada(idx_dir, **overrides):
    # interval 1 and a fast speed make p move within a tiny run; p starts above 0 so images are augmented at once
    augment_cfg = {"mode": "ada", "p": 0.2, "interval": 1, "speed_images": 500}
    return tiny_config(idx_dir, augment=augment_cfg, **overrides)


def test_ada_run_logs_p_and_r_t_and_plots_them(idx_dir, tmp_path):
    run = train(_ada(idx_dir), runs_dir=tmp_path, progress=False)
    rows = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert all({"aug_p", "r_t"} <= r.keys() for r in rows)
    assert all(0 <= r["aug_p"] <= 1 and -1 <= r["r_t"] <= 1 for r in rows)
    assert len({r["aug_p"] for r in rows}) > 1  # p moved
    assert load_checkpoint(run)["augment"]["p"] == pytest.approx(rows[-1]["aug_p"], abs=1e-6)
    assert Image.open(run / "losses.png").size[0] > 1200  # a third panel


def test_without_augmentation_r_t_is_logged_but_not_p(idx_dir, tmp_path):
    run = train(tiny_config(idx_dir), runs_dir=tmp_path, progress=False)
    row = json.loads((run / "stats.jsonl").read_text().splitlines()[0])
    assert "r_t" in row and "aug_p" not in row


@pytest.mark.parametrize("mode", ["ada", "fixed", "lecam"])
def test_resume_with_augmentation_equals_an_uninterrupted_run(idx_dir, tmp_path, mode):
    makers = {
        "ada": _ada,
        "fixed": lambda d, **o: tiny_config(d, augment={"mode": "fixed", "p": 0.5}, **o),
        "lecam": lambda d, **o: tiny_config(d, augment={"mode": "fixed", "p": 0.5}, loss={"lecam": 0.3}, **o),
    }  # LeCam's moving averages are state too: a resume that lost them would train a different D
    make = makers[mode]
    # interval 3 with checkpoints every 3 steps and a stop at 5: the stop falls between two adjustments of p
    overrides = {"augment__interval": 3} if mode == "ada" else {}
    straight_run = train(make(idx_dir, **overrides), runs_dir=tmp_path / "a", progress=False)
    straight = load_checkpoint(straight_run)
    stopped = train(make(idx_dir, max_steps=5, **overrides), runs_dir=tmp_path / "b", progress=False)
    if mode == "ada":
        assert load_checkpoint(stopped)["augment"]["pending"][0][1] > 0  # ADA sums were pending when it stopped
    resumed = load_checkpoint(resume(stopped, overrides={"max_steps": None}, progress=False))
    assert resumed["step"] == straight["step"] == 16
    for key in ("G", "D", "G_ema"):
        assert resumed[key].keys() == straight[key].keys()
        assert all(torch.equal(resumed[key][k], straight[key][k]) for k in straight[key]), key
    assert resumed["augment"]["p"] == straight["augment"]["p"]
    assert torch.equal(resumed["lecam"][0], straight["lecam"][0])
    logged = [json.loads(line) for line in (stopped / "stats.jsonl").read_text().splitlines()]
    expected = [json.loads(line) for line in (straight_run / "stats.jsonl").read_text().splitlines()]
    assert [r.get("aug_p") for r in logged] == [r.get("aug_p") for r in expected]


@pytest.mark.slow
def test_two_process_torchrun_shares_one_p(idx_dir, tmp_path):
    """Each process sees its own slice of the batch; the all-reduced sign statistic gives every process one p."""
    config = tmp_path / "tiny.yaml"
    config.write_text(_ada(idx_dir).model_dump_json())  # JSON is YAML
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    runs = tmp_path / "runs"
    ganserve = ["-m", "training", "train", "--config", str(config), "--runs-dir", str(runs), "--no-progress"]
    done = subprocess.run([*torchrun, *ganserve], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = runs.iterdir()
    state = load_checkpoint(run)
    assert state["step"] == 16 and len(state["augment"]["pending"]) == 2
    rows = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert rows[-1]["aug_p"] == pytest.approx(state["augment"]["p"], abs=1e-6) and len({r["aug_p"] for r in rows}) > 1
