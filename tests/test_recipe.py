"""The recipe `retrain --data DIR` picks from a folder: each choice by what the folder holds, and the refusal below
the smallest judgeable size."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from release.recipe import choose_recipe, min_images
from training.config import ConfigError
from training.data import DataError
from training.judging.gate import SMALLEST, GateConfig


def folder(root: Path, count: int, *, side: int = 32, mode: str = "RGBA", classes: int = 0) -> Path:
    """``count`` seeded random images; in ``classes`` sub-folders when given."""
    rng = np.random.default_rng(count)
    channels = {"RGBA": 4, "RGB": 3, "L": 1}[mode]
    for i in range(count):
        sub = root / f"class{i % classes}" if classes else root
        sub.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 255, (side, side, channels), dtype=np.uint8)
        Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(sub / f"{i}.png")
    return root


def test_a_thousand_transparent_icons(tmp_path):
    recipe = choose_recipe(folder(tmp_path / "icons", 1000))
    cfg = recipe.config
    assert (cfg.data.kind, cfg.data.image_size, cfg.data.channels) == ("folder", 32, 3)
    assert cfg.data.holdout_fraction == 0.15 and cfg.data.background == "#ffffff"
    assert not cfg.model.conditional and cfg.augment.mode == "none" and cfg.max_steps == 10_000
    assert cfg.name == "icons"
    shown = "\n".join(recipe.describe())
    assert (
        "data.holdout_fraction = 0.15  (150 of 1000 held out for the memorization check, which needs 100; the "
        "distribution statistics compare with all 1000)" in shown
    )
    assert "400 of 400 surveyed images have transparency: composited on white" in shown
    assert "augment.mode = none" in shown and "max_steps = 10000" in shown


@pytest.mark.parametrize(
    ("count", "kwargs", "expected"),
    [
        (3000, {"side": 16, "mode": "RGB"}, {"holdout": 0.1, "size": 16, "channels": 3, "steps": 40_000}),
        (1200, {"side": 48, "mode": "L"}, {"holdout": 0.125, "size": 48, "channels": 1, "steps": 4_400}),
        (1000, {"side": 100, "mode": "RGB", "classes": 2}, {"holdout": 0.15, "size": 64, "conditional": True}),
    ],
)
def test_choices_follow_the_folder(tmp_path, count, kwargs, expected):
    cfg = choose_recipe(folder(tmp_path / "f", count, **kwargs)).config
    assert cfg.data.holdout_fraction == expected["holdout"]
    for key, value in expected.items():
        got = {"size": cfg.data.image_size, "channels": cfg.data.channels, "steps": cfg.max_steps,
               "conditional": cfg.model.conditional}.get(key)  # fmt: skip
        assert key == "holdout" or got == value, key


def test_below_the_smallest_judgeable_folder_it_says_how_many_are_needed(tmp_path):
    assert min_images() == 1000
    small = folder(tmp_path / "small", 600, side=16)
    with pytest.raises(DataError, match=r"holds 600 images; at least 1000 are needed to judge a model trained on it "
                                        r"\(docs/SMALL_DATA.md: " + re.escape(SMALLEST)):  # fmt: skip
        choose_recipe(small)
    lowered = GateConfig(min_reference=500)
    assert choose_recipe(small, gate=lowered).config.data.holdout_fraction == 0.25  # 150 of 600
    with pytest.raises(DataError, match="holds 300 images; at least 334 are needed"):  # 100 held out, 30 % at most
        choose_recipe(folder(tmp_path / "tiny", 300, side=16), gate=lowered.model_copy(update={"min_reference": 20}))
    tinier, lowest = folder(tmp_path / "tinier", 250, side=16), GateConfig(min_reference=250, min_heldout=75)
    assert choose_recipe(tinier, gate=lowest).config.data.holdout_fraction == 0.3  # 75 of 250


def test_every_choice_can_be_overridden(tmp_path):
    root = folder(tmp_path / "icons", 1000, side=16)
    recipe = choose_recipe(root, ["augment.mode=fixed", "data.background=black", "max_steps=300"])
    cfg = recipe.config
    assert (cfg.augment.mode, cfg.data.background, cfg.max_steps) == ("fixed", "#000000", 300)
    assert "augment.mode = fixed  (set by you)" in recipe.describe()
    with pytest.raises(ConfigError, match="augment.mode"):
        choose_recipe(root, ["augment.mode=sometimes"])


def test_the_cli_refuses_in_one_line(tmp_path):
    small = folder(tmp_path / "small", 100, side=16)
    for args, message in (
        (("--data", str(small)), "holds 100 images; at least 1000 are needed"),
        (("--data", str(small), "--config", "x.yaml"), "drop --config"),
        (("--data", str(tmp_path / "none")), "does not exist"),
    ):
        done = subprocess.run([sys.executable, "-m", "release", "retrain", *args, "--runs-dir", str(tmp_path / "r")],
                              capture_output=True, text=True, cwd=tmp_path, timeout=120)  # fmt: skip
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
