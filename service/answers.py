"""What goes into an answer: the images a request drew, the provenance written inside each file, the headers, and
the JSON refusals: the last stage of a request, after the model ran (``service.scheduling``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import bentoml
import numpy as np
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.drs import reported_score
from service.errors import one_line
from service.requests import GenerateRequest, Refused

__all__ = [
    "Drawing", "answering", "encode_cost", "file_headers", "problem", "provenance", "refuse", "reproducing", "shaped",
]  # fmt: skip

log = logging.getLogger("bentoml.ganserve")  # under "bentoml", so `bentoml serve` shows it

PILLOW_COST = 4  # WebP costs 2.6-4.5x, JPEG 0.9-1.5x our zlib PNG per image (bench/encode.py, docs/BENCHMARKS.md)


@dataclass(frozen=True)
class Drawing:
    """A request's images with their seeds, label indices and names, and the line and version of the model that drew
    them."""

    seeds: list[int]
    labels: list[int | None]
    names: list[str | None]
    images: np.ndarray  # uint8 N x H x W x C
    line: str
    version: str
    protocol: str
    sampler: str = "plain"
    max_candidates: int | None = None  # rejection sampling's bound
    scores: list[float] | None = None  # rejection sampling: the discriminator's logit for each image
    candidates: list[int] | None = None  # ... the candidates drawn for it
    accepted: list[bool] | None = None  # ... and whether one was accepted (False: the best-scored one, as fallback)

    def drs(self, i: int) -> dict[str, Any] | None:
        """Image i's rejection sampling: its discriminator logit, the candidates drawn, whether one was accepted."""
        if self.scores is None:
            return None
        return {"score": reported_score(self.scores[i]), "candidates": self.candidates[i], "accepted": self.accepted[i]}


def shaped(pixels: np.ndarray, info: dict[str, Any]) -> np.ndarray:
    """Image rows (perhaps padded, ``service.rows``) -> uint8 N x H x W x C."""
    h, w, c = info["image"]["height"], info["image"]["width"], info["image"]["channels"]
    return pixels[:, : h * w * c].reshape(len(pixels), h, w, c)


def reproducing(req: GenerateRequest, drawn: Drawing, fmt: str, *, seed: int, n: int) -> dict[str, Any]:
    """The /generate body that draws this file again: its seed, line and format written out."""
    asked = req.model_dump(exclude_none=True, exclude={"seed", "n", "model", "format", "sampler", "max_candidates"})
    if "label" in asked and drawn.names[0] is not None:
        asked["label"] = drawn.names[0]  # by name: a class index can mean another class in a later model
    # the sampler as used, not as defaulted: a later model's default may differ
    drs = {"max_candidates": drawn.max_candidates} if drawn.sampler == "drs" else {}
    return {"n": n, "seed": seed, **asked, "model": drawn.line, "format": fmt, "sampler": drawn.sampler, **drs}


def provenance(
    drawn: Drawing, endpoint: str, request: dict[str, Any], which: Any, truncation: float | None
) -> dict[str, Any]:
    """What drew a file, written inside it (``service.formats``): ``ganserve-client inspect`` reads it and
    ``--reproduce`` posts ``request`` to ``endpoint`` again."""
    seeds = [drawn.seeds[i] for i in which]
    names = [drawn.names[i] for i in which]
    one = len(seeds) == 1 and endpoint == "/generate"
    return {
        "ganserve": 1,
        "model": drawn.line,
        "model_version": drawn.version,
        "latent_protocol": drawn.protocol,
        **({"seed": seeds[0], "label": names[0]} if one else {"seeds": seeds, "label": names}),
        "truncation": truncation,
        **({"sampler": drawn.sampler} if endpoint == "/generate" else {}),
        **({} if drawn.scores is None else {"drs": drawn.drs(which[0]) if one else [drawn.drs(i) for i in which]}),
        "endpoint": endpoint,
        "request": request,
    }


def file_headers(drawn: Drawing) -> dict[str, str]:
    """/generate's headers: the seeds, line, version and sampler, and rejection sampling's figures per image."""
    headers = {"X-Seeds": ",".join(map(str, drawn.seeds)), "X-Model-Version": drawn.version, "X-Model": drawn.line,
               "X-Sampler": drawn.sampler}  # fmt: skip
    if drawn.scores is not None:
        headers |= {
            "X-Drs-Scores": ",".join("nan" if (v := reported_score(s)) is None else str(v) for s in drawn.scores),
            "X-Drs-Candidates": ",".join(map(str, drawn.candidates)),
            "X-Drs-Accepted": ",".join(str(int(a)) for a in drawn.accepted),
            "X-Drs-Fallbacks": str(drawn.accepted.count(False)),
        }
    return headers


def encode_cost(images: np.ndarray, fmt: str) -> int:
    return images.nbytes * (1 if fmt == "png" else PILLOW_COST)


def problem(ctx: bentoml.Context, refused: Refused) -> JSONResponse:
    ctx.response.status_code = refused.status  # BentoML applies the context's status over any returned response
    return JSONResponse(refused.body, status_code=refused.status)


async def answering(request: Request, answer: Callable[[Any], Any]) -> Response:
    """Parse the JSON body (the guard has checked its type and size) and answer it. A 4xx says what is wrong, in the
    shape BentoML's own API routes use, and the log says it in one line, as ``ClientErrorLog`` does for those."""
    try:
        body = json.loads(await request.body())
    except ValueError as err:  # not JSON, or not UTF-8
        return refuse(request, Refused(400, {"error": f"Invalid JSON input: {err}"}))
    try:
        out = await answer(body)
    except ValidationError as err:
        detail = err.errors(include_context=False, include_input=False, include_url=False)
        error = {"error": f"{err.error_count()} validation error for {err.title}", "detail": detail}
        return refuse(request, Refused(400, error), why=one_line(err, whole="body"))
    except Refused as refused:
        return refuse(request, refused)
    return out if isinstance(out, Response) else JSONResponse(out)


def refuse(request: Request, refused: Refused, why: str | None = None) -> JSONResponse:
    log.info("Refused on %s [POST]: %d %s", request.url.path, refused.status, (why or refused.body["error"])[:300])
    return JSONResponse(refused.body, status_code=refused.status)
