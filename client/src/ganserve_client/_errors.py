"""The one exception tree of ganserve_client, and the status each error answers.

GanserveError           the base of every error this client raises (also named GanServeError)
├── InvalidRequest      400, 413, 415, 422: the request is wrong; carries the server's message and what is allowed
├── Unauthorized        401: missing or wrong API key
├── RateLimited         429: too many requests in flight (retried)
├── Unavailable         503, 504 and other 5xx (503 and 504 are retried)
│   └── Timeout         no answer within the client's timeout, or 408: the server got no whole request in its
│                       time (retried)
└── TransportError      the connection failed: refused, reset, DNS (retried)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = [
    "GanServeError",
    "GanserveError",
    "InvalidRequest",
    "RateLimited",
    "Timeout",
    "TransportError",
    "Unauthorized",
    "Unavailable",
    "for_status",
    "one_line",
]


class GanserveError(Exception):
    """Base of every error this client raises."""

    def __init__(self, message: str, *, status: int | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.message, self.status, self.body = message, status, body


# The SDK's first spelling, before it took the service's: code that catches GanServeError still catches every error.
GanServeError = GanserveError


class InvalidRequest(GanserveError):
    """The server refused the request as given; ``allowed`` lists the valid values when the server said them."""

    @property
    def allowed(self) -> list | None:
        return self.body.get("allowed") if isinstance(self.body, dict) else None


class Unauthorized(GanserveError):
    pass


class RateLimited(GanserveError):
    pass


class Unavailable(GanserveError):
    pass


class Timeout(Unavailable):
    pass


class TransportError(GanserveError):
    pass


def for_status(status: int) -> type[GanserveError]:
    """The error an HTTP error status raises, as the tree above says."""
    named: dict[int, type[GanserveError]] = {401: Unauthorized, 408: Timeout, 429: RateLimited}
    return named.get(status) or (InvalidRequest if 400 <= status < 500 else Unavailable)


def one_line(problems: Iterable[Any]) -> str:
    """Validation problems in one line, ``loc: msg; loc: msg`` (``body`` where the whole body is wrong): pydantic's
    ``ValidationError.errors()``, or the ``detail`` list of a server's 422, whose items may be anything."""
    return "; ".join(
        f"{'.'.join(map(str, p.get('loc', []))) or 'body'}: {p.get('msg')}" if isinstance(p, dict) else str(p)
        for p in problems
    )
