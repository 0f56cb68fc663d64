import gzip
import hashlib
import logging
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FASHION_MNIST, write_idx
from PIL import Image

import training.data
from training.config import EMOJI_FONT_PATH, DataConfig
from training.data import FASHION_MNIST_CLASSES, DataError, decode_glyph, emoji_glyphs, load_splits, read_idx


def test_idx_round_trip(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    for name in ("a-idx3-ubyte", "b-idx3-ubyte.gz"):
        write_idx(tmp_path / name, array)
        np.testing.assert_array_equal(read_idx(tmp_path / name), array)


def test_idx_dir_uses_the_test_files_as_held_out(idx_dir):
    splits = load_splits(DataConfig(kind="idx", path=idx_dir))
    assert splits.train.images.shape == (256, 1, 28, 28) and splits.train.images.dtype == torch.uint8
    assert len(splits.heldout) == 64
    assert splits.train.class_names == ("0", "1", "2", "3")
    assert splits.describe()["heldout"]["sha256"] == splits.heldout.sha256


def test_idx_resized_and_rgb(idx_dir):
    splits = load_splits(DataConfig(kind="idx", path=idx_dir, image_size=32, channels=3))
    assert splits.train.images.shape == (256, 3, 32, 32)
    assert torch.equal(splits.train.images[:, 0], splits.train.images[:, 2])


def test_idx_without_test_files_holds_out_a_seeded_fraction(idx_dir):
    for f in idx_dir.glob("t10k-*"):
        f.unlink()
    cfg = DataConfig(kind="idx", path=idx_dir, holdout_fraction=0.25, split_seed=3)
    a, b = load_splits(cfg), load_splits(cfg)
    assert (len(a.train), len(a.heldout)) == (192, 64)
    assert a.heldout.sha256 == b.heldout.sha256  # fixed by the split seed
    assert a.heldout.sha256 != load_splits(cfg.model_copy(update={"split_seed": 4})).heldout.sha256
    train_rows = {row.numpy().tobytes() for row in a.train.images}
    assert not any(row.numpy().tobytes() in train_rows for row in a.heldout.images)  # disjoint


def test_limit_trims_training_images_only(idx_dir):
    splits = load_splits(DataConfig(kind="idx", path=idx_dir, limit=100))
    assert len(splits.train) == 100 and len(splits.train.labels) == 100 and len(splits.heldout) == 64


def test_folder_with_class_subfolders(folder_dir, cache_dir):
    cfg = DataConfig(
        kind="folder", path=folder_dir, image_size=32, channels=3, holdout_fraction=0.1, cache_dir=cache_dir
    )
    splits = load_splits(cfg)
    assert splits.train.images.shape == (36, 3, 32, 32) and len(splits.heldout) == 4
    assert splits.train.class_names == ("cats", "dogs")
    assert set(splits.train.labels.tolist()) == {0, 1}


def test_folder_grayscale_without_labels(tmp_path, cache_dir):
    (tmp_path / "gray").mkdir()
    for i in range(5):
        Image.fromarray(np.full((28, 28), i * 40, np.uint8)).save(tmp_path / "gray" / f"{i}.jpg")
    cfg = DataConfig(kind="folder", path=tmp_path / "gray", channels=1, holdout_fraction=0.0, cache_dir=cache_dir)
    splits = load_splits(cfg)
    assert splits.train.images.shape == (5, 1, 28, 28) and splits.train.labels is None
    assert splits.train.class_names == ()


def _transparent_images() -> dict[str, Image.Image]:
    """One 16x16 image per way a file can be transparent: the left half opaque red, the right half transparent and
    storing black (or, for the colour key, a stored colour that is the key)."""
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[:, :8] = (255, 0, 0, 255)
    la = np.zeros((16, 16, 2), np.uint8)
    la[:, :8] = (200, 255)
    palette = Image.new("P", (16, 16), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0])
    palette.paste(0, (8, 0, 16, 16))
    keyed_palette = palette.copy()
    palette.info["transparency"] = bytes([0, 255])  # per-entry alpha, the form Pillow warns about on convert("RGB")
    keyed_palette.info["transparency"] = 0  # one transparent palette index
    left = np.arange(16)[None, :, None] < 8
    keyed_rgb = Image.fromarray(np.where(left, [255, 0, 0], [0, 0, 0]).astype(np.uint8).repeat(16, axis=0))
    keyed_rgb.info["transparency"] = (0, 0, 0)
    return {
        "rgba": Image.fromarray(rgba, "RGBA"), "la": Image.fromarray(la, "LA"), "palette": palette,
        "keyed-palette": keyed_palette, "keyed-rgb": keyed_rgb,
    }  # fmt: skip


@pytest.mark.parametrize("mode", ["rgba", "la", "palette", "keyed-palette", "keyed-rgb"])
@pytest.mark.parametrize(("background", "rgb"), [(None, (255, 255, 255)), ("#2040a0", (0x20, 0x40, 0xA0))])
def test_transparent_pixels_train_on_the_recorded_background(tmp_path, cache_dir, mode, background, rgb):
    folder = tmp_path / mode
    folder.mkdir()
    for i in range(2):
        _transparent_images()[mode].save(folder / f"{i}.png")
    extra = {} if background is None else {"background": background}
    cfg = DataConfig(kind="folder", path=folder, image_size=16, channels=3, holdout_fraction=0.0, cache_dir=cache_dir,
                     **extra)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's palette-transparency warning would mean a lossy convert
        images = load_splits(cfg).train.images.numpy()
    assert cfg.background == ("#ffffff" if background is None else background)  # recorded in the run's config
    transparent = images[:, :, :, 8:].transpose(0, 2, 3, 1).reshape(-1, 3)
    assert (transparent == rgb).all(), f"{mode}: transparent pixels trained as {np.unique(transparent, axis=0)}"
    opaque = images[:, 0, :, 1]
    assert (opaque == (200 if mode == "la" else 255)).all()


def test_background_must_be_a_colour():
    with pytest.raises(ValueError, match="background 'transparent-ish' is not a colour"):
        DataConfig(kind="folder", path=Path("."), background="transparent-ish")
    assert DataConfig(background="black").background == "#000000"


def test_folder_errors(tmp_path, folder_dir, cache_dir):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        load_splits(DataConfig(kind="folder", path=tmp_path / "empty", cache_dir=cache_dir))
    with pytest.raises(DataError, match="does not exist"):
        load_splits(DataConfig(kind="folder", path=tmp_path / "missing", cache_dir=cache_dir))
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder_dir / "loose.png")
    with pytest.raises(DataError, match="mixes images in class sub-folders with loose images such as loose.png"):
        load_splits(DataConfig(kind="folder", path=folder_dir, channels=3, cache_dir=cache_dir))


def test_idx_errors(tmp_path, idx_dir):
    with pytest.raises(DataError, match="apt-get install -y dataset-fashion-mnist"):
        load_splits(DataConfig(kind="fashion-mnist", path=tmp_path / "nowhere"))
    with pytest.raises(DataError, match="has no train-images-idx3-ubyte"):
        load_splits(DataConfig(kind="idx", path=tmp_path))
    bad = tmp_path / "bad-idx3-ubyte"
    bad.write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(bad)
    images = idx_dir / "train-images-idx3-ubyte.gz"
    data = gzip.decompress(images.read_bytes())
    images.write_bytes(gzip.compress(data[:-10]))
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_splits(DataConfig(kind="idx", path=idx_dir))


def test_label_count_must_match_images(idx_dir):
    write_idx(idx_dir / "train-labels-idx1-ubyte.gz", np.zeros(10, np.uint8))
    with pytest.raises(DataError, match="has 10 labels for 256 images"):
        load_splits(DataConfig(kind="idx", path=idx_dir))


@pytest.mark.skipif(not (FASHION_MNIST / "train-images-idx3-ubyte.gz").exists(), reason="make test installs it")
def test_real_fashion_mnist():
    splits = load_splits(DataConfig())
    assert splits.train.images.shape == (60000, 1, 28, 28) and len(splits.heldout) == 10000
    assert splits.train.class_names == FASHION_MNIST_CLASSES
    assert torch.bincount(splits.train.labels).tolist() == [6000] * 10


def test_fashion_mnist_kind_rejects_foreign_labels(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((4, 28, 28), np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([0, 1, 2, 12], np.uint8))
    with pytest.raises(DataError, match="labels outside 0..9"):
        load_splits(DataConfig(kind="fashion-mnist", path=Path(tmp_path)))


# --- the memory-mapped cache of image folders -----------------------------------------------------------------------


def folder_config(folder: Path, cache: Path, **changes) -> DataConfig:
    return DataConfig(kind="folder", path=folder, image_size=16, channels=3, cache_dir=cache, **changes)


def entries(cache: Path) -> list[str]:
    """The cache entries a later load could trust (not partial builds, not lock files)."""
    return sorted(p.name for p in cache.iterdir() if p.is_dir() and not p.name.startswith("."))


class CountingDecode:
    """Wraps the per-file decode to count calls; ``fail_at`` makes call number N raise, as a crash mid-build."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail_at: int | None = None) -> None:
        self.calls, self.fail_at, self.real = 0, fail_at, training.data._decode_file
        monkeypatch.setattr(training.data, "_decode_file", self)

    def __call__(self, path, cfg):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("killed mid-build")
        return self.real(path, cfg)


def test_folder_cache_is_built_once_and_reused(folder_dir, cache_dir, monkeypatch):
    cfg = folder_config(folder_dir, cache_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's warning about non-writable arrays
        first = load_splits(cfg)
    assert (len(first.train), len(first.heldout)) == (36, 4) and entries(cache_dir) != []
    counter = CountingDecode(monkeypatch)
    second = load_splits(cfg)
    assert counter.calls == 0  # nothing decoded: every row comes from the cache
    assert torch.equal(first.train.images, second.train.images) and torch.equal(first.train.labels, second.train.labels)
    assert second.train.images.untyped_storage().nbytes() == 36 * 3 * 16 * 16  # a view of the mapped file
    for split in (second.train, second.heldout):  # the recorded hash is the content's, as in-memory data has it
        expected = hashlib.sha256(split.images.numpy().tobytes() + split.labels.numpy().tobytes()).hexdigest()
        assert split.sha256 == expected
    assert second.describe()["skipped"] == []


def test_cache_contents_equal_decoding_without_it(folder_dir, cache_dir):
    cfg = folder_config(folder_dir, cache_dir, holdout_fraction=0.25, split_seed=7)
    splits = load_splits(cfg)
    files = sorted(folder_dir.rglob("*.png"))
    decoded = []
    for path in files:  # the decoding of before the cache: centre square, bicubic, one image at a time
        with Image.open(path) as img:
            w, h = img.size
            side = min(w, h)
            box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
            decoded.append(np.asarray(img.convert("RGB").crop(box).resize((16, 16), Image.BICUBIC)).transpose(2, 0, 1))
    images = torch.from_numpy(np.stack(decoded))
    labels = torch.tensor([0 if p.parent.name == "cats" else 1 for p in files])
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(7))
    held, kept = order[:10].sort().values, order[10:].sort().values
    assert torch.equal(splits.heldout.images, images[held]) and torch.equal(splits.train.images, images[kept])
    assert torch.equal(splits.heldout.labels, labels[held]) and torch.equal(splits.train.labels, labels[kept])


def test_changed_files_or_settings_give_a_new_cache(folder_dir, cache_dir, monkeypatch):
    cfg = folder_config(folder_dir, cache_dir)
    load_splits(cfg)
    seen = set(entries(cache_dir))
    counter = CountingDecode(monkeypatch)

    def rebuilt(config: DataConfig) -> bool:
        calls = counter.calls
        load_splits(config)
        new = set(entries(cache_dir)) - seen
        seen.update(new)
        return len(new) == 1 and counter.calls > calls

    image = folder_dir / "cats" / "0.png"
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(image)
    os.utime(image, ns=(1, 1))  # same name, another size and mtime
    assert rebuilt(cfg)
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(folder_dir / "dogs" / "new.png")
    assert rebuilt(cfg)
    (folder_dir / "dogs" / "new.png").unlink()
    (folder_dir / "dogs" / "3.png").unlink()
    assert rebuilt(cfg)
    for change in ({"image_size": 20}, {"channels": 1}, {"split_seed": 1}, {"holdout_fraction": 0.2},
                   {"on_bad": "skip"}):  # fmt: skip
        assert rebuilt(cfg.model_copy(update=change)), change
    assert not rebuilt(cfg.model_copy(update={"limit": 5}))  # limit only slices the cached split


def test_limit_is_a_view_of_the_cache(folder_dir, cache_dir):
    full = load_splits(folder_config(folder_dir, cache_dir))
    limited = load_splits(folder_config(folder_dir, cache_dir, limit=10))
    assert len(limited.train) == 10 and len(limited.train.labels) == 10 and len(limited.heldout) == 4
    assert limited.train.images.untyped_storage().nbytes() == full.train.images.numel()  # the whole map, not a copy
    assert torch.equal(limited.train.images, full.train.images[:10])
    assert limited.train.sha256 != full.train.sha256  # the hash is of the slice trained on


def test_bad_files_are_refused_by_name_or_skipped(folder_dir, cache_dir, caplog):
    (folder_dir / "cats" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"(?s)1 unreadable image\(s\).*broken\.png.*--set data\.on_bad=skip"):
        load_splits(folder_config(folder_dir, cache_dir))
    assert entries(cache_dir) == []  # a refused build leaves nothing behind
    with caplog.at_level(logging.WARNING, logger="ganserve.data"):
        splits = load_splits(folder_config(folder_dir, cache_dir, on_bad="skip"))
    assert len(splits.train) + len(splits.heldout) == 40  # the 40 good images, without the broken one
    (skipped,) = splits.describe()["skipped"]
    assert "broken.png" in skipped and "skipped 1 unreadable image(s)" in caplog.text


def test_refusal_names_at_most_ten_files(folder_dir, cache_dir):
    for i in range(12):
        (folder_dir / "dogs" / f"bad{i:02d}.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"12 unreadable image\(s\)") as err:
        load_splits(folder_config(folder_dir, cache_dir))
    assert str(err.value).count("dogs/bad") == 10


def test_an_interrupted_build_leaves_nothing_trusted(folder_dir, cache_dir, monkeypatch):
    cfg = folder_config(folder_dir, cache_dir)
    CountingDecode(monkeypatch, fail_at=20)
    with pytest.raises(RuntimeError, match="killed mid-build"):
        load_splits(cfg)
    assert entries(cache_dir) == [] and not list(cache_dir.glob(".partial-*"))
    monkeypatch.undo()
    reference = load_splits(cfg).train.images.clone()
    # A damaged entry is not trusted either. (A new file: truncating the one mapped above would fault its pages.)
    (entry,) = entries(cache_dir)
    (cache_dir / entry / "train.u8").unlink()
    (cache_dir / entry / "train.u8").write_bytes(b"\0" * 100)
    counter = CountingDecode(monkeypatch)
    splits = load_splits(cfg)
    assert counter.calls == 40 and torch.equal(splits.train.images, reference)


def test_a_killed_builds_partial_folder_is_never_read(folder_dir, cache_dir, monkeypatch):
    cfg = folder_config(folder_dir, cache_dir)
    CountingDecode(monkeypatch, fail_at=20)
    with pytest.raises(RuntimeError):
        load_splits(cfg)
    monkeypatch.undo()
    load_splits(cfg)
    (entry,) = entries(cache_dir)
    (cache_dir / entry).rename(cache_dir / f".partial-{entry}-elsewhere-1")  # what SIGKILL mid-build leaves
    counter = CountingDecode(monkeypatch)
    load_splits(cfg)
    assert counter.calls == 40


def test_concurrent_loads_build_once(folder_dir, cache_dir, monkeypatch):
    """As the processes of a torchrun job do: the second waits for the first's build and reuses it."""
    counter = CountingDecode(monkeypatch)
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(load_splits, [folder_config(folder_dir, cache_dir)] * 2)
    assert counter.calls == 40 and a.train.sha256 == b.train.sha256 and len(entries(cache_dir)) == 1


# --- the emoji font -----------------------------------------------------------------------------------------------

needs_font = pytest.mark.skipif(
    not EMOJI_FONT_PATH.is_file(), reason="make data installs it: apt-get install -y fonts-noto-color-emoji"
)


def test_emoji_kind_defaults_to_the_noto_font():
    assert DataConfig(kind="emoji").path == EMOJI_FONT_PATH
    assert DataConfig(kind="emoji", path="/x.ttf").path == Path("/x.ttf")
    assert DataConfig().path == FASHION_MNIST


def test_missing_emoji_font_says_how_to_install_it(tmp_path, cache_dir):
    with pytest.raises(DataError, match="apt-get install -y fonts-noto-color-emoji"):
        load_splits(DataConfig(kind="emoji", path=tmp_path / "none.ttf", cache_dir=cache_dir))


@needs_font
def test_emoji_glyphs_are_rgb_on_white():
    glyphs = emoji_glyphs(EMOJI_FONT_PATH)
    assert len(glyphs) > 3000
    names = sorted(glyphs)[:40]
    images = np.stack([decode_glyph(glyphs[name], 32, 3) for name in names])
    assert images.shape == (40, 3, 32, 32) and images.dtype == np.uint8
    corners = images[:, :, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners == 255).mean() > 0.9  # transparent corners composited on white
    assert (images.std(axis=(1, 2, 3)) > 3).all()  # every glyph draws something
    assert (np.abs(images[:, 0].astype(int) - images[:, 2]).max(axis=(1, 2)) > 20).mean() > 0.5  # in colour
    gray = decode_glyph(glyphs[names[0]], 16, 1)
    assert gray.shape == (1, 16, 16)


@needs_font
@pytest.mark.slow
def test_emoji_dataset_is_cached_and_unlabelled(cache_dir, monkeypatch):
    cfg = DataConfig(kind="emoji", image_size=16, channels=3, cache_dir=cache_dir, limit=100)
    splits = load_splits(cfg)
    n = len(emoji_glyphs(EMOJI_FONT_PATH))
    assert len(splits.heldout) == round(n * 0.1) and splits.train.labels is None and splits.train.class_names == ()
    assert splits.train.images.shape == (100, 3, 16, 16)
    monkeypatch.setattr(training.data, "decode_glyph", None)  # a second load decodes nothing
    assert torch.equal(load_splits(cfg).heldout.images, splits.heldout.images)
