"""What training, judging and release write, and the conventions their files share.

- A run's numbered folder, JSONL stats, sample grids and the loss plot.
- Staging: a folder is built beside where it goes and renamed into place, so it appears whole or not at all
  (``staged``; the registry builds its versions with ``staging_folder`` and ``move_into_place``).
- ONNX export: every graph the project writes (generator, discriminator, evaluator) goes through ``export_onnx``,
  with one set of exporter settings.
- Pixels: images are uint8 on disk and on the wire, and [-1, 1] float (the range of G's tanh) inside the networks:
  ``to_unit`` and ``to_bytes`` are the two directions, the torch twins of ``service.imaging.to_uint8``.

torch and onnx are imported inside the functions that need them: the registry imports this module for staging only.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from service.imaging import tile

if TYPE_CHECKING:
    import torch

__all__ = [
    "StatsLog",
    "export_onnx",
    "move_into_place",
    "new_run_dir",
    "plot_losses",
    "save_grid",
    "staged",
    "staging_folder",
    "to_bytes",
    "to_unit",
]

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


# --- staging ------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def staging_folder(parent: Path, *, prefix: str) -> Iterator[Path]:
    """A new, empty folder in ``parent``, removed with whatever is still in it when the block ends, however it ends.
    ``parent`` is on the destination's disk, so that what is built here moves into place by a rename (atomic)."""
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def move_into_place(staging: Path, out_dir: Path) -> None:
    """Rename the built folder ``staging`` to ``out_dir`` in one step. An empty ``out_dir`` (one a caller made) is
    replaced; a full one is refused, by the rename itself or by the caller before its work."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if out_dir.exists():
        out_dir.rmdir()
    staging.rename(out_dir)


@contextlib.contextmanager
def staged(out_dir: Path, *, prefix: str, files: Sequence[str] = ()) -> Iterator[Path]:
    """A staging folder beside ``out_dir``, moved into place whole when the block ends without error and removed
    whatever happens: the folder appears whole or not at all.

    With ``files``, ``out_dir`` may exist and hold others (a shipped evaluator's folder): only those files move
    into it, in that order, each replacing its namesake by a rename; put the one that vouches for the others (the
    manifest) last."""
    with staging_folder(out_dir.parent, prefix=prefix) as staging:
        yield staging
        if not files:
            move_into_place(staging, out_dir)
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in files:
            (staging / name).replace(out_dir / name)


# --- ONNX ---------------------------------------------------------------------------------------------------------


def export_onnx(
    module: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    *,
    inputs: Sequence[str],
    outputs: Sequence[str],
    max_batch: int = 4096,
) -> None:
    """Trace ``module`` on ``example`` into the self-contained ONNX file ``path``, at the opset the sampler's graph
    is built for, with every input's first axis (the batch) one dynamic size up to ``max_batch``."""
    import torch

    from training.sampler import OPSET

    batch = torch.export.Dim("batch", min=1, max=max_batch)
    with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the exporter warns and prints at length about what does not apply here
        torch.onnx.export(
            module, example, path, dynamo=True, opset_version=OPSET, input_names=list(inputs),
            output_names=list(outputs), dynamic_shapes=tuple({0: batch} for _ in example), external_data=False,
        )  # fmt: skip


# --- pixels -------------------------------------------------------------------------------------------------------


def to_unit(images: torch.Tensor, *, channels_last: bool = False) -> torch.Tensor:
    """uint8 images -> float32 in [-1, 1], as the networks were trained on them; ``channels_last`` images (N x H x W
    x C, G's served output) come out N x C x H x W. Transposed before the cast, so the result keeps NHWC memory
    (what convolutions then run on) and the exported graphs their nodes."""
    x = images.permute(0, 3, 1, 2) if channels_last else images
    return x.float() / 127.5 - 1.0


def to_bytes(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float N x C x H x W -> uint8 N x H x W x C, rounded half up: ``service.imaging.to_uint8`` in torch."""
    return ((x + 1.0) * 127.5 + 0.5).clamp(0.0, 255.0).byte().permute(0, 2, 3, 1)
