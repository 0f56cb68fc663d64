"""A decoded, memory-mapped cache for datasets that must be decoded image by image (image folders, the emoji font).

Decoding 200,000 PNGs takes a minute or more, and the decoded set can be larger than memory; decoding it again for
every run, export and gate would cost both. So the first ``load_splits`` decodes the source once, at the training
size and channel count, into raw uint8 files that every later load maps into memory: the images then cost page
cache (shared between processes, reclaimable), not process memory, and a batch reads only its own rows.

One cache entry is a folder named by a key: the sha256 of the source's identity (each file's relative name, size
and mtime; a font's size and mtime) and of every setting that changes the decoded content (kind, path, size,
channels, held-out fraction, split seed, on_bad). ``limit`` is not part of it: it slices the cached training split.

    meta.json               format, key, shape, class names, per split its image count and content sha256,
                            and the bad files that were skipped
    train.u8, heldout.u8    raw uint8 rows, N x C x H x W in C order. Raw rather than .npy: with bad files skipped
                            the row count is known only at the end, and appending rows lets the build write each
                            split sequentially (through the page cache, never through this process's memory)
    train-labels.npy, ...   int64 labels, when the data has classes

The held-out split is fixed by ``split_seed`` alone, over the source's items in order, before anything is decoded
(the same permutation as for in-memory data, so cached and uncached splits are identical). Each decoded image is
appended to its split's file and hash; a bad file that is skipped simply leaves its split one image shorter.

Trust: an entry is built in a ``.partial-*`` folder beside and renamed into place when complete, and an entry is
used only under its final name with a meta.json of this format and files of the recorded sizes. A killed or failed
build therefore never leaves anything that a later run trusts. A lock file serialises builds of one key, so that
the processes of a torchrun job wait for the first one's build and reuse it instead of each decoding the set.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

__all__ = ["BadItems", "Cached", "Source", "UnreadableItem", "default_cache_dir", "heldout_mask", "load_or_build"]

FORMAT = 1
SPLITS = ("train", "heldout")
_PARTIAL = ".partial-"


class UnreadableItem(Exception):
    """Raised by a source's decode function for one file or glyph that cannot be decoded; the message says why."""


class BadItems(Exception):
    """The build met unreadable items and was told to refuse them; ``bad`` lists "name: reason" for each."""

    def __init__(self, bad: list[str]) -> None:
        super().__init__(f"{len(bad)} unreadable item(s)")
        self.bad = bad


@dataclass(frozen=True)
class Decoder:
    """What a build needs, prepared only on a cache miss (opening a font or listing labels can take a while)."""

    items: Sequence[str]  # names in the fixed order the split and the cache rows follow
    labels: np.ndarray | None  # int64 per item
    class_names: tuple[str, ...]
    decode: Callable[[int], np.ndarray]  # item index -> C x H x W uint8 at the training shape; raises UnreadableItem


@dataclass(frozen=True)
class Source:
    name: str  # the folder or font, for messages and the progress bar
    identity: list  # JSON-serialisable: what makes the content change (file names, sizes, mtimes)
    prepare: Callable[[], Decoder]


@dataclass(frozen=True)
class Cached:
    """One trusted cache entry, mapped: images are zero-copy views of the files."""

    folder: Path
    images: dict[str, torch.Tensor]
    labels: dict[str, torch.Tensor | None]
    sha256: dict[str, str]
    class_names: tuple[str, ...]
    skipped: tuple[str, ...]


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/ganserve/data``, else ``~/.cache/ganserve/data``: derived data that can be rebuilt at any
    time belongs in the user's cache, not beside the images (often read-only) or in the repository."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ganserve" / "data"


def heldout_mask(n: int, fraction: float, seed: int) -> np.ndarray:
    """Which of ``n`` items are held out: a ``fraction`` chosen by ``seed`` alone, so the training seed never moves
    the split. The one definition for cached and in-memory data."""
    n_heldout = round(n * fraction)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    mask = np.zeros(n, dtype=bool)
    mask[order[:n_heldout].numpy()] = True
    return mask


def load_or_build(
    root: Path, label: str, settings: dict, source: Source, shape: tuple[int, int, int], on_bad: str
) -> Cached:
    """The cache entry for ``source`` decoded with ``settings``, built first if there is none that can be trusted.

    Raises BadItems when ``on_bad`` is "refuse" and some items cannot be decoded, OSError when ``root`` cannot be
    written."""
    key = hashlib.sha256(
        json.dumps({"format": FORMAT, "settings": settings, "shape": shape, "source": source.identity}).encode()
    ).hexdigest()
    folder = root / f"{label}-{key[:24]}"
    cached = _open(folder, key)
    if cached is not None:
        return cached
    root.mkdir(parents=True, exist_ok=True)
    with _lock(root / f".{folder.name}.lock"):
        cached = _open(folder, key)  # another process may have built it while this one waited
        if cached is not None:
            return cached
        _remove_dead_partials(root)
        partial = root / f"{_PARTIAL}{folder.name}-{socket.gethostname()}-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        try:
            _build(partial, key, settings, source, shape, on_bad)
            shutil.rmtree(folder, ignore_errors=True)  # an untrusted leftover (older format, damaged files)
            os.rename(partial, folder)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    cached = _open(folder, key)
    if cached is None:
        raise OSError(f"the data cache {folder} was built but cannot be read back")
    return cached


# --- building -----------------------------------------------------------------------------------------------------


def _build(partial: Path, key: str, settings: dict, source: Source, shape: tuple, on_bad: str) -> None:
    decoder = source.prepare()
    held = heldout_mask(len(decoder.items), settings["holdout_fraction"], settings["split_seed"])
    partial.mkdir(parents=True)
    digests = {split: hashlib.sha256() for split in SPLITS}
    kept: dict[str, list[int]] = {split: [] for split in SPLITS}
    bad: list[str] = []
    with open(partial / "train.u8", "wb") as train_fh, open(partial / "heldout.u8", "wb") as heldout_fh:
        files = {"train": train_fh, "heldout": heldout_fh}
        for i, row in _decoded(decoder, source.name, bad):
            if bad and on_bad == "refuse":
                continue  # keep decoding only to count and name the bad items
            data = _checked(row, shape, decoder.items[i]).tobytes()
            split = "heldout" if held[i] else "train"
            files[split].write(data)
            digests[split].update(data)
            kept[split].append(i)
    if bad and on_bad == "refuse":
        raise BadItems(bad)
    splits = {}
    for split in SPLITS:
        if decoder.labels is not None:
            labels = decoder.labels[kept[split]].astype(np.int64)
            np.save(partial / f"{split}-labels.npy", labels)
            digests[split].update(labels.tobytes())  # as ImageSet.sha256 hashes them: images, then labels
        splits[split] = {"images": len(kept[split]), "sha256": digests[split].hexdigest()}
    meta = {
        "format": FORMAT, "key": key, "source": source.name, "settings": settings, "shape": list(shape),
        "class_names": list(decoder.class_names), "labelled": decoder.labels is not None, "splits": splits,
        "skipped": bad,
    }  # fmt: skip
    (partial / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def _decoded(decoder: Decoder, name: str, bad: list[str]) -> Iterator[tuple[int, np.ndarray]]:
    """Decode every item in order with a progress bar, recording the unreadable ones in ``bad``."""
    n = len(decoder.items)
    for i in tqdm(range(n), desc=f"caching {name}", unit="img", disable=n < 5000, leave=False):
        try:
            row = decoder.decode(i)
        except UnreadableItem as err:
            bad.append(f"{decoder.items[i]}: {err}")
            continue
        yield i, row


def _checked(row: np.ndarray, shape: tuple, item: str) -> np.ndarray:
    if row.shape != shape or row.dtype != np.uint8:
        raise ValueError(f"decoding {item} gave {row.dtype} {row.shape}, expected uint8 {shape}")  # a bug, not data
    return np.ascontiguousarray(row)


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock held for the duration of a build (none where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: concurrent builds then race, and the rename still keeps the result whole
        yield
        return
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _remove_dead_partials(root: Path) -> None:
    """Delete the partial folders of killed builds on this host (their pid is gone); others are left alone."""
    host = socket.gethostname()
    for path in root.glob(f"{_PARTIAL}*"):
        stem, _, pid = path.name.rpartition("-")
        if not stem.endswith(f"-{host}") or not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:  # alive, another user's
            pass


# --- reading ------------------------------------------------------------------------------------------------------


def _open(folder: Path, key: str) -> Cached | None:
    """The entry in ``folder`` if it is complete and is the one for ``key``; None otherwise."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("key") != key:
            return None
        return _mapped(folder, meta)
    except (OSError, ValueError, KeyError, TypeError):  # missing or damaged files: not to be trusted
        return None


def _mapped(folder: Path, meta: dict) -> Cached | None:
    shape = tuple(meta["shape"])
    images, labels, sha256 = {}, {}, {}
    for split in SPLITS:
        count = meta["splits"][split]["images"]
        path = folder / f"{split}.u8"
        if not path.is_file() or path.stat().st_size != count * int(np.prod(shape)):
            return None
        images[split] = _map(path, (count, *shape))
        labels[split] = None
        if meta["labelled"]:
            labels[split] = torch.from_numpy(np.load(folder / f"{split}-labels.npy"))
        sha256[split] = meta["splits"][split]["sha256"]
    return Cached(folder, images, labels, sha256, tuple(meta["class_names"]), tuple(meta["skipped"]))


def _map(path: Path, shape: tuple[int, ...]) -> torch.Tensor:
    """A zero-copy tensor over the file. Copy-on-write ("c"): torch wants a writable array, and a write by mistake
    stays private to this process instead of changing the cache."""
    if shape[0] == 0:
        return torch.empty(shape, dtype=torch.uint8)  # mmap cannot map an empty file
    return torch.from_numpy(np.memmap(path, dtype=np.uint8, mode="c", shape=shape))
