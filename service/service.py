"""ganserve's HTTP service: ``bentoml serve service.service:GANServe``.

``GANServe`` is the HTTP entry: it validates, draws each image's latent from its seed, runs the model and encodes
PNGs. Where the model runs is the layout (``GANSERVE_LAYOUT``):

- ``batched`` (the default with a GPU): ``Generator``, one worker, owns the onnxruntime session; its batchable
  ``run`` lets BentoML merge the latents of concurrent requests into one onnxruntime run.
- ``inprocess`` (the default on CPU, where the hop to another service costs ~5 ms a request, docs/BENCHMARKS.md):
  every GANServe worker, one per core, holds its own session and merges its concurrent requests into one run
  (``service.batching``).

Either way promotion is picked up without a restart: whoever holds the model polls the registry's production
pointer and swaps the model when it moves.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import hmac
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import bentoml
import numpy as np
from bentoml.validators import ContentType
from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import HTMLResponse, JSONResponse, Response

from service.batching import Batcher
from service.imaging import encode_png, tile
from service.latents import MAX_SEED, latents_for_seeds
from service.limits import BodyLimit
from service.runtime import GeneratorRuntime, nvidia_driver_present, pack, unpack

log = logging.getLogger("bentoml.ganserve")  # under "bentoml", so `bentoml serve` shows it

MODEL_TAG = os.environ.get("GANSERVE_MODEL_TAG", "ganserve-generator:latest")
MAX_N = int(os.environ.get("GANSERVE_MAX_N", "64"))
RELOAD_SECONDS = float(os.environ.get("GANSERVE_RELOAD_SECONDS", "5"))
MAX_CONCURRENCY = int(os.environ.get("GANSERVE_MAX_CONCURRENCY", "256"))  # beyond it: 429
MAX_BODY = int(os.environ.get("GANSERVE_MAX_BODY", "4096"))  # bytes; a valid /generate body is under 100
UNAUTHORIZED = {"error": "missing or wrong API key: send the header Authorization: Bearer <key>"}
MAX_BATCH = 256  # rows per onnxruntime run
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


class GenerateRequest(BaseModel):
    """Body of /generate and /generate_batch. Unknown fields are refused, not ignored."""

    model_config = ConfigDict(extra="forbid")

    n: Annotated[int, Field(ge=1, le=MAX_N, description="images; a grid when more than one")] = 1
    seed: Annotated[int | None, Field(ge=0, lt=MAX_SEED, description="image i gets seed + i; random if absent")] = None
    truncation: Annotated[float | None, Field(gt=0, le=4, description="resample |z| above this (truncation trick)")] = (
        None
    )
    label: Annotated[int | str | None, Field(description="class name or index, for a conditional model")] = None


class _Production:
    """The model being served, following the registry: a promotion is loaded and warmed up beside the old model,
    then swapped in with one assignment, so no request ever sees a half-loaded model."""

    def __init__(self, path: Path, *, threads: int = 0) -> None:
        self.threads = threads
        self.runtime = GeneratorRuntime(path, threads=threads)
        self.runtime.warm_up()
        self.retired: dict[str, Any] | None = None  # the model swapped out last, for images it drew before the swap

    async def follow(self) -> None:
        while True:
            await asyncio.sleep(RELOAD_SECONDS)
            try:
                path = Path(bentoml.models.get(MODEL_TAG).path)
                if path != self.runtime.folder:
                    fresh = await asyncio.to_thread(GeneratorRuntime, path, threads=self.threads)
                    await asyncio.to_thread(fresh.warm_up)
                    self.retired, self.runtime = self.describe(), fresh
                    log.info("now serving %s (%s)", fresh.version, path)
            except Exception:  # a half-visible promotion or a store hiccup must never take the model down
                log.exception("could not check for a newly promoted model; still serving %s", self.runtime.version)

    def describe(self, version: str | None = None) -> dict[str, Any]:
        if self.retired is not None and version == self.retired["version"]:
            return self.retired
        r = self.runtime
        return {"version": r.version, "provider": r.provider, **r.manifest.model_dump(mode="json")}

    def draw(self, rows: np.ndarray) -> np.ndarray:
        """Rows of [z, label] -> one uint8 row per image: its pixels (H*W*C), then the 12 ASCII bytes of the
        version that drew it, so a request never mislabels an image across a swap. Blocking: call it off the loop."""
        runtime = self.runtime  # one model for the whole batch, even if a promotion lands meanwhile
        images = runtime.run(*unpack(rows)).reshape(len(rows), -1)
        version = np.frombuffer(runtime.version.encode(), dtype=np.uint8)
        return np.concatenate([images, np.broadcast_to(version, (len(rows), len(version)))], axis=1)


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
    chosen = os.environ.get("GANSERVE_LAYOUT", "auto")
    if chosen not in ("auto", "batched", "inprocess"):
        raise ValueError(f"GANSERVE_LAYOUT={chosen!r}; use auto, batched or inprocess")
    if chosen == "auto":
        return "batched" if nvidia_driver_present() else "inprocess"
    return chosen


LAYOUT = _layout()
WORKERS = int(os.environ.get("GANSERVE_WORKERS", "0")) or (1 if LAYOUT == "batched" else (os.cpu_count() or 1))


@bentoml.service(workers=1, traffic={"timeout": 60}, runner_connection=NEVER_RECYCLE)
class Generator:
    """Owns the model in the batched layout; idle in the in-process one (it still pins the model into the bento)."""

    model = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        self.production = _Production(Path(self.model.path)) if LAYOUT == "batched" else None

    @bentoml.on_startup
    async def _watch(self) -> None:
        if self.production is not None and RELOAD_SECONDS > 0:
            self.watcher = asyncio.create_task(self.production.follow())
        _tame_garbage_collector()

    @bentoml.api
    async def describe(self, version: str | None = None) -> dict[str, Any]:
        """The model being served, or the one swapped out last when asked for its version."""
        return self.production.describe(version)

    @bentoml.api(batchable=True, batch_dim=0, max_batch_size=MAX_BATCH, max_latency_ms=10_000)
    async def run(self, rows: np.ndarray) -> np.ndarray:
        # onnxruntime releases the GIL: off the event loop, BentoML's dispatcher gathers the next batch meanwhile
        return await asyncio.to_thread(self.production.draw, rows)


app = FastAPI(title="ganserve pages")  # GET routes and the web page, bound to GANServe below


@bentoml.service(workers=WORKERS, traffic={"timeout": 60, "max_concurrency": MAX_CONCURRENCY})
@bentoml.asgi_app(app, path="/")
class GANServe:
    """The HTTP entry: POST /generate (PNG), POST /generate_batch (JSON), GET /info, GET /ui."""

    generator = bentoml.depends(Generator)

    def __init__(self) -> None:
        self.api_key = os.environ.get("GANSERVE_API_KEY") or None
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
        self.local: _Production | None = None
        self.batcher: Batcher | None = None
        if LAYOUT == "inprocess":
            # One onnxruntime thread per worker when the workers fill the cores: 2 x 2 threads on 2 cores would
            # spin against each other (two 1-thread processes scale 2.0x, shared/design/performance.md).
            threads = max(1, (os.cpu_count() or 1) // WORKERS)
            self.local = _Production(Path(bentoml.models.get(MODEL_TAG).path), threads=threads)
            self.batcher = Batcher(
                self.local.draw, max_rows=MAX_BATCH, on_batch=lambda requests, _: self.batch_requests.observe(requests)
            )

    @bentoml.on_startup
    async def _watch(self) -> None:
        if self.local is not None and RELOAD_SECONDS > 0:
            self.watcher = asyncio.create_task(self.local.follow())
        _tame_garbage_collector()

    async def _describe(self, version: str | None = None) -> dict[str, Any]:
        if self.local is not None:
            if version is not None and version != self.local.runtime.version:
                return self.local.describe(version)  # images drawn just before a swap: the shape and labels they have
            version = self.local.runtime.version
        if self.described is None or (version is not None and version != self.described["version"]):
            if self.described is not None:
                self.model_info.labels(version=self.described["version"]).set(0)
            self.described = self.local.describe() if self.local else await self.generator.describe(version=version)
            self.model_info.labels(version=self.described["version"]).set(1)
        return self.described

    def _authorized(self, authorization: str | None) -> bool:
        if self.api_key is None:
            return True
        return hmac.compare_digest((authorization or "").encode(), f"Bearer {self.api_key}".encode())

    async def _images(self, req: GenerateRequest) -> _Drawn | dict:
        info = await self._describe()
        classes = info["class_names"]
        label, problem = _label_index(req.label, classes)
        if problem:
            return problem
        first = req.seed if req.seed is not None else secrets.randbelow(MAX_SEED)
        seeds = [(first + i) % MAX_SEED for i in range(req.n)]
        labels = None
        if classes:  # without a label, a conditional model cycles through the classes by seed
            labels = np.array([label if label is not None else s % len(classes) for s in seeds], dtype=np.int64)
        z = latents_for_seeds(seeds, info["latent_dim"], truncation=req.truncation)
        rows = pack(z, labels)
        rows = await (self.batcher(rows) if self.batcher else self.generator.to_async.run(rows))
        version = bytes(rows[0, -12:]).decode()
        if version != info["version"]:  # a promotion landed: the images say which model drew them
            info = await self._describe(version)
        shape = (req.n, info["image"]["height"], info["image"]["width"], info["image"]["channels"])
        # Labels as the model that drew the images knows them: across a promotion to an unconditional model, none.
        indices = labels.tolist() if labels is not None and info["class_names"] else [None] * req.n
        names = [None if i is None else info["class_names"][i] for i in indices]
        return _Drawn(seeds, indices, names, rows[:, :-12].reshape(shape), version)

    async def _handle(self, ctx: bentoml.Context, body: dict[str, Any], endpoint: str) -> _Drawn | JSONResponse:
        """What both generate endpoints do: authorise, check the label, draw; or the 4xx that says why not."""
        if not self._authorized(ctx.request.headers.get("authorization")):
            return _problem(ctx, 401, UNAUTHORIZED)
        drawn = await self._images(GenerateRequest(**body))
        if isinstance(drawn, dict):
            return _problem(ctx, 400, drawn)
        self.images_total.labels(endpoint=endpoint).inc(len(drawn.images))
        return drawn

    @bentoml.api(route="/generate", input_spec=GenerateRequest)
    async def generate(self, ctx: bentoml.Context, **body: Any) -> Annotated[bytes, ContentType("image/png")]:
        """One PNG: the image for n = 1, a grid (row by row; seeds in X-Seeds) for n > 1."""
        drawn = await self._handle(ctx, body, "generate")
        if isinstance(drawn, JSONResponse):
            return drawn
        ctx.response.headers["X-Seeds"] = ",".join(map(str, drawn.seeds))
        ctx.response.headers["X-Model-Version"] = drawn.version
        images = drawn.images
        return Response(encode_png(images[0] if len(images) == 1 else tile(images)), media_type="image/png")

    @bentoml.api(route="/generate_batch", input_spec=GenerateRequest)
    async def generate_batch(self, ctx: bentoml.Context, **body: Any) -> dict[str, Any]:
        """The same images as /generate, each its own PNG, base64 in JSON with its seed and label."""
        drawn = await self._handle(ctx, body, "generate_batch")
        if isinstance(drawn, JSONResponse):
            return drawn
        return {
            "model_version": drawn.version,
            "images": [
                {"seed": s, "label": name, "label_index": i, "png": base64.b64encode(encode_png(img)).decode()}
                for s, i, name, img in zip(drawn.seeds, drawn.labels, drawn.names, drawn.images, strict=True)
            ],
        }

    @app.get("/ui")
    async def page(self) -> HTMLResponse:
        """A page to draw images, pick n, seed, label and truncation, and click an image for its seed."""
        return HTMLResponse((Path(__file__).parent / "static" / "index.html").read_text())

    @app.get("/info")
    async def info(self, request: Request) -> JSONResponse:
        """The served model and the limits of this API."""
        if not self._authorized(request.headers.get("authorization")):
            return JSONResponse(UNAUTHORIZED, status_code=401)
        d = await self._describe()
        return JSONResponse({
            "model_version": d["version"],
            "provider": d["provider"],
            "image": d["image"],
            "latent_dim": d["latent_dim"],
            "latent_protocol": d["latent_protocol"],
            "class_names": d["class_names"],
            "gate": d.get("gate"),
            "limits": {"n": [1, MAX_N], "seed": [0, MAX_SEED - 1], "truncation": "0 < t <= 4",
                       "max_concurrency": MAX_CONCURRENCY, "auth": self.api_key is not None},
        })  # fmt: skip


GANServe.add_asgi_middleware(BodyLimit, max_bytes=MAX_BODY)


def _label_index(label: int | str | None, classes: list[str]) -> tuple[int | None, dict | None]:
    if label is None:
        return None, None
    if not classes:
        return None, {"error": "this model is unconditional: it takes no label", "allowed": []}
    if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(classes):
        return label, None
    if isinstance(label, str) and label in classes:
        return classes.index(label), None
    return None, {"error": f"unknown label {label!r}", "allowed": classes, "allowed_indices": [0, len(classes) - 1]}


def _problem(ctx: bentoml.Context, status: int, body: dict) -> JSONResponse:
    ctx.response.status_code = status  # BentoML applies the context's status over any returned response
    return JSONResponse(body, status_code=status)
