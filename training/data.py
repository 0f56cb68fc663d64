"""Datasets: MNIST-format IDX files (Fashion-MNIST by default), folders of PNG/JPEG images, and the colour emoji
of Noto Color Emoji.

Batching is an index operation on one uint8 tensor N x C x H x W per split, not a DataLoader pipeline. How that
tensor is held depends on the source:

- IDX files stay in memory: Fashion-MNIST's 60k images are 47 MB and load in 0.2 s from their gzip files, which
  are already a compact, fast cache of themselves; a second copy on disk would buy nothing.
- Image folders and the emoji font are decoded once, image by image, into a memory-mapped cache (training.cache)
  at the training size and channels; every later load (runs, export, the gate) maps it. The tensor is then a
  zero-copy view of the file, so a set larger than memory trains at the speed of the page cache, and the processes
  of a torchrun job share one copy of it. The split hashes come from the cache rather than from re-reading it.

Each dataset also yields a held-out split that the GAN never trains on, fixed by ``split_seed`` and recorded by the
sha256 of its content, for the quality gate to judge on. Files that cannot be decoded are refused, naming them, or
with ``data.on_bad=skip`` left out and recorded (in the cache and in ``Splits.describe()``).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from service.errors import GanserveError
from training.cache import BadItems, Decoder, Source, UnreadableItem, default_cache_dir, heldout_mask, load_or_build
from training.config import DataConfig

__all__ = [
    "FASHION_MNIST_CLASSES",
    "DataError",
    "ImageSet",
    "Splits",
    "decode_glyph",
    "emoji_glyphs",
    "flatten",
    "image_files",
    "is_transparent",
    "load_splits",
    "read_idx",
]

FASHION_MNIST_CLASSES = (
    "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot",
)  # fmt: skip
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_INSTALL_HINT = "on Debian, install Fashion-MNIST with: apt-get install -y dataset-fashion-mnist"
EMOJI_INSTALL_HINT = "on Debian, install Noto Color Emoji with: apt-get install -y fonts-noto-color-emoji"
# What Pillow raises for a file it cannot decode: not an image, truncated, corrupt chunks, a decompression bomb.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)
_BAD_SHOWN = 10

log = logging.getLogger("ganserve.data")


class DataError(GanserveError, ValueError):
    """The data cannot be used as configured; the message names the file or folder and what was expected."""


@dataclass(frozen=True)
class ImageSet:
    images: torch.Tensor  # uint8, N x C x H x W
    labels: torch.Tensor | None  # int64, N
    class_names: tuple[str, ...]
    digest: str | None = field(default=None, repr=False, compare=False)  # known sha256 (from the cache's meta)

    def __len__(self) -> int:
        return len(self.images)

    @cached_property  # the 47 MB of Fashion-MNIST take ~0.1 s to hash; every checkpoint records it
    def sha256(self) -> str:
        if self.digest is not None:
            return self.digest
        digest = hashlib.sha256(self.images.numpy().tobytes())
        if self.labels is not None:
            digest.update(self.labels.numpy().tobytes())
        return digest.hexdigest()


@dataclass(frozen=True)
class Splits:
    train: ImageSet
    heldout: ImageSet
    skipped: tuple[str, ...] = ()  # "file: reason" for each bad file left out under on_bad=skip

    def describe(self) -> dict:
        """What a run records about its data: sizes and content hashes of both splits, and the files skipped."""
        return {
            "train": {"images": len(self.train), "sha256": self.train.sha256},
            "heldout": {"images": len(self.heldout), "sha256": self.heldout.sha256},
            "class_names": list(self.train.class_names),
            "skipped": list(self.skipped),
        }


def load_splits(cfg: DataConfig) -> Splits:
    """Load the configured dataset at the configured size and channels, split into train and held-out."""
    splits = _read_idx_dir(cfg) if cfg.kind in ("fashion-mnist", "idx") else _read_cached(cfg)
    if cfg.limit is not None:
        train = splits.train
        labels = None if train.labels is None else train.labels[: cfg.limit]
        # A slice is a view: over a memory-mapped cache, nothing beyond the first ``limit`` rows is read.
        splits = Splits(ImageSet(train.images[: cfg.limit], labels, train.class_names), splits.heldout, splits.skipped)
    if len(splits.train) < 2:
        raise DataError(f"{cfg.path} gives {len(splits.train)} training image(s); at least 2 are needed")
    return splits


# --- IDX ----------------------------------------------------------------------------------------------------------


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped), the format of MNIST and Fashion-MNIST."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as err:
        raise DataError(f"cannot read IDX file {path}: {err}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise DataError(f"{path} is truncated or corrupt: header says {shape}, body has {len(data) - header} bytes")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def _find_idx(root: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    return None


def _read_idx_pair(root: Path, prefix: str, cfg: DataConfig) -> ImageSet | None:
    images_path = _find_idx(root, f"{prefix}-images-idx3-ubyte")
    if images_path is None:
        return None
    images = read_idx(images_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{images_path} must hold uint8 images N x H x W, found {images.dtype} {images.shape}")
    labels_path = _find_idx(root, f"{prefix}-labels-idx1-ubyte")
    labels = None
    if labels_path is not None:
        labels = read_idx(labels_path).astype(np.int64)
        if labels.shape != (len(images),):
            raise DataError(f"{labels_path} has {labels.shape[0]} labels for {len(images)} images in {images_path}")
    class_names = _idx_class_names(cfg, labels)
    tensor = _fit(torch.from_numpy(images.copy()).unsqueeze(1), cfg)
    return ImageSet(tensor, None if labels is None else torch.from_numpy(labels), class_names)


def _idx_class_names(cfg: DataConfig, labels: np.ndarray | None) -> tuple[str, ...]:
    if labels is None:
        return ()
    if cfg.kind == "fashion-mnist":
        if labels.min() < 0 or labels.max() >= len(FASHION_MNIST_CLASSES):
            raise DataError(f"{cfg.path}: labels outside 0..9 are not Fashion-MNIST; use data.kind=idx")
        return FASHION_MNIST_CLASSES
    return tuple(str(i) for i in range(int(labels.max()) + 1))


def _read_idx_dir(cfg: DataConfig) -> Splits:
    root = cfg.path
    if not root.is_dir():
        hint = f"; {_INSTALL_HINT}" if cfg.kind == "fashion-mnist" else ""
        raise DataError(f"data folder {root} does not exist{hint}")
    train = _read_idx_pair(root, "train", cfg)
    if train is None:
        raise DataError(f"{root} has no train-images-idx3-ubyte[.gz]; expected MNIST-format IDX files there")
    test = _read_idx_pair(root, "t10k", cfg)
    if test is None:
        return _holdout(train, cfg)
    return Splits(train=train, heldout=test)  # the standard test split is the natural held-out set


# --- cached sources: image folders and the emoji font --------------------------------------------------------------


def _read_cached(cfg: DataConfig) -> Splits:
    source = _folder_source(cfg) if cfg.kind == "folder" else _emoji_source(cfg)
    settings = {
        "kind": cfg.kind, "path": str(cfg.path.resolve()), "image_size": cfg.image_size, "channels": cfg.channels,
        "holdout_fraction": cfg.holdout_fraction, "split_seed": cfg.split_seed, "on_bad": cfg.on_bad,
        "background": cfg.background,
    }  # fmt: skip
    root = cfg.cache_dir or default_cache_dir()
    try:
        cached = load_or_build(root, cfg.kind, settings, source, (cfg.channels, cfg.image_size, cfg.image_size),
                               cfg.on_bad)  # fmt: skip
    except BadItems as err:
        raise DataError(
            f"{len(err.bad)} unreadable image(s) in {cfg.path}:\n  "
            + "\n  ".join(err.bad[:_BAD_SHOWN])
            + ("\n  ..." if len(err.bad) > _BAD_SHOWN else "")
            + "\nfix or remove them, or leave them out with --set data.on_bad=skip"
        ) from None
    except OSError as err:
        raise DataError(
            f"cannot write the data cache in {root}: {err}; point data.cache_dir at a writable folder"
        ) from None
    if cached.skipped:
        shown = "; ".join(cached.skipped[:3]) + ("; ..." if len(cached.skipped) > 3 else "")
        log.warning("skipped %d unreadable image(s) in %s (data.on_bad=skip): %s", len(cached.skipped), cfg.path, shown)
    train, heldout = (
        ImageSet(cached.images[s], cached.labels[s], cached.class_names, cached.sha256[s]) for s in ("train", "heldout")
    )
    return Splits(train, heldout, cached.skipped)


def _folder_source(cfg: DataConfig) -> Source:
    root = cfg.path
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    found = image_files(root)
    if not found:
        raise DataError(f"image folder {root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    names = [name for name, _ in found]
    classes = [name.split("/")[0] if "/" in name else None for name in names]
    if any(c is None for c in classes) and any(c is not None for c in classes):
        loose = next(name for name, c in zip(names, classes, strict=True) if c is None)
        raise DataError(
            f"{root} mixes images in class sub-folders with loose images such as {loose}; "
            "put every image in a class sub-folder, or none"
        )
    identity = [[name, st.st_size, st.st_mtime_ns] for name, st in found]

    def prepare() -> Decoder:
        class_names = tuple(sorted({c for c in classes if c is not None}))
        labels = np.array([class_names.index(c) for c in classes], np.int64) if class_names else None
        files = [root / name for name in names]
        return Decoder([str(p) for p in files], labels, class_names, lambda i: _decode_file(files[i], cfg))

    return Source(str(root), identity, prepare)


def image_files(root: Path) -> list[tuple[str, os.stat_result]]:
    """Every image under ``root`` with its stat, by relative name in path order (the order of the cache's rows and
    of the split). One scandir walk, as rglob walks (not into linked folders): at 50k files, rglob with a stat
    and an is_file each cost 5 s."""
    found, pending = [], [""]
    while pending:
        rel = pending.pop()
        with os.scandir(root / rel) as entries:
            for entry in entries:
                name = f"{rel}/{entry.name}" if rel else entry.name
                if entry.is_dir(follow_symlinks=False):
                    pending.append(name)
                elif os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES and entry.is_file():
                    found.append((name, entry.stat()))
    return sorted(found, key=lambda item: item[0].split("/"))


def _decode_file(path: Path, cfg: DataConfig) -> np.ndarray:
    """One image file as uint8 C x H x W at the training size: flattened on the background, centre-cropped to a
    square, resized (bicubic)."""
    mode = "L" if cfg.channels == 1 else "RGB"
    try:
        with Image.open(path) as img:
            array = np.asarray(_square(flatten(img, cfg.background, mode)).resize((cfg.image_size,) * 2, Image.BICUBIC))
    except _DECODE_ERRORS as err:  # Pillow's messages repeat the file name, which the caller prints already
        raise UnreadableItem(str(err).replace(repr(str(path)), "").strip() or type(err).__name__) from None
    return array[None] if cfg.channels == 1 else array.transpose(2, 0, 1)


def is_transparent(img: Image.Image) -> bool:
    """Whether ``img`` can hold transparent pixels: an alpha channel, or a palette's or a colour key's transparency."""
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info


def flatten(img: Image.Image, background: str, mode: str) -> Image.Image:
    """``img`` in ``mode`` (L or RGB) with its transparency composited on ``background``: an alpha channel (RGBA, LA,
    PA), or a palette's or a single colour's transparency (``info["transparency"]``). A plain ``convert`` would keep
    whatever colour a transparent pixel stores, often black, and train on it."""
    if is_transparent(img):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, background)
        canvas.alpha_composite(rgba)
        img = canvas
    return img.convert(mode)


def _square(img: Image.Image) -> Image.Image:
    """Centre-crop to a square so resizing keeps the aspect ratio."""
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return img.crop((left, top, left + side, top + side))


def _emoji_source(cfg: DataConfig) -> Source:
    font = cfg.path
    if not font.is_file():
        raise DataError(f"emoji font {font} does not exist; {EMOJI_INSTALL_HINT}")
    stat = font.stat()

    def prepare() -> Decoder:
        strike = emoji_glyphs(font)
        names = sorted(strike)
        return Decoder(names, None, (), lambda i: _decode_glyph_item(strike[names[i]], cfg))

    return Source(str(font), [font.name, stat.st_size, stat.st_mtime_ns], prepare)


def emoji_glyphs(font: Path) -> dict[str, bytes]:
    """The PNG of each colour bitmap in the font's CBDT table (its largest strike), by glyph name."""
    from fontTools.ttLib import TTFont, TTLibError  # only the emoji kind needs fontTools

    try:
        with TTFont(font, lazy=True) as tables:
            if "CBDT" not in tables:
                raise DataError(f"{font} has no CBDT colour bitmaps; data.kind=emoji reads fonts like Noto Color Emoji")
            largest = max(tables["CBDT"].strikeData, key=len)
            return {name: glyph.imageData for name, glyph in largest.items()}
    except (OSError, TTLibError, AssertionError) as err:  # fontTools asserts on malformed tables
        raise DataError(f"cannot read the font {font}: {err}") from None


def decode_glyph(png: bytes, image_size: int, channels: int, background: str = "white") -> np.ndarray:
    """One emoji bitmap as uint8 C x H x W: composited on the background, padded with it to a square (the glyph
    whole, centred), resized with Lanczos."""
    with Image.open(io.BytesIO(png)) as img:
        rgba = img.convert("RGBA")
    side = max(rgba.size)
    canvas = Image.new("RGBA", (side, side), background)
    canvas.alpha_composite(rgba, ((side - rgba.width) // 2, (side - rgba.height) // 2))
    resized = canvas.convert("L" if channels == 1 else "RGB").resize((image_size,) * 2, Image.LANCZOS)
    array = np.asarray(resized)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def _decode_glyph_item(png: bytes, cfg: DataConfig) -> np.ndarray:
    try:
        return decode_glyph(png, cfg.image_size, cfg.channels, cfg.background)
    except _DECODE_ERRORS as err:
        raise UnreadableItem(str(err) or type(err).__name__) from None


# --- shared -------------------------------------------------------------------------------------------------------


def _fit(images: torch.Tensor, cfg: DataConfig) -> torch.Tensor:
    """Resize uint8 N x C x H x W images to the configured size and channel count."""
    if images.shape[-1] != cfg.image_size or images.shape[-2] != cfg.image_size:
        resized = F.interpolate(images.float(), size=(cfg.image_size,) * 2, mode="bilinear", antialias=True)
        images = resized.round().clamp(0, 255).to(torch.uint8)
    if images.shape[1] == 1 and cfg.channels == 3:
        images = images.expand(-1, 3, -1, -1)
    return images.contiguous()


def _holdout(full: ImageSet, cfg: DataConfig) -> Splits:
    """Split off a held-out fraction, chosen by ``split_seed`` alone so the training seed never moves it."""
    held = torch.from_numpy(heldout_mask(len(full), cfg.holdout_fraction, cfg.split_seed))

    def subset(mask: torch.Tensor) -> ImageSet:
        labels = None if full.labels is None else full.labels[mask]
        return ImageSet(full.images[mask].contiguous(), labels, full.class_names)

    return Splits(train=subset(~held), heldout=subset(held))
