"""The served generator: an exported model folder run by onnxruntime, on the GPU when one is usable.

No BentoML here, so the model path is testable alone; ``service.service`` wraps it in a BentoML service. Also here:
the two row formats that travel between the service's parts, so that no other module slices them by hand.

- Requests travel as seeds, not latents: one float64 row per image, ``[seed, label, truncation]`` (label -1: none;
  truncation inf: none). Whoever runs the model draws the latents, in its own thread and for its own latent size,
  so a promotion to another latent size cannot break a request in flight.
- Images come back as one uint8 row per image: its pixels, then the ``VERSION_BYTES`` ASCII bytes of the version
  of the model that drew it, so a request never mislabels an image across a swap.
"""

from __future__ import annotations

import ctypes.util
import logging
from pathlib import Path

import numpy as np

from service.latents import labels_for_seeds, latents_for_seeds
from service.manifest import MODEL_NAME, Manifest, read_manifest

__all__ = ["VERSION_BYTES", "GeneratorRuntime", "nvidia_driver_present", "pack", "stamp", "unpack", "unstamp"]

log = logging.getLogger("bentoml.ganserve")  # under "bentoml", so `bentoml serve` shows it
VERSION_BYTES = 12  # a model version is the first 12 hex digits of its ONNX file's sha256


class GeneratorRuntime:
    """Loads ``generator.onnx`` after checking it against its manifest; turns seeds into uint8 NHWC images."""

    def __init__(self, folder: Path, *, threads: int = 0) -> None:
        import onnxruntime as ort

        self.folder = Path(folder)
        self.manifest: Manifest = read_manifest(self.folder)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: onnxruntime's default, one per core
        options.log_severity_level = 3  # a CUDA provider that cannot load says so below, once
        self.session = ort.InferenceSession(str(self.folder / MODEL_NAME), options, providers=_providers(ort))
        # onnxruntime-gpu lists CUDA as available even without a usable GPU and then silently runs on CPU:
        # what the session actually got is the truth.
        self.provider = self.session.get_providers()[0]
        log.info("generator %s runs on %s", self.manifest.sha256[:12], self.provider)

    @property
    def version(self) -> str:
        return self.manifest.sha256[:VERSION_BYTES]

    def run(self, z: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
        feeds = {"z": np.ascontiguousarray(z, dtype=np.float32)}
        if self.manifest.conditional:
            feeds["labels"] = np.ascontiguousarray(labels, dtype=np.int64)
        return self.session.run(["images"], feeds)[0]

    def generate(
        self, seeds: np.ndarray, labels: np.ndarray | None = None, truncation: np.ndarray | None = None
    ) -> np.ndarray:
        """Seeds (and per-row labels and truncations, as ``unpack`` gives them) -> uint8 NHWC images."""
        z = latents_for_seeds(seeds, self.manifest.latent_dim, truncation=truncation)
        classes = len(self.manifest.class_names)
        return self.run(z, labels_for_seeds(seeds, classes, labels) if classes else None)

    def warm_up(self) -> None:
        """One run before the service says it is ready, so the first request does not pay for allocation."""
        self.generate(np.zeros(1, dtype=np.int64))


def nvidia_driver_present() -> bool:
    """Whether CUDA can be asked for at all: onnxruntime-gpu lists CUDA as available even without a driver."""
    return ctypes.util.find_library("cuda") is not None


def _providers(ort) -> list[str]:
    """CUDA first when an NVIDIA driver is present; without one, asking for CUDA only fills the log with errors."""
    wanted = ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in ort.get_available_providers() and nvidia_driver_present():
        if hasattr(ort, "preload_dlls"):  # CUDA and cuDNN from onnxruntime-gpu[cuda,cudnn]'s pip packages
            ort.preload_dlls()
        wanted.insert(0, "CUDAExecutionProvider")
    return wanted


def pack(seeds: list[int], label: int | None, truncation: float | None) -> np.ndarray:
    """A request's rows: ``[seed, label, truncation]`` per image (float64 holds every seed below 2**53 exactly)."""
    rows = np.empty((len(seeds), 3), dtype=np.float64)
    rows[:, 0] = seeds
    rows[:, 1] = -1 if label is None else label
    rows[:, 2] = np.inf if truncation is None else truncation
    return rows


def unpack(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeds, labels (-1: none) and truncations (inf: none) of rows made by ``pack``, possibly of many requests."""
    return rows[:, 0].astype(np.int64), rows[:, 1].astype(np.int64), rows[:, 2]


def stamp(images: np.ndarray, version: str) -> np.ndarray:
    """uint8 images -> one row per image: its pixels, then the version that drew it."""
    tag = np.frombuffer(version.encode("ascii"), dtype=np.uint8)
    return np.concatenate([images.reshape(len(images), -1), np.broadcast_to(tag, (len(images), len(tag)))], axis=1)


def unstamp(rows: np.ndarray) -> tuple[np.ndarray, str]:
    """Rows made by ``stamp`` for one request -> (pixels, one row per image; the version that drew them)."""
    return rows[:, :-VERSION_BYTES], bytes(rows[0, -VERSION_BYTES:]).decode("ascii")
