"""The one path from image seeds to images: an exported model folder run by onnxruntime, on the GPU when usable.

The model's graph draws its own latents (``service.latents``, as ONNX nodes in front of the generator), so
``GeneratorRuntime.generate`` hands it seeds, labels and truncations and gets images back: the service in both
layouts, the quality gate, export's parity check and the benchmarks all draw through it. No BentoML here, so the
model path is testable alone; ``service.service`` wraps it in a BentoML service.
"""

from __future__ import annotations

import ctypes.util
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.latents import PROTOCOL, check_seeds, check_truncation
from service.manifest import MODEL_NAME, Manifest, ManifestError, read_manifest
from service.rows import VERSION_BYTES

__all__ = ["Drawn", "GeneratorRuntime", "nvidia_driver_present"]

log = logging.getLogger("bentoml.ganserve")  # under "bentoml", so `bentoml serve` shows it


@dataclass(frozen=True)
class Drawn:
    """uint8 images N x H x W x C, the class each was drawn for (None: unconditional), and, when asked for,
    whether each image's float output was free of NaN and Inf."""

    images: np.ndarray
    labels: np.ndarray | None
    finite: np.ndarray | None = None


class GeneratorRuntime:
    """Loads ``generator.onnx`` after checking it against its manifest and the generator contract."""

    def __init__(self, folder: Path, *, threads: int = 0, providers: list[str] | None = None) -> None:
        import onnxruntime as ort

        self.folder = Path(folder)
        self.manifest: Manifest = read_manifest(self.folder)
        if self.manifest.latent_protocol != PROTOCOL:
            raise ManifestError(
                f"{self.folder} draws its latents by {self.manifest.latent_protocol}, not {PROTOCOL}: "
                "re-export it with `ganserve upgrade`"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: onnxruntime's default, one per core
        options.log_severity_level = 3  # a CUDA provider that cannot load says so below, once
        path = str(self.folder / MODEL_NAME)
        self.session = ort.InferenceSession(path, options, providers=providers or _providers(ort))
        self._check_contract()
        # onnxruntime-gpu lists CUDA as available even without a usable GPU and then silently runs on CPU:
        # what the session actually got is the truth.
        self.provider = self.session.get_providers()[0]
        log.info("generator %s runs on %s", self.version, self.provider)

    @property
    def version(self) -> str:
        return self.manifest.sha256[:VERSION_BYTES]

    def generate(
        self,
        seeds: np.ndarray | list[int] | range,
        labels: int | np.ndarray | None = None,
        truncation: float | np.ndarray | None = None,
        *,
        finite: bool = False,
    ) -> Drawn:
        """Seeds (labels, one or per row, -1 or None: by seed; truncations, one or per row, inf or None: none) ->
        images. ValueError for a seed or truncation out of range."""
        seeds = check_seeds(seeds)
        feeds = {"seeds": seeds, "truncation": check_truncation(truncation, len(seeds))}
        conditional = self.manifest.conditional
        if conditional:
            feeds["labels"] = np.broadcast_to(np.asarray(-1 if labels is None else labels, np.int64), seeds.shape)
        names = ["images"] + (["label"] if conditional else []) + (["finite"] if finite else [])
        out = dict(zip(names, self.session.run(names, feeds), strict=True))
        return Drawn(out["images"], out.get("label"), out.get("finite"))

    def warm_up(self) -> None:
        """One run before the service says it is ready, so the first request does not pay for allocation."""
        self.generate([0])

    def _check_contract(self) -> None:
        """seeds int64[N], truncation float32[N] (+ labels int64[N]) in; images uint8[N,H,W,C], finite and z
        (+ label) out."""
        m = self.manifest
        inputs = {i.name: i.type for i in self.session.get_inputs()}
        outputs = {o.name: o.type for o in self.session.get_outputs()}
        want_in = {"seeds": "tensor(int64)", "truncation": "tensor(float)"}
        want_out = {"images": "tensor(uint8)", "finite": "tensor(bool)", "z": "tensor(float)"}
        if m.conditional:
            want_in["labels"] = want_out["label"] = "tensor(int64)"
        problems = [f"input {k} must be {t}" for k, t in want_in.items() if inputs.get(k) != t]
        problems += [f"output {k} must be {t}" for k, t in want_out.items() if outputs.get(k) != t]
        if problems:
            raise ManifestError(
                f"{self.folder / MODEL_NAME} is not a ganserve generator ({'; '.join(problems)}); it has inputs "
                f"{sorted(inputs)} and outputs {sorted(outputs)}: export models with ganserve export"
            )


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
