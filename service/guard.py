"""The door of the service: an ASGI middleware that refuses what must not reach BentoML, before anything parses it.

In this order, each a JSON ``{"error": ...}`` that says what is wrong and what is allowed:

1. 401 without the key a protected path needs (so a caller without a key learns nothing of the schema);
2. 415 for an API body that is not JSON (multipart and form bodies crash BentoML's parsers);
3. 413 for a body over ``max_body`` bytes, declared or counted as it arrives (chunked bodies declare nothing);
4. 408 for a body not received within ``receive_timeout`` seconds of its headers;
5. 429 when ``slots`` requests are already being served (health, metrics and the static pages are not counted).

A slot is taken only once the whole body is in, so clients that trickle their bodies hold a connection and a few
bytes each, never a slot: 300 of them leave everyone else served. (Headers that trickle are cut off earlier, in
``service.transport``.) This replaces BentoML's own limiter, which counted a request from its first byte.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from service.errors import one_line

__all__ = ["ClientErrorLog", "Guard"]

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

UNLIMITED = frozenset({"/livez", "/readyz", "/healthz", "/metrics", "/ui", "/docs.json"})  # cheap, constant
BODILESS = frozenset({"GET", "HEAD", "OPTIONS"})
RETRY_AFTER = ((b"retry-after", b"1"),)
JSON_TYPES = frozenset({"", "application/json", "text/plain"})  # text/plain: what fetch() sends for a string body


class _Refusal(Exception):
    def __init__(self, status: int, error: str, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        super().__init__(error)
        self.status, self.error, self.headers = status, error, headers


class Guard:
    """``keys`` maps a path to the secret it needs (absent or None: open); ``json_paths`` take JSON bodies only."""

    def __init__(
        self,
        app: Callable,
        *,
        keys: Mapping[str, str | None],
        json_paths: frozenset[str],
        max_body: int,
        receive_timeout: float,
        slots: int,
    ) -> None:
        self.app, self.json_paths = app, json_paths
        self.keys = {path: f"Bearer {key}".encode() for path, key in keys.items() if key}
        self.max_body, self.receive_timeout, self.slots = max_body, receive_timeout, slots
        self.busy = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        counted = scope["path"] not in UNLIMITED
        try:
            self._authorize(scope)
            if scope["method"] not in BODILESS:
                body = await self._body(scope, receive)
                if body is None:
                    return  # the client went away while sending
                receive = _replay(body, receive)
            if counted and self.busy >= self.slots:
                raise _Refusal(429, f"busy: {self.slots} requests are being served; try again", RETRY_AFTER)
        except _Refusal as refusal:
            return await _answer(send, refusal)
        self.busy += counted
        try:
            await self.app(scope, receive, send)
        finally:
            self.busy -= counted

    def _authorize(self, scope: Scope) -> None:
        wanted = self.keys.get(scope["path"])
        if wanted is None:
            return
        given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        if not hmac.compare_digest(given, wanted):
            what = "metrics key" if scope["path"] == "/metrics" else "API key"
            raise _Refusal(401, f"missing or wrong {what}: send the header Authorization: Bearer <key>")

    async def _body(self, scope: Scope, receive: Receive) -> bytes | None:
        headers = dict(scope["headers"])
        if scope["path"] in self.json_paths:
            media = headers.get(b"content-type", b"").split(b";")[0].strip().lower().decode("latin-1")
            if media not in JSON_TYPES:
                raise _Refusal(415, f"the body must be JSON (Content-Type: application/json), not {media}")
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_body:
            raise self._too_large()
        try:
            return await asyncio.wait_for(self._read(receive), self.receive_timeout)
        except asyncio.TimeoutError:
            raise _Refusal(408, f"the request body did not arrive within {self.receive_timeout:g} s") from None

    def _too_large(self) -> _Refusal:
        return _Refusal(413, f"request body too large: at most {self.max_body} bytes")

    async def _read(self, receive: Receive) -> bytes | None:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise self._too_large()
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body in one message, then whatever the client does next (a disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _answer(send: Send, refusal: _Refusal) -> None:
    body = json.dumps({"error": refusal.error}).encode()
    # connection: close, for a body left unread must not be taken for the next request
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close"), *refusal.headers]  # fmt: skip
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ClientErrorLog(logging.Filter):
    """BentoML logs each request it refuses as invalid at ERROR with a 25-line traceback (10,000 bad requests wrote
    26 MB). A client's mistake is no server error: this filter, on BentoML's HTTP logger, turns such a record into
    one INFO line that says what was wrong. Server errors keep their traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        from bentoml.exceptions import BentoMLException
        from pydantic import ValidationError

        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, ValidationError):
            status, why = 400, one_line(error, whole="body")
        elif isinstance(error, BentoMLException) and error.error_code < 500:
            status, why = int(error.error_code), str(error)
        else:
            return True
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.msg, record.args = "%s: %d %s", (record.getMessage().replace("Exception", "Refused"), status, why[:300])
        record.exc_info = record.exc_text = None
        return True
