"""The service's settings: ``GANSERVE_<NAME>`` environment variables, read once per process, checked as a config."""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from service.errors import one_line

__all__ = ["Settings", "settings"]

PREFIX = "GANSERVE_"


class Settings(BaseModel):
    """Every field is the variable ``GANSERVE_`` + its name in capitals, e.g. ``GANSERVE_MAX_N=16``."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    models: str = Field(
        "", description="model lines to serve, comma-separated (service.lines); empty: every line with a production"
    )
    default_model: str = Field("", description="the line a request without `model` gets; empty: default, or the first")
    layout: Literal["auto", "batched", "inprocess"] = Field("auto", description="auto: batched with an NVIDIA GPU")
    workers: int = Field(0, ge=0, description="HTTP workers; 0: one per core in process, 1 batched")
    route: Literal["asgi", "api"] = Field(
        "asgi", description="/generate answered by a plain ASGI layer (service.routes; faster) or by @bentoml.api"
    )
    trace: bool = Field(False, description="OpenTelemetry spans for /generate and /generate_batch too (~0.3 ms each)")
    access_log: bool = Field(False, description="BentoML's access-log line for /generate and /generate_batch too")
    run_images: int = Field(
        64, ge=1, le=1024, description="images of one model run at most; larger requests run in pieces (bulk lane)"
    )
    small_images: int = Field(
        4, ge=1, le=1024, description="requests of at most this many images take the fast lane (service.scheduling)"
    )
    max_n: int = Field(64, ge=1, le=1024, description="images per request")
    max_frames: int = Field(1024, ge=2, le=100_000, description="frames of one /interpolate walk")
    max_walk_bytes: int = Field(
        8 * 2**20, ge=2**16, description="frames x height x width x channels of one walk, before encoding"
    )
    max_concurrency: int = Field(256, ge=1, description="requests being served at once, bodies received; then 429")
    max_body: int = Field(4096, ge=256, description="bytes of a request body, however it is sent; then 413")
    timeout: float = Field(30.0, gt=0, description="seconds a request may take in all; then 504")
    receive_timeout: float = Field(5.0, gt=0, description="seconds for a request's headers, then its body; then 408")
    reload_seconds: float = Field(5.0, ge=0, description="how often the store is checked for a promotion; 0: never")
    store: str = Field(
        "",
        description="the model store to serve from, a models folder (deploy/: the shared volume's); empty: "
        "BentoML's (the bento's packed models in a container, $BENTOML_HOME/models on a host)",
    )
    api_key: SecretStr | None = Field(None, description="then /generate, /generate_batch and /info need it")
    metrics_key: SecretStr | None = Field(None, description="for /metrics; the API key when unset")

    @model_validator(mode="after")
    def _bounds_nest(self) -> Settings:
        if self.receive_timeout >= self.timeout:  # else a slow body would get the request's 504, not its 408
            raise ValueError(f"{PREFIX}RECEIVE_TIMEOUT ({self.receive_timeout:g} s) must be below {PREFIX}TIMEOUT "
                             f"({self.timeout:g} s)")  # fmt: skip
        if self.small_images > self.run_images:  # a small request must fit in one run
            raise ValueError(f"{PREFIX}SMALL_IMAGES ({self.small_images}) must be at most {PREFIX}RUN_IMAGES "
                             f"({self.run_images})")  # fmt: skip
        return self

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        """The settings the environment sets (empty values count as unset); a bad value stops the service with its
        variable's name and what is allowed."""
        raw = {name: environ[PREFIX + name.upper()] for name in cls.model_fields if environ.get(PREFIX + name.upper())}
        try:
            return cls.model_validate(raw)
        except ValidationError as err:
            wrong = one_line(err, where=lambda name: PREFIX + name.upper())  # each setting by its variable's name
            raise ValueError(f"bad ganserve setting: {wrong}") from None

    @property
    def metrics_secret(self) -> SecretStr | None:
        return self.metrics_key or self.api_key


@functools.cache
def settings() -> Settings:
    """This process's settings, read from its environment once."""
    return Settings.from_env()
