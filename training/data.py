"""Datasets: MNIST-format IDX files (Fashion-MNIST by default) and folders of PNG/JPEG images.

Everything is loaded once into a uint8 tensor (Fashion-MNIST's 60k images take 47 MB), which makes batching an
index operation instead of a DataLoader pipeline. Each dataset also yields a held-out split that the GAN never
trains on, fixed by ``split_seed`` and recorded by the sha256 of its content, for the quality gate to judge on.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from service.errors import GanserveError
from training.config import DataConfig

__all__ = ["FASHION_MNIST_CLASSES", "DataError", "ImageSet", "Splits", "load_splits", "read_idx"]

FASHION_MNIST_CLASSES = (
    "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot",
)  # fmt: skip
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_INSTALL_HINT = "on Debian, install Fashion-MNIST with: apt-get install -y dataset-fashion-mnist"


class DataError(GanserveError, ValueError):
    """The data cannot be used as configured; the message names the file or folder and what was expected."""


@dataclass(frozen=True)
class ImageSet:
    images: torch.Tensor  # uint8, N x C x H x W
    labels: torch.Tensor | None  # int64, N
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.images)

    @cached_property  # the 47 MB of Fashion-MNIST take ~0.1 s to hash; every checkpoint records it
    def sha256(self) -> str:
        digest = hashlib.sha256(self.images.numpy().tobytes())
        if self.labels is not None:
            digest.update(self.labels.numpy().tobytes())
        return digest.hexdigest()


@dataclass(frozen=True)
class Splits:
    train: ImageSet
    heldout: ImageSet

    def describe(self) -> dict:
        """What a run records about its data: sizes and content hashes of both splits."""
        return {
            "train": {"images": len(self.train), "sha256": self.train.sha256},
            "heldout": {"images": len(self.heldout), "sha256": self.heldout.sha256},
            "class_names": list(self.train.class_names),
        }


def load_splits(cfg: DataConfig) -> Splits:
    """Load the configured dataset at the configured size and channels, split into train and held-out."""
    splits = _holdout(_read_folder(cfg), cfg) if cfg.kind == "folder" else _read_idx_dir(cfg)
    if cfg.limit is not None:
        train = splits.train
        labels = None if train.labels is None else train.labels[: cfg.limit]
        splits = Splits(ImageSet(train.images[: cfg.limit], labels, train.class_names), splits.heldout)
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


# --- image folders ------------------------------------------------------------------------------------------------


def _read_folder(cfg: DataConfig) -> ImageSet:
    root = cfg.path
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"image folder {root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    classes = [p.relative_to(root).parts[0] if len(p.relative_to(root).parts) > 1 else None for p in files]
    if any(c is None for c in classes) and any(c is not None for c in classes):
        loose = next(p for p, c in zip(files, classes, strict=True) if c is None)
        raise DataError(
            f"{root} mixes images in class sub-folders with loose images such as {loose.name}; "
            "put every image in a class sub-folder, or none"
        )
    class_names = tuple(sorted({c for c in classes if c is not None}))
    mode = "L" if cfg.channels == 1 else "RGB"
    arrays, bad = [], []
    for path in tqdm(files, desc=f"reading {root}", unit="img", disable=len(files) < 5000, leave=False):
        try:
            with Image.open(path) as img:
                arrays.append(np.asarray(_square(img.convert(mode)).resize((cfg.image_size,) * 2, Image.BICUBIC)))
        except (UnidentifiedImageError, OSError) as err:
            bad.append(f"{path}: {err}")
    if bad:
        raise DataError(f"{len(bad)} unreadable image(s) in {root}:\n  " + "\n  ".join(bad[:10]))
    stacked = np.stack(arrays)
    images = torch.from_numpy(stacked[:, None] if cfg.channels == 1 else stacked.transpose(0, 3, 1, 2).copy())
    labels = torch.tensor([class_names.index(c) for c in classes]) if class_names else None
    return ImageSet(images.contiguous(), labels, class_names)


def _square(img: Image.Image) -> Image.Image:
    """Centre-crop to a square so resizing keeps the aspect ratio."""
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return img.crop((left, top, left + side, top + side))


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
    n_heldout = round(len(full) * cfg.holdout_fraction)
    order = torch.randperm(len(full), generator=torch.Generator().manual_seed(cfg.split_seed))
    held, kept = order[:n_heldout].sort().values, order[n_heldout:].sort().values

    def subset(idx: torch.Tensor) -> ImageSet:
        labels = None if full.labels is None else full.labels[idx]
        return ImageSet(full.images[idx].contiguous(), labels, full.class_names)

    return Splits(train=subset(kept), heldout=subset(held))
