"""Image files and walks, without a server: each format decodes to the pixels it was given (or close, for the lossy
ones), carries its provenance, and the walk between seeds is the path docs/LATENTS.md defines."""

import io
import json
import re
from html import unescape

import numpy as np
import pytest
from PIL import Image

from service.formats import ANIMATIONS, FORMATS, encode_animation, encode_image, negotiate
from service.latents import interpolation_path, slerp, walk_length

MARK = {"ganserve": 1, "model": "default", "seed": 7, "label": "bag", "note": "<&\"'> ünï"}


def images(channels: int, n: int = 1, size: int = 24) -> np.ndarray:
    """Smooth images with some noise: like a GAN's, so the lossy error bounds below mean something."""
    rng = np.random.default_rng(channels)
    y, x = np.mgrid[0:size, 0:size]
    base = (127 + 100 * np.sin(x / 4.0)[..., None] * np.cos(y / 5.0)[..., None] * np.ones(channels)).astype(np.int16)
    return np.stack([np.clip(base + rng.integers(-6, 7, base.shape), 0, 255).astype(np.uint8) for _ in range(n)])


def read_mark(data: bytes) -> dict:
    info = Image.open(io.BytesIO(data)).info
    if "ganserve" in info:
        return json.loads(info["ganserve"])
    if "xmp" in info:
        return json.loads(unescape(re.search(rb"<ganserve:provenance>(.*?)</", info["xmp"]).group(1).decode()))
    return json.loads(info["comment"])


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize(("fmt", "quality", "mean_error"), [("png", None, 0), ("webp", None, 0), ("jpeg", None, 3),
                                                            ("jpeg", 50, 6), ("webp", 80, 6)])  # fmt: skip
def test_each_format_decodes_to_the_pixels_and_keeps_the_provenance(fmt, quality, mean_error, channels):
    image = images(channels)[0]
    data = encode_image(image, fmt, quality=quality, provenance=MARK)
    decoded = Image.open(io.BytesIO(data))
    assert decoded.format == {"png": "PNG", "webp": "WEBP", "jpeg": "JPEG"}[fmt]
    pixels = np.asarray(decoded.convert("RGB" if channels == 3 else "L"), dtype=np.int16)
    error = np.abs(pixels - image.reshape(pixels.shape)).mean()
    assert error <= mean_error, error
    assert read_mark(data) == MARK


@pytest.mark.parametrize("fmt", sorted(ANIMATIONS))
def test_walk_files_hold_every_frame_and_the_provenance(fmt):
    frames = images(1, n=5)
    frames[2] = 255 - frames[2]  # no two frames alike: GIF would merge equal neighbours
    data = encode_animation(frames, fmt, duration_ms=40, provenance=MARK)
    decoded = Image.open(io.BytesIO(data))
    assert read_mark(data) == MARK
    if fmt == "png":
        assert decoded.size == (5 * 24, 24)  # one strip, frame i at x = 24 i
        np.testing.assert_array_equal(np.asarray(decoded)[:, 48:72], frames[2, ..., 0])
        return
    assert decoded.n_frames == 5 and decoded.info["loop"] == 0
    for i in range(5):
        decoded.seek(i)
        np.testing.assert_array_equal(np.asarray(decoded.convert("L")), frames[i, ..., 0])  # gray: exact in both


@pytest.mark.parametrize(
    ("accept", "chosen"),
    [(None, "png"), ("", "png"), ("*/*", "png"), ("image/*", "png"), ("image/webp", "webp"),
     ("image/avif,image/webp,image/apng,*/*;q=0.8", "webp"), ("image/jpeg;q=0.4, image/webp;q=0.6", "webp"),
     ("image/jpeg, */*;q=0.1", "jpeg"), ("image/avif", None), ("image/webp;q=0", None), ("text/html", None),
     ("image/webp;q=oops", None), ("image/webp, */*", "webp"), ("*/*, image/webp", "webp"),
     ("image/png;q=0, */*", "webp"), ("image/png;q=0, image/*;q=0.5, image/jpeg;q=0.4", "webp")],
)  # fmt: skip
def test_the_accept_header_is_read_by_its_weights(accept, chosen):
    assert negotiate(accept, FORMATS, "png") == chosen


def test_a_walk_visits_its_keys_in_order_and_keeps_the_radius():
    a, b, t = interpolation_path(3, 4, loop=False)
    assert len(t) == 4 * 2 + 1 == walk_length(3, 4) and (a[0], t[0]) == (0, 0) and (b[-1], t[-1]) == (2, 1.0)
    a, b, t = interpolation_path(3, 4, loop=True)
    assert len(t) == 12 == walk_length(3, 4, loop=True) and (a[-1], b[-1]) == (2, 0)  # back to the first key
    with pytest.raises(ValueError, match="at least 2 keys"):
        interpolation_path(1, 4)

    rng = np.random.default_rng(0)
    keys = rng.standard_normal((2, 512)).astype(np.float32)
    t = np.linspace(0, 1, 11)
    path = slerp(np.repeat(keys[:1], 11, 0), np.repeat(keys[1:], 11, 0), t)
    np.testing.assert_array_equal(path[0], keys[0])  # the ends are the keys, bit for bit
    np.testing.assert_array_equal(path[-1], keys[1])
    radius = np.linalg.norm(path, axis=1)
    line = np.linalg.norm(keys[0] * 0.5 + keys[1] * 0.5)
    assert radius.min() > 0.97 * np.linalg.norm(keys, axis=1).min()  # the arc stays near the shell
    assert line < 0.75 * radius[5]  # where the straight line sinks towards 0 (radius √(d/2) against √d)
    units = keys / np.linalg.norm(keys, axis=1, keepdims=True)
    arc = slerp(np.repeat(units[:1], 11, 0), np.repeat(units[1:], 11, 0), t)
    angles = np.arccos(np.clip(np.sum(arc[1:] * arc[:-1], 1), -1, 1))
    np.testing.assert_allclose(angles, angles.mean(), rtol=1e-3)  # on the sphere: constant angular speed
    same = slerp(keys[:1], keys[:1], np.array([0.3]))
    np.testing.assert_allclose(same[0], keys[0], rtol=1e-6)  # parallel keys: no division by sin 0
