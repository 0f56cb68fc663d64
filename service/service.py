"""ganserve's HTTP service: ``bentoml serve service.service:GANServe``. This module wires the stages together.

``GANServe`` is the HTTP entry: it validates, runs the model on the requested seeds and encodes the images (PNG,
WebP or JPEG, each with its provenance inside: ``service.formats``), or walks between seeds (/interpolate). It
serves one or more model lines (``service.lines``), each following its own production pointer; a request names its
line with ``model``. A request passes these stages, each in its own module:

1. ``service.transport`` cuts off connections whose headers do not arrive in time; ``service.guard`` refuses
   requests without the key, with bodies too large, too slow or not JSON, or beyond the concurrency limit
   (docs/HARDENING.md lists the attacks and faults this is built to withstand);
2. ``service.routes`` answers /generate and /generate_batch straight behind the guard (the other paths are routes
   of the FastAPI app below; ``GANSERVE_ROUTE=api`` serves the two through ``@bentoml.api`` instead);
3. ``service.requests`` turns the body into what a run needs, or a 4xx that says what is wrong;
4. the model runs, as seeds (``service.rows``): the model's own graph draws the latents (``service.runtime``).
   Where it runs is the layout (``GANSERVE_LAYOUT``):
   - ``inprocess`` (the default on CPU, where the hop to another service costs ~5 ms a request,
     docs/BENCHMARKS.md): every GANServe worker, one per core, holds its own sessions and schedules their work by
     size (``service.scheduling``): small requests merge into short runs in a fast lane, large ones run in bounded
     pieces in a bulk lane at a lower CPU priority, so a small request never waits behind a large one;
   - ``batched`` (the default with a GPU): ``Generator``, one worker, owns the onnxruntime sessions; its batchable
     ``run`` lets BentoML merge the rows of concurrent requests into one onnxruntime run;
5. ``service.answers`` writes the provenance, the headers and the refusals; ``service.formats`` encodes the files.

Whoever holds the models follows each line's production pointer (``service.production``).
"""

from __future__ import annotations

import asyncio
import base64
import gc
import logging
import math
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import bentoml
import numpy as np
from bentoml.exceptions import ServiceUnavailable
from bentoml.validators import ContentType
from fastapi import FastAPI
from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from service import openapi
from service.answers import Drawing, answering, encode_cost, file_headers, problem, provenance, reproducing, shaped
from service.drs import DEFAULT_CANDIDATES, MAX_CANDIDATES
from service.formats import ANIMATIONS, FORMATS, encode_animation, encode_image
from service.guard import ClientErrorLog, Guard
from service.imaging import tile
from service.latents import MAX_SEED, MAX_TRUNCATION, MIN_TRUNCATION, walk_length
from service.lines import DEFAULT_LINE, check_line, line_id, production_name
from service.production import Lines, NotReady, history, lines_in_store
from service.requests import (
    MAX_KEYS,
    MAX_SEGMENT_FRAMES,
    GenerateRequest,
    InterpolateRequest,
    Refused,
    default_sampler,
    label_index,
    pick_format,
    sampler_for,
)
from service.routes import HotRoutes
from service.rows import pack_request, unpack_images, weights
from service.runtime import nvidia_driver_present
from service.scheduling import Scheduler
from service.settings import settings
from service.transport import use_header_deadline

SETTINGS = settings()
MAX_BATCH = 256  # rows per onnxruntime run in the batched layout (BentoML's adaptive batching)
INLINE_IMAGES = 4  # fast-lane runs of at most this many images run on the event loop: ~1-3 ms of it at most
INLINE_PNG_BYTES = 16 * 1024  # pixels to encode above which the PNGs are written off the event loop (~0.2 ms)
HOT_ROUTES = {"/generate": "generate_file", "/generate_batch": "generate_files"}
QUIET_PATHS = ["/metrics", "/healthz", "/livez", "/readyz"]  # BentoML's default for its access log's skip_paths
# Workaround for bentoml#5540: the connection behind bentoml.depends is recreated every 100 calls or 300 s,
# killing in-flight calls; shared/design/bentoml.md measured 22-25 failures in 32 at the 100th call.
NEVER_RECYCLE = {"max_requests": 10**9, "max_age": 1e9}


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


def _use_store(path: str) -> None:
    """Serve from the store at ``path`` instead of BentoML's: a volume the retrain job promotes into, shared by
    every replica (deploy/). Set before the lines are read from it, in every process that imports this module."""
    if path:
        from bentoml._internal.configuration.containers import BentoMLContainer
        from bentoml._internal.models.model import ModelStore

        if not Path(path).is_dir():
            raise ValueError(f"bad ganserve setting: GANSERVE_STORE={path!r} is not a folder")
        BentoMLContainer.model_store.set(ModelStore(path))


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


def _lines() -> tuple[list[str], str]:
    """The lines to serve (GANSERVE_MODELS, else every line with a production model in the store, else the default
    line, which then waits for its first promotion) and the one a request without ``model`` gets."""
    named = [check_line(n.strip()) for n in SETTINGS.models.split(",") if n.strip()]
    lines = named or lines_in_store() or [DEFAULT_LINE]
    default = SETTINGS.default_model or (DEFAULT_LINE if DEFAULT_LINE in lines else lines[0])
    if default not in lines:
        raise ValueError(f"bad ganserve setting: GANSERVE_DEFAULT_MODEL={default!r} is not served; lines: {lines}")
    return lines, default


def _pin_production_models(cls: type) -> type:
    """Name each line's production model at class scope, where BentoML looks for the models to pack into a bento
    (``bentoml build`` pins each to its version at build time)."""
    for line in LINES:
        setattr(cls, f"model_{line}", bentoml.models.BentoModel(f"{production_name(line)}:latest"))
    return cls


LAYOUT = _layout()
_use_store(SETTINGS.store)
LINES, DEFAULT_MODEL = _lines()
WORKERS = SETTINGS.workers or (1 if LAYOUT == "batched" else (os.cpu_count() or 1))
use_header_deadline(SETTINGS.receive_timeout)  # before uvicorn starts in this worker process


@bentoml.service(workers=1, traffic={"timeout": SETTINGS.timeout}, runner_connection=NEVER_RECYCLE)
@_pin_production_models
class Generator:
    """Owns the models in the batched layout; idle in the in-process one (it still pins them into the bento)."""

    def __init__(self) -> None:
        batched = LAYOUT == "batched"
        self.lines = Lines(LINES, on_refusal=_refusal_metric()) if batched else None

    async def __is_ready__(self) -> bool:
        return self.lines is None or self.lines.ready

    @bentoml.on_startup
    async def _watch(self) -> None:
        if self.lines is not None:
            self.watcher = asyncio.create_task(self.lines.follow(SETTINGS.reload_seconds))
        _tame_garbage_collector()

    @bentoml.api
    async def describe(self, line: str, version: str | None = None) -> dict[str, Any]:
        """The line's model being served, or the one swapped out last when asked for its version; ``not_ready``
        and why when no model is loaded."""
        try:
            return self.lines.describe(line, version)
        except NotReady as err:
            return {"not_ready": str(err)}

    @bentoml.api(batchable=True, batch_dim=0, max_batch_size=MAX_BATCH, max_latency_ms=10_000)
    async def run(self, rows: np.ndarray) -> np.ndarray:
        if not self.lines.ready:
            raise ServiceUnavailable("no verified model to serve yet")
        # onnxruntime releases the GIL: off the event loop, BentoML's dispatcher gathers the next batch meanwhile
        return await asyncio.to_thread(self.lines.draw, rows)

    @bentoml.api
    async def walk(
        self, line: str, keys: list[int], frames: int, labels: list[int], truncation: float | None, loop: bool
    ) -> np.ndarray:
        try:
            return await asyncio.to_thread(self.lines.walk, line, keys, frames, labels, truncation, loop)
        except NotReady as err:
            raise ServiceUnavailable(str(err)) from None


app = FastAPI(title="ganserve pages", openapi_url=None, docs_url=None, redoc_url=None)  # bound to GANServe below


# No max_concurrency here: the guard counts requests once their bodies are in, so slow senders hold no slot.
# No tracing spans nor access-log lines for the hot routes unless asked: the spans took 17 % of a one-image request's
# time holding the GIL and go nowhere until an exporter is configured, the log lines another 5 % (docs/BENCHMARKS.md).
@bentoml.service(
    workers=WORKERS,
    traffic={"timeout": SETTINGS.timeout},
    tracing={} if SETTINGS.trace else {"excluded_urls": list(HOT_ROUTES)},
    logging={} if SETTINGS.access_log else {"access": {"skip_paths": [*HOT_ROUTES, *QUIET_PATHS]}},
)
@bentoml.asgi_app(app, path="/")
class GANServe:
    """The HTTP entry: POST /generate (an image file), POST /generate_batch (JSON), POST /interpolate (an animation),
    GET /info, GET /ui, GET /docs.json."""

    generator = bentoml.depends(Generator)

    def __init__(self) -> None:
        logging.getLogger("bentoml._internal.server.http_app").addFilter(ClientErrorLog())
        self.described: dict[str, dict[str, Any]] = {}  # by line
        self.images_total = bentoml.metrics.Counter(
            name="ganserve_images_generated", documentation="images generated", labelnames=["endpoint", "model"]
        )
        self.model_info = bentoml.metrics.Gauge(
            name="ganserve_model_info", documentation="1 for each line's model version being served",
            labelnames=["model", "version"],
        )  # fmt: skip
        self.batch_requests = bentoml.metrics.Histogram(
            name="ganserve_batch_requests",
            documentation="requests (or pieces of split ones) merged into one onnxruntime run, by lane (in-process "
            "layout)",
            labelnames=["lane"],
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256),
        )
        self.local: Lines | None = None
        self.scheduler: Scheduler | None = None
        if LAYOUT == "inprocess":
            # One onnxruntime thread per worker when the workers fill the cores: threads of its own pool would not
            # run at the bulk lane's lower priority, and a lone large request would hold small ones back again
            # (docs/BENCHMARKS.md). With fewer workers than cores, threads that sleep rather than spin while they
            # wait (spinning threads halve two processes' throughput, shared/design/performance.md).
            threads = max(1, (os.cpu_count() or 1) // WORKERS)
            self.local = Lines(LINES, threads=threads, spin=False, on_refusal=_refusal_metric())
            self.scheduler = Scheduler(
                self.local.draw, run_images=SETTINGS.run_images, small_images=SETTINGS.small_images,
                inline_images=min(SETTINGS.small_images, INLINE_IMAGES), weigh=weights,
                on_run=lambda lane, requests, _: self.batch_requests.labels(lane=lane).observe(requests),
            )  # fmt: skip
        self.docs = openapi.document(
            GenerateRequest, InterpolateRequest, api_key=SETTINGS.api_key is not None,
            metrics_key=SETTINGS.metrics_secret is not None,
        )  # fmt: skip

    async def __is_ready__(self) -> bool:
        return self.local is None or self.local.ready  # batched: BentoML's probe asks the Generator too

    @bentoml.on_startup
    async def _watch(self) -> None:
        if self.local is not None:
            self.watcher = asyncio.create_task(self.local.follow(SETTINGS.reload_seconds))
        _tame_garbage_collector()

    async def _describe(self, line: str, version: str | None = None, *, fresh: bool = False) -> dict[str, Any]:
        """The line's model that drew ``version`` (the one being served when None); 503 when none is loaded."""
        cached = self.described.get(line)
        if self.local is not None:
            try:
                described = self.local.describe(line, version)
            except NotReady as err:
                raise Refused(503, {"error": f"model {line}: {err}"}) from None
        elif fresh or cached is None or (version is not None and version != cached["version"]):
            described = await self.generator.describe(line=line, version=version)
            if "not_ready" in described:
                raise Refused(503, {"error": f"model {line}: {described['not_ready']}"})
        else:
            return cached
        if described.get("retired"):
            return described  # images drawn just before a swap: the shape and labels they have; not cached
        if cached is None or described["version"] != cached["version"]:
            if cached is not None:
                self.model_info.labels(model=line, version=cached["version"]).set(0)
            self.model_info.labels(model=line, version=described["version"]).set(1)
        self.described[line] = described
        return described

    async def _images(self, req: GenerateRequest, endpoint: str) -> Drawing:
        line = _line(req.model)
        info = await self._describe(line)
        label = label_index(req.label, info["class_names"])
        first = req.seed if req.seed is not None else secrets.randbelow(MAX_SEED)
        seeds = [(first + i) % MAX_SEED for i in range(req.n)]
        sampler, bound = sampler_for(req, info)
        rows = pack_request(seeds, label, req.truncation, line_id(line), bound if sampler == "drs" else 0)
        try:
            out = await (self.scheduler.draw(rows) if self.scheduler else self.generator.to_async.run(rows))
        except ServiceUnavailable:  # batched: the Generator has no model (restarted beside a bad file), or is full
            raise Refused(503, {"error": "the model service cannot take this request now; try again"}) from None
        drawn = unpack_images(out)
        info = await self._drew(line, info, drawn.version)
        # Labels as the model that drew the images chose them: across a promotion to an unconditional model, none.
        indices = drawn.labels or [None] * req.n
        names = [None if i is None else info["class_names"][i] for i in indices]
        self.images_total.labels(endpoint=endpoint, model=line).inc(req.n)
        drs = drawn.scores is not None  # False also when a swap to a model without a D landed meanwhile
        return Drawing(
            seeds, indices, names, shaped(drawn.pixels, info), line, drawn.version, info["latent_protocol"],
            sampler="drs" if drs else "plain", max_candidates=bound if drs else None, scores=drawn.scores,
            candidates=drawn.candidates, accepted=drawn.accepted,
        )  # fmt: skip

    async def _cpu(self, size: int, work: Callable[[], Any]) -> Any:
        """``work()``, on the event loop when it is small (a thread hop costs more), else in the bulk lane (in a
        thread in the batched layout)."""
        if size <= INLINE_PNG_BYTES:
            return work()
        return await (self.scheduler.background(work) if self.scheduler else asyncio.to_thread(work))

    async def _drew(self, line: str, info: dict[str, Any], version: str) -> dict[str, Any]:
        """The description of the model that drew images stamped ``version``: a promotion may have landed."""
        return info if version == info["version"] else await self._describe(line, version)

    async def _file(self, body: Any, accept: str | None) -> Response:
        """/generate's answer: one file, the image for n = 1, a grid (row by row; seeds in X-Seeds) for n > 1."""
        req = GenerateRequest.model_validate(body)
        fmt = pick_format(req.format, req.quality, accept, FORMATS, "png")
        drawn = await self._images(req, "generate")
        images = drawn.images
        request = reproducing(req, drawn, fmt, seed=drawn.seeds[0], n=len(images))
        mark = provenance(drawn, "/generate", request, range(len(images)), req.truncation)
        data = await self._cpu(encode_cost(images, fmt), lambda: encode_image(
            images[0] if len(images) == 1 else tile(images), fmt, quality=req.quality, provenance=mark
        ))  # fmt: skip
        return Response(data, media_type=FORMATS[fmt], headers=file_headers(drawn))

    async def _batch(self, body: Any) -> dict[str, Any]:
        """/generate_batch's answer: the same images, each its own file, base64 in JSON with its seed and label."""
        req = GenerateRequest.model_validate(body)
        fmt = pick_format(req.format, req.quality, None, FORMATS, "png")
        drawn = await self._images(req, "generate_batch")
        alone = reproducing(req, drawn, fmt, seed=drawn.seeds[0], n=1)  # each image's request differs by its seed
        marks = [
            provenance(drawn, "/generate", {**alone, "seed": s}, [i], req.truncation) for i, s in enumerate(drawn.seeds)
        ]

        def encode() -> list[str]:
            return [
                base64.b64encode(encode_image(image, fmt, quality=req.quality, provenance=mark)).decode()
                for image, mark in zip(drawn.images, marks, strict=True)
            ]

        files = await self._cpu(encode_cost(drawn.images, fmt), encode)
        return {
            "model": drawn.line,
            "model_version": drawn.version,
            "format": fmt,
            "media_type": FORMATS[fmt],
            "sampler": drawn.sampler,
            "images": [
                {"seed": s, "label": name, "label_index": i, "data": data, **({"drs": drs} if drs else {})}
                for s, i, name, data, drs in zip(
                    drawn.seeds, drawn.labels, drawn.names, files, map(drawn.drs, range(req.n)), strict=True
                )
            ],
        }

    async def _walk(self, body: Any, accept: str | None) -> Response:
        """/interpolate's answer: the frames of a walk between key seeds, in one file."""
        req = InterpolateRequest.model_validate(body)
        fmt = pick_format(req.format, req.quality, accept, ANIMATIONS, "webp", lossy=("webp",))
        line = _line(req.model)
        info = await self._describe(line)
        keys = req.seeds
        labels = req.label if isinstance(req.label, list) else [req.label] * len(keys)
        if len(labels) != len(keys):
            raise Refused(400, {"error": f"{len(labels)} labels for {len(keys)} key seeds: give one, or one per key"})
        indices = [-1 if label is None else label_index(label, info["class_names"]) for label in labels]
        frames = walk_length(len(keys), req.frames, loop=req.loop)
        image = info["image"]
        size = frames * image["height"] * image["width"] * image["channels"]
        if frames > SETTINGS.max_frames or size > SETTINGS.max_walk_bytes:
            raise Refused(400, {
                "error": f"a walk of {frames} frames of {image['height']}x{image['width']}x{image['channels']} "
                f"({size} bytes) is past this server's limits: at most {SETTINGS.max_frames} frames and "
                f"{SETTINGS.max_walk_bytes} bytes of pixels; use fewer keys or frames",
                "allowed": {"max_frames": SETTINGS.max_frames, "max_walk_bytes": SETTINGS.max_walk_bytes},
            })  # fmt: skip
        args = (line, keys, req.frames, indices, req.truncation, req.loop)
        try:
            if self.local is not None:
                out = await self.scheduler.background(lambda: self.local.walk(*args))
            else:
                out = await self.generator.to_async.walk(*args)
        except (NotReady, ServiceUnavailable) as err:
            raise Refused(503, {"error": f"model {line} cannot take this request now: {err}"}) from None
        drawn = unpack_images(out)
        info = await self._drew(line, info, drawn.version)
        self.images_total.labels(endpoint="interpolate", model=line).inc(frames)
        # Each key's frame (segment s starts at key s; without a loop the last frame is the last key) says the class
        # it was drawn for, also where the request left it to the seed.
        drawn_for = [drawn.labels[s * req.frames] for s in range(len(keys))] if drawn.labels else [None] * len(keys)
        names = [None if i is None else info["class_names"][i] for i in drawn_for]
        walked = Drawing(
            keys, drawn_for, names, shaped(drawn.pixels, info), line, drawn.version, info["latent_protocol"]
        )
        request = req.model_copy(update={"model": line, "format": fmt}).model_dump(exclude_none=True)
        if req.label is not None:  # by name: a class index can mean another class in a later model
            named = [None if i < 0 else info["class_names"][i] for i in indices]
            request["label"] = named if isinstance(req.label, list) else named[0]
        mark = {**provenance(walked, "/interpolate", request, range(len(keys)), req.truncation), "frames": frames}
        data = await self._cpu(encode_cost(walked.images, fmt), lambda: encode_animation(
            walked.images, fmt, duration_ms=req.duration_ms, quality=req.quality, provenance=mark
        ))  # fmt: skip
        headers = {"X-Seeds": ",".join(map(str, keys)), "X-Model-Version": drawn.version, "X-Model": line,
                   "X-Frames": str(frames)}  # fmt: skip
        return Response(data, media_type=ANIMATIONS[fmt], headers=headers)

    # /generate and /generate_batch: answered by service.routes.HotRoutes, which skips BentoML's router, its input
    # and output descriptors and FastAPI's stack, each of which costs more per request than drawing one image
    # (docs/BENCHMARKS.md). Errors keep BentoML's shape: {"error", "detail"}.

    async def generate_file(self, request: Request) -> Response:
        """POST /generate: one image file, the image for n = 1, a grid (row by row; seeds in X-Seeds) for n > 1."""
        return await answering(request, lambda body: self._file(body, request.headers.get("accept")))

    async def generate_files(self, request: Request) -> Response:
        """POST /generate_batch: the same images as /generate, each its own file, base64 in JSON with its seed and
        label."""
        return await answering(request, self._batch)

    if SETTINGS.route == "api":  # the same answers through BentoML's own API routes, to compare (docs/BENCHMARKS.md)

        @bentoml.api(route="/generate", input_spec=GenerateRequest)
        async def generate(self, ctx: bentoml.Context, **body: Any) -> Annotated[bytes, ContentType("image/png")]:
            """One image file: the image for n = 1, a grid (row by row; seeds in X-Seeds) for n > 1."""
            try:
                return await self._file(body, ctx.request.headers.get("accept"))
            except Refused as refused:
                return problem(ctx, refused)

        @bentoml.api(route="/generate_batch", input_spec=GenerateRequest)
        async def generate_batch(self, ctx: bentoml.Context, **body: Any) -> dict[str, Any]:
            """The same images as /generate, each its own file, base64 in JSON with its seed and label."""
            try:
                return await self._batch(body)
            except Refused as refused:
                return problem(ctx, refused)

    @app.post("/interpolate")
    async def interpolate(self, request: Request) -> Response:
        """A walk through the latents of 2 to 16 key seeds: an animated WebP (or GIF), or one PNG strip of frames."""
        return await answering(request, lambda body: self._walk(body, request.headers.get("accept")))

    @app.get("/ui")
    async def page(self) -> HTMLResponse:
        """A page to draw images and walks from each line, with its gate report and history."""
        return HTMLResponse((Path(__file__).parent / "static" / "index.html").read_text())

    @app.get("/docs.json")
    async def openapi_document(self) -> JSONResponse:
        """This API as OpenAPI 3.0 (service.openapi), in place of BentoML's invalid one."""
        return JSONResponse(self.docs)

    @app.get("/info")
    async def info(self, model: str | None = None) -> JSONResponse:
        """A line's model (``?model=``, else the default line's), any production version this server refused, its
        promotions with their gate figures, every line served, and the limits of this API."""
        try:
            line = _line(model)
            d = await self._describe(line, fresh=True)
        except Refused as refused:
            return JSONResponse(refused.body, status_code=refused.status)
        models = {}
        for other in LINES:
            try:
                o = d if other == line else await self._describe(other, fresh=True)
                models[other] = {"model_version": o["version"], "image": o["image"], "class_names": o["class_names"],
                                 "gate": o.get("gate"), "sampler": default_sampler(o)}  # fmt: skip
            except Refused as refused:
                models[other] = {"not_ready": refused.body["error"]}
        return JSONResponse({
            "model": line,
            "default_model": DEFAULT_MODEL,
            "model_version": d["version"],
            "provider": d["provider"],
            "image": d["image"],
            "latent_dim": d["latent_dim"],
            "latent_protocol": d["latent_protocol"],
            "class_names": d["class_names"],
            "gate": d.get("gate"),
            "sampler": default_sampler(d),
            "discriminator": d.get("discriminator"),
            "refused": d["refused"],
            "history": await asyncio.to_thread(history, line),
            "models": models,
            "limits": {"n": [1, SETTINGS.max_n], "seed": [0, MAX_SEED - 1],
                       "truncation": f"{MIN_TRUNCATION} <= t <= {MAX_TRUNCATION:g}",
                       "max_concurrency": SETTINGS.max_concurrency, "auth": SETTINGS.api_key is not None,
                       "formats": list(FORMATS), "samplers": ["plain", "drs"],
                       "max_candidates": [1, MAX_CANDIDATES], "default_candidates": DEFAULT_CANDIDATES,
                       "interpolate": {"keys": [2, MAX_KEYS], "frames": [1, MAX_SEGMENT_FRAMES],
                                       "formats": list(ANIMATIONS), "max_frames": SETTINGS.max_frames,
                                       "max_bytes": SETTINGS.max_walk_bytes}},
        })  # fmt: skip


GANServe.add_asgi_middleware(
    Guard,
    keys={
        **dict.fromkeys(("/generate", "/generate_batch", "/interpolate", "/info"), _secret(SETTINGS.api_key)),
        "/metrics": _secret(SETTINGS.metrics_secret),
    },
    json_paths=frozenset({"/generate", "/generate_batch", "/interpolate"}),
    max_body=SETTINGS.max_body,
    receive_timeout=SETTINGS.receive_timeout,
    slots=math.ceil(SETTINGS.max_concurrency / WORKERS),  # per worker, as BentoML divides its own limit
)
if SETTINGS.route == "asgi":
    GANServe.add_asgi_middleware(HotRoutes, routes=HOT_ROUTES)


def _line(model: str | None) -> str:
    if model is None:
        return DEFAULT_MODEL
    if model not in LINES:
        raise Refused(400, {"error": f"unknown model {model!r}", "allowed": LINES})
    return model
