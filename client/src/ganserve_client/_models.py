"""Wire models: what the service sends, checked by pydantic. A contract test keeps them in step with the server."""

from __future__ import annotations

import io
from functools import cached_property
from pathlib import Path
from typing import Any

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["GenerateRequest", "GeneratedImage", "Health", "ImageSpec", "Limits", "ModelInfo"]


class GenerateRequest(BaseModel):
    """The body of POST /generate and /generate_batch."""

    model_config = ConfigDict(extra="forbid")

    n: int = Field(1, ge=1)
    seed: int | None = Field(None, ge=0, lt=2**32)
    truncation: float | None = Field(None, ge=0.01, le=4, description="truncate z to [-t, t]")
    label: int | str | None = None

    @field_validator("n", "seed", "truncation", "label", mode="before")
    @classmethod
    def _no_booleans(cls, value: Any) -> Any:
        if isinstance(value, bool):  # True is an int to Python; to the server it is neither a number nor a label
            raise ValueError("a boolean is not a number or a label")
        return value


class ImageSpec(BaseModel):
    height: int
    width: int
    channels: int
    dtype: str = "uint8"
    layout: str = "NHWC"


class Limits(BaseModel):
    n: list[int]
    seed: list[int]
    truncation: str
    max_concurrency: int
    auth: bool


class ModelInfo(BaseModel):
    """GET /info: the served model and the API's limits."""

    model_version: str
    provider: str
    image: ImageSpec
    latent_dim: int
    latent_protocol: str
    class_names: list[str]
    gate: dict[str, Any] | None = None
    refused: dict[str, str] | None = None  # a production version the server refused ("tag", "reason"), if any
    limits: Limits


class _WireImage(BaseModel):
    seed: int
    label: str | None
    label_index: int | None
    png: str  # base64


class _WireBatch(BaseModel):
    model_version: str
    images: list[_WireImage]


class Health(BaseModel):
    live: bool
    ready: bool


class GeneratedImage:
    """One generated image: its seed (which reproduces it), label, model version and PNG bytes."""

    def __init__(self, *, seed: int, label: str | None, model_version: str, png: bytes) -> None:
        self.seed, self.label, self.model_version, self.png = seed, label, model_version, png

    @cached_property
    def image(self) -> Image.Image:
        return Image.open(io.BytesIO(self.png))

    def save(self, path: str | Path) -> Path:
        """Write the PNG as sent by the server (no re-encoding)."""
        path = Path(path)
        path.write_bytes(self.png)
        return path

    def __repr__(self) -> str:
        return f"GeneratedImage(seed={self.seed}, label={self.label!r}, model_version={self.model_version!r})"
