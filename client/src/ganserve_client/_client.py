"""GanClient and AsyncGanClient: the same methods, over httpx, with one retry policy and one error translation."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures as cf
import io
import random
import time
from pathlib import Path
from typing import Any, Literal

import httpx
from PIL import Image
from pydantic import BaseModel, ValidationError

from ganserve_client._bulk import Folder
from ganserve_client._errors import (
    GanServeError,
    InvalidRequest,
    RateLimited,
    Timeout,
    TransportError,
    Unauthorized,
    Unavailable,
)
from ganserve_client._models import (
    Animation,
    BulkSummary,
    DrsInfo,
    GeneratedImage,
    GenerateRequest,
    Health,
    InterpolateRequest,
    ModelInfo,
    Provenance,
    Reproduction,
    _WireBatch,
)
from ganserve_client._provenance import read_provenance, same_pixels

__all__ = ["DEFAULT_TIMEOUT", "DEFAULT_URL", "AsyncGanClient", "GanClient"]

DEFAULT_URL = "http://127.0.0.1:3000"
DEFAULT_TIMEOUT = 30.0
RETRIED_STATUS = {408, 429, 503, 504}
# Where a file's provenance may send reproduce(): a file is data from anywhere, and must not pick any other path.
REPRODUCIBLE = frozenset({"/generate", "/interpolate"})
Sampler = Literal["plain", "drs"]


class _Base:
    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None,
        timeout: float,
        retries: int,
        retry_budget: float,
        backoff: float,
    ) -> None:
        if retries < 0 or retry_budget < 0 or backoff < 0:
            raise ValueError("retries, retry_budget and backoff must not be negative")
        self.base_url = base_url.rstrip("/")
        self.retries, self.retry_budget, self.backoff = retries, retry_budget, backoff
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = timeout

    # --- requests, checked here so an obviously wrong call fails before it costs a round trip ----------------------

    @staticmethod
    def _checked(schema: type[BaseModel], /, **fields: Any) -> dict[str, Any]:
        try:
            request = schema(**fields)
        except ValidationError as err:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in err.errors())
            raise InvalidRequest(f"invalid request: {problems}") from None
        return request.model_dump(exclude_none=True)

    def _body(self, n: int, **fields: Any) -> dict[str, Any]:
        return self._checked(GenerateRequest, n=n, **fields)

    def _walk(self, seeds: list[int], **fields: Any) -> dict[str, Any]:
        return self._checked(InterpolateRequest, seeds=seeds, **fields)

    def _reproducing(self, file: bytes | str | Path) -> tuple[bytes, Provenance]:
        data = file if isinstance(file, bytes) else Path(file).read_bytes()
        provenance = read_provenance(data)
        if provenance is None:
            raise InvalidRequest("the file carries no ganserve provenance: nothing says how it was drawn")
        if provenance.endpoint not in REPRODUCIBLE:
            raise InvalidRequest(f"the file's provenance names endpoint {provenance.endpoint!r}, not one of "
                                 f"{', '.join(sorted(REPRODUCIBLE))}")  # fmt: skip
        return data, provenance

    def _bulk(self, seed: int | None, options: dict[str, Any], concurrency: int) -> None:
        """Check generate_many's arguments before the round trip that learns the page size."""
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        self._body(1, seed=seed, **options)

    # --- retries and errors --------------------------------------------------------------------------------------

    def _delay(self, attempt: int, response: httpx.Response | None, started: float) -> float | None:
        """Seconds to wait before retry ``attempt`` (1-based), or None when the count or time budget is spent."""
        if attempt > self.retries:
            return None
        delay = random.uniform(0, self.backoff * 2 ** (attempt - 1))  # exponential backoff with full jitter
        retry_after = response.headers.get("retry-after") if response is not None else None
        if retry_after and retry_after.isdigit():
            delay = max(delay, float(retry_after))
        if time.monotonic() - started + delay > self.retry_budget:
            return None
        return delay

    @staticmethod
    def _check(response: httpx.Response) -> httpx.Response:
        """Translate an error status into the exception tree; return the response when it is a success."""
        if response.is_success:
            return response
        try:
            body = response.json()
        except ValueError:
            body = response.text
        message = body.get("error", str(body)) if isinstance(body, dict) else str(body)
        if isinstance(body, dict) and isinstance(body.get("detail"), list):
            message += ": " + "; ".join(
                f"{'.'.join(map(str, d.get('loc', []))) or 'body'}: {d.get('msg')}" if isinstance(d, dict) else str(d)
                for d in body["detail"]
            )
        elif isinstance(body, dict) and body.get("detail"):
            message += f": {body['detail']}"
        status = response.status_code
        cls = {401: Unauthorized, 408: Timeout, 429: RateLimited}.get(status)
        if cls is None:
            cls = InvalidRequest if 400 <= status < 500 else Unavailable
        raise cls(f"{status}: {message}", status=status, body=body)

    @staticmethod
    def _translate(err: httpx.HTTPError) -> GanServeError:
        if isinstance(err, httpx.TimeoutException):
            return Timeout(f"no answer in time: {err!r}")
        return TransportError(f"cannot reach the server: {err!r}")

    # --- answers -------------------------------------------------------------------------------------------------

    @staticmethod
    def _parsed(model: type[BaseModel], response: httpx.Response) -> Any:
        try:
            return model.model_validate_json(response.content)
        except ValidationError as err:
            problem = err.errors()[0]
            where = ".".join(map(str, problem["loc"]))
            raise GanServeError(
                f"{response.request.url.path} answered what this client cannot read ({where}: {problem['msg']}); "
                "is the server a matching ganserve?",
                status=response.status_code,
            ) from None

    @staticmethod
    def _grid(response: httpx.Response) -> Image.Image:
        image = Image.open(io.BytesIO(response.content))
        image.info["seeds"] = _seeds(response)
        image.info["model"] = response.headers.get("x-model")
        image.info["model_version"] = response.headers.get("x-model-version")
        image.info["sampler"] = response.headers.get("x-sampler", "plain")
        image.info["drs"] = _drs(response)
        return image

    def _images(self, response: httpx.Response) -> list[GeneratedImage]:
        batch: _WireBatch = self._parsed(_WireBatch, response)
        return [
            GeneratedImage(seed=i.seed, label=i.label, model=batch.model, model_version=batch.model_version,
                           format=batch.format, media_type=batch.media_type, data=base64.b64decode(i.data),
                           sampler=batch.sampler, drs=i.drs)
            for i in batch.images
        ]  # fmt: skip

    @staticmethod
    def _animation(response: httpx.Response, format: str) -> Animation:
        return Animation(
            seeds=_seeds(response),
            frames=int(response.headers.get("x-frames", 0)),
            model=response.headers.get("x-model"),
            model_version=response.headers.get("x-model-version", ""),
            format=format,
            media_type=response.headers.get("content-type", ""),
            data=response.content,
        )

    @staticmethod
    def _reproduction(old: bytes, provenance: Provenance, response: httpx.Response) -> Reproduction:
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
        raise GanServeError(
            f"{response.request.url.path} sent X-Drs-* headers this client cannot read; is the server a matching "
            "ganserve?",
            status=response.status_code,
        ) from None


class GanClient(_Base):
    """A ganserve client; reuses one connection pool. Use it as a context manager, or call ``close()``.

    >>> with GanClient() as client:
    ...     images = client.generate(4, seed=0, label="sneaker")
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = 3,
        retry_budget: float = 30.0,
        backoff: float = 0.25,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key=api_key, timeout=timeout, retries=retries, retry_budget=retry_budget,
                         backoff=backoff)  # fmt: skip
        self._http = httpx.Client(base_url=self.base_url, headers=self._headers, timeout=timeout, transport=transport)

    def generate(
        self,
        n: int = 1,
        *,
        seed: int | None = None,
        truncation: float | None = None,
        label: int | str | None = None,
        model: str | None = None,
        format: str | None = None,
        quality: int | None = None,
        sampler: Sampler | None = None,
        max_candidates: int | None = None,
    ) -> list[GeneratedImage]:
        """``n`` images, each its own file; image i has seed ``seed + i`` (random seeds when ``seed`` is None).
        ``model`` picks a model line (the service's default if None), ``format`` png (default), webp or jpeg, and
        ``quality`` (1-100) makes jpeg or webp lossy (webp without it is lossless). ``sampler`` "drs" draws each
        image by discriminator rejection sampling, at most ``max_candidates`` (1-64; the server's default 16)
        candidates an image, and each image's ``drs`` says how; "plain" does not; None: the model's default
        (``info().sampler``)."""
        body = self._body(n, seed=seed, truncation=truncation, label=label, model=model, format=format, quality=quality,
                          sampler=sampler, max_candidates=max_candidates)  # fmt: skip
        return self._images(self._send("POST", "/generate_batch", json=body))

    def grid(
        self,
        n: int = 16,
        *,
        seed: int | None = None,
        truncation: float | None = None,
        label: int | str | None = None,
        model: str | None = None,
        format: str | None = None,
        quality: int | None = None,
        sampler: Sampler | None = None,
        max_candidates: int | None = None,
    ) -> Image.Image:
        """The server's grid of ``n`` images as one PIL image (``image.info``: seeds, model, model_version, sampler,
        and drs: a ``DrsInfo`` per image in grid order with sampler "drs", else None)."""
        body = self._body(n, seed=seed, truncation=truncation, label=label, model=model, format=format, quality=quality,
                          sampler=sampler, max_candidates=max_candidates)  # fmt: skip
        return self._grid(self._send("POST", "/generate", json=body))

    def interpolate(
        self,
        seeds: list[int],
        *,
        frames: int = 16,
        label: int | str | list[int | str] | None = None,
        truncation: float | None = None,
        loop: bool = False,
        format: str = "webp",
        quality: int | None = None,
        duration_ms: int | None = None,
        model: str | None = None,
    ) -> Animation:
        """A walk through latent space from key seed to key seed, ``frames`` frames a segment: an animated webp
        (lossless unless ``quality``) or gif, or one png strip of the frames side by side. ``loop`` walks back
        from the last key to the first; ``label`` is one class or one per key (conditional models)."""
        body = self._walk(seeds, frames=frames, label=label, truncation=truncation, loop=loop, format=format,
                          quality=quality, duration_ms=duration_ms, model=model)  # fmt: skip
        return self._animation(self._send("POST", "/interpolate", json=body), format)

    def reproduce(self, file: bytes | str | Path) -> Reproduction:
        """Ask the service again for a file it made (its bytes or path), from the provenance inside it; say
        whether the answer has the same bytes, the same pixels, and which model versions drew the two."""
        data, provenance = self._reproducing(file)
        return self._reproduction(data, provenance, self._send("POST", provenance.endpoint, json=provenance.request))

    def generate_many(
        self,
        n: int,
        *,
        out: str | Path,
        seed: int | None = None,
        label: int | str | None = None,
        truncation: float | None = None,
        model: str | None = None,
        format: str = "png",
        quality: int | None = None,
        sampler: Sampler | None = None,
        max_candidates: int | None = None,
        concurrency: int = 4,
        progress: bool | None = None,
    ) -> BulkSummary:
        """``n`` images into the folder ``out``, one file per seed (``<seed>.png``, ...) and a row each in
        ``out/images.csv``, requested a page (the server's most images per request) at a time with up to
        ``concurrency`` requests in flight. Run it again after an interruption and it draws only what is missing,
        from the same first seed. ``progress``: a bar on stderr (None: when stderr is a terminal). With sampler drs
        images.csv also has each image's sampler, drs_score, drs_candidates and drs_accepted."""
        options = {"label": label, "truncation": truncation, "model": model, "format": format, "quality": quality,
                   "sampler": sampler, "max_candidates": max_candidates}  # fmt: skip
        self._bulk(seed, options, concurrency)
        page = self.info(model=model).limits.n[1]
        folder = Folder(out, n=n, seed=seed, options=options, page=page, progress=progress)
        pool = cf.ThreadPoolExecutor(concurrency, thread_name_prefix="ganserve-client")
        try:
            in_flight: set[cf.Future] = set()
            for first, count in folder.pages:
                done: set[cf.Future] = set()
                if len(in_flight) >= concurrency:
                    done, in_flight = cf.wait(in_flight, return_when=cf.FIRST_COMPLETED)
                in_flight.add(pool.submit(self.generate, count, seed=first, **options))
                for future in done:  # after the next request is on its way, so the server is not left idle
                    folder.land(future.result())
            for future in cf.as_completed(in_flight):
                folder.land(future.result())
        finally:
            pool.shutdown(wait=False, cancel_futures=True)  # on an error, do not wait out the other requests
            summary = folder.close()
        return summary

    def info(self, *, model: str | None = None) -> ModelInfo:
        """The model line ``model`` (the default one if None), the lines served, and the API's limits."""
        return self._parsed(ModelInfo, self._send("GET", "/info", params={"model": model} if model else None))

    def health(self) -> Health:
        """Liveness and readiness; never raises for a server that answers."""

        def ok(path: str) -> bool:
            try:
                return self._http.get(path).is_success
            except httpx.HTTPError:
                return False

        return Health(live=ok("/livez"), ready=ok("/readyz"))

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        started, attempt = time.monotonic(), 0
        while True:
            attempt += 1
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.HTTPError as err:
                if (delay := self._delay(attempt, None, started)) is None:
                    raise self._translate(err) from err
            else:
                if (
                    response.status_code not in RETRIED_STATUS
                    or (delay := self._delay(attempt, response, started)) is None
                ):
                    return self._check(response)
            time.sleep(delay)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> GanClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncGanClient(_Base):
    """The asyncio twin of GanClient: the same methods, awaited.

    >>> async with AsyncGanClient() as client:
    ...     images = await client.generate(4, seed=0)
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = 3,
        retry_budget: float = 30.0,
        backoff: float = 0.25,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key=api_key, timeout=timeout, retries=retries, retry_budget=retry_budget,
                         backoff=backoff)  # fmt: skip
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=self._headers, timeout=timeout,
                                       transport=transport)  # fmt: skip

    async def generate(
        self,
        n: int = 1,
        *,
        seed: int | None = None,
        truncation: float | None = None,
        label: int | str | None = None,
        model: str | None = None,
        format: str | None = None,
        quality: int | None = None,
        sampler: Sampler | None = None,
        max_candidates: int | None = None,
    ) -> list[GeneratedImage]:
        body = self._body(n, seed=seed, truncation=truncation, label=label, model=model, format=format, quality=quality,
                          sampler=sampler, max_candidates=max_candidates)  # fmt: skip
        return self._images(await self._send("POST", "/generate_batch", json=body))

    async def grid(
        self,
        n: int = 16,
        *,
        seed: int | None = None,
        truncation: float | None = None,
        label: int | str | None = None,
        model: str | None = None,
        format: str | None = None,
        quality: int | None = None,
        sampler: Sampler | None = None,
        max_candidates: int | None = None,
    ) -> Image.Image:
        body = self._body(n, seed=seed, truncation=truncation, label=label, model=model, format=format, quality=quality,
                          sampler=sampler, max_candidates=max_candidates)  # fmt: skip
        return self._grid(await self._send("POST", "/generate", json=body))

    async def interpolate(
        self,
        seeds: list[int],
        *,
        frames: int = 16,
        label: int | str | list[int | str] | None = None,
        truncation: float | None = None,
        loop: bool = False,
        format: str = "webp",
        quality: int | None = None,
        duration_ms: int | None = None,
        model: str | None = None,
    ) -> Animation:
        body = self._walk(seeds, frames=frames, label=label, truncation=truncation, loop=loop, format=format,
                          quality=quality, duration_ms=duration_ms, model=model)  # fmt: skip
        return self._animation(await self._send("POST", "/interpolate", json=body), format)

    async def reproduce(self, file: bytes | str | Path) -> Reproduction:
        data, provenance = self._reproducing(file)
        response = await self._send("POST", provenance.endpoint, json=provenance.request)
        return self._reproduction(data, provenance, response)

    async def generate_many(
        self,
        n: int,
        *,
        out: str | Path,
        seed: int | None = None,
        label: int | str | None = None,
        truncation: float | None = None,
        model: str | None = None,
        format: str = "png",
        quality: int | None = None,
        sampler: Sampler | None = None,
        max_candidates: int | None = None,
        concurrency: int = 4,
        progress: bool | None = None,
    ) -> BulkSummary:
        options = {"label": label, "truncation": truncation, "model": model, "format": format, "quality": quality,
                   "sampler": sampler, "max_candidates": max_candidates}  # fmt: skip
        self._bulk(seed, options, concurrency)
        page = (await self.info(model=model)).limits.n[1]
        folder = Folder(out, n=n, seed=seed, options=options, page=page, progress=progress)
        in_flight: set[asyncio.Task] = set()
        try:
            for first, count in folder.pages:
                done: set[asyncio.Task] = set()
                if len(in_flight) >= concurrency:
                    done, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                in_flight.add(asyncio.create_task(self.generate(count, seed=first, **options)))
                for task in done:  # in a thread, after the next request is on its way: the server is never idle
                    await asyncio.to_thread(folder.land, task.result())
            for task in asyncio.as_completed(in_flight):
                await asyncio.to_thread(folder.land, await task)
        finally:
            for task in in_flight:
                task.cancel()
            summary = folder.close()
        return summary

    async def info(self, *, model: str | None = None) -> ModelInfo:
        response = await self._send("GET", "/info", params={"model": model} if model else None)
        return self._parsed(ModelInfo, response)

    async def health(self) -> Health:
        async def ok(path: str) -> bool:
            try:
                return (await self._http.get(path)).is_success
            except httpx.HTTPError:
                return False

        return Health(live=await ok("/livez"), ready=await ok("/readyz"))

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        started, attempt = time.monotonic(), 0
        while True:
            attempt += 1
            try:
                response = await self._http.request(method, path, **kwargs)
            except httpx.HTTPError as err:
                if (delay := self._delay(attempt, None, started)) is None:
                    raise self._translate(err) from err
            else:
                if (
                    response.status_code not in RETRIED_STATUS
                    or (delay := self._delay(attempt, response, started)) is None
                ):
                    return self._check(response)
            await asyncio.sleep(delay)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncGanClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
