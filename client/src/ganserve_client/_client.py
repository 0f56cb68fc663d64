"""GanClient and AsyncGanClient: the same methods, over httpx, with one retry policy and one error translation.

Each public method is written once, in BaseClient, as a call: a generator (sans-I/O, the way httpx builds a request
once for its two clients) that checks its arguments, yields each ``httpx.Request`` to send and each pause to wait (in
seconds), is sent back the response or the ``httpx.HTTPError`` the send raised, and returns the method's result.
GanClient does those steps blocking and AsyncGanClient awaits them; only that, and how generate_many keeps its
requests in flight, is each client's own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import functools
import inspect
import random
import time
import types
from collections.abc import Callable, Coroutine, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Concatenate, Generic, Literal, ParamSpec, TypeVar, overload

import httpx
from PIL import Image
from pydantic import BaseModel, ValidationError

from ganserve_client import _answers as answers
from ganserve_client._bulk import Folder
from ganserve_client._errors import InvalidRequest, one_line
from ganserve_client._models import (
    Animation,
    BulkSummary,
    GeneratedImage,
    GenerateRequest,
    Health,
    InterpolateRequest,
    ModelInfo,
    Reproduction,
)
from ganserve_client._provenance import Provenance, read_provenance

__all__ = ["DEFAULT_TIMEOUT", "DEFAULT_URL", "AsyncGanClient", "GanClient"]

DEFAULT_URL = "http://127.0.0.1:3000"
DEFAULT_TIMEOUT = 30.0
RETRIED_STATUS = {408, 429, 503, 504}
# Where a file's provenance may send reproduce(): a file is data from anywhere, and must not pick any other path.
REPRODUCIBLE = frozenset({"/generate", "/interpolate"})
Sampler = Literal["plain", "drs"]
P = ParamSpec("P")
R = TypeVar("R")
TransportT = TypeVar("TransportT", httpx.BaseTransport, httpx.AsyncBaseTransport)
# A call: it yields a step (an httpx.Request, a pause in seconds, or a Fill), is sent what doing the step gave, and
# returns the method's result.
Call = Generator[Any, Any, R]


@dataclass(frozen=True)
class Fill:
    """generate_many's step that each client does its own way: ``folder``'s pages, ``concurrency`` at a time."""

    folder: Folder
    concurrency: int


class _Public(Generic[P, R]):
    """A public method written once, as a call: GanClient's runs its steps blocking, AsyncGanClient's awaits them.
    Each client class gets one function from it, with the call's name, docstring and signature."""

    def __init__(self, call: Callable[Concatenate[Any, P], Call[R]]) -> None:
        self.call = call
        self._made: dict[type, Callable[..., Any]] = {}

    @overload
    def __get__(self, client: GanClient, owner: type | None = None) -> Callable[P, R]: ...
    @overload
    def __get__(self, client: AsyncGanClient, owner: type | None = None) -> Callable[P, Coroutine[Any, Any, R]]: ...
    @overload
    def __get__(self, client: None, owner: type) -> Callable[..., Any]: ...

    def __get__(self, client: Any, owner: type | None = None) -> Callable[..., Any]:
        owner = type(client) if owner is None else owner
        runner = getattr(owner, "_runner", None)
        if runner is None:  # BaseClient's own: the call itself, for one call to make another part of it
            return self.call
        if owner not in self._made:
            self._made[owner] = _named(runner(self.call), self.call, owner)
        return self._made[owner] if client is None else types.MethodType(self._made[owner], client)


def _named(method: Callable[..., Any], call: Callable[..., Any], owner: type) -> Callable[..., Any]:
    """``method`` as help() and inspect should show it: the call's name, docstring and parameters, returning what the
    call's steps end in (``Call[X]``: X)."""
    functools.update_wrapper(method, call)
    method.__qualname__ = f"{owner.__qualname__}.{call.__name__}"
    signature = inspect.signature(call)
    returns = signature.return_annotation.removeprefix("Call[")[:-1]
    method.__signature__ = signature.replace(return_annotation=returns)  # type: ignore[attr-defined]
    method.__annotations__ = {**call.__annotations__, "return": returns}
    return method


def _advance(call: Call[R], answer: Any) -> tuple[Any, bool]:
    """The call's next step, given what its last one gave, and False; or, once it is over, its result and True."""
    try:
        return call.send(answer), False
    except StopIteration as end:
        return end.value, True


class BaseClient(Generic[TransportT]):
    """The settings, the public methods as calls, the checks before a request and the retry policy; a client class
    says which httpx pool it opens (``_pool``) and how it runs a call (``_runner``)."""

    _pool: ClassVar[type[httpx.Client] | type[httpx.AsyncClient]]
    _http: httpx.Client | httpx.AsyncClient

    def __init__(self, base_url: str = DEFAULT_URL, *, api_key: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                 retries: int = 3, retry_budget: float = 30.0, backoff: float = 0.25,
                 transport: TransportT | None = None) -> None:  # fmt: skip
        if retries < 0 or retry_budget < 0 or backoff < 0:
            raise ValueError("retries, retry_budget and backoff must not be negative")
        self.base_url = base_url.rstrip("/")
        self.retries, self.retry_budget, self.backoff = retries, retry_budget, backoff
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = self._pool(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)

    # --- the public methods, each written once ------------------------------------------------------------------

    @_Public
    def generate(self, n: int = 1, *, seed: int | None = None, truncation: float | None = None,
                 label: int | str | None = None, model: str | None = None, format: str | None = None,
                 quality: int | None = None, sampler: Sampler | None = None,
                 max_candidates: int | None = None) -> Call[list[GeneratedImage]]:  # fmt: skip
        """``n`` images, each its own file; image i has seed ``seed + i`` (random seeds when ``seed`` is None).
        ``model`` picks a model line (the service's default if None), ``format`` png (default), webp or jpeg, and
        ``quality`` (1-100) makes jpeg or webp lossy (webp without it is lossless). ``sampler`` "drs" draws each
        image by discriminator rejection sampling, at most ``max_candidates`` (1-64; the server's default 16)
        candidates an image, and each image's ``drs`` says how; "plain" does not; None: the model's default
        (``info().sampler``)."""
        body = self._body(n, seed=seed, truncation=truncation, label=label, model=model, format=format, quality=quality,
                          sampler=sampler, max_candidates=max_candidates)  # fmt: skip
        return answers.images((yield from self._exchange("POST", "/generate_batch", json=body)))

    @_Public
    def grid(self, n: int = 16, *, seed: int | None = None, truncation: float | None = None,
             label: int | str | None = None, model: str | None = None, format: str | None = None,
             quality: int | None = None, sampler: Sampler | None = None,
             max_candidates: int | None = None) -> Call[Image.Image]:  # fmt: skip
        """The server's grid of ``n`` images as one PIL image (``image.info``: seeds, model, model_version, sampler,
        and drs: a ``DrsInfo`` per image in grid order with sampler "drs", else None)."""
        body = self._body(n, seed=seed, truncation=truncation, label=label, model=model, format=format, quality=quality,
                          sampler=sampler, max_candidates=max_candidates)  # fmt: skip
        return answers.grid((yield from self._exchange("POST", "/generate", json=body)))

    @_Public
    def interpolate(self, seeds: list[int], *, frames: int = 16, label: int | str | list[int | str] | None = None,
                    truncation: float | None = None, loop: bool = False, format: str = "webp",
                    quality: int | None = None, duration_ms: int | None = None,
                    model: str | None = None) -> Call[Animation]:  # fmt: skip
        """A walk through latent space from key seed to key seed, ``frames`` frames a segment: an animated webp
        (lossless unless ``quality``) or gif, or one png strip of the frames side by side. ``loop`` walks back
        from the last key to the first; ``label`` is one class or one per key (conditional models)."""
        body = _checked(InterpolateRequest, seeds=seeds, frames=frames, label=label, truncation=truncation, loop=loop,
                        format=format, quality=quality, duration_ms=duration_ms, model=model)  # fmt: skip
        return answers.animation((yield from self._exchange("POST", "/interpolate", json=body)), format)

    @_Public
    def reproduce(self, file: bytes | str | Path) -> Call[Reproduction]:
        """Ask the service again for a file it made (its bytes or path), from the provenance inside it; say
        whether the answer has the same bytes, the same pixels, and which model versions drew the two."""
        data, provenance = _reproducing(file)
        response = yield from self._exchange("POST", provenance.endpoint, json=provenance.request)
        return answers.reproduction(data, provenance, response)

    @_Public
    def generate_many(self, n: int, *, out: str | Path, seed: int | None = None, label: int | str | None = None,
                      truncation: float | None = None, model: str | None = None, format: str = "png",
                      quality: int | None = None, sampler: Sampler | None = None, max_candidates: int | None = None,
                      concurrency: int = 4, progress: bool | None = None) -> Call[BulkSummary]:  # fmt: skip
        """``n`` images into the folder ``out``, one file per seed (``<seed>.png``, ...) and a row each in
        ``out/images.csv``, requested a page (the server's most images per request) at a time with up to
        ``concurrency`` requests in flight. Run it again after an interruption and it draws only what is missing,
        from the same first seed. ``progress``: a bar on stderr (None: when stderr is a terminal). With sampler drs
        images.csv also has each image's sampler, drs_score, drs_candidates and drs_accepted."""
        options = {"label": label, "truncation": truncation, "model": model, "format": format, "quality": quality,
                   "sampler": sampler, "max_candidates": max_candidates}  # fmt: skip
        if concurrency < 1:  # checked, as the options are, before the round trip that learns the page size
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        self._body(1, seed=seed, **options)
        page = (yield from BaseClient.info(self, model=model)).limits.n[1]
        folder = Folder(out, n=n, seed=seed, options=options, page=page, progress=progress)
        return (yield Fill(folder, concurrency))

    @_Public
    def info(self, *, model: str | None = None) -> Call[ModelInfo]:
        """The model line ``model`` (the default one if None), the lines served, and the API's limits."""
        response = yield from self._exchange("GET", "/info", params={"model": model} if model else None)
        return answers.parsed(ModelInfo, response)

    @_Public
    def health(self) -> Call[Health]:
        """Liveness and readiness; never raises for a server that answers."""
        live = yield self._http.build_request("GET", "/livez")  # asked once each: no retries
        ready = yield self._http.build_request("GET", "/readyz")
        return Health(live=answers.reachable(live), ready=answers.reachable(ready))

    # --- requests, checked here so an obviously wrong call fails before it costs a round trip ----------------------

    def _body(self, n: int, **fields: Any) -> dict[str, Any]:
        return _checked(GenerateRequest, n=n, **fields)

    # --- retries -------------------------------------------------------------------------------------------------

    def _exchange(self, method: str, path: str, **kwargs: Any) -> Call[httpx.Response]:
        """One request, sent again while it may be retried (a retried status or a failed connection, within the
        count and the time budget); the success, or its error in the exception tree."""
        request = self._http.build_request(method, path, **kwargs)
        started, attempt = time.monotonic(), 0
        while True:
            attempt += 1
            answer = yield request
            if isinstance(answer, httpx.HTTPError):
                if (delay := self._delay(attempt, None, started)) is None:
                    raise answers.translate(answer) from answer
            elif answer.status_code not in RETRIED_STATUS or (delay := self._delay(attempt, answer, started)) is None:
                return answers.check(answer)
            yield delay

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


def _checked(schema: type[BaseModel], /, **fields: Any) -> dict[str, Any]:
    try:
        request = schema(**fields)
    except ValidationError as err:
        raise InvalidRequest(f"invalid request: {one_line(err.errors())}") from None
    return request.model_dump(exclude_none=True)


def _reproducing(file: bytes | str | Path) -> tuple[bytes, Provenance]:
    data = file if isinstance(file, bytes) else Path(file).read_bytes()
    provenance = read_provenance(data)
    if provenance is None:
        raise InvalidRequest("the file carries no ganserve provenance: nothing says how it was drawn")
    if provenance.endpoint not in REPRODUCIBLE:
        raise InvalidRequest(f"the file's provenance names endpoint {provenance.endpoint!r}, not one of "
                             f"{', '.join(sorted(REPRODUCIBLE))}")  # fmt: skip
    return data, provenance


def _blocking(call: Callable[..., Call[R]]) -> Callable[..., R]:
    def method(self: GanClient, *args: Any, **kwargs: Any) -> R:
        return self._run(call(self, *args, **kwargs))

    return method


def _awaiting(call: Callable[..., Call[R]]) -> Callable[..., Coroutine[Any, Any, R]]:
    async def method(self: AsyncGanClient, *args: Any, **kwargs: Any) -> R:
        return await self._run(call(self, *args, **kwargs))

    return method


class GanClient(BaseClient[httpx.BaseTransport]):
    """A ganserve client; reuses one connection pool. Use it as a context manager, or call ``close()``.

    >>> with GanClient() as client:
    ...     images = client.generate(4, seed=0, label="sneaker")
    """

    _pool = httpx.Client
    _http: httpx.Client
    _runner = staticmethod(_blocking)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> GanClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, call: Call[R]) -> R:
        step, done = _advance(call, None)
        while not done:
            step, done = _advance(call, self._do(step))
        return step

    def _do(self, step: httpx.Request | float | Fill) -> Any:
        if isinstance(step, Fill):
            return self._fill(step.folder, step.concurrency)
        if not isinstance(step, httpx.Request):
            return time.sleep(step)
        try:
            return self._http.send(step)
        except httpx.HTTPError as err:
            return err  # the call's to retry, or to raise in the exception tree

    def _fill(self, folder: Folder, concurrency: int) -> BulkSummary:
        pool = cf.ThreadPoolExecutor(concurrency, thread_name_prefix="ganserve-client")
        try:
            in_flight: set[cf.Future] = set()
            for first, count in folder.pages:
                done: set[cf.Future] = set()
                if len(in_flight) >= concurrency:
                    done, in_flight = cf.wait(in_flight, return_when=cf.FIRST_COMPLETED)
                in_flight.add(pool.submit(self.generate, count, seed=first, **folder.options))
                for future in done:  # after the next request is on its way, so the server is not left idle
                    folder.land(future.result())
            for future in cf.as_completed(in_flight):
                folder.land(future.result())
        finally:
            pool.shutdown(wait=False, cancel_futures=True)  # on an error, do not wait out the other requests
            summary = folder.close()
        return summary


class AsyncGanClient(BaseClient[httpx.AsyncBaseTransport]):
    """The asyncio twin of GanClient: the same methods, awaited.

    >>> async with AsyncGanClient() as client:
    ...     images = await client.generate(4, seed=0)
    """

    _pool = httpx.AsyncClient
    _http: httpx.AsyncClient
    _runner = staticmethod(_awaiting)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncGanClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _run(self, call: Call[R]) -> R:
        step, done = _advance(call, None)
        while not done:
            step, done = _advance(call, await self._do(step))
        return step

    async def _do(self, step: httpx.Request | float | Fill) -> Any:
        if isinstance(step, Fill):
            return await self._fill(step.folder, step.concurrency)
        if not isinstance(step, httpx.Request):
            return await asyncio.sleep(step)
        try:
            return await self._http.send(step)
        except httpx.HTTPError as err:
            return err  # the call's to retry, or to raise in the exception tree

    async def _fill(self, folder: Folder, concurrency: int) -> BulkSummary:
        in_flight: set[asyncio.Task] = set()
        try:
            for first, count in folder.pages:
                done: set[asyncio.Task] = set()
                if len(in_flight) >= concurrency:
                    done, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                in_flight.add(asyncio.create_task(self.generate(count, seed=first, **folder.options)))
                for task in done:  # in a thread, after the next request is on its way: the server is never idle
                    await asyncio.to_thread(folder.land, task.result())
            for task in asyncio.as_completed(in_flight):
                await asyncio.to_thread(folder.land, await task)
        finally:
            for task in in_flight:
                task.cancel()
            summary = folder.close()
        return summary
