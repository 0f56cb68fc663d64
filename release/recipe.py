"""The recipe ``ganserve retrain --data DIR`` picks for a folder of images, and why.

The folder is surveyed first (how many images, labels from sub-folders or none, gray or colour, their size, how
many are transparent), then each choice follows from that survey and comes with its reason, printed before the job
starts. Every choice is a ``RunConfig`` key, so ``--set KEY=VALUE`` overrides any of them; an override is printed
as the user's.

Where the defaults come from (the figures are in docs/SMALL_DATA.md):
- held out: on small data the gate and the evaluator's self-test compare with every real image
  (training/judging/reference.py), so the holdout only serves memorization, which needs the gate's
  ``min_heldout`` images: a folder keeps ``TARGET_HELDOUT`` (15 % at 1,000), between 10 % and
  ``MAX_HOLDOUT_FRACTION``. Below
  ``min_images()``, the smallest folder whose verdicts held on every draw measured (bench/small_gate.py), no model
  from the folder can be judged, and the job stops before it trains anything.
- networks: a width-32 DCGAN with EMA: at 1,000 images a wider D only memorises sooner.
- augmentation: none, the best row of the study on 1,000 icons and 1,000 emoji (bench/augment_study.py: none,
  DiffAugment, ADA, LeCam with DiffAugment's BigGAN policy; 2 seeds, 3 budgets): no variant lowered FID by 30 %
  on both, and where one lowered FID a fresh pixel judge told its images from real ones at least as easily.
- steps: 10,000 at 32x32, batch 64: 5.5 to 14 min of G steps on the 2 cores here (30 and 12 steps/s on two days;
  the whole job on 1,000 icons took 8.4 and 15.6 min, docs/SMALL_DATA.md), well inside the 45-minute budget;
  the same steps on a GPU keep runs comparable.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from training.config import (
    MAX_HOLDOUT_FRACTION,
    SUPPORTED_SIZES,
    ConfigError,
    RunConfig,
    apply_overrides,
    validate_config,
)
from training.data import DataError, flatten, image_files, is_transparent
from training.judging.gate import SMALLEST, GateConfig
from training.judging.reference import POOL_BELOW

__all__ = ["Recipe", "Survey", "choose_recipe", "min_images", "survey"]

TARGET_HELDOUT = 150
MAX_SIZE = 64  # the CPU budget: a 64x64 step costs 4x a 32x32 one
STEPS = 10_000  # at 32x32, batch 64: 5.5-14 min of G steps on 2 cores (12-30 steps/s, measured on 1,000 icons)
SURVEYED = 400  # images opened to tell gray from colour and to measure the size; the count is the whole folder's


def min_images(gate: GateConfig | None = None) -> int:
    """The smallest folder a model can be judged from by ``gate`` (default: the gate's defaults): its
    ``min_reference`` real images, of which its ``min_heldout`` can be held out at the largest holdout share."""
    gate = gate or GateConfig()
    return max(gate.min_reference, math.ceil(gate.min_heldout / MAX_HOLDOUT_FRACTION))


@dataclass(frozen=True)
class Survey:
    """What a folder holds, as far as the recipe needs to know."""

    root: Path
    images: int
    classes: tuple[str, ...]
    gray: bool
    side: int  # the median shorter side of the surveyed images
    transparent: int  # of the surveyed images
    surveyed: int


@dataclass(frozen=True)
class Recipe:
    config: RunConfig
    survey: Survey
    reasons: dict[str, str] = field(default_factory=dict)  # key -> why; "set by you" for an override

    def describe(self) -> list[str]:
        """One line per choice: key = value (why)."""
        flat = _dotted(self.config.model_dump(mode="json"))
        return [f"{key} = {_shown(flat[key])}  ({why})" for key, why in self.reasons.items() if key in flat]


def survey(root: Path, *, surveyed: int = SURVEYED, seed: int = 0) -> Survey:
    """Count the folder's images and open a seeded sample of them (all, in a small folder)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    names = [name for name, _ in image_files(root)]
    if not names:
        raise DataError(f"image folder {root} holds no PNG or JPEG images")
    classes = tuple(sorted({n.split("/")[0] for n in names if "/" in n}))
    picked = np.random.default_rng(seed).permutation(len(names))[:surveyed]
    gray, sides, transparent, opened = True, [], 0, 0
    for i in sorted(picked):
        try:
            with Image.open(root / names[i]) as img:
                sides.append(min(img.size))
                transparent += is_transparent(img)
                gray = gray and _is_gray(img)
                opened += 1
        except OSError:
            continue  # the loader reports unreadable files, with the choice to skip them
    if not opened:
        raise DataError(f"none of the {len(picked)} surveyed images in {root} can be read")
    return Survey(root, len(names), classes, gray, int(np.median(sides)), transparent, opened)


def choose_recipe(
    root: Path, overrides: list[str] = (), *, name: str | None = None, gate: GateConfig | None = None
) -> Recipe:
    """The run config for the folder, with a reason for each choice; ``overrides`` are ``--set`` items. A folder
    too small for ``gate`` to judge (``min_images``; the gate's defaults unless given) is refused."""
    gate = gate or GateConfig()
    s = survey(root)
    held = min(max(TARGET_HELDOUT / s.images, 0.1), MAX_HOLDOUT_FRACTION)
    needed = min_images(gate)
    if s.images < needed:
        raise DataError(
            f"{s.root} holds {s.images} images; at least {needed} are needed to judge a model trained on it "
            f"(docs/SMALL_DATA.md: {SMALLEST})"
        )
    size = max([v for v in SUPPORTED_SIZES if v <= min(s.side, MAX_SIZE)] or [SUPPORTED_SIZES[0]])
    steps = int(round(STEPS * (32 / size) ** 2, -2))
    labelled = len(s.classes) >= 2
    channels = 1 if s.gray else 3
    raw: dict[str, Any] = {
        "name": name or _run_name(s.root),
        "epochs": 10_000,  # max_steps decides
        "max_steps": steps,
        "batch_size": 64,
        "checkpoint_every": 1000,
        "data": {
            "kind": "folder",
            "path": str(s.root.resolve()),  # the gate and a resumed job may run elsewhere
            "image_size": size,
            "channels": channels,
            "holdout_fraction": round(held, 4),
            "background": "white",
        },
        "model": {"g_width": 32, "d_width": 32, "conditional": labelled},
        "loss": {"name": "nonsaturating"},
        "ema": {"enabled": True, "decay": 0.999},
        "augment": {"mode": "none"},
    }
    share = f"{s.transparent} of {s.surveyed} surveyed images"
    reasons = {
        "data.image_size": f"the images' median shorter side is {s.side} px"
        + (f"; capped at {MAX_SIZE} for the CPU budget" if s.side > MAX_SIZE else ""),
        "data.channels": "every surveyed image is gray" if s.gray else "the images are in colour",
        "data.holdout_fraction": f"{round(held * s.images)} of {s.images} held out for the memorization check, "
        f"which needs {gate.min_heldout}; the distribution statistics compare with all {s.images}"
        if round(held * s.images) < POOL_BELOW
        else f"{round(held * s.images)} of {s.images} held out: the gate compares with them",
        "data.background": f"{share} have transparency: composited on white"
        if s.transparent
        else "no surveyed image is transparent; recorded for those that are",
        "model.conditional": f"{len(s.classes)} class sub-folders: {', '.join(s.classes[:5])}"
        + ("..." if len(s.classes) > 5 else "")
        if labelled
        else "no class sub-folders: unconditional",
        "model.g_width": "a width-32 DCGAN: at this size a wider D memorises sooner, and a width-64 G did not "
        "raise recall",
        "augment.mode": "the best row of the augmentation study on 1,000 icons and 1,000 emoji: no variant beat "
        "none on both FID and the pixel judge (docs/SMALL_DATA.md)",
        "max_steps": "6-14 min of G steps on 2 CPU cores at 32x32 (scaled by pixel count at other sizes)",
    }
    raw = apply_overrides(raw, list(overrides))
    for item in overrides:
        reasons[item.partition("=")[0].strip()] = "set by you"
    try:
        cfg = validate_config(raw)
    except ConfigError as err:
        raise ConfigError(f"the recipe for {s.root} with your --set items is not valid: {err}") from None
    return Recipe(cfg, s, reasons)


def _is_gray(img: Image.Image) -> bool:
    if img.mode in ("1", "L", "LA", "I", "I;16", "F"):
        return True
    rgb = np.asarray(flatten(img, "white", "RGB"), np.int16)
    return bool(np.abs(rgb - rgb[..., :1]).max() <= 2)  # JPEG leaves a level or two between the channels of gray


def _run_name(root: Path) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", root.resolve().name).strip("-.")
    return cleaned if cleaned and cleaned[0].isalnum() else f"folder-{cleaned}".rstrip("-")


def _dotted(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= _dotted(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def _shown(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)
