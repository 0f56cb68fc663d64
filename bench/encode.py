"""What each image format costs the service per image, in one process and one run: the PNG it writes with zlib
(bare, and as served, with its provenance chunk) against WebP (lossless, the default, and lossy) and JPEG through
Pillow, at 28x28 gray (the shipped default model's own images) and 64x64 RGB (Noto Color Emoji glyphs, real colour
images of the size an RGB GAN here draws; no RGB model is shipped).

    python bench/encode.py --images 64 --rounds 5
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from common import bench_parser, fastest, write_results

from service.formats import encode_image
from service.imaging import encode_png
from service.runtime import GeneratorRuntime

EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
MARK = {"ganserve": 1, "model": "default", "model_version": "e56468728ae1", "latent_protocol":
        "squares32-probit-float32/v2", "seed": 1234, "label": "sneaker", "truncation": None, "endpoint": "/generate",
        "request": {"n": 1, "seed": 1234, "model": "default", "format": "png"}}  # fmt: skip
ENCODERS = {
    "png bare (zlib)": lambda image: encode_png(image),
    "png served (+provenance)": lambda image: encode_image(image, "png", provenance=MARK),
    "webp lossless": lambda image: encode_image(image, "webp", provenance=MARK),
    "webp q80": lambda image: encode_image(image, "webp", quality=80, provenance=MARK),
    "jpeg q90": lambda image: encode_image(image, "jpeg", provenance=MARK),
}


def gray_28(n: int) -> np.ndarray:
    return GeneratorRuntime(Path("models/default"), threads=1).generate(np.arange(n)).images


def rgb_64(n: int) -> np.ndarray:
    from training.data import decode_glyph, emoji_glyphs

    glyphs = list(emoji_glyphs(EMOJI_FONT).values())[:n]
    return np.stack([decode_glyph(png, 64, 3).transpose(1, 2, 0) for png in glyphs])


def per_image_us(encode, images: np.ndarray, rounds: int) -> float:
    """The fastest of ``rounds`` passes over every image, per image."""
    for image in images[:4]:
        encode(image)
    return fastest(lambda: [encode(image) for image in images], rounds=rounds) / len(images) * 1e6


def main() -> None:
    parser = bench_parser(__doc__, "encode", rounds=5)
    parser.add_argument("--images", type=int, default=64)
    args = parser.parse_args()

    rows = []
    print(f"{'images':<14} {'encoder':<26} {'µs/image':>9} {'bytes':>7} {'x served png':>12}")
    for kind, images in (("28x28 gray", gray_28(args.images)), ("64x64 RGB", rgb_64(args.images))):
        served = None
        for name, encode in ENCODERS.items():
            us = per_image_us(encode, images, args.rounds)
            size = float(np.mean([len(encode(image)) for image in images]))
            served = us if name.startswith("png served") else served
            rows.append({"images": kind, "encoder": name, "us_per_image": us, "bytes": size})
        for row in rows[-len(ENCODERS) :]:
            row["over_served_png"] = row["us_per_image"] / served
            print(f"{kind:<14} {row['encoder']:<26} {row['us_per_image']:>9.1f} {row['bytes']:>7.0f} "
                  f"{row['over_served_png']:>12.2f}")  # fmt: skip
    write_results(args.out, f"python bench/encode.py --images {args.images} --rounds {args.rounds}", rows)


if __name__ == "__main__":
    main()
