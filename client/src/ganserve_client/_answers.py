"""Reading the service's answers, once for both clients: an error status into the exception tree, a failed
connection into it too, and each body and its headers into what the client hands back."""

from __future__ import annotations

import base64
import io
from typing import Any

import httpx
from PIL import Image
from pydantic import BaseModel, ValidationError

from ganserve_client._container import same_pixels
from ganserve_client._errors import GanserveError, Timeout, TransportError, for_status, one_line
from ganserve_client._models import Animation, GeneratedImage, Reproduction, _WireBatch
from ganserve_client._provenance import DrsInfo, Provenance, read_provenance

__all__ = ["animation", "check", "grid", "images", "parsed", "reachable", "reproduction", "translate"]


def check(response: httpx.Response) -> httpx.Response:
    """Translate an error status into the exception tree; return the response when it is a success."""
    if response.is_success:
        return response
    try:
        body = response.json()
    except ValueError:
        body = response.text
    message = body.get("error", str(body)) if isinstance(body, dict) else str(body)
    if isinstance(body, dict) and isinstance(body.get("detail"), list):
        message += ": " + one_line(body["detail"])
    elif isinstance(body, dict) and body.get("detail"):
        message += f": {body['detail']}"
    status = response.status_code
    raise for_status(status)(f"{status}: {message}", status=status, body=body)


def translate(err: httpx.HTTPError) -> GanserveError:
    if isinstance(err, httpx.TimeoutException):
        return Timeout(f"no answer in time: {err!r}")
    return TransportError(f"cannot reach the server: {err!r}")


def reachable(answer: httpx.Response | httpx.HTTPError) -> bool:
    return isinstance(answer, httpx.Response) and answer.is_success


def parsed(model: type[BaseModel], response: httpx.Response) -> Any:
    try:
        return model.model_validate_json(response.content)
    except ValidationError as err:
        raise GanserveError(
            f"{response.request.url.path} answered what this client cannot read ({one_line(err.errors()[:1])}); "
            "is the server a matching ganserve?",
            status=response.status_code,
        ) from None


def images(response: httpx.Response) -> list[GeneratedImage]:
    batch: _WireBatch = parsed(_WireBatch, response)
    return [
        GeneratedImage(seed=i.seed, label=i.label, model=batch.model, model_version=batch.model_version,
                       format=batch.format, media_type=batch.media_type, data=base64.b64decode(i.data),
                       sampler=batch.sampler, drs=i.drs)
        for i in batch.images
    ]  # fmt: skip


def grid(response: httpx.Response) -> Image.Image:
    image = Image.open(io.BytesIO(response.content))
    image.info["seeds"] = _seeds(response)
    image.info["model"] = response.headers.get("x-model")
    image.info["model_version"] = response.headers.get("x-model-version")
    image.info["sampler"] = response.headers.get("x-sampler", "plain")
    image.info["drs"] = _drs(response)
    return image


def animation(response: httpx.Response, format: str) -> Animation:
    return Animation(
        seeds=_seeds(response),
        frames=int(response.headers.get("x-frames", 0)),
        model=response.headers.get("x-model"),
        model_version=response.headers.get("x-model-version", ""),
        format=format,
        media_type=response.headers.get("content-type", ""),
        data=response.content,
    )


def reproduction(old: bytes, provenance: Provenance, response: httpx.Response) -> Reproduction:
    new = response.content
    fresh = read_provenance(new)
    version = response.headers.get("x-model-version") or (fresh.model_version if fresh else "")
    return Reproduction(data=new, same_bytes=new == old, same_pixels=new == old or same_pixels(old, new),
                        old_version=provenance.model_version, new_version=version)  # fmt: skip


def _seeds(response: httpx.Response) -> list[int]:
    return [int(s) for s in response.headers.get("x-seeds", "").split(",") if s]


def _drs(response: httpx.Response) -> list[DrsInfo] | None:
    """Each image's rejection sampling, in grid order, from /generate's X-Drs-* headers (None: plain sampling)."""
    scores = response.headers.get("x-drs-scores")
    if scores is None:
        return None
    try:
        return [
            DrsInfo(score=None if score == "nan" else float(score), candidates=int(candidates),
                    accepted=accepted == "1")
            for score, candidates, accepted in zip(
                scores.split(","), response.headers["x-drs-candidates"].split(","),
                response.headers["x-drs-accepted"].split(","), strict=True,
            )
        ]  # fmt: skip
    except (KeyError, ValueError):
        raise GanserveError(
            f"{response.request.url.path} sent X-Drs-* headers this client cannot read; is the server a matching "
            "ganserve?",
            status=response.status_code,
        ) from None
