"""GanClient and AsyncGanClient: the same methods, over httpx, with one retry policy and one error translation."""

from __future__ import annotations

import asyncio
import base64
import io
import random
import time
from typing import Any

import httpx
from PIL import Image
from pydantic import ValidationError

from ganserve_client._errors import (
    GanServeError,
    InvalidRequest,
    RateLimited,
    Timeout,
    TransportError,
    Unauthorized,
    Unavailable,
)
from ganserve_client._models import GeneratedImage, GenerateRequest, Health, ModelInfo, _WireBatch

__all__ = ["DEFAULT_TIMEOUT", "DEFAULT_URL", "AsyncGanClient", "GanClient"]

DEFAULT_URL = "http://127.0.0.1:3000"
DEFAULT_TIMEOUT = 30.0
RETRIED_STATUS = {408, 429, 503, 504}


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

    def _body(self, n: int, seed: int | None, truncation: float | None, label: int | str | None) -> dict:
        """Check what can be checked here, so an obviously wrong call fails before it costs a round trip."""
        try:
            request = GenerateRequest(n=n, seed=seed, truncation=truncation, label=label)
        except ValidationError as err:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
            raise InvalidRequest(f"invalid request: {problems}") from None
        return request.model_dump(exclude_none=True)

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
        if isinstance(body, dict) and body.get("detail"):
            message += ": " + "; ".join(
                f"{'.'.join(map(str, d.get('loc', []))) or 'body'}: {d.get('msg')}" for d in body["detail"]
            )
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

    @staticmethod
    def _grid(response: httpx.Response) -> Image.Image:
        image = Image.open(io.BytesIO(response.content))
        image.info["seeds"] = [int(s) for s in response.headers["x-seeds"].split(",")]
        return image

    @staticmethod
    def _images(response: httpx.Response) -> list[GeneratedImage]:
        batch = _WireBatch.model_validate_json(response.content)
        return [
            GeneratedImage(seed=i.seed, label=i.label, model_version=batch.model_version, png=base64.b64decode(i.png))
            for i in batch.images
        ]


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
        self, n: int = 1, *, seed: int | None = None, truncation: float | None = None, label: int | str | None = None
    ) -> list[GeneratedImage]:
        """``n`` images; image i has seed ``seed + i`` (random seeds when ``seed`` is None)."""
        response = self._send("POST", "/generate_batch", json=self._body(n, seed, truncation, label))
        return self._images(response)

    def grid(
        self, n: int = 16, *, seed: int | None = None, truncation: float | None = None, label: int | str | None = None
    ) -> Image.Image:
        """The server's grid of ``n`` images as one PIL image (seeds in ``image.info['seeds']``)."""
        return self._grid(self._send("POST", "/generate", json=self._body(n, seed, truncation, label)))

    def info(self) -> ModelInfo:
        return ModelInfo.model_validate_json(self._send("GET", "/info").content)

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
        self, n: int = 1, *, seed: int | None = None, truncation: float | None = None, label: int | str | None = None
    ) -> list[GeneratedImage]:
        response = await self._send("POST", "/generate_batch", json=self._body(n, seed, truncation, label))
        return self._images(response)

    async def grid(
        self, n: int = 16, *, seed: int | None = None, truncation: float | None = None, label: int | str | None = None
    ) -> Image.Image:
        return self._grid(await self._send("POST", "/generate", json=self._body(n, seed, truncation, label)))

    async def info(self) -> ModelInfo:
        return ModelInfo.model_validate_json((await self._send("GET", "/info")).content)

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
