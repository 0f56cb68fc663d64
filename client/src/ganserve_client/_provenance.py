"""What a ganserve file says about itself, and reading it: the provenance the service writes inside every file
(where it sits in each format: ganserve_client._container)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from ganserve_client._container import embedded_provenance, open_image
from ganserve_client._errors import GanserveError, one_line

__all__ = ["DrsInfo", "Provenance", "read_provenance"]


class DrsInfo(BaseModel):
    """How discriminator rejection sampling drew one image: the discriminator's logit for it (higher: more real to
    it), the candidates drawn, and whether one was accepted (False: none of ``max_candidates`` was, and the
    best-scored was kept)."""

    model_config = ConfigDict(frozen=True)

    score: float | None  # None: the discriminator gave NaN or an infinity
    candidates: int
    accepted: bool


class Provenance(BaseModel):
    """What a ganserve file says about itself: which model line and version drew it, and ``request``, the body that
    draws this very file again when POSTed to ``endpoint``. Fields a newer server adds are kept, not dropped."""

    model_config = ConfigDict(extra="allow")

    ganserve: int  # the provenance format's version
    model: str
    model_version: str
    latent_protocol: str | None = None
    endpoint: str
    request: dict[str, Any]
    seed: int | None = None  # one image
    seeds: list[int] | None = None  # a grid's images, or an animation's keys
    label: str | list[str | None] | None = None  # a list, one per key, for an interpolation
    truncation: float | None = None
    sampler: str | None = None  # /generate files: "plain" or "drs" (None: a server from before rejection sampling)
    drs: DrsInfo | list[DrsInfo] | None = None  # drawn with drs: each image's score, candidates and acceptance


def read_provenance(file: bytes | str | Path) -> Provenance | None:
    """The provenance inside a ganserve file (its bytes or its path), or None when it carries none.

    Raises ``GanserveError`` when the file has a ganserve provenance that cannot be read, and Pillow's
    ``UnidentifiedImageError`` (an ``OSError``) when it is not an image."""
    raw = embedded_provenance(open_image(file))
    if raw is None:
        return None
    try:
        return Provenance.model_validate_json(raw)
    except ValidationError as err:
        raise GanserveError(f"the file's ganserve provenance is malformed: {one_line(err.errors()[:1])}") from None
