"""The one path from image seeds to images: an exported model folder run by onnxruntime, on the GPU when usable.

The model's graph draws its own latents (``service.latents``, as ONNX nodes in front of the generator), so
``GeneratorRuntime.generate`` hands it seeds, labels and truncations and gets images back: the service in both
layouts, the quality gate, export's parity check and the benchmarks all draw through it. No BentoML here, so the
model path is testable alone; ``service.service`` wraps it in a BentoML service.

Discriminator rejection sampling (``rejection_sample``, ``service/drs.py``) draws candidates for each seed from its
own stream (``service.latents.candidate_seeds``) through ``generate``, scores them with the run's exported D
(``discriminator.onnx``) and keeps the first accepted: the same image for a seed in any batch.

Walks between seeds (``interpolate``) take the key latents from the same graph, bend the path between them
(``service.latents.slerp``), and run the generator part of that graph alone on the frames' latents: the graph
cut at ``z`` with onnx's extractor, built the first time a walk is asked for.
"""

from __future__ import annotations

import ctypes.util
import hashlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.drs import DEFAULT_CANDIDATES, acceptance
from service.latents import (
    PROTOCOL,
    candidate_seeds,
    candidate_uniforms,
    check_seeds,
    check_truncation,
    interpolation_path,
    slerp,
)
from service.manifest import MODEL_NAME, Manifest, ManifestError, read_manifest
from service.rows import version_of

__all__ = ["Drawn", "GeneratorRuntime", "nvidia_driver_present"]

log = logging.getLogger("bentoml.ganserve")  # under "bentoml", so `bentoml serve` shows it


@dataclass(frozen=True)
class Drawn:
    """uint8 images N x H x W x C, the class each was drawn for (None: unconditional), and, when asked for,
    whether each image's float output was free of NaN and Inf. Drawn by rejection sampling, also each image's
    discriminator logit, how many candidates were drawn for it, and whether it was accepted (False: none of the
    allowed candidates was, and this is the best-scored of them)."""

    images: np.ndarray
    labels: np.ndarray | None
    finite: np.ndarray | None = None
    score: np.ndarray | None = None
    candidates: np.ndarray | None = None
    accepted: np.ndarray | None = None


class GeneratorRuntime:
    """Loads ``generator.onnx`` after checking it against its manifest and the generator contract."""

    def __init__(
        self, folder: Path, *, threads: int = 0, spin: bool = True, providers: list[str] | None = None
    ) -> None:
        import onnxruntime as ort

        self.folder = Path(folder)
        self.manifest: Manifest = read_manifest(self.folder)
        if self.manifest.latent_protocol != PROTOCOL:
            raise ManifestError(
                f"{self.folder} draws its latents by {self.manifest.latent_protocol}, not {PROTOCOL}: "
                "re-export it with `ganserve upgrade`"
            )
        self.options = ort.SessionOptions()
        self.options.intra_op_num_threads = threads  # 0: onnxruntime's default, one per core
        if not spin:  # threads that wait for work sleep instead of burning the cores other processes serve on
            self.options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.options.log_severity_level = 3  # a CUDA provider that cannot load says so below, once
        path = str(self.folder / MODEL_NAME)
        self.session = ort.InferenceSession(path, self.options, providers=providers or _providers(ort))
        self._generator: ort.InferenceSession | None = None  # the graph after z, for walks; made when first asked
        self._cutting = threading.Lock()
        self._check_contract()
        self.discriminator: ort.InferenceSession | None = None
        if self.manifest.discriminator is not None:  # read_manifest checked its sha256 too
            d = str(self.folder / self.manifest.discriminator.file)
            self.discriminator = ort.InferenceSession(d, self.options, providers=self.session.get_providers())
            self._check_discriminator()
        # onnxruntime-gpu lists CUDA as available even without a usable GPU and then silently runs on CPU:
        # what the session actually got is the truth.
        self.provider = self.session.get_providers()[0]
        log.info("generator %s runs on %s", self.version, self.provider)

    @property
    def version(self) -> str:
        return version_of(self.manifest.sha256)

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

    def discriminate(self, images: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
        """The discriminator's float32 logits for uint8 NHWC images (and the classes they were drawn for)."""
        self._need_discriminator()
        feeds = {"images": images, **({"labels": labels} if self.manifest.conditional else {})}
        return self.discriminator.run(["logit"], feeds)[0]

    def rejection_sample(
        self,
        seeds: np.ndarray | list[int] | range,
        labels: int | np.ndarray | None = None,
        truncation: float | np.ndarray | None = None,
        *,
        candidates: int | np.ndarray = DEFAULT_CANDIDATES,
        finite: bool = False,
    ) -> Drawn:
        """Images by discriminator rejection sampling (docs/LATENTS.md §7): for each seed, candidates j = 0, 1, ...
        from its own stream, each accepted when its uniform is below ``service.drs.acceptance`` of its logit; the
        first accepted is kept. At most ``candidates`` are drawn per image (one for all, or one per row); when none
        is accepted, the best-scored one is kept and ``accepted`` says so. Rounds draw one candidate for every
        image still open, so the batch shrinks as images are accepted."""
        self._need_discriminator()
        d = self.manifest.discriminator
        seeds = check_seeds(seeds)
        truncation = check_truncation(truncation, len(seeds))
        bound = np.broadcast_to(np.asarray(candidates, np.int64), seeds.shape)
        if (bound < 1).any():
            raise ValueError(f"at least one candidate per image must be allowed, got {int(bound.min())}")
        first = self.generate(seeds, labels, truncation, finite=finite)  # candidate 0: the plain image
        images, classes, ok = first.images.copy(), first.labels, None if first.finite is None else first.finite.copy()
        score = _ranked(self.discriminate(images, classes))
        accepted = candidate_uniforms(seeds, 0) < acceptance(score, d.logit_max, d.gamma)
        drawn = np.ones(len(seeds), np.int32)
        open_ = np.flatnonzero(~accepted & (bound > 1))
        j = 1
        while open_.size:
            rows = seeds[open_]
            cls = None if classes is None else classes[open_]
            got = self.generate(candidate_seeds(rows, j), cls, truncation[open_], finite=finite)
            logit = _ranked(self.discriminate(got.images, cls))
            yes = candidate_uniforms(rows, j) < acceptance(logit, d.logit_max, d.gamma)
            keep = yes | (logit > score[open_])  # the accepted one, or the best-scored so far for the fallback
            at = open_[keep]
            images[at], score[at] = got.images[keep], logit[keep]
            if ok is not None:
                ok[at] = got.finite[keep]
            accepted[open_[yes]] = True
            j += 1
            drawn[open_] = j
            open_ = open_[~yes & (bound[open_] > j)]
        return Drawn(images, classes, ok, score=score, candidates=drawn, accepted=accepted)

    def interpolate(
        self,
        keys: np.ndarray | list[int],
        frames: int,
        *,
        labels: int | np.ndarray | None = None,
        truncation: float | None = None,
        loop: bool = False,
    ) -> Drawn:
        """The frames of a walk through the latents of the key seeds (``service.latents.interpolation_path``),
        ``frames`` per segment. Labels: one, or one per key (-1 or None: by seed); a frame takes the class of the
        nearer key, since a class cannot be interpolated. Every frame is a function of the request alone."""
        keys = check_seeds(keys)
        feeds = {"seeds": keys, "truncation": check_truncation(truncation, len(keys))}
        conditional = self.manifest.conditional
        if conditional:
            feeds["labels"] = np.broadcast_to(np.asarray(-1 if labels is None else labels, np.int64), keys.shape)
        out = self.session.run(["z", "label"] if conditional else ["z"], feeds)
        a, b, t = interpolation_path(len(keys), frames, loop=loop)
        walk = {"z": slerp(out[0][a], out[0][b], t)}
        if conditional:
            walk["label"] = np.where(t < 0.5, out[1][a], out[1][b])
        (images,) = self._after_z().run(["images"], walk)
        return Drawn(images, walk.get("label"))

    def _after_z(self):
        """The generator part of the graph: inputs z (and label), outputs images and finite."""
        with self._cutting:
            if self._generator is None:
                import onnx
                import onnxruntime as ort
                from onnx.utils import Extractor

                data = (self.folder / MODEL_NAME).read_bytes()
                if hashlib.sha256(data).hexdigest() != self.manifest.sha256:  # changed since it was verified
                    raise ManifestError(f"{self.folder / MODEL_NAME} no longer matches its manifest's sha256")
                model = onnx.load_from_string(data)
                inputs = ["z", "label"] if self.manifest.conditional else ["z"]
                cut = Extractor(model).extract_model(inputs, ["images", "finite"])
                self._generator = ort.InferenceSession(
                    cut.SerializeToString(), self.options, providers=self.session.get_providers()
                )
            return self._generator

    def warm_up(self) -> None:
        """One run before the service says it is ready, so the first request does not pay for allocation."""
        drawn = self.generate([0])
        if self.discriminator is not None:
            self.discriminate(drawn.images, drawn.labels)

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

    def _need_discriminator(self) -> None:
        if self.discriminator is None:
            raise ManifestError(
                f"{self.folder} has no discriminator: re-export it with ganserve export RUN_DIR, or fit one with "
                "ganserve fit-discriminator, to sample it with DRS"
            )

    def _check_discriminator(self) -> None:
        """images uint8[N,H,W,C] (+ labels int64[N]) in, logit float32[N] out."""
        inputs = {i.name: i.type for i in self.discriminator.get_inputs()}
        outputs = {o.name: o.type for o in self.discriminator.get_outputs()}
        want = {"images": "tensor(uint8)", **({"labels": "tensor(int64)"} if self.manifest.conditional else {})}
        if inputs != want or outputs.get("logit") != "tensor(float)":
            raise ManifestError(
                f"{self.folder / self.manifest.discriminator.file} is not a ganserve discriminator: it must take "
                f"{want} and give logit: tensor(float), and takes {inputs} and gives {outputs}"
            )


def _ranked(logits: np.ndarray) -> np.ndarray:
    """Logits where NaN ranks lowest (-inf): such a candidate is never accepted, nor kept over any other."""
    return np.where(np.isnan(logits), np.float32(-np.inf), logits)


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
