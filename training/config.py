"""Typed configuration of a training run: one pydantic model per component, unknown keys rejected.

A run's config is read from YAML, patched with ``--set key=value`` overrides, validated, completed with what only
the data can tell (image shape, class count) and saved beside the run as ``config.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from service.errors import GanserveError, problems

__all__ = [
    "MAX_HOLDOUT_FRACTION",
    "SUPPORTED_SIZES",
    "AugmentConfig",
    "ConfigError",
    "DataConfig",
    "EMAConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "apply_overrides",
    "load_config",
    "validate_config",
]

# The networks grow a base grid of 4..7 pixels by factors of two, so these are the sizes they can produce.
SUPPORTED_SIZES = tuple(sorted({base * 2**k for base in (4, 5, 6, 7) for k in range(2, 6)}))
# The largest share of a small folder worth holding out for the gate: more leaves G too little to learn from.
MAX_HOLDOUT_FRACTION = 0.3


class ConfigError(GanserveError, ValueError):
    """A config that cannot be used; the message says which key is wrong and what is allowed."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


FASHION_MNIST_PATH = Path("/usr/share/datasets/fashion-mnist")
EMOJI_FONT_PATH = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")  # Debian's fonts-noto-color-emoji


class DataConfig(_Strict):
    """Where the images come from and the shape the networks work at."""

    kind: Literal["fashion-mnist", "idx", "folder", "emoji"] = "fashion-mnist"
    path: Path = Field(FASHION_MNIST_PATH, description="a folder; for kind emoji the font file (Noto's by default)")
    image_size: int = 28
    channels: Literal[1, 3] = 1
    holdout_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="held out when the data has no test split")
    split_seed: int = Field(0, ge=0, description="fixes the held-out split, independent of the training seed")
    limit: int | None = Field(None, ge=1, description="train on the first N training images only")
    on_bad: Literal["refuse", "skip"] = Field("refuse", description="unreadable image files: refuse, or skip them")
    background: str = Field(
        "white",
        validate_default=True,
        description="transparent pixels (RGBA, LA, palette transparency) are composited on this colour: a name such "
        "as white or black, or #rrggbb; the stored colour of a transparent pixel never reaches training",
    )
    cache_dir: Path | None = Field(
        None, description="decoded folders and fonts are cached here; default $XDG_CACHE_HOME/ganserve/data"
    )

    @model_validator(mode="before")
    @classmethod
    def _path_per_kind(cls, data: Any) -> Any:
        """The emoji kind reads a font, not a folder: without a path it gets Noto's, written into config.json."""
        if isinstance(data, dict) and data.get("kind") == "emoji" and data.get("path") is None:
            return {**data, "path": EMOJI_FONT_PATH}
        return data

    @field_validator("background")
    @classmethod
    def _known_colour(cls, value: str) -> str:
        from PIL import ImageColor

        try:
            r, g, b, *_ = ImageColor.getrgb(value)
        except ValueError:
            raise ValueError(
                f"background {value!r} is not a colour: use a name such as white or black, or #rrggbb"
            ) from None
        return f"#{r:02x}{g:02x}{b:02x}"

    @model_validator(mode="after")
    def _size_is_producible(self) -> DataConfig:
        if self.image_size not in SUPPORTED_SIZES:
            raise ValueError(
                f"image_size {self.image_size} cannot be produced by the networks; "
                f"supported sizes are {', '.join(map(str, SUPPORTED_SIZES))}"
            )
        return self


class ModelConfig(_Strict):
    """The networks. Image shape and class count are filled in from the data when the run starts."""

    latent_dim: int = Field(100, ge=1)
    g_width: int = Field(64, ge=1, description="channels of G's last hidden layer; doubles per step down")
    d_width: int = Field(64, ge=1, description="channels of D's first layer; doubles per step down")
    conditional: bool = False
    embed_dim: int = Field(32, ge=1, description="size of the class embedding fed to G")
    d_norm: Literal["batch", "layer", "spectral", "none"] | None = Field(
        None, description="normalisation in D; by default the one that suits the loss"
    )
    image_size: int | None = None
    channels: Literal[1, 3] | None = None
    num_classes: int = Field(0, ge=0)


class LossConfig(_Strict):
    """The adversarial objective and how many D steps precede each G step."""

    name: Literal["nonsaturating", "wgan", "wgan-gp", "hinge"] = "nonsaturating"
    d_steps: int = Field(1, ge=1, description="D steps per G step (5 in the WGAN papers)")
    clip: float = Field(0.01, gt=0, description="wgan: D weights are clipped to [-clip, clip]")
    gp_weight: float = Field(10.0, ge=0, description="wgan-gp: weight of the gradient penalty")
    lecam: float = Field(
        0.0, ge=0, description="weight of LeCam's regulariser on D (0: off; 0.3 in its BigGAN CIFAR runs)"
    )
    lecam_decay: float = Field(0.99, ge=0.0, lt=1.0, description="decay of the moving averages LeCam compares with")


class OptimConfig(_Strict):
    name: Literal["adam", "rmsprop"] = "adam"
    lr_g: float = Field(2e-4, gt=0)
    lr_d: float = Field(2e-4, gt=0)
    betas: tuple[float, float] = (0.5, 0.999)


class EMAConfig(_Strict):
    """An exponential moving average of G's weights; the decay ramps up as (1 + t) / (10 + t) until ``decay``."""

    enabled: bool = True
    decay: float = Field(0.999, ge=0.0, lt=1.0)


_AugmentWord = Literal["flip", "rotate", "color", "translation", "cutout"]
# ADA's blit group (flip, quarter turns) first, then DiffAugment's words in its order of application
_AUGMENT_ORDER = ("flip", "rotate", "color", "translation", "cutout")


class AugmentConfig(_Strict):
    """Differentiable augmentation of everything D sees (DiffAugment), with a fixed or adaptive (ADA) probability.

    Off by default, so configs written before it existed (and their checkpoints) train as they did.
    """

    mode: Literal["none", "fixed", "ada"] = Field(
        "none", description="none; fixed: probability p throughout; ada: p steered by r_t = E[sign(D(real))]"
    )
    policy: list[_AugmentWord] = Field(
        ["color", "translation", "cutout"],
        description="transformations (flip, rotate, color, translation, cutout), as a list or 'color,cutout'",
    )
    p: float | None = Field(
        None, ge=0.0, le=1.0, description="fixed: the probability (default 1, DiffAugment); ada: the start (default 0)"
    )
    target: float = Field(0.6, gt=-1.0, lt=1.0, description="ada: the r_t that p is steered towards (ADA: 0.6)")
    interval: int = Field(4, ge=1, description="ada: G steps between adjustments of p")
    # ADA lets p cross 0..1 in 500k images; a 2-core run sees a few hundred thousand in all, so 100k lets p reach
    # what the data needs within the first part of a run rather than never.
    speed_images: int = Field(100_000, ge=1, description="ada: real images over which p can move by 1")

    @model_validator(mode="before")
    @classmethod
    def _split_policy(cls, raw: Any) -> Any:
        """Accept DiffAugment's spelling, a comma-separated string (handy with --set augment.policy=color,cutout)."""
        if isinstance(raw, dict) and isinstance(raw.get("policy"), str):
            raw = {**raw, "policy": [w.strip() for w in raw["policy"].split(",") if w.strip()]}
        return raw

    @model_validator(mode="after")
    def _resolve(self) -> AugmentConfig:
        if not self.policy:
            raise ValueError("augment.policy is empty; use augment.mode none to turn augmentation off")
        if len(set(self.policy)) != len(self.policy):
            raise ValueError(f"augment.policy names a transformation twice: {self.policy}")
        self.policy = [w for w in _AUGMENT_ORDER if w in self.policy]  # one order, whatever the spelling
        if self.p is None:
            self.p = 1.0 if self.mode == "fixed" else 0.0
        return self


class RunConfig(_Strict):
    name: str = Field("run", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    seed: int = Field(0, ge=0)
    epochs: int = Field(10, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many G steps")
    batch_size: int = Field(128, ge=2, description="global batch; split evenly across torchrun processes")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = Field(True, description="bfloat16 autocast on a CUDA device that supports it")
    channels_last: bool = Field(True, description="NHWC memory layout: ~30% faster G on CPU (oneDNN), tensor cores")
    log_every: int = Field(50, ge=1, description="G steps between stats.jsonl lines")
    checkpoint_every: int = Field(500, ge=1, description="G steps between checkpoints and between epochs' grids")
    grid_size: int = Field(64, ge=1, description="images in each sample grid, from fixed seeds")
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    ema: EMAConfig = EMAConfig()
    augment: AugmentConfig = AugmentConfig()

    @model_validator(mode="after")
    def _resolve(self) -> RunConfig:
        """Fill the model's shape from the data and D's normalisation from the loss, so config.json says it all."""
        model = self.model
        for key in ("image_size", "channels"):
            given, data_value = getattr(model, key), getattr(self.data, key)
            if given is not None and given != data_value:
                raise ValueError(f"model.{key}={given} disagrees with data.{key}={data_value}; set data.{key} only")
        d_norm = model.d_norm or _DEFAULT_D_NORM[self.loss.name]
        if self.loss.name == "wgan-gp" and d_norm == "batch":
            raise ValueError("loss wgan-gp cannot use d_norm 'batch': the penalty is per sample; use 'layer'")
        resolved = model.model_copy(
            update={"image_size": self.data.image_size, "channels": self.data.channels, "d_norm": d_norm}
        )
        self.model = resolved
        return self


_DEFAULT_D_NORM = {"nonsaturating": "batch", "wgan": "batch", "wgan-gp": "layer", "hinge": "spectral"}


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings to a raw config dict; values are parsed as YAML (``1e-4``, ``[0.5, 0.9]``)."""
    out = dict(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value (e.g. loss.name=hinge), got {item!r}")
        *parents, leaf = key.strip().split(".")
        node = out
        for part in parents:
            child = node.get(part)
            node[part] = dict(child) if isinstance(child, dict) else {}
            node = node[part]
        node[leaf] = yaml.safe_load(text)
    return out


def validate_config(raw: dict[str, Any]) -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_explain(err)) from None


def load_config(path: Path | None, overrides: list[str] = ()) -> RunConfig:
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path} must hold a mapping of keys, not {type(raw).__name__}")
    return validate_config(apply_overrides(raw, list(overrides)))


def _explain(err: ValidationError) -> str:
    header = f"invalid config ({err.error_count()} problem{'s' * (err.error_count() > 1)}):"
    return "\n  ".join([header, *problems(err, whole="(top level)", what=_unknown_key_names_the_valid_ones)])


def _unknown_key_names_the_valid_ones(e: dict) -> str:
    if e["type"] == "extra_forbidden":
        return f"unknown key; valid keys here: {', '.join(_fields_at(e['loc'][:-1]))}"
    return e["msg"]


def _fields_at(loc: tuple) -> list[str]:
    model: type[BaseModel] = RunConfig
    for part in loc:
        annotation = model.model_fields[part].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)
