"""Export a generator to one self-contained ONNX file with its manifest, refusing one that fails parity.

The graph takes image seeds (``seeds`` int64[N], ``truncation`` float32[N], and ``labels`` int64[N] for a
conditional model) and returns uint8 images N x H x W x C. The latent protocol runs as its first nodes
(``training.sampler``), and the [-1, 1] -> bytes mapping and the NCHW -> NHWC transpose that every caller would
repeat are folded in at the end (bench/export.py measures what that saves). Parity is checked through the serving
path itself (``GeneratorRuntime``) against PyTorch fed the numpy reference latents. ``upgrade`` puts the sampler
in front of a model exported under latent protocol v1 (which took ``z``), with the same weights.

Given the run's discriminator, export writes it beside G as ``discriminator.onnx``, taking G's own output (uint8
N x H x W x C, and labels when conditional) and returning D's logit, checked against PyTorch on G's parity images,
and calibrates rejection sampling (``service.drs``) on a burn-in of G's samples: both go into the manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from service.drs import gamma_for
from service.errors import GanserveError
from service.latents import PROTOCOL, labels_for_seeds, latents_for_seeds
from service.manifest import (
    DISCRIMINATOR_NAME,
    MODEL_NAME,
    DiscriminatorInfo,
    ImageSpec,
    Manifest,
    TrainingInfo,
    file_sha256,
    read_manifest,
    write_manifest,
)
from service.runtime import GeneratorRuntime
from training.artifacts import export_onnx, staged, to_bytes, to_unit
from training.checkpoint import load_checkpoint
from training.config import RunConfig
from training.losses import LOSSES
from training.networks import Discriminator, Generator
from training.sampler import with_sampler

__all__ = [
    "BURN_IN",
    "PARITY_BATCHES",
    "ExportError",
    "ServedDiscriminator",
    "export_checkpoint",
    "export_discriminator",
    "export_module",
    "parity",
    "upgrade",
]

log = logging.getLogger("ganserve.export")

PARITY_BATCHES = (1, 3, 16, 64)
PARITY_TRUNCATION = 0.7  # every other parity image is truncated, so that path is checked too
LOGIT_PARITY = 1e-3  # largest |PyTorch - ONNX| logit allowed, relative to max(1, |logit|)
BURN_IN = 10_000  # samples of G that calibrate rejection sampling (Azadi et al. use a burn-in of 10,000 too)
BURN_IN_SEEDS = 2**31  # the burn-in's first seed: far from the seeds that parity, the gate and the README use
TARGET_ACCEPTANCE = 0.5  # of G's samples, under rejection sampling: between the paper's fidelity and speed


class ExportError(GanserveError, RuntimeError):
    """The exported graph does not reproduce PyTorch, or cannot be written."""


class ServedDiscriminator(nn.Module):
    """D behind G's output contract: uint8 NHWC -> [-1, 1] NCHW float, as the training data was fed to it."""

    def __init__(self, d: nn.Module, conditional: bool) -> None:
        super().__init__()
        self.d, self.conditional = d, conditional

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x = to_unit(images, channels_last=True)
        return self.d(x, labels) if self.conditional else self.d(x)


class _ServedGenerator(nn.Module):
    """G plus the post-processing every caller repeats: [-1, 1] NCHW float -> uint8 NHWC, rounded.

    A second output, ``finite``, flags per image whether G's float output was free of NaN and Inf, which the cast
    to uint8 would otherwise hide. onnxruntime computes it only for callers that ask for it.
    """

    def __init__(self, g: nn.Module, conditional: bool) -> None:
        super().__init__()
        self.g, self.conditional = g, conditional

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.g(z, labels) if self.conditional else self.g(z)
        return to_bytes(x), torch.isfinite(x).flatten(1).all(dim=1)


def export_module(
    g: nn.Module,
    out_dir: Path,
    *,
    latent_dim: int,
    image: ImageSpec,
    class_names: list[str] | tuple[str, ...] = (),
    training: TrainingInfo | None = None,
    discriminator: nn.Module | None = None,
) -> Manifest:
    """Export ``g`` (any module mapping z [, labels] to [-1, 1] images) into a new folder ``out_dir``, with
    ``discriminator`` (images [, labels] -> logits) beside it when given."""
    _check_new(out_dir)  # before the exporter's seconds of work
    g = g.eval()
    conditional = bool(class_names)
    served = _ServedGenerator(g, conditional).eval()
    z = torch.from_numpy(latents_for_seeds(range(2), latent_dim))
    args = (z, torch.zeros(2, dtype=torch.int64)) if conditional else (z,)
    names = ["z", "labels"] if conditional else ["z"]
    with tempfile.TemporaryDirectory() as tmp:
        export_onnx(served, args, Path(tmp) / "core.onnx", inputs=names, outputs=["images", "finite"])
        core = onnx.load(Path(tmp) / "core.onnx")
    model = with_sampler(core, latent_dim=latent_dim, classes=len(class_names))

    def reference(seeds: np.ndarray, truncation: np.ndarray) -> np.ndarray:
        z = torch.from_numpy(latents_for_seeds(seeds, latent_dim, truncation=truncation))
        labels = torch.from_numpy(labels_for_seeds(seeds, len(class_names))) if conditional else None
        with torch.no_grad():
            return served(z, labels)[0].numpy()

    manifest = Manifest(
        sha256="", latent_dim=latent_dim, image=image, class_names=list(class_names), inputs=_inputs(conditional),
        training=training, parity_levels=0,
    )  # fmt: skip
    with_discriminator = (
        None
        if discriminator is None
        else lambda staging, runtime: export_discriminator(
            ServedDiscriminator(discriminator.eval(), conditional).eval(),
            staging,
            runtime,
            image,
            step=training.step if training else 0,
        )
    )
    return _write(model, manifest, out_dir, reference, against="PyTorch", with_discriminator=with_discriminator)


def export_discriminator(
    discriminator: ServedDiscriminator, folder: Path, runtime: GeneratorRuntime, image: ImageSpec, *, step: int
):
    """Write ``discriminator.onnx`` into ``folder``, check it against PyTorch on G's parity images, and calibrate
    rejection sampling on a burn-in of G's samples; its manifest entry, or ExportError."""
    import onnxruntime as ort

    conditional = discriminator.conditional
    example = (torch.zeros(2, image.height, image.width, image.channels, dtype=torch.uint8),)
    if conditional:
        example += (torch.zeros(2, dtype=torch.int64),)
    path = folder / DISCRIMINATOR_NAME
    export_onnx(discriminator, example, path, inputs=["images", "labels"] if conditional else ["images"],
                outputs=["logit"])  # fmt: skip
    onnx.checker.check_model(onnx.load(path), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def logits(drawn) -> np.ndarray:
        feeds = {"images": drawn.images, **({"labels": drawn.labels} if conditional else {})}
        return session.run(["logit"], feeds)[0]

    def relative(seeds: np.ndarray) -> float:
        drawn = runtime.generate(seeds)
        with torch.no_grad():
            labels = torch.from_numpy(drawn.labels) if conditional else None
            expected = discriminator(torch.from_numpy(drawn.images), labels).numpy()
        got = logits(drawn)
        return float(np.max(np.abs(got - expected) / np.maximum(1.0, np.abs(expected))))

    worst = _worst(relative, 0.0)
    if not worst <= LOGIT_PARITY:  # NaN too
        raise ExportError(f"the discriminator's ONNX logits differ from PyTorch by {worst:.3g} (relative; allowed: "
                          f"{LOGIT_PARITY}); nothing written")  # fmt: skip
    burn_in = np.concatenate([logits(runtime.generate(np.arange(start, min(start + 500, BURN_IN_SEEDS + BURN_IN))))
                              for start in range(BURN_IN_SEEDS, BURN_IN_SEEDS + BURN_IN, 500)])  # fmt: skip
    if not np.isfinite(burn_in).all():
        raise ExportError("the discriminator gives non-finite logits on G's samples; nothing written")
    logit_max = float(burn_in.max())
    return DiscriminatorInfo(
        sha256=file_sha256(path), step=step, parity=worst, burn_in=BURN_IN, logit_max=logit_max,
        gamma=gamma_for(burn_in, logit_max, TARGET_ACCEPTANCE), target_acceptance=TARGET_ACCEPTANCE,
    )  # fmt: skip


def upgrade(source: Path, out_dir: Path) -> Manifest:
    """A model folder exported under latent protocol v1 (its graph takes ``z``), re-exported into ``out_dir`` with
    the sampler in front: the same weights, now drawing by this protocol. Its gate report does not carry over:
    seeds draw other images now, so gate it again."""
    import onnxruntime as ort

    _check_new(out_dir)
    old = read_manifest(source)
    if "seeds" in old.inputs:
        raise ExportError(f"{source} already takes seeds ({old.latent_protocol}); nothing to upgrade")
    classes = len(old.class_names)
    session = ort.InferenceSession(str(Path(source) / old.file), providers=["CPUExecutionProvider"])

    def reference(seeds: np.ndarray, truncation: np.ndarray) -> np.ndarray:
        feeds = {"z": latents_for_seeds(seeds, old.latent_dim, truncation=truncation)}
        if classes:
            feeds["labels"] = labels_for_seeds(seeds, classes)
        return session.run(["images"], feeds)[0]

    model = with_sampler(onnx.load(Path(source) / old.file), latent_dim=old.latent_dim, classes=classes)
    fresh = old.model_copy(update={"inputs": _inputs(bool(classes)), "gate": None, "latent_protocol": PROTOCOL,
                                   "created": datetime.now(timezone.utc)})  # fmt: skip
    return _write(model, fresh, out_dir, reference, against="the v1 graph")


def _check_new(out_dir: Path) -> None:
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ExportError(f"{out_dir} exists and is not empty; export into a new folder")


def _inputs(conditional: bool) -> dict[str, str]:
    return {"seeds": "int64[N]", **({"labels": "int64[N]"} if conditional else {}), "truncation": "float32[N]"}


def _write(model: onnx.ModelProto, manifest: Manifest, out_dir: Path, reference, *, against: str,
           with_discriminator=None) -> Manifest:  # fmt: skip
    """Check ``model``, write it with its manifest into a staging folder, measure parity through the serving
    runtime against ``reference(seeds, truncation)``, add the discriminator (``with_discriminator(staging,
    runtime)`` writes it and returns its manifest entry), and move the folder into place whole, or write nothing."""
    onnx.checker.check_model(model, full_check=True)
    with staged(out_dir, prefix=".export-") as staging:
        onnx_path = staging / MODEL_NAME
        onnx.save(model, onnx_path)
        write_manifest(staging, manifest.model_copy(update={"sha256": file_sha256(onnx_path)}))
        runtime = GeneratorRuntime(staging, providers=["CPUExecutionProvider"])
        worst = parity(runtime, reference)
        if worst > 1:
            raise ExportError(f"ONNX output differs from {against} by {worst} levels (allowed: 1); nothing written")
        manifest = read_manifest(staging).model_copy(update={"parity_levels": worst})
        if with_discriminator is not None:
            manifest = manifest.model_copy(update={"discriminator": with_discriminator(staging, runtime)})
        write_manifest(staging, manifest)
    log.info(
        "exported %s (%.1f MB), parity within %d level(s)", out_dir, (out_dir / MODEL_NAME).stat().st_size / 1e6, worst
    )
    return manifest


def parity(runtime: GeneratorRuntime, reference) -> int:
    """Largest |reference - runtime| in uint8 levels over the parity batches, half of each truncated: the runtime
    draws its latents in the graph, the reference from the numpy reference."""

    def levels(seeds: np.ndarray) -> int:
        n = len(seeds)
        truncation = np.where(np.arange(n) % 2, np.float32(PARITY_TRUNCATION), np.float32(np.inf)).astype(np.float32)
        got = runtime.generate(seeds, truncation=truncation).images.astype(np.int16)
        expected = reference(seeds, truncation).astype(np.int16)
        if got.shape != expected.shape:
            raise ExportError(f"ONNX output shape {got.shape} differs from the reference {expected.shape} at batch {n}")
        return int(np.abs(got - expected).max())

    return _worst(levels, 0)


def _worst(difference: Callable[[np.ndarray], float], start: float) -> float:
    """The largest of ``start`` and ``difference(seeds)`` over ``PARITY_BATCHES``: the same first seeds at each
    batch size, so an image that changes with the size of its batch shows. Both parity checks, G's and D's."""
    return max(start, *(difference(np.arange(1000, 1000 + n, dtype=np.int64)) for n in PARITY_BATCHES))


def export_checkpoint(source: Path, out_dir: Path, *, ema: bool = True) -> Manifest:
    """Export the generator of a run folder or checkpoint file (EMA weights by default) with its manifest."""
    state = load_checkpoint(source)
    cfg = RunConfig.model_validate(state["config"])
    g = Generator(cfg.model)
    g.load_state_dict(state["G_ema"] if ema and state.get("G_ema") is not None else state["G"])
    config_json = json.dumps(state["config"], sort_keys=True)
    run_dir = Path(source) if Path(source).is_dir() else Path(source).parent
    training = TrainingInfo(
        run_id=run_dir.name, step=state["step"], config_sha256=hashlib.sha256(config_json.encode()).hexdigest(),
        config=state["config"], dataset=state["data"],
    )  # fmt: skip
    class_names = state["data"]["class_names"] if cfg.model.conditional else []
    image = ImageSpec(height=cfg.model.image_size, width=cfg.model.image_size, channels=cfg.model.channels)
    d = None
    if LOSSES[cfg.loss.name].probabilistic:  # a logistic D's logit estimates log(p_data / p_g); a critic's does not
        d = Discriminator(cfg.model)
        d.load_state_dict(state["D"])  # the D of the same step, scoring this G
    else:
        log.info("not exporting the run's %s critic: its score is no density ratio; for rejection sampling, fit a "
                 "D with: ganserve fit-discriminator %s --out DIR", cfg.loss.name, out_dir)  # fmt: skip
    return export_module(g, out_dir, latent_dim=cfg.model.latent_dim, image=image, class_names=class_names,
                         training=training, discriminator=d)  # fmt: skip
