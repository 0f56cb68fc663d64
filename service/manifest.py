"""The manifest that travels with every exported generator: what the ONNX file is and how to call it.

A model folder holds ``generator.onnx`` and ``manifest.json``, and, when exported from a training run,
``discriminator.onnx`` (the run's D, for discriminator rejection sampling); after the quality gate also
``report.json``, ``report.md`` and ``grid.png``. The service reads nothing but this folder, so everything it
needs to draw latents, name classes and check integrity is here. Pure pydantic: shared by training (which writes
it) and serving.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, field_serializer, model_serializer

from service.errors import GanserveError
from service.latents import PROTOCOL
from service.rows import version_of

__all__ = [
    "DISCRIMINATOR_NAME",
    "MANIFEST_NAME",
    "MODEL_NAME",
    "SCHEMA_VERSION",
    "Calibration",
    "DiscriminatorFit",
    "DiscriminatorInfo",
    "DrsHeadline",
    "GateHeadline",
    "ImageSpec",
    "Manifest",
    "ManifestError",
    "TrainingInfo",
    "file_sha256",
    "judged",
    "read_manifest",
    "write_manifest",
]

SCHEMA_VERSION = 2  # 2: an optional discriminator; a schema-1 manifest reads as one without
MANIFEST_NAME = "manifest.json"
MODEL_NAME = "generator.onnx"
DISCRIMINATOR_NAME = "discriminator.onnx"


class ManifestError(GanserveError, ValueError):
    """A model folder whose manifest is missing, malformed, or does not match its ONNX file."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImageSpec(_Strict):
    """The graph's output: uint8 images, N x height x width x channels, the layout PNG encoders take."""

    height: int = Field(ge=1)
    width: int = Field(ge=1)
    channels: Literal[1, 3]
    dtype: Literal["uint8"] = "uint8"
    layout: Literal["NHWC"] = "NHWC"


class TrainingInfo(_Strict):
    run_id: str
    step: int
    config_sha256: str
    config: dict[str, Any]
    dataset: dict[str, Any]


class Calibration(_Strict):
    """Platt scaling of a fitted D's logit (``a * logit + b``), fitted on real training images and as many fresh
    samples, with D's cross-entropy before and after and its accuracy there."""

    a: float
    b: float
    images: int = Field(ge=1, description="real images, and as many generated ones")
    bce_before: float
    bce: float
    accuracy: float
    jsd_lower_bound_nats: float
    seen_in_training: bool = Field(
        description="the real images were among those the run's D trained on (a fit --from a run): the accuracy is "
        "then optimistic"
    )


class DiscriminatorFit(_Strict):
    """How a D was fitted to an exported G after training (``ganserve fit-discriminator``)."""

    steps: int = Field(ge=1)
    start: str = Field(description="'scratch', or the run and step whose D it started from")
    calibration: Calibration


class DiscriminatorInfo(_Strict):
    """A D beside G (the training run's, or one fitted to G afterwards): ``images`` uint8[N,H,W,C] (G's own output
    contract) and, when conditional, ``labels`` int64[N] in; ``logit`` float32[N] out. With the burn-in that
    calibrates rejection sampling (``service.drs``): the largest logit over ``burn_in`` samples of G, and the gamma
    at which ``target_acceptance`` of them would be accepted."""

    file: str = DISCRIMINATOR_NAME
    sha256: str
    step: int = Field(ge=0, description="the training step of the G it judges")
    parity: float = Field(ge=0, description="largest |PyTorch - ONNX| logit over the export's parity images")
    burn_in: int = Field(ge=1)
    logit_max: float
    gamma: float
    target_acceptance: float = Field(gt=0, lt=1)
    fit: DiscriminatorFit | None = Field(None, description="None: the run's D as trained with G")


class _Headline(_Strict):
    """A headline as it was read or built: the keys it was given, and only those, are written back (a manifest
    written before a key existed, or by hand, reads and writes unchanged, and /info shows it as it is)."""

    @model_serializer(mode="wrap")
    def _given_keys_only(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if k in self.model_fields_set}


class PlainDrs(_Strict):
    plain: float
    drs: float


class DrsFid(PlainDrs):
    difference: float = Field(description="DRS - plain")
    ci95: tuple[float, float]


class DrsHeadline(_Headline):
    """The gate's second look, at the same seeds with rejection sampling: its verdict, the sampler a request without
    one gets (``drs`` only where DRS helps), and the figures behind it. The gate writes every field; None is one a
    hand-made headline left out."""

    verdict: str
    sampler: Literal["plain", "drs"]
    fid: DrsFid | None = None
    feature_judge_accuracy: PlainDrs | None = None
    pixel_judge_accuracy: PlainDrs | None = None
    coverage: PlainDrs | None = None
    max_candidates: int | None = Field(None, ge=1, description="the candidate bound the verdict was judged at")
    candidates_per_image: float | None = None
    fallback_share: float | None = None


class GateHeadline(_Headline):
    """What a model's manifest keeps of its gate report: the decision, the headline figures and the DRS verdict the
    service takes its default sampler from. Built from a report once, by ``from_report``: the manifest, the store's
    metadata (``release.registry.model_metadata``) and the service read this one shape."""

    RECORDED: ClassVar[tuple[str, ...]] = ("fid", "feature_judge_accuracy", "pixel_judge_accuracy")
    """the figures the store's metadata records of each version under these names (``release.registry``), for
    the history the service shows (``service.production.history``)"""

    decision: Literal["pass", "reject"]
    reasons: list[str]
    fid: float
    kid: float
    class_entropy: float | None = Field(None, description="None: unlabelled data")
    feature_judge_accuracy: float
    pixel_judge_accuracy: float
    jsd_lower_bound_nats: float | None = None
    evaluator_sha256: str | None = None
    against: str | None = Field(None, description="the production model's sha256 it was judged against, if any")
    drs: DrsHeadline | None = Field(None, description="None: not judged with DRS (no discriminator)")

    @classmethod
    def from_report(cls, report: Mapping[str, Any]) -> GateHeadline:
        """The headline of a gate report (``training.judging.gate.evaluate``); every key given, so all are written."""
        c, drs = report["figures"]["candidate"], report["figures"].get("drs")
        return cls.model_validate(
            {
                "decision": report["decision"],
                "reasons": report["reasons"],
                "fid": c["fid"],
                "kid": c["kid"],
                "class_entropy": c.get("class_entropy"),  # labelled data only
                "feature_judge_accuracy": c["feature_judge"]["accuracy"],
                "pixel_judge_accuracy": c["pixel_judge"]["accuracy"],
                "jsd_lower_bound_nats": c["pixel_judge"]["jsd_lower_bound_nats"],
                "evaluator_sha256": report["evaluator"]["sha256"],
                "against": report["production"]["sha256"] if report["production"] else None,
                "drs": None if drs is None else _drs_headline(drs),
            }
        )


def _drs_headline(drs: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "verdict": drs["verdict"],
        "sampler": drs["sampler"],
        "fid": {k: drs["fid"][k] for k in ("plain", "drs", "difference", "ci95")},
        "feature_judge_accuracy": {k: drs["feature_judge"][k] for k in ("plain", "drs")},
        "pixel_judge_accuracy": {k: drs["pixel_judge"][k] for k in ("plain", "drs")},
        "coverage": drs["coverage"],
        "max_candidates": drs["max_candidates"],
        "candidates_per_image": drs["candidates_per_image"],
        "fallback_share": drs["fallback_share"],
    }


class Manifest(_Strict):
    schema_version: Literal[1, 2] = SCHEMA_VERSION
    kind: Literal["ganserve.generator"] = "ganserve.generator"
    file: str = MODEL_NAME
    sha256: str
    latent_dim: int = Field(ge=1)
    latent_protocol: str = PROTOCOL
    image: ImageSpec
    class_names: list[str] = Field(default_factory=list, description="empty for an unconditional generator")
    inputs: dict[str, str] = Field(description="input names and their types, e.g. seeds: int64[N]")
    parity_levels: int = Field(ge=0, description="largest |reference - ONNX| over the export's parity batches")
    training: TrainingInfo | None = None
    created: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    gate: GateHeadline | None = Field(None, description="the quality gate's decision and headline figures")
    discriminator: DiscriminatorInfo | None = None

    @property
    def conditional(self) -> bool:
        return bool(self.class_names)

    @property
    def discriminator_sha256(self) -> str | None:
        """The sha256 of the D beside G, None without one: what a gate report records as its candidate's D."""
        return None if self.discriminator is None else self.discriminator.sha256

    @field_serializer("gate", mode="wrap")
    def _typed_gate(self, gate: Any, handler: SerializerFunctionWrapHandler) -> Any:
        """A headline handed in as a dict by ``model_copy(update=...)``, which validates nothing, is checked as a
        ``GateHeadline`` and written as one (its keys, no more), not passed through as whatever it holds."""
        return handler(GateHeadline.model_validate(gate) if isinstance(gate, dict) else gate)


def judged(manifest: Manifest, report: Mapping[str, Any], *, discriminator: bool = True) -> bool:
    """Whether a gate report judged these very files: G's sha256 and, with ``discriminator``, the same D as the
    manifest names (or, like the model, none). The one rule for "did this report judge this model": its decision is
    about G's own images, so a promotion asks for G alone (``discriminator=False``); its DRS figures, and so the
    headline and the default sampler they set, hold only for the D they were measured with."""
    candidate = report["candidate"]
    if candidate["sha256"] != manifest.sha256:
        return False
    return not discriminator or candidate.get("discriminator_sha256") == manifest.discriminator_sha256


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: Path, manifest: Manifest) -> None:
    (folder / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2) + "\n")


def read_manifest(folder: Path, *, verify: bool = True) -> Manifest:
    """Read ``folder/manifest.json``; with ``verify``, also check the ONNX file against its sha256."""
    path = Path(folder) / MANIFEST_NAME
    try:
        manifest = Manifest.model_validate(json.loads(path.read_text()))
    except FileNotFoundError:
        raise ManifestError(f"{folder} has no {MANIFEST_NAME}: not an exported ganserve model") from None
    except ValueError as err:  # JSON or validation error
        raise ManifestError(f"{path} is not a valid manifest: {err}") from None
    if verify:
        files = [(manifest.file, manifest.sha256)]
        if manifest.discriminator is not None:
            files.append((manifest.discriminator.file, manifest.discriminator.sha256))
        for name, sha256 in files:
            onnx_path = Path(folder) / name
            if not onnx_path.is_file():
                raise ManifestError(f"{folder} has no {name}, which its manifest names")
            actual = file_sha256(onnx_path)
            if actual != sha256:
                raise ManifestError(
                    f"{onnx_path} has sha256 {version_of(actual)}…, its manifest says {version_of(sha256)}…"
                )
    return manifest
