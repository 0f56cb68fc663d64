import io
import math
from statistics import NormalDist

import numpy as np
import pytest
from PIL import Image

from service.imaging import encode_png, grid_shape, tile, to_uint8
from service.latents import (
    KEY,
    MAX_TRUNCATION,
    MIN_TRUNCATION,
    candidate_seeds,
    candidate_uniforms,
    labels_for_seeds,
    latents_for_seeds,
    squares32,
)

# Pinned: the first entries of a few seeds' latents, untruncated and at t = 0.5 (docs/LATENTS.md lists them as the
# protocol's test vectors). A change here changes every image.
GOLDEN = {
    0: ([0.0325489, -0.5177609, -0.3248308, -0.4342242], [0.0124619, -0.1909036, -0.1225385, -0.1618991]),
    7: ([-1.255169, -0.5407188, -0.6762605, 0.4243236], [-0.3890135, -0.1986922, -0.242869, 0.1583969]),
    2**32 - 1: ([-0.4819943, 1.0167491, 0.4429044, -0.1165691], [-0.1786085, 0.3378142, 0.1649587, -0.0445511]),
}
# Pinned: rejection sampling's candidate seeds (j = 0..3) and uniforms (j = 0..2), docs/LATENTS.md §7.
CANDIDATES = {
    0: ([0, 2447725972, 2675968351, 4061738901], [0.00221455, 0.915380688, 0.645756902]),
    7: ([7, 3272257864, 3576100046, 1384883264], [0.175169465, 0.458507486, 0.120497822]),
    2**32 - 1: ([2**32 - 1, 4239019546, 2304916327, 3527387312], [0.647397839, 0.578894476, 0.340032095]),
}
SQUARES32 = {0: 2203244565, 1: 1298422897, 2**32: 1611993938, 7 * 2**32 + 3: 2853297143, 2**64 - 1: 2312683815}


def squares32_in_python(ctr: int) -> int:
    """Widynski's squares32 as the paper writes it, in Python integers masked to 64 bits."""
    mask = 2**64 - 1
    x = y = (ctr * KEY) & mask
    z = (y + KEY) & mask
    for add in (y, z, y):
        x = (x * x + add) & mask
        x = ((x >> 32) | (x << 32)) & mask
    return ((x * x + z) & mask) >> 32


def test_squares32_is_the_papers_integer_arithmetic():
    counters = np.array(sorted(SQUARES32), dtype=np.uint64)
    assert squares32(counters).tolist() == [SQUARES32[c] for c in sorted(SQUARES32)]
    assert [squares32_in_python(c) for c in sorted(SQUARES32)] == [SQUARES32[c] for c in sorted(SQUARES32)]


def test_latents_follow_the_quantile_of_their_integers():
    """z = Φ⁻¹((2k + 1) / 2**33) for k = squares32(seed * 2**32 + j), within the polynomials' 5e-7."""
    k = squares32(np.uint64(7 * 2**32) + np.arange(100, dtype=np.uint64))
    exact = np.array([NormalDist().inv_cdf((2 * int(v) + 1) / 2**33) for v in k])
    np.testing.assert_allclose(latents_for_seeds([7], 100)[0], exact, rtol=2e-6, atol=1e-7)


def test_a_seed_gives_the_same_latent_in_any_batch():
    alone = latents_for_seeds([7], 100)
    in_batch = latents_for_seeds([3, 7, 11], 100)
    assert alone.dtype == np.float32 and alone.shape == (1, 100)
    np.testing.assert_array_equal(alone[0], in_batch[1])
    assert not np.array_equal(in_batch[0], in_batch[1])


def test_latents_are_standard_normal():
    z = latents_for_seeds(range(2000), 100).ravel().astype(np.float64)
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    # Kolmogorov-Smirnov against N(0, 1): the 0.1 % critical value at n = 200,000 is 1.95 / √n
    z.sort()
    cdf = 0.5 * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))
    ranks = np.arange(1, len(z) + 1) / len(z)
    assert max(np.abs(cdf - ranks).max(), np.abs(cdf - ranks + 1 / len(z)).max()) < 1.95 / math.sqrt(len(z))


@pytest.mark.parametrize("seed", sorted(GOLDEN))
def test_the_protocol_gives_its_pinned_values(seed):
    plain, truncated = GOLDEN[seed]
    np.testing.assert_allclose(latents_for_seeds([seed], 4)[0], plain, rtol=0, atol=1e-6)
    np.testing.assert_allclose(latents_for_seeds([seed], 4, truncation=0.5)[0], truncated, rtol=0, atol=1e-6)


@pytest.mark.parametrize("seed", sorted(CANDIDATES))
def test_candidate_streams_give_their_pinned_values(seed):
    seeds, uniforms = CANDIDATES[seed]
    assert [int(candidate_seeds([seed], j)[0]) for j in range(4)] == seeds
    assert [squares32_in_python(seed * 2**32 + 2**31 + j) for j in (1, 2, 3)] == seeds[1:]
    np.testing.assert_allclose([candidate_uniforms([seed], j)[0] for j in range(3)], uniforms, rtol=0, atol=1e-9)


def test_candidate_streams_are_per_seed_and_uniform():
    batch = np.array([3, 7, 11])
    np.testing.assert_array_equal(candidate_seeds(batch, 5)[1], candidate_seeds([7], 5)[0])
    u = np.concatenate([candidate_uniforms(range(2000), j) for j in range(10)])
    assert ((u > 0) & (u < 1)).all() and abs(u.mean() - 0.5) < 0.01
    u.sort()  # Kolmogorov-Smirnov against U(0, 1) at 0.1 %
    assert np.abs(u - np.arange(1, len(u) + 1) / len(u)).max() < 1.95 / math.sqrt(len(u))


def test_truncation_draws_the_truncated_normal_at_any_strength():
    z = latents_for_seeds(range(400), 100).astype(np.float64)
    for t in (MIN_TRUNCATION, 0.5, 1.0, 2.0, MAX_TRUNCATION):
        zt = latents_for_seeds(range(400), 100, truncation=t).astype(np.float64)
        assert np.abs(zt).max() <= t
        # the variance of N(0, 1) truncated to [-t, t]: 1 - 2 t φ(t) / (2 Φ(t) - 1)
        pdf, mass = np.exp(-t * t / 2) / np.sqrt(2 * np.pi), math.erf(t / np.sqrt(2))
        assert abs(zt.var() / (1 - 2 * t * pdf / mass) - 1) < 0.03, t
        assert (np.sign(zt) == np.sign(z)).all() and (np.argsort(zt[0]) == np.argsort(z[0])).all()  # same z, squashed


def test_truncation_per_row_and_its_limits():
    rows = latents_for_seeds([7, 7, 7], 8, truncation=[np.inf, 1.0, 0.5])
    np.testing.assert_array_equal(rows[0], latents_for_seeds([7], 8)[0])
    np.testing.assert_array_equal(rows[2], latents_for_seeds([7], 8, truncation=0.5)[0])
    assert np.abs(rows[1]).max() <= 1.0 and not np.array_equal(rows[1], rows[2])
    for t in (0.0, 1e-300, 4.5, np.nan):
        with pytest.raises(ValueError, match="truncation must be between 0.01 and 4.0"):
            latents_for_seeds([1], 4, truncation=t)


def test_labels_cycle_by_seed_unless_one_is_asked_for():
    assert labels_for_seeds([7, 8, 9], 4).tolist() == [3, 0, 1]
    assert labels_for_seeds([7, 8, 9], 4, 2).tolist() == [2, 2, 2]
    assert labels_for_seeds([7, 8, 9], 4, [1, -1, 9]).tolist() == [1, 0, 1]  # none, or one this model lacks: by seed


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
