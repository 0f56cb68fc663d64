"""The API's request bodies and what they mean for a model: the first stage of a request.

``GenerateRequest`` and ``InterpolateRequest`` carry the limits in their type hints (they are the OpenAPI schema,
``service.openapi``); the functions here turn a valid body into what a run needs, or a ``Refused`` that says what is
wrong and what is allowed: the format (body, else the Accept header), the class index, the sampler and its bound.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.drs import DEFAULT_CANDIDATES, MAX_CANDIDATES
from service.formats import negotiate
from service.latents import MAX_SEED, MAX_TRUNCATION, MIN_TRUNCATION
from service.lines import LINE_PATTERN
from service.manifest import DrsHeadline
from service.settings import settings

__all__ = [
    "GenerateRequest", "InterpolateRequest", "Label", "Line", "Refused", "Truncation", "default_sampler", "label_index",
    "pick_format", "sampler_for",
]  # fmt: skip

MAX_KEYS, MAX_SEGMENT_FRAMES = 16, 120


class Refused(Exception):
    """A request this service answers with a 4xx or 503 and a JSON body that says why."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body["error"])
        self.status, self.body = status, body


# The fields both bodies share, each spelled once: one bound, one schema, one description for the two.
Truncation = Annotated[
    float | None,
    Field(
        ge=MIN_TRUNCATION, le=MAX_TRUNCATION, allow_inf_nan=False,
        description="truncate z to [-t, t] (the truncation trick: fidelity for variety); none if absent",
    ),
]  # fmt: skip
Label = Annotated[int, Field(ge=0)] | str  # a class: its name, or its index
# What the API calls a model is a line (service.lines); a body without one gets the service's default line.
Line = Annotated[str | None, Field(pattern=f"^{LINE_PATTERN}$", description="model line; else the default")]


class GenerateRequest(BaseModel):
    """Body of /generate and /generate_batch. Unknown fields are refused, not ignored; types are strict (no
    numbers in strings, no booleans for numbers), as a JSON API's clients expect."""

    model_config = ConfigDict(extra="forbid", strict=True)

    n: Annotated[int, Field(ge=1, le=settings().max_n, description="images; a grid when more than one")] = 1
    seed: Annotated[int | None, Field(ge=0, le=MAX_SEED - 1, description="image i gets seed + i; else random")] = None
    truncation: Truncation = None
    label: Annotated[Label | None, Field(description="class name or index, for a conditional model")] = None
    model: Line = None
    format: Annotated[
        Literal["png", "webp", "jpeg"] | None,
        Field(description="file format; else the Accept header's choice (/generate), else png"),
    ] = None
    quality: Annotated[
        int | None, Field(ge=1, le=100, description="jpeg (default 90) and webp (default: lossless) only")
    ] = None
    sampler: Annotated[
        Literal["plain", "drs"] | None,
        Field(description="drs: discriminator rejection sampling; else the model's default (/info: sampler)"),
    ] = None
    max_candidates: Annotated[
        int | None,
        Field(ge=1, le=MAX_CANDIDATES, description=f"drs: candidates per image at most (default {DEFAULT_CANDIDATES})"),
    ] = None


class InterpolateRequest(BaseModel):
    """Body of /interpolate: a walk through the latents of key seeds, as an animation or one PNG strip."""

    model_config = ConfigDict(extra="forbid", strict=True)

    seeds: Annotated[
        list[Annotated[int, Field(ge=0, le=MAX_SEED - 1)]],
        Field(min_length=2, max_length=MAX_KEYS, description="key seeds, visited in order"),
    ]
    frames: Annotated[int, Field(ge=1, le=MAX_SEGMENT_FRAMES, description="frames from one key to the next")] = 16
    loop: Annotated[bool, Field(description="walk back from the last key to the first")] = False
    truncation: Truncation = None
    label: Annotated[
        Label | list[Label] | None,
        Field(description="class for every key, or one per key (a frame takes the nearer key's class)"),
    ] = None
    model: Line = None
    format: Annotated[
        Literal["webp", "gif", "png"] | None,
        Field(description="animated webp or gif, or png: one strip of frames; else the Accept header's, else webp"),
    ] = None
    quality: Annotated[int | None, Field(ge=1, le=100, description="webp only (default: lossless)")] = None
    duration_ms: Annotated[int, Field(ge=20, le=1000, description="each frame's time on screen")] = 80


def pick_format(
    fmt: str | None,
    quality: int | None,
    accept: str | None,
    offered: dict[str, str],
    default: str,
    lossy: tuple[str, ...] = ("jpeg", "webp"),
) -> str:
    """The format asked for in the body, else the one the Accept header prefers, else ``default``; a quality only
    for the ``lossy`` ones."""
    if fmt is None:
        fmt = negotiate(accept, offered, default)
        if fmt is None:
            why = f"Accept: {accept[:200]} takes none of the formats served here; send one of these, or name a format"
            raise Refused(406, {"error": why, "allowed": list(offered.values())})
    if quality is not None and fmt not in lossy:
        raise Refused(400, {"error": f"quality applies to {' and '.join(lossy)}, not {fmt}", "allowed": list(lossy)})
    return fmt


def default_sampler(info: dict[str, Any]) -> str:
    """The sampler a request without ``sampler`` gets: drs when the gate found that it helps this model (its
    manifest's gate headline), plain otherwise (no discriminator, not judged with DRS, or no clear gain)."""
    return _default_sampler(info, _drs_verdict(info))


def sampler_for(req: GenerateRequest, info: dict[str, Any]) -> tuple[str, int]:
    """The request's sampler and candidate bound, or a 400 saying why they cannot apply to this model."""
    verdict = _drs_verdict(info)
    sampler = req.sampler or _default_sampler(info, verdict)
    if sampler == "drs" and not info.get("discriminator"):
        raise Refused(400, {
            "error": f"model {info['model']} version {info['version']} has no discriminator to sample with DRS "
            "(exported without its training run's D); use sampler plain",
            "allowed": ["plain"],
        })  # fmt: skip
    if req.max_candidates is not None and sampler != "drs":
        raise Refused(400, {"error": "max_candidates applies to sampler drs only", "allowed": ["drs"]})
    bound = verdict.max_candidates if verdict is not None else None  # the bound the gate's verdict is for
    return sampler, req.max_candidates or bound or DEFAULT_CANDIDATES


def _drs_verdict(info: dict[str, Any]) -> DrsHeadline | None:
    """The gate's DRS verdict on the model: its manifest's headline (``GateHeadline.drs``), which the model's
    description carries as JSON; read once per request, and only where the gate judged DRS."""
    drs = (info.get("gate") or {}).get("drs")
    return None if drs is None else DrsHeadline.model_validate(drs)


def _default_sampler(info: dict[str, Any], verdict: DrsHeadline | None) -> str:
    return "drs" if info.get("discriminator") and verdict is not None and verdict.sampler == "drs" else "plain"


def label_index(label: int | str | None, classes: list[str]) -> int | None:
    if label is None:
        return None
    if not classes:
        raise Refused(400, {"error": "this model is unconditional: it takes no label", "allowed": []})
    if isinstance(label, int) and label < len(classes):
        return label
    if isinstance(label, str) and label in classes:
        return classes.index(label)
    raise Refused(
        400, {"error": f"unknown label {label!r}", "allowed": classes, "allowed_indices": [0, len(classes) - 1]}
    )
