"""What a run writes besides checkpoints: its numbered folder, JSONL stats, sample grids and the loss plot."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from service.imaging import tile

__all__ = ["StatsLog", "new_run_dir", "plot_losses", "save_grid"]

_RUN_DIR = re.compile(r"^(\d{5})-")


def new_run_dir(runs_dir: Path, name: str) -> Path:
    """Create ``runs_dir/NNNNN-name`` with the next free number; an existing folder is never reused."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    while True:
        taken = [int(m.group(1)) for p in runs_dir.iterdir() if (m := _RUN_DIR.match(p.name))]
        path = runs_dir / f"{max(taken, default=-1) + 1:05d}-{name}"
        try:
            path.mkdir()
            return path
        except FileExistsError:  # another run took the number between listing and creating: take the next
            continue


class StatsLog:
    """Append-only ``stats.jsonl``; one JSON object a line, flushed at once so a crash loses nothing written."""

    def __init__(self, path: Path, *, after_step: int | None = None) -> None:
        self.path = path
        if after_step is not None and path.exists():
            # A resumed run restarts from its last checkpoint: drop the lines logged after it, or steps repeat.
            kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= after_step]
            path.write_text("".join(line + "\n" for line in kept))
        self._fh = path.open("a")

    def write(self, record: dict[str, Any]) -> None:
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def save_grid(images: np.ndarray, path: Path, *, cols: int | None = None) -> None:
    """Save uint8 NHWC images as one PNG grid."""
    grid = tile(images, cols=cols)
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)


def plot_losses(stats_path: Path, out_path: Path, *, probability: bool) -> None:
    """Plot the losses and D's mean outputs on real and fake images against the G step, and, for runs that log
    them, ADA's overfitting heuristic r_t = E[sign(D(real))] and the augmentation probability p.

    With ``probability`` D's outputs are probabilities, and the plot marks the equilibrium 1/2 the theory predicts.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on a training box
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in stats_path.read_text().splitlines()]
    rows = [r for r in rows if r["kind"] == "step"]
    if not rows:
        return
    steps = [r["step"] for r in rows]
    third = "r_t" in rows[0]  # stats written before r_t was logged get two panels
    fig, axes = plt.subplots(1, 3 if third else 2, figsize=(16.5 if third else 11, 4))
    ax_loss, ax_d = axes[:2]
    ax_loss.plot(steps, [r["loss_d"] for r in rows], label="D loss")
    ax_loss.plot(steps, [r["loss_g"] for r in rows], label="G loss")
    ax_loss.set(xlabel="G step", title="losses")
    ax_d.plot(steps, [r["d_real"] for r in rows], label="D(x), real")
    ax_d.plot(steps, [r["d_fake"] for r in rows], label="D(G(z)), fake")
    if probability:
        ax_d.axhline(0.5, color="grey", lw=0.8, ls="--", label="equilibrium 1/2")
    ax_d.set(xlabel="G step", title="mean D output")
    if third:
        ax_aug = axes[2]
        ax_aug.plot(steps, [r["r_t"] for r in rows], label="r_t = E[sign D(real)]")
        if "aug_p" in rows[-1]:
            ax_aug.plot(steps, [r.get("aug_p", 0.0) for r in rows], label="augmentation p")
        ax_aug.set(xlabel="G step", title="overfitting heuristic and augmentation", ylim=(-1.05, 1.05))
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
