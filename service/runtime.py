"""The served generator: an exported model folder run by onnxruntime, on the GPU when one is usable.

No BentoML here, so the model path is testable alone; ``service.service`` wraps it in a BentoML service.
"""

from __future__ import annotations

import ctypes.util
import logging
from pathlib import Path

import numpy as np

from service.latents import latents_for_seeds
from service.manifest import MODEL_NAME, Manifest, read_manifest

__all__ = ["GeneratorRuntime", "nvidia_driver_present", "pack", "unpack"]

log = logging.getLogger("bentoml.ganserve")  # under "bentoml", so `bentoml serve` shows it


class GeneratorRuntime:
    """Loads ``generator.onnx`` after checking it against its manifest; runs latents to uint8 NHWC images."""

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
        return self.manifest.sha256[:12]

    def run(self, z: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
        feeds = {"z": np.ascontiguousarray(z, dtype=np.float32)}
        if self.manifest.conditional:
            feeds["labels"] = np.ascontiguousarray(labels, dtype=np.int64)
        return self.session.run(["images"], feeds)[0]

    def warm_up(self) -> None:
        """One run before the service says it is ready, so the first request does not pay for allocation."""
        z = latents_for_seeds([0], self.manifest.latent_dim)
        self.run(z, np.zeros(1, dtype=np.int64))


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


def pack(z: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    """One float32 row per image, [z, label]: BentoML batches exactly one array across requests."""
    column = np.full((len(z), 1), -1.0, np.float32) if labels is None else labels.astype(np.float32)[:, None]
    return np.concatenate([z.astype(np.float32, copy=False), column], axis=1)


def unpack(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return rows[:, :-1], rows[:, -1].astype(np.int64)
