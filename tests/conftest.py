"""Shared fixtures: tiny seeded datasets written as real IDX files and image folders, and a tiny run config."""

from __future__ import annotations

import gzip
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from release.registry import Registry
from training.config import RunConfig, validate_config

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
ROOT = Path(__file__).parent.parent


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) as an IDX file, gzipped when the name ends in .gz."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    (gzip.open if path.suffix == ".gz" else open)(path, "wb").write(data)


def blobs(n: int, size: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images with a bright square whose position depends on the class: learnable structure, made in a moment."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n).astype(np.uint8)
    images = rng.integers(0, 40, (n, size, size)).astype(np.uint8)
    side = size // 4
    for i, label in enumerate(labels):
        top = (int(label) * side) % (size - side + 1)
        images[i, top : top + side, top : top + side] = 230
    return images, labels


def blob_dataset(root: Path, *, train: int, test: int, labelled: bool = True) -> Path:
    """Write an MNIST-format folder of ``blobs``: 28x28, 4 classes (no label files when not ``labelled``), seeded."""
    root.mkdir(parents=True)
    for prefix, n, seed in (("train", train, 0), ("t10k", test, 1)):
        images, labels = blobs(n, 28, 4, seed)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        if labelled:
            write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


def interrupt_after(proc: subprocess.Popen, stats: Path, *, lines: int, timeout: float = 120) -> str:
    """Press Ctrl-C on a training process once it has logged ``lines`` stats lines; return its stderr."""
    deadline = time.monotonic() + timeout
    while not (stats.exists() and stats.read_text().count("\n") >= lines) and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    return proc.communicate(timeout=timeout)[1]


@pytest.fixture
def idx_dir(tmp_path: Path) -> Path:
    """An MNIST-format folder: 256 train and 64 test images."""
    return blob_dataset(tmp_path / "idx", train=256, test=64)


@pytest.fixture
def folder_dir(tmp_path: Path) -> Path:
    """An image folder with two class sub-folders of 20 RGB PNGs each, 40x30 (not square, not the train size)."""
    root = tmp_path / "folder"
    rng = np.random.default_rng(0)
    for name in ("cats", "dogs"):
        (root / name).mkdir(parents=True)
        for i in range(20):
            Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def tiny_config(data_path: Path, **overrides) -> RunConfig:
    """A run that takes well under a second per epoch: 8-wide networks, batch 32."""
    raw = {
        "name": "tiny",
        "epochs": 2,
        "batch_size": 32,
        "log_every": 2,
        "checkpoint_every": 3,
        "grid_size": 8,
        "data": {"kind": "idx", "path": str(data_path), "image_size": 28, "channels": 1},
        "model": {"latent_dim": 16, "g_width": 8, "d_width": 8, "embed_dim": 4},
    }
    for key, value in overrides.items():
        node = raw
        *parents, leaf = key.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return validate_config(raw)


# --- generators made by hand, for the export and gate tests ---------------------------------------------------------


class BlobGenerator(torch.nn.Module):
    """A generator of the ``blobs`` distribution written by hand: z[0] picks the class, z[1:] the background noise.

    ``square`` and ``noise`` move it away from the data; ``classes`` restricts it (mode collapse)."""

    def __init__(self, size: int = 28, classes: int = 4, square: float = 230.0, noise: float = 40.0,
                 allowed: tuple[int, ...] | None = None) -> None:  # fmt: skip
        super().__init__()
        side = size // 4
        masks = torch.zeros(classes, size, size)
        for label in range(classes):
            top = (label * side) % (size - side + 1)
            masks[label, top : top + side, top : top + side] = 1
        self.register_buffer("masks", masks)
        self.register_buffer("allowed", torch.tensor(allowed if allowed is not None else range(classes)))
        self.size, self.square, self.noise = size, square, noise

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        uniform = 0.5 * (1 + torch.erf(z / 2**0.5))  # N(0, 1) -> U(0, 1)
        pick = (uniform[:, 0] * len(self.allowed)).long().clamp(max=len(self.allowed) - 1)
        mask = self.masks[self.allowed[pick]]
        # whole levels 0..noise-1, uniform: exactly what ``blobs`` draws with rng.integers(0, 40)
        background = (uniform[:, 1 : 1 + self.size * self.size].reshape(-1, self.size, self.size) * self.noise).floor()
        levels = background * (1 - mask) + self.square * mask
        return (levels / 127.5 - 1).unsqueeze(1)


class Replay(torch.nn.Module):
    """A "generator" that returns training images, chosen by z: what memorization looks like."""

    def __init__(self, images: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("images", images.float() / 127.5 - 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        idx = ((0.5 * (1 + torch.erf(z[:, 0] / 2**0.5))) * len(self.images)).long().clamp(max=len(self.images) - 1)
        return self.images[idx]


class Black(torch.nn.Module):
    """A generator driven to all-black output by a too-strong discriminator."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z[:, :1, None, None].expand(-1, 1, 28, 28) * 0 - 1


class Blurred(BlobGenerator):
    """The blob generator with its images blurred (Gaussian, sigma in pixels)."""

    def __init__(self, sigma: float = 1.5) -> None:
        super().__init__()
        taps = torch.exp(-(torch.arange(-4, 5).float() ** 2) / (2 * sigma**2))
        self.register_buffer("kernel", (taps[:, None] * taps[None, :] / taps.sum() ** 2)[None, None])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(super().forward(z), self.kernel, padding=4)


class Noise(torch.nn.Module):
    """A generator that learned nothing: uniform noise drawn from z."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (0.5 * (1 + torch.erf(z[:, :784] / 2**0.5))).reshape(-1, 1, 28, 28) * 2 - 1


class Tinted(BlobGenerator):
    """The blob generator at 16x16 in colour: the square in ``tint`` on a grey background (unconditional)."""

    def __init__(self, tint: tuple[float, float, float] = (1.0, 0.3, 0.1)) -> None:
        super().__init__(size=16)
        self.register_buffer("tint", torch.tensor(tint).view(1, 3, 1, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        gray = super().forward(z)
        return torch.where(gray > 0, gray * self.tint, gray.expand(-1, 3, -1, -1))


class LabelledBlobs(BlobGenerator):
    """The blob generator made class-conditional: the caller's label picks the square."""

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        uniform = 0.5 * (1 + torch.erf(z / 2**0.5))
        mask = self.masks[labels]
        # whole levels 0..noise-1, uniform: exactly what ``blobs`` draws with rng.integers(0, 40)
        background = (uniform[:, 1 : 1 + self.size * self.size].reshape(-1, self.size, self.size) * self.noise).floor()
        return ((background * (1 - mask) + self.square * mask) / 127.5 - 1).unsqueeze(1)


class SquareJudge(torch.nn.Module):
    """A discriminator written by hand for the blob generators: logit ``log(weights[k])`` for an image showing class
    k's square. So exp(logit) is a known density ratio p_data / p_g: at gamma 0, rejection sampling must draw class k
    ``weights[k]`` times as often, relative to the others, as plain sampling does."""

    def __init__(self, weights: tuple[float, ...] = (4.0, 1.0, 1.0, 1.0), size: int = 28) -> None:
        super().__init__()
        masks = BlobGenerator(size=size, classes=len(weights)).masks
        self.register_buffer("masks", masks / masks.sum(dim=(1, 2), keepdim=True))
        self.register_buffer("logits", torch.log(torch.tensor(weights, dtype=torch.float32)))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        # each square's mean level: 0.8 in [-1, 1] where the square is, below -0.6 on the background
        inside = torch.einsum("nhw,khw->nk", x[:, 0], self.masks)
        return ((inside > 0).to(torch.float32) * self.logits).sum(dim=1)


class ConstantJudge(torch.nn.Module):
    """A discriminator that learned nothing: the same logit for every image."""

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return x[:, 0, 0, 0] * 0 + 1.5


# --- a real server ----------------------------------------------------------------------------------------------------

CLASSES = ["top-left", "upper", "lower", "bottom-right"]  # LabelledBlobs' four classes, by where the square sits


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`bentoml serve` in a subprocess, stopped with the fixture; started when /readyz (or, with ``ready=False``,
    /livez) answers 200."""

    def __init__(self, home: Path, *, ready: bool = True, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environ = {**os.environ, "BENTOML_HOME": str(home), "GANSERVE_RELOAD_SECONDS": "1", **env}
        cmd = [sys.executable, "-m", "bentoml", "serve", "service.service:GANServe", "--host", "127.0.0.1",
               "--port", str(self.port)]  # fmt: skip
        self.log = open(home / f"serve-{self.port}.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=environ, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/{'readyz' if ready else 'livez'}", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None, Path(self.log.name).read_text()[-3000:]
            time.sleep(0.3)
        self.stop()
        raise AssertionError("the service did not become ready in 90 s")

    @property
    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def workers(self, service: str) -> list[int]:
        """The pids of ``service``'s worker processes (GANServe or Generator)."""
        import psutil

        pids = []
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                if f"--service-name {service}" in " ".join(child.cmdline()):
                    pids.append(child.pid)
            except psutil.Error:  # gone, or a zombie not yet reaped
                pass
        return pids

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def labelled_blobs_in_production(home: Path) -> Path:
    """Export LabelledBlobs (conditional, CLASSES) into ``home`` and make it production there."""
    from service.manifest import ImageSpec
    from training.export import export_module

    image = ImageSpec(height=28, width=28, channels=1)
    export_module(LabelledBlobs(), home / "labelled", latent_dim=800, image=image, class_names=CLASSES)
    promote(home, home / "labelled")
    return home


def corrupt(folder: Path) -> None:
    """Flip one byte of a model folder's ONNX file, as bit rot or a truncated copy would."""
    with open(folder / "generator.onnx", "r+b") as fh:
        fh.seek(500)
        byte = fh.read(1)
        fh.seek(500)
        fh.write(bytes([byte[0] ^ 0xFF]))


def promote(home: Path, folder: Path, line: str = "default") -> str:
    """Make a hand-written model production of ``line``, by hand: it has no gate report, so it takes --force."""
    reg = Registry(home, line=line)
    entry = reg.add_candidate(folder, metadata={"decision": "not judged"})
    return reg.promote(entry.version, force=True).tag


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    """A private data cache folder, so tests never read or fill the user's ~/.cache/ganserve/data."""
    return tmp_path / "cache"
