import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FASHION_MNIST, write_idx
from PIL import Image

from training.config import DataConfig
from training.data import FASHION_MNIST_CLASSES, DataError, load_splits, read_idx


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


def test_folder_with_class_subfolders(folder_dir):
    splits = load_splits(DataConfig(kind="folder", path=folder_dir, image_size=32, channels=3, holdout_fraction=0.1))
    assert splits.train.images.shape == (36, 3, 32, 32) and len(splits.heldout) == 4
    assert splits.train.class_names == ("cats", "dogs")
    assert set(splits.train.labels.tolist()) == {0, 1}


def test_folder_grayscale_without_labels(tmp_path):
    for i in range(5):
        Image.fromarray(np.full((28, 28), i * 40, np.uint8)).save(tmp_path / f"{i}.jpg")
    splits = load_splits(DataConfig(kind="folder", path=tmp_path, image_size=28, channels=1, holdout_fraction=0.0))
    assert splits.train.images.shape == (5, 1, 28, 28) and splits.train.labels is None
    assert splits.train.class_names == ()


def test_folder_errors(tmp_path, folder_dir):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        load_splits(DataConfig(kind="folder", path=tmp_path / "empty"))
    with pytest.raises(DataError, match="does not exist"):
        load_splits(DataConfig(kind="folder", path=tmp_path / "missing"))
    (folder_dir / "cats" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"(?s)1 unreadable image\(s\).*broken\.png"):
        load_splits(DataConfig(kind="folder", path=folder_dir, channels=3))
    (folder_dir / "cats" / "broken.png").unlink()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder_dir / "loose.png")
    with pytest.raises(DataError, match="mixes images in class sub-folders with loose images such as loose.png"):
        load_splits(DataConfig(kind="folder", path=folder_dir, channels=3))


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
