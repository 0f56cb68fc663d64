"""Checkpoints that describe themselves: a checkpoint alone rebuilds its networks, so sampling needs no flags.

A checkpoint is a dict saved with ``torch.save`` holding only tensors and plain data (it loads with
``weights_only=True``):

    schema_version, kind        what this file is
    config                      the resolved RunConfig (model, data, loss, optimiser, ...)
    data                        sizes and sha256 of the train and held-out splits
    step, epoch, batch          G steps done; where in which epoch to continue
    G, D, G_ema                 state dicts (G_ema is None when EMA is off)
    opt_G, opt_D                optimiser states
    rng                         torch's global state and each process's noise-generator state
    augment                     augmentation's probability p and each process's ADA sums since p last moved
                                (absent in checkpoints written before augmentation existed)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from service.errors import GanserveError
from training.config import RunConfig
from training.networks import Generator

__all__ = [
    "CHECKPOINT_NAME",
    "SCHEMA_VERSION",
    "CheckpointError",
    "load_checkpoint",
    "load_generator",
    "save_checkpoint",
]

SCHEMA_VERSION = 1
KIND = "ganserve.checkpoint"
CHECKPOINT_NAME = "checkpoint.pt"


class CheckpointError(GanserveError, ValueError):
    """A file that is not a ganserve checkpoint of a schema this version reads."""


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically: a crash mid-write leaves the previous checkpoint in place."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"schema_version": SCHEMA_VERSION, "kind": KIND, **state}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint file, or ``checkpoint.pt`` inside a run folder."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several unrelated types for a foreign or damaged file
        raise CheckpointError(f"{path} is not a readable checkpoint: {err}") from None
    if not isinstance(state, dict) or state.get("kind") != KIND:
        raise CheckpointError(f"{path} is not a ganserve checkpoint")
    if state["schema_version"] != SCHEMA_VERSION:
        raise CheckpointError(f"{path} has schema {state['schema_version']}; this ganserve reads {SCHEMA_VERSION}")
    return state


def load_generator(path: Path, *, ema: bool = True) -> tuple[Generator, RunConfig]:
    """Rebuild the generator of a checkpoint in eval mode (EMA weights when present and ``ema``)."""
    state = load_checkpoint(path)
    cfg = RunConfig.model_validate(state["config"])
    g = Generator(cfg.model)
    weights = state["G_ema"] if ema and state.get("G_ema") is not None else state["G"]
    g.load_state_dict(weights)
    return g.eval().requires_grad_(False), cfg
