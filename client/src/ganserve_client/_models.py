"""Wire models (what the service sends, checked by pydantic; a contract test keeps them in step with the server) and
the results the client hands back. What a file says about itself, its provenance, is ganserve_client._provenance's."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ganserve_client._container import open_image
from ganserve_client._provenance import DrsInfo, Provenance, read_provenance

__all__ = [
    "EXTENSIONS",
    "Animation",
    "BulkSummary",
    "GenerateRequest",
    "GeneratedImage",
    "Health",
    "ImageSpec",
    "InterpolateRequest",
    "Limits",
    "ModelInfo",
    "Reproduction",
]

# The service's bound on rejection sampling's candidates per image (``ModelInfo.limits.max_candidates``).
MAX_CANDIDATES = 64
# The file name extension for each format the service answers in; jpeg files are .jpg, as most tools expect.
EXTENSIONS = {"png": ".png", "webp": ".webp", "jpeg": ".jpg", "gif": ".gif"}


def _no_booleans(value: Any) -> Any:
    if isinstance(value, bool):  # True is an int to Python; to the server it is neither a number nor a label
        raise ValueError("a boolean is not a number or a label")
    return value


class GenerateRequest(BaseModel):
    """The body of POST /generate and /generate_batch. Only what cannot change with the server's settings is checked
    here (upper bounds such as n's are the server's to say), so an obviously wrong call fails before a round trip."""

    model_config = ConfigDict(extra="forbid")

    n: int = Field(1, ge=1)
    seed: int | None = Field(None, ge=0, lt=2**32)
    truncation: float | None = Field(None, ge=0.01, le=4, description="truncate z to [-t, t]")
    label: int | str | None = None
    model: str | None = Field(None, min_length=1, description="a model line; the service's default when absent")
    format: str | None = Field(None, description="png (the default), webp or jpeg")
    quality: int | None = Field(None, ge=1, le=100, description="jpeg, or lossy webp")
    sampler: Literal["plain", "drs"] | None = Field(
        None, description="drs: discriminator rejection sampling; the model's default (ModelInfo.sampler) when absent"
    )
    max_candidates: int | None = Field(None, ge=1, le=MAX_CANDIDATES, description="drs: candidates per image at most")

    @field_validator("n", "seed", "truncation", "label", "quality", "max_candidates", mode="before")
    @classmethod
    def _no_booleans(cls, value: Any) -> Any:
        return _no_booleans(value)

    @model_validator(mode="after")
    def _options_fit_together(self) -> GenerateRequest:
        if self.quality is not None and self.format not in ("jpeg", "webp"):
            raise ValueError("quality applies to format 'jpeg' or 'webp' only")
        # Without a sampler the model's default applies, which may be drs: that case is the server's to decide.
        if self.max_candidates is not None and self.sampler == "plain":
            raise ValueError("max_candidates applies to sampler 'drs' only")
        return self


class InterpolateRequest(BaseModel):
    """The body of POST /interpolate; the upper limits are the server's (``ModelInfo.limits.interpolate``)."""

    model_config = ConfigDict(extra="forbid")

    seeds: list[int] = Field(min_length=2)
    frames: int = Field(16, ge=1)
    label: int | str | list[int | str] | None = None
    truncation: float | None = Field(None, ge=0.01, le=4)
    loop: bool = False
    format: str = "webp"
    quality: int | None = Field(None, ge=1, le=100)
    duration_ms: int | None = Field(None, ge=1)
    model: str | None = Field(None, min_length=1)

    @field_validator("frames", "truncation", "quality", "duration_ms", mode="before")
    @classmethod
    def _no_booleans(cls, value: Any) -> Any:
        return _no_booleans(value)

    @field_validator("seeds", mode="before")
    @classmethod
    def _seeds_are_numbers(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            for seed in value:
                _no_booleans(seed)
                if isinstance(seed, int) and not 0 <= seed < 2**32:
                    raise ValueError(f"seed {seed} is outside 0..2^32-1")
            return list(value)
        return value


class ImageSpec(BaseModel):
    height: int
    width: int
    channels: int
    dtype: str = "uint8"
    layout: str = "NHWC"


class InterpolateLimits(BaseModel):
    keys: list[int]
    frames: list[int]
    formats: list[str] = ["webp", "gif", "png"]
    max_frames: int
    max_bytes: int


class Limits(BaseModel):
    n: list[int]
    seed: list[int]
    truncation: str
    max_concurrency: int
    auth: bool
    formats: list[str] = ["png"]  # what a server from before formats sends
    interpolate: InterpolateLimits | None = None
    samplers: list[str] = ["plain"]  # what a server from before rejection sampling sends
    max_candidates: list[int] | None = None  # rejection sampling's bound per image: [1, most]
    default_candidates: int | None = None


class ModelLine(BaseModel):
    """One model line a service serves (``ModelInfo.models``); a line with no model loaded yet has only
    ``not_ready``, which says why."""

    model_version: str | None = None
    image: ImageSpec | None = None
    class_names: list[str] = []
    gate: dict[str, Any] | None = None
    sampler: str = "plain"  # what a request without ``sampler`` gets
    not_ready: str | None = None


class Promotion(BaseModel):
    """A promotion of a model line still in the store (``ModelInfo.history``, oldest first)."""

    version: str
    model_version: str | None = None
    created: str | None = None
    decision: str | None = None
    fid: float | None = None
    # The gate's judges, fresh two-sample classifiers of real against generated images, on the evaluator's features
    # and on pixels: the nearer 0.5, the less they tell the two apart. (The names are the fields the server sends.)
    feature_judge_accuracy: float | None = None
    pixel_judge_accuracy: float | None = None
    current: bool = False


class ModelInfo(BaseModel):
    """GET /info: the model line asked for (the default one if none), the other lines, and the API's limits."""

    model_version: str
    provider: str
    image: ImageSpec
    latent_dim: int
    latent_protocol: str
    class_names: list[str]
    gate: dict[str, Any] | None = None  # the gate's headline; ``gate["drs"]``: how DRS compared with plain sampling
    refused: dict[str, str] | None = None  # a production version the server refused ("tag", "reason"), if any
    limits: Limits
    # The sampler a request without ``sampler`` gets ("drs" only where the gate found it helps), and the model's
    # discriminator (sha256, step, logit_max, gamma, ...; None: exported without one, so no DRS).
    sampler: str = "plain"
    discriminator: dict[str, Any] | None = None
    # Defaults for what a server from before model lines does not send, so this client still reads its /info.
    model: str | None = None
    default_model: str | None = None
    models: dict[str, ModelLine] = {}
    history: list[Promotion] = []


class _WireImage(BaseModel):
    seed: int
    label: str | None
    label_index: int | None
    data: str  # base64 of the file
    drs: DrsInfo | None = None  # sampler drs only


class _WireBatch(BaseModel):
    model: str | None = None
    model_version: str
    format: str = "png"
    media_type: str = "image/png"
    sampler: str = "plain"  # what a server from before rejection sampling drew with
    images: list[_WireImage]


class Health(BaseModel):
    live: bool
    ready: bool


class _File:
    """What a generated image and an animation share: the server's bytes, their provenance, a PIL view, save()."""

    data: bytes
    format: str

    @cached_property
    def image(self) -> Image.Image:
        """The file opened with Pillow (lazily decoded; an animation's frames through ``PIL.ImageSequence``)."""
        return open_image(self.data)

    @cached_property
    def provenance(self) -> Provenance | None:
        """The provenance written inside the file by the server (None for a file from a server without it)."""
        return read_provenance(self.data)

    @property
    def extension(self) -> str:
        return EXTENSIONS.get(self.format, f".{self.format}")

    def save(self, path: str | Path) -> Path:
        """Write the bytes as the server sent them (no re-encoding, so the provenance stays). The name's extension
        is the caller's choice; ``extension`` says the usual one for ``format``."""
        path = Path(path)
        path.write_bytes(self.data)
        return path


class GeneratedImage(_File):
    """One generated image: its seed (which reproduces it), label, model line and version, the sampler that drew it
    ("plain" or "drs", with ``drs`` then saying how), and the file's bytes."""

    def __init__(
        self,
        *,
        seed: int,
        label: str | None,
        model: str | None,
        model_version: str,
        format: str,
        media_type: str,
        data: bytes,
        sampler: str = "plain",
        drs: DrsInfo | None = None,
    ) -> None:
        self.seed, self.label, self.model, self.model_version = seed, label, model, model_version
        self.format, self.media_type, self.data = format, media_type, data
        self.sampler, self.drs = sampler, drs

    def __repr__(self) -> str:
        drs = "" if self.drs is None else f", drs={self.drs!r}"
        return (f"GeneratedImage(seed={self.seed}, label={self.label!r}, model={self.model!r}, "
                f"model_version={self.model_version!r}, format={self.format!r}, sampler={self.sampler!r}{drs}, "
                f"{len(self.data)} bytes)")  # fmt: skip


class Animation(_File):
    """A walk through latent space between key seeds: an animated WebP or GIF, or a PNG strip of the frames."""

    def __init__(
        self,
        *,
        seeds: list[int],
        frames: int,
        model: str | None,
        model_version: str,
        format: str,
        media_type: str,
        data: bytes,
    ) -> None:
        self.seeds, self.frames, self.model, self.model_version = seeds, frames, model, model_version
        self.format, self.media_type, self.data = format, media_type, data

    def __repr__(self) -> str:
        return (f"Animation(seeds={self.seeds}, frames={self.frames}, model={self.model!r}, "
                f"model_version={self.model_version!r}, format={self.format!r}, {len(self.data)} bytes)")  # fmt: skip


@dataclass(frozen=True)
class Reproduction:
    """A file drawn again from its provenance: the new bytes, how they compare, and the versions that drew each."""

    data: bytes
    same_bytes: bool
    same_pixels: bool
    old_version: str
    new_version: str

    @property
    def version_changed(self) -> bool:
        return self.old_version != self.new_version


@dataclass(frozen=True)
class BulkSummary:
    """What ``generate_many`` did: images written this run, seeds already in the folder, and the time it took."""

    out: Path
    first_seed: int
    written: int
    skipped: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0
