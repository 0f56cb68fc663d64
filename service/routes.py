"""The hot routes, /generate and /generate_batch, answered by a plain ASGI layer right behind the guard.

BentoML mounts ganserve's FastAPI app under its own Starlette router: a request to a route of that app passes two
routers, FastAPI's middleware stack and its dependency solver before it reaches the service, which costs more
than drawing one image on CPU (docs/BENCHMARKS.md). The hot routes are answered here instead; BentoML's metrics,
access log, timeout and the guard still see every request, and every other path goes on to the app. The answers
are the service's own methods (``GANServe.generate_file`` and ``generate_files``), one per path.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import bentoml
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

__all__ = ["HotRoutes"]


class HotRoutes:
    """``routes`` maps a POST path to the name of the service method that answers it: ``await method(request)``
    returns a starlette ``Response``."""

    def __init__(self, app: Callable[..., Awaitable[None]], *, routes: Mapping[str, str]) -> None:
        self.app, self.routes = app, dict(routes)
        self.answers: dict[str, Callable[[Request], Awaitable[Response]]] = {}

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        name = self.routes.get(scope["path"]) if scope["type"] == "http" else None
        if name is None:
            return await self.app(scope, receive, send)
        if scope["method"] != "POST":
            error = {
                "error": f"{scope['path']} takes POST with a JSON body, not {scope['method']}",
                "allowed": ["POST"],
            }
            return await JSONResponse(error, status_code=405, headers={"allow": "POST"})(scope, receive, send)
        answer = self.answers.get(name)
        if answer is None:  # the worker's service instance: BentoML makes it before it serves the first request
            answer = self.answers[name] = getattr(bentoml.get_current_service(), name)
        response = await answer(Request(scope, receive))
        await response(scope, receive, send)
