"""Export a generator to one self-contained ONNX file with its manifest, refusing one that fails parity.

The graph takes ``z`` (float32, N x latent_dim) and, for a conditional model, ``labels`` (int64, N), and returns
uint8 images N x H x W x C: the [-1, 1] -> bytes mapping and the NCHW -> NHWC transpose that every caller would
repeat are folded into the graph (bench/export.py measures what that saves).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from service.errors import GanserveError
from service.latents import latents_for_seeds
from service.manifest import MODEL_NAME, ImageSpec, Manifest, TrainingInfo, file_sha256, write_manifest
from training.checkpoint import load_checkpoint
from training.config import RunConfig
from training.networks import Generator

__all__ = ["PARITY_BATCHES", "ExportError", "export_checkpoint", "export_module", "parity"]

log = logging.getLogger("ganserve.export")

PARITY_BATCHES = (1, 3, 16, 64)
OPSET = 20


class ExportError(GanserveError, RuntimeError):
    """The exported graph does not reproduce PyTorch, or cannot be written."""


class _Served(nn.Module):
    """G plus the post-processing every caller repeats: [-1, 1] NCHW float -> uint8 NHWC, rounded.

    A second output, ``finite``, flags per image whether G's float output was free of NaN and Inf, which the cast
    to uint8 would otherwise hide. onnxruntime computes it only for callers that ask for it.
    """

    def __init__(self, g: nn.Module, conditional: bool) -> None:
        super().__init__()
        self.g, self.conditional = g, conditional

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.g(z, labels) if self.conditional else self.g(z)
        images = ((x + 1.0) * 127.5 + 0.5).clamp(0.0, 255.0).to(torch.uint8).permute(0, 2, 3, 1)
        return images, torch.isfinite(x).flatten(1).all(dim=1)


def export_module(
    g: nn.Module,
    out_dir: Path,
    *,
    latent_dim: int,
    image: ImageSpec,
    class_names: list[str] | tuple[str, ...] = (),
    training: TrainingInfo | None = None,
) -> Manifest:
    """Export ``g`` (any module mapping z [, labels] to [-1, 1] images) into a new folder ``out_dir``."""
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ExportError(f"{out_dir} exists and is not empty; export into a new folder")
    g = g.eval()
    conditional = bool(class_names)
    served = _Served(g, conditional).eval()
    z = torch.from_numpy(latents_for_seeds(range(2), latent_dim))
    args = (z, torch.zeros(2, dtype=torch.int64)) if conditional else (z,)
    batch = torch.export.Dim("batch", min=1, max=4096)
    dynamic = ({0: batch}, {0: batch}) if conditional else ({0: batch},)
    names = ["z", "labels"] if conditional else ["z"]
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir.parent if out_dir.parent.exists() else None))
    try:
        onnx_path = staging / MODEL_NAME
        with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # the exporter warns and prints at length about what does not apply here
            torch.onnx.export(
                served, args, onnx_path, dynamo=True, opset_version=OPSET, input_names=names,
                output_names=["images", "finite"], dynamic_shapes=dynamic, external_data=False, verbose=False,
            )  # fmt: skip
        import onnx

        onnx.checker.check_model(str(onnx_path), full_check=True)
        worst = parity(served, onnx_path, latent_dim=latent_dim, num_classes=len(class_names))
        if worst > 1:
            raise ExportError(f"ONNX output differs from PyTorch by {worst} levels (allowed: 1); nothing written")
        inputs = {"z": f"float32[N,{latent_dim}]"} | ({"labels": "int64[N]"} if conditional else {})
        manifest = Manifest(
            sha256=file_sha256(onnx_path), latent_dim=latent_dim, image=image,
            class_names=list(class_names), inputs=inputs, training=training, parity_levels=worst,
        )  # fmt: skip
        write_manifest(staging, manifest)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        if out_dir.exists():
            out_dir.rmdir()
        staging.rename(out_dir)  # the folder appears whole or not at all
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info(
        "exported %s (%.1f MB), parity within %d level(s)", out_dir, (out_dir / MODEL_NAME).stat().st_size / 1e6, worst
    )
    return manifest


def parity(served: nn.Module, onnx_path: Path, *, latent_dim: int, num_classes: int) -> int:
    """Largest |PyTorch - onnxruntime| in uint8 levels over several batch sizes, same seeded latents."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst = 0
    for n in PARITY_BATCHES:
        z = latents_for_seeds(range(1000, 1000 + n), latent_dim)
        feeds = {"z": z}
        args = [torch.from_numpy(z)]
        if num_classes:
            labels = np.arange(n, dtype=np.int64) % num_classes
            feeds["labels"] = labels
            args.append(torch.from_numpy(labels))
        with torch.no_grad():
            expected = served(*args)[0].numpy().astype(np.int16)
        got = session.run(["images"], feeds)[0].astype(np.int16)
        if got.shape != expected.shape:
            raise ExportError(f"ONNX output shape {got.shape} differs from PyTorch {expected.shape} at batch {n}")
        worst = max(worst, int(np.abs(got - expected).max()))
    return worst


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
    return export_module(g, out_dir, latent_dim=cfg.model.latent_dim, image=image, class_names=class_names,
                         training=training)  # fmt: skip
