"""The one exception tree of ganserve_client.

GanServeError
├── InvalidRequest      400, 413, 415, 422: the request is wrong; carries the server's message and what is allowed
├── Unauthorized        401: missing or wrong API key
├── RateLimited         429: too many requests in flight (retried)
├── Unavailable         503, 504 and other 5xx (503 and 504 are retried)
│   └── Timeout         no answer within the client's timeout, or 408: the server got no whole request in its
│                       time (retried)
└── TransportError      the connection failed: refused, reset, DNS (retried)
"""

from __future__ import annotations

from typing import Any

__all__ = ["GanServeError", "InvalidRequest", "RateLimited", "Timeout", "TransportError", "Unauthorized", "Unavailable"]


class GanServeError(Exception):
    """Base of every error this client raises."""

    def __init__(self, message: str, *, status: int | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.message, self.status, self.body = message, status, body


class InvalidRequest(GanServeError):
    """The server refused the request as given; ``allowed`` lists the valid values when the server said them."""

    @property
    def allowed(self) -> list | None:
        return self.body.get("allowed") if isinstance(self.body, dict) else None


class Unauthorized(GanServeError):
    pass


class RateLimited(GanServeError):
    pass


class Unavailable(GanServeError):
    pass


class Timeout(Unavailable):
    pass


class TransportError(GanServeError):
    pass
