"""The API's OpenAPI 3.0 document, served at /docs.json in place of BentoML's.

BentoML's own document is not valid OpenAPI 3.0 (numeric ``exclusiveMaximum``), drops ``null`` and ``string`` from
the request's union types, says a 400's ``detail`` is a string (it is a list) and leaves out every status but
400, 404 and 500, so schema-driven clients and fuzzers refuse it or are misled. This one is made from the same
pydantic models that validate requests and describe responses, converted to OpenAPI 3.0's dialect of JSON Schema.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Batch", "Problem", "document"]

BINARY = {"schema": {"type": "string", "format": "binary"}}
IMAGES = {media: BINARY for media in ("image/png", "image/webp", "image/jpeg")}
ANIMATIONS = {media: BINARY for media in ("image/webp", "image/gif", "image/png")}
DRS_HEADERS = {
    "X-Sampler": {"description": "plain, or drs (discriminator rejection sampling)", "schema": {"type": "string"}},
    "X-Drs-Scores": {"description": "drs: each image's D logit, in grid order (nan: not finite)",
                     "schema": {"type": "string"}},
    "X-Drs-Candidates": {"description": "drs: candidates drawn for each image", "schema": {"type": "string"}},
    "X-Drs-Accepted": {"description": "drs: 1 accepted, 0 none of max_candidates was (the best-scored is kept)",
                       "schema": {"type": "string"}},
    "X-Drs-Fallbacks": {"description": "drs: how many images had no accepted candidate", "schema": {"type": "string"}},
}  # fmt: skip


class Problem(BaseModel):
    """Every 4xx and 5xx body: ``error`` says what is wrong and what is allowed."""

    error: str
    detail: list[dict[str, Any]] | None = Field(None, description="per field, for a body that fails validation")
    allowed: list[str] | dict[str, int] | None = Field(
        None, description="the labels, models or formats allowed; a walk's limits"
    )
    allowed_indices: list[int] | None = Field(None, description="the first and last label index")


class Drs(BaseModel):
    score: float | None = Field(description="the discriminator's logit for the image (null: NaN or infinite)")
    candidates: int = Field(description="candidates drawn for it")
    accepted: bool = Field(description="false: none of max_candidates was accepted; this is the best-scored")


class GeneratedImage(BaseModel):
    seed: int = Field(description="reproduces the image")
    label: str | None = Field(description="the class name, for a conditional model")
    label_index: int | None
    data: str = Field(description="the image file, base64", json_schema_extra={"format": "byte"})
    drs: Drs | None = Field(None, description="with sampler drs")


class Batch(BaseModel):
    model: str = Field(description="the model line")
    model_version: str = Field(description="the first 12 hex digits of the model file's sha256")
    format: str
    media_type: str
    sampler: str = Field(description="plain, or drs (discriminator rejection sampling)")
    images: list[GeneratedImage]


class Info(BaseModel):
    model_config = ConfigDict(extra="allow")

    model_version: str
    provider: str
    image: dict[str, Any]
    latent_dim: int
    latent_protocol: str
    class_names: list[str]
    gate: dict[str, Any] | None
    refused: dict[str, str] | None = Field(description="a production version this server refused, and why")
    limits: dict[str, Any]


def document(request: type[BaseModel], walk: type[BaseModel], *, api_key: bool, metrics_key: bool) -> dict[str, Any]:
    """The document for this server: ``request`` is the body of both generate endpoints, ``walk`` that of
    /interpolate; ``api_key`` and ``metrics_key`` say whether those keys are required (a document must not promise
    auth that is not enforced)."""
    schemas = {m.__name__: _oas30(m.model_json_schema(ref_template="#/components/schemas/{model}"))
               for m in (request, walk, Problem, Batch, Info)}  # fmt: skip
    for model in list(schemas.values()):
        schemas.update(model.pop("$defs", {}))
    guarded = {"security": [{"bearer": []}]} if api_key else {}
    metrics_guarded = {"security": [{"bearer": []}]} if metrics_key else {}
    metrics_401 = {"401": _json("missing or wrong metrics key", "Problem")} if metrics_key else {}
    generate = {
        "requestBody": {"required": False, "content": {"application/json": {"schema": _ref(request.__name__)}}},
        **guarded,
    }
    seeds_headers = {
        "X-Seeds": {"description": "the image seeds, in grid order", "schema": {"type": "string"}},
        "X-Model-Version": {"description": "the model that drew the images", "schema": {"type": "string"}},
        "X-Model": {"description": "the model line", "schema": {"type": "string"}},
    }
    not_acceptable = {"406": _json("the Accept header takes none of the formats served", "Problem")}
    paths = {
        "/generate": {"post": {
            "summary": "One image file (png, webp or jpeg): the image for n = 1, a grid (row by row) for n > 1",
            **generate,
            "responses": {"200": {"description": "the image or grid", "headers": {**seeds_headers, **DRS_HEADERS},
                                  "content": IMAGES},
                          **_problems(api_key, body=True), **not_acceptable},
        }},
        "/generate_batch": {"post": {
            "summary": "The same images as /generate, each its own file, with its seed and label", **generate,
            "responses": {"200": _json("the images", "Batch"), **_problems(api_key, body=True)},
        }},
        "/interpolate": {"post": {
            "summary": "A walk through the latents of key seeds: animated webp or gif, or one png strip",
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(walk.__name__)}}},
            **guarded,
            "responses": {"200": {"description": "the walk", "headers": {**seeds_headers, "X-Frames": {
                "description": "frames in the file", "schema": {"type": "string"}}}, "content": ANIMATIONS},
                **_problems(api_key, body=True), **not_acceptable},
        }},
        "/info": {"get": {
            "summary": "A model line, its promotions, every line served, and the limits of this API", **guarded,
            "parameters": [{"name": "model", "in": "query", "required": False, "schema": {"type": "string"},
                            "description": "the model line; else the default one"}],
            "responses": {"200": _json("the model and limits", "Info"), **_problems(api_key, body=False),
                          "400": _json("an unknown model line", "Problem")},
        }},
        "/ui": {"get": {"summary": "A page to draw images", "responses": {
            "200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}}}},
        "/livez": {"get": {"summary": "Alive", "responses": {"200": _text("alive")}}},
        "/readyz": {"get": {"summary": "Ready: a verified model is loaded", "responses": {
            "200": _text("ready"), "503": _text("not ready (/info and /generate say why)")}}},
        "/metrics": {"get": {
            "summary": "Prometheus metrics", **metrics_guarded, "responses": {"200": _text("metrics"), **metrics_401},
        }},
    }  # fmt: skip
    components: dict[str, Any] = {"schemas": schemas}
    if api_key or metrics_key:
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "ganserve", "version": "1", "description": "Images from a GAN generator, as PNGs."},
        "paths": paths,
        "components": components,
    }


def _problems(api_key: bool, *, body: bool) -> dict[str, Any]:
    statuses = {
        "400": "the request is not valid: wrong type, out of range, unknown field, label or model",
        "401": "missing or wrong API key",
        "408": "the body did not arrive in time",
        "413": "the body is too large",
        "415": "the body is not JSON",
        "429": "too many requests are being served; retry after Retry-After seconds",
        "503": "no verified model is loaded yet, or the model's queue is full",
        "504": "the request took longer than the server's timeout",
    }
    if not api_key:
        del statuses["401"]
    if not body:
        for status in ("400", "408", "413", "415"):
            del statuses[status]
    return {status: _json(why, "Problem") for status, why in statuses.items()}


def _json(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


def _text(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/plain": {"schema": {"type": "string"}}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _oas30(schema: Any) -> Any:
    """JSON Schema 2020-12 as pydantic writes it -> OpenAPI 3.0's dialect: ``null`` in a union becomes
    ``nullable``, numeric exclusive bounds become boolean ones, ``const`` becomes a one-value ``enum``."""
    if isinstance(schema, list):
        return [_oas30(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _oas30(v) for k, v in schema.items()}
    variants = out.get("anyOf")
    if variants and {"type": "null"} in variants:
        rest = [{**v, "nullable": True} for v in variants if v != {"type": "null"}]
        del out["anyOf"]
        if len(rest) == 1:
            out.update(rest[0])
        else:
            out["anyOf"] = rest
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(out.get(bound), (int, float)) and not isinstance(out[bound], bool):
            out[plain], out[bound] = out[bound], True
    if "const" in out:
        out["enum"] = [out.pop("const")]
    return out
