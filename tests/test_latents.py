import io

import numpy as np
import pytest
from PIL import Image

from service.imaging import encode_png, grid_shape, tile, to_uint8
from service.latents import latents_for_seeds


def test_a_seed_gives_the_same_latent_in_any_batch():
    alone = latents_for_seeds([7], 100)
    in_batch = latents_for_seeds([3, 7, 11], 100)
    assert alone.dtype == np.float32 and alone.shape == (1, 100)
    np.testing.assert_array_equal(alone[0], in_batch[1])
    assert not np.array_equal(in_batch[0], in_batch[1])


def test_latents_are_standard_normal():
    z = latents_for_seeds(range(200), 100)
    assert abs(z.mean()) < 0.02 and abs(z.std() - 1) < 0.02


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_seeds_out_of_range_are_refused(seed):
    with pytest.raises(ValueError, match="0 <= seed < 2\\*\\*32"):
        latents_for_seeds([seed], 4)


def test_grid_is_filled_row_by_row():
    images = np.stack([np.full((2, 2, 1), i, np.uint8) for i in range(1, 6)])
    grid = tile(images, padding=1)
    assert grid_shape(5) == (2, 3)
    assert grid.shape == (2 * 2 + 3, 3 * 2 + 4, 1)
    assert grid[1, 1, 0] == 1 and grid[1, 4, 0] == 2 and grid[4, 1, 0] == 4 and grid[4, 7, 0] == 0


def test_to_uint8_maps_the_tanh_range_to_bytes_in_nhwc():
    out = to_uint8(np.array([-1.0, 0.0, 1.0, 2.0], np.float32).reshape(1, 1, 2, 2))
    assert out.shape == (1, 2, 2, 1) and out.ravel().tolist() == [0, 128, 255, 255]


@pytest.mark.parametrize(
    ("shape", "mode"), [((28, 28, 1), "L"), ((5, 9, 2), "LA"), ((7, 3, 3), "RGB"), ((4, 6, 4), "RGBA")]
)
def test_png_encoding_is_lossless_in_every_channel_layout(shape, mode):
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    decoded = Image.open(io.BytesIO(encode_png(image)))
    assert decoded.format == "PNG" and decoded.mode == mode and decoded.size == (shape[1], shape[0])
    np.testing.assert_array_equal(np.asarray(decoded).reshape(shape), image)


NOT_PNG_ABLE = [
    np.zeros((4, 4, 1), np.float32),
    np.zeros((4, 4), np.uint8),
    np.zeros((4, 4, 5), np.uint8),
    np.zeros((0, 4, 1), np.uint8),
]


@pytest.mark.parametrize("bad", NOT_PNG_ABLE)
def test_png_encoding_refuses_what_it_cannot_write(bad):
    with pytest.raises(ValueError, match="non-empty uint8 HWC"):
        encode_png(bad)
