"""ganserve's HTTP service: ``bentoml serve service.service:GANServe``.

``GANServe`` is the HTTP entry: it validates, runs the model on the requested seeds and encodes PNGs. Where the
model runs is the layout (``GANSERVE_LAYOUT``):

- ``batched`` (the default with a GPU): ``Generator``, one worker, owns the onnxruntime session; its batchable
  ``run`` lets BentoML merge the rows of concurrent requests into one onnxruntime run.
- ``inprocess`` (the default on CPU, where the hop to another service costs ~5 ms a request, docs/BENCHMARKS.md):
  every GANServe worker, one per core, holds its own session and merges its concurrent requests into one run
  (``service.batching``).

Either way requests travel as seeds (``service.rows``), and the model's own graph draws the latents in the thread that
runs it (``service.runtime``): the event loop only parses, routes and answers, so no request can stall the others or
the health checks. /generate and /generate_batch are routes of the mounted ASGI app by default, which skips
BentoML's input and output descriptors (``GANSERVE_ROUTE=api`` serves them through ``@bentoml.api``). Whoever
holds the model follows the store's production pointer (``service.production``). Before any of it,
``service.guard`` refuses requests without the key, with bodies too large, too slow or not JSON, or beyond the
concurrency limit, and ``service.transport`` cuts off connections whose headers do not arrive in time.
docs/HARDENING.md lists the attacks and faults this is built to withstand.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import logging
import math
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import bentoml
import numpy as np
from bentoml.exceptions import ServiceUnavailable
from bentoml.validators import ContentType
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from service import openapi
from service.batching import Batcher
from service.guard import ClientErrorLog, Guard, what_is_wrong
from service.imaging import encode_png, tile
from service.latents import MAX_SEED, MAX_TRUNCATION, MIN_TRUNCATION
from service.production import NotReady, Production
from service.rows import pack_request, unpack_images
from service.runtime import nvidia_driver_present
from service.settings import Settings
from service.transport import use_header_deadline

log = logging.getLogger("bentoml.ganserve")  # under "bentoml", so `bentoml serve` shows it

SETTINGS = Settings.from_env()
MAX_BATCH = 256  # rows per onnxruntime run
INLINE_PNG_BYTES = 16 * 1024  # pixels to encode above which the PNGs are written off the event loop (~0.2 ms)
# Workaround for bentoml#5540: the connection behind bentoml.depends is recreated every 100 calls or 300 s,
# killing in-flight calls; shared/design/bentoml.md measured 22-25 failures in 32 at the 100th call.
NEVER_RECYCLE = {"max_requests": 10**9, "max_age": 1e9}


@dataclass(frozen=True)
class _Drawn:
    """A request's images with their seeds, label indices and names, and the version of the model that drew them."""

    seeds: list[int]
    labels: list[int | None]
    names: list[str | None]
    images: np.ndarray  # uint8 N x H x W x C
    version: str


class _Refused(Exception):
    """A request this service answers with a 4xx or 503 and a JSON body that says why."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body["error"])
        self.status, self.body = status, body


class GenerateRequest(BaseModel):
    """Body of /generate and /generate_batch. Unknown fields are refused, not ignored; types are strict (no
    numbers in strings, no booleans for numbers), as a JSON API's clients expect."""

    model_config = ConfigDict(extra="forbid", strict=True)

    n: Annotated[int, Field(ge=1, le=SETTINGS.max_n, description="images; a grid when more than one")] = 1
    seed: Annotated[int | None, Field(ge=0, le=MAX_SEED - 1, description="image i gets seed + i; else random")] = None
    truncation: Annotated[
        float | None,
        Field(
            ge=MIN_TRUNCATION, le=MAX_TRUNCATION, allow_inf_nan=False,
            description="truncate z to [-t, t] (the truncation trick: fidelity for variety); none if absent",
        ),
    ] = None  # fmt: skip
    label: Annotated[
        Annotated[int, Field(ge=0)] | str | None, Field(description="class name or index, for a conditional model")
    ] = None


def _tame_garbage_collector() -> None:
    """Full collections of BentoML's many start-up objects stall requests for 0.25-1.35 s (shared/design/
    performance.md): move what exists now out of the collector's sight and collect the young generation less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def _layout() -> str:
    """batched (a Generator service merges requests: pays on a GPU) or inprocess (each HTTP worker runs the model
    and merges its own requests: fastest on CPU, where the hop to another service costs more than the model; see
    docs/BENCHMARKS.md)."""
    if SETTINGS.layout == "auto":
        return "batched" if nvidia_driver_present() else "inprocess"
    return SETTINGS.layout


def _refusal_metric() -> Callable[[str, bool], None]:
    gauge = bentoml.metrics.Gauge(
        name="ganserve_production_refused",
        documentation="1 while the production version named by the label fails verification here and an earlier "
        "version is served (or none)",
        labelnames=["tag"],
        multiprocess_mode="livemostrecent",  # the workers' latest word, not a killed worker's stale one
    )
    return lambda tag, refused: gauge.labels(tag=tag).set(int(refused))


def _secret(value: SecretStr | None) -> str | None:
    return None if value is None else value.get_secret_value()


LAYOUT = _layout()
WORKERS = SETTINGS.workers or (1 if LAYOUT == "batched" else (os.cpu_count() or 1))
use_header_deadline(SETTINGS.receive_timeout)  # before uvicorn starts in this worker process


@bentoml.service(workers=1, traffic={"timeout": SETTINGS.timeout}, runner_connection=NEVER_RECYCLE)
class Generator:
    """Owns the model in the batched layout; idle in the in-process one (it still pins the model into the bento)."""

    model = bentoml.models.BentoModel(SETTINGS.model_tag)

    def __init__(self) -> None:
        batched = LAYOUT == "batched"
        self.production = Production(SETTINGS.model_tag, on_refusal=_refusal_metric()) if batched else None

    async def __is_ready__(self) -> bool:
        return self.production is None or self.production.ready

    @bentoml.on_startup
    async def _watch(self) -> None:
        if self.production is not None:
            self.watcher = asyncio.create_task(self.production.follow(SETTINGS.reload_seconds))
        _tame_garbage_collector()

    @bentoml.api
    async def describe(self, version: str | None = None) -> dict[str, Any]:
        """The model being served, or the one swapped out last when asked for its version; ``not_ready`` and why
        when no model is loaded."""
        try:
            return self.production.describe(version)
        except NotReady as err:
            return {"not_ready": str(err)}

    @bentoml.api(batchable=True, batch_dim=0, max_batch_size=MAX_BATCH, max_latency_ms=10_000)
    async def run(self, rows: np.ndarray) -> np.ndarray:
        if not self.production.ready:
            raise ServiceUnavailable("no verified model to serve yet")
        # onnxruntime releases the GIL: off the event loop, BentoML's dispatcher gathers the next batch meanwhile
        return await asyncio.to_thread(self.production.draw, rows)


app = FastAPI(title="ganserve pages", openapi_url=None, docs_url=None, redoc_url=None)  # bound to GANServe below


# No max_concurrency here: the guard counts requests once their bodies are in, so slow senders hold no slot.
@bentoml.service(workers=WORKERS, traffic={"timeout": SETTINGS.timeout})
@bentoml.asgi_app(app, path="/")
class GANServe:
    """The HTTP entry: POST /generate (PNG), POST /generate_batch (JSON), GET /info, GET /ui, GET /docs.json."""

    generator = bentoml.depends(Generator)

    def __init__(self) -> None:
        logging.getLogger("bentoml._internal.server.http_app").addFilter(ClientErrorLog())
        self.described: dict[str, Any] | None = None
        self.images_total = bentoml.metrics.Counter(
            name="ganserve_images_generated", documentation="images generated", labelnames=["endpoint"]
        )
        self.model_info = bentoml.metrics.Gauge(
            name="ganserve_model_info", documentation="1 for the model version being served", labelnames=["version"]
        )
        self.batch_requests = bentoml.metrics.Histogram(
            name="ganserve_batch_requests",
            documentation="requests merged into one onnxruntime run (in-process layout)",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256),
        )
        self.local: Production | None = None
        self.batcher: Batcher | None = None
        if LAYOUT == "inprocess":
            # One onnxruntime thread per worker when the workers fill the cores: 2 x 2 threads on 2 cores would
            # spin against each other (two 1-thread processes scale 2.0x, shared/design/performance.md).
            threads = max(1, (os.cpu_count() or 1) // WORKERS)
            self.local = Production(SETTINGS.model_tag, threads=threads, on_refusal=_refusal_metric())
            self.batcher = Batcher(
                self.local.draw, max_rows=MAX_BATCH, on_batch=lambda requests, _: self.batch_requests.observe(requests)
            )
        self.docs = openapi.document(
            GenerateRequest, api_key=SETTINGS.api_key is not None, metrics_key=SETTINGS.metrics_secret is not None
        )

    async def __is_ready__(self) -> bool:
        return self.local is None or self.local.ready  # batched: BentoML's probe asks the Generator too

    @bentoml.on_startup
    async def _watch(self) -> None:
        if self.local is not None:
            self.watcher = asyncio.create_task(self.local.follow(SETTINGS.reload_seconds))
        _tame_garbage_collector()

    async def _describe(self, version: str | None = None, *, fresh: bool = False) -> dict[str, Any]:
        """The model that drew ``version`` (the one being served when None); 503 when no model is loaded."""
        if self.local is not None:
            try:
                described = self.local.describe(version)
            except NotReady as err:
                raise _Refused(503, {"error": str(err)}) from None
        elif fresh or self.described is None or (version is not None and version != self.described["version"]):
            described = await self.generator.describe(version=version)
            if "not_ready" in described:
                raise _Refused(503, {"error": described["not_ready"]})
        else:
            return self.described
        if described.get("retired"):
            return described  # images drawn just before a swap: the shape and labels they have; not cached
        if self.described is None or described["version"] != self.described["version"]:
            if self.described is not None:
                self.model_info.labels(version=self.described["version"]).set(0)
            self.model_info.labels(version=described["version"]).set(1)
        self.described = described
        return described

    async def _images(self, body: Any, endpoint: str) -> _Drawn:
        req = GenerateRequest.model_validate(body)
        info = await self._describe()
        classes = info["class_names"]
        label = _label_index(req.label, classes)
        first = req.seed if req.seed is not None else secrets.randbelow(MAX_SEED)
        seeds = [(first + i) % MAX_SEED for i in range(req.n)]
        rows = pack_request(seeds, label, req.truncation)
        try:
            out = await (self.batcher(rows) if self.batcher else self.generator.to_async.run(rows))
        except ServiceUnavailable:  # batched: the Generator has no model (restarted beside a bad file), or is full
            raise _Refused(503, {"error": "the model service cannot take this request now; try again"}) from None
        drawn = unpack_images(out)
        if drawn.version != info["version"]:  # a promotion landed: the images say which model drew them
            info = await self._describe(drawn.version)
        image, classes = info["image"], info["class_names"]
        # Labels as the model that drew the images chose them: across a promotion to an unconditional model, none.
        indices = drawn.labels or [None] * req.n
        names = [None if i is None else classes[i] for i in indices]
        self.images_total.labels(endpoint=endpoint).inc(req.n)
        images = drawn.pixels.reshape(req.n, image["height"], image["width"], image["channels"])
        return _Drawn(seeds, indices, names, images, drawn.version)

    async def _png(self, body: Any) -> Response:
        """/generate's answer: one PNG, the image for n = 1, a grid (row by row; seeds in X-Seeds) for n > 1."""
        drawn = await self._images(body, "generate")
        images = drawn.images
        png = await _cpu(images.nbytes, lambda: encode_png(images[0] if len(images) == 1 else tile(images)))
        headers = {"X-Seeds": ",".join(map(str, drawn.seeds)), "X-Model-Version": drawn.version}
        return Response(png, media_type="image/png", headers=headers)

    async def _batch(self, body: Any) -> dict[str, Any]:
        """/generate_batch's answer: the same images, each its own PNG, base64 in JSON with its seed and label."""
        drawn = await self._images(body, "generate_batch")
        images = drawn.images
        pngs = await _cpu(images.nbytes, lambda: [base64.b64encode(encode_png(i)).decode() for i in images])
        return {
            "model_version": drawn.version,
            "images": [
                {"seed": s, "label": name, "label_index": i, "png": png}
                for s, i, name, png in zip(drawn.seeds, drawn.labels, drawn.names, pngs, strict=True)
            ],
        }

    if SETTINGS.route == "asgi":
        # Routes of the mounted ASGI app: BentoML's middleware (metrics, tracing, access log) and the guard still
        # see every request, but its input and output descriptors, which cost more per request than drawing one
        # image, are skipped (docs/BENCHMARKS.md). Errors keep BentoML's shape: {"error", "detail"}.

        @app.post("/generate")
        async def generate(self, request: Request) -> Response:
            """One PNG: the image for n = 1, a grid (row by row; seeds in X-Seeds) for n > 1."""
            return await _answering(request, self._png)

        @app.post("/generate_batch")
        async def generate_batch(self, request: Request) -> Response:
            """The same images as /generate, each its own PNG, base64 in JSON with its seed and label."""
            return await _answering(request, self._batch)

    else:

        @bentoml.api(route="/generate", input_spec=GenerateRequest)
        async def generate(self, ctx: bentoml.Context, **body: Any) -> Annotated[bytes, ContentType("image/png")]:
            """One PNG: the image for n = 1, a grid (row by row; seeds in X-Seeds) for n > 1."""
            try:
                return await self._png(body)
            except _Refused as refused:
                return _problem(ctx, refused)

        @bentoml.api(route="/generate_batch", input_spec=GenerateRequest)
        async def generate_batch(self, ctx: bentoml.Context, **body: Any) -> dict[str, Any]:
            """The same images as /generate, each its own PNG, base64 in JSON with its seed and label."""
            try:
                return await self._batch(body)
            except _Refused as refused:
                return _problem(ctx, refused)

    @app.get("/ui")
    async def page(self) -> HTMLResponse:
        """A page to draw images, pick n, seed, label and truncation, and click an image for its seed."""
        return HTMLResponse((Path(__file__).parent / "static" / "index.html").read_text())

    @app.get("/docs.json")
    async def openapi_document(self) -> JSONResponse:
        """This API as OpenAPI 3.0 (service.openapi), in place of BentoML's invalid one."""
        return JSONResponse(self.docs)

    @app.get("/info")
    async def info(self) -> JSONResponse:
        """The served model, any production version this server refused, and the limits of this API."""
        try:
            d = await self._describe(fresh=True)
        except _Refused as refused:
            return JSONResponse(refused.body, status_code=refused.status)
        return JSONResponse({
            "model_version": d["version"],
            "provider": d["provider"],
            "image": d["image"],
            "latent_dim": d["latent_dim"],
            "latent_protocol": d["latent_protocol"],
            "class_names": d["class_names"],
            "gate": d.get("gate"),
            "refused": d["refused"],
            "limits": {"n": [1, SETTINGS.max_n], "seed": [0, MAX_SEED - 1],
                       "truncation": f"{MIN_TRUNCATION} <= t <= {MAX_TRUNCATION:g}",
                       "max_concurrency": SETTINGS.max_concurrency, "auth": SETTINGS.api_key is not None},
        })  # fmt: skip


GANServe.add_asgi_middleware(
    Guard,
    keys={
        **dict.fromkeys(("/generate", "/generate_batch", "/info"), _secret(SETTINGS.api_key)),
        "/metrics": _secret(SETTINGS.metrics_secret),
    },
    json_paths=frozenset({"/generate", "/generate_batch"}),
    max_body=SETTINGS.max_body,
    receive_timeout=SETTINGS.receive_timeout,
    slots=math.ceil(SETTINGS.max_concurrency / WORKERS),  # per worker, as BentoML divides its own limit
)


def _label_index(label: int | str | None, classes: list[str]) -> int | None:
    if label is None:
        return None
    if not classes:
        raise _Refused(400, {"error": "this model is unconditional: it takes no label", "allowed": []})
    if isinstance(label, int) and label < len(classes):
        return label
    if isinstance(label, str) and label in classes:
        return classes.index(label)
    raise _Refused(
        400, {"error": f"unknown label {label!r}", "allowed": classes, "allowed_indices": [0, len(classes) - 1]}
    )


def _problem(ctx: bentoml.Context, refused: _Refused) -> JSONResponse:
    ctx.response.status_code = refused.status  # BentoML applies the context's status over any returned response
    return JSONResponse(refused.body, status_code=refused.status)


async def _answering(request: Request, answer: Callable[[Any], Any]) -> Response:
    """Parse the JSON body (the guard has checked its type and size) and answer it. A 4xx says what is wrong, in the
    shape BentoML's own API routes use, and the log says it in one line, as ``ClientErrorLog`` does for those."""
    try:
        body = json.loads(await request.body())
    except ValueError as err:  # not JSON, or not UTF-8
        return _refuse(request, _Refused(400, {"error": f"Invalid JSON input: {err}"}))
    try:
        out = await answer(body)
    except ValidationError as err:
        detail = err.errors(include_context=False, include_input=False, include_url=False)
        error = {"error": f"{err.error_count()} validation error for {err.title}", "detail": detail}
        return _refuse(request, _Refused(400, error), why=what_is_wrong(err))
    except _Refused as refused:
        return _refuse(request, refused)
    return out if isinstance(out, Response) else JSONResponse(out)


def _refuse(request: Request, refused: _Refused, why: str | None = None) -> JSONResponse:
    log.info("Refused on %s [POST]: %d %s", request.url.path, refused.status, (why or refused.body["error"])[:300])
    return JSONResponse(refused.body, status_code=refused.status)


async def _cpu(size: int, work: Callable[[], Any]) -> Any:
    """``work()``, on the event loop when it is small (a thread hop costs more), in a thread when it is not."""
    return work() if size <= INLINE_PNG_BYTES else await asyncio.to_thread(work)
