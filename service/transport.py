"""A deadline for request headers, which uvicorn does not have.

uvicorn's only timer on a connection is keep-alive, armed after a response and cancelled by the first byte that
arrives: a client that opens connections and sends headers a byte at a time (slowloris) holds each of them forever,
until the process runs out of file descriptors. Its ASGI app never hears of them, so no middleware can help.

``HeaderDeadline`` is uvicorn's httptools protocol with one more timer: a request's headers must be complete within
``timeout`` seconds of a new connection or of the request's first byte; past it the connection gets 408 (or, if
nothing at all was sent, nothing) and is closed. Between requests uvicorn's keep-alive timer governs, as before.
BentoML builds uvicorn's config itself and names no protocol, so ``use_header_deadline`` points uvicorn's "auto"
protocol at this one, in the process that calls it, before uvicorn loads its config.
"""

from __future__ import annotations

import asyncio
import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["HeaderDeadline", "use_header_deadline"]


class HeaderDeadline(HttpToolsProtocol):
    timeout = 5.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._started = False  # some bytes of a request's head have arrived, not all
        self._deadline: asyncio.TimerHandle | None = self.loop.call_later(self.timeout, self._too_slow)

    def on_message_begin(self) -> None:  # the parser met the first byte of a request
        super().on_message_begin()
        self._started = True
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.timeout, self._too_slow)

    def on_headers_complete(self) -> None:
        self._cancel()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        super().connection_lost(exc)

    def _cancel(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._started = False

    def _too_slow(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self._started:
            body = json.dumps({"error": f"the request headers did not arrive within {self.timeout:g} s"}).encode()
            head = (f"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                    f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")  # fmt: skip
            self.transport.write(head.encode() + body)
        self.transport.close()


def use_header_deadline(timeout: float) -> None:
    """Serve HTTP in this process with ``HeaderDeadline`` and this ``timeout`` (seconds)."""
    import uvicorn.config

    HeaderDeadline.timeout = timeout
    uvicorn.config.HTTP_PROTOCOLS["auto"] = f"{__name__}:{HeaderDeadline.__name__}"
