"""A flat folder of 1,000 real emoji as 32x32 RGBA PNGs, from Debian's Noto Color Emoji: the second small set
the augmentation study measures on (docs/SMALL_DATA.md), as a folder so it goes through ``--data`` like any other.

Each glyph is padded to a square with transparency, resized with Lanczos on premultiplied alpha (so no dark fringe)
and written with its alpha, so the folder loader composites it on the recipe's background. The draw is seeded.

    python scripts/emoji.py --out data/emoji1k --count 1000 --seed 0
"""

from __future__ import annotations

import argparse
import io
import random
import shutil
import sys
from pathlib import Path

from PIL import Image

from training.config import EMOJI_FONT_PATH
from training.data import emoji_glyphs


def build(out: Path, count: int, seed: int, size: int) -> int:
    if not EMOJI_FONT_PATH.is_file():
        sys.exit("error: Noto Color Emoji is missing; install it as root: apt-get install -y fonts-noto-color-emoji")
    glyphs = emoji_glyphs(EMOJI_FONT_PATH)
    if count > len(glyphs):
        sys.exit(f"error: the font holds {len(glyphs)} colour glyphs, fewer than --count {count}")
    picked = random.Random(seed).sample(sorted(glyphs), count)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for i, name in enumerate(picked):
        with Image.open(io.BytesIO(glyphs[name])) as img:
            rgba = img.convert("RGBA")
        side = max(rgba.size)
        canvas = Image.new("RGBA", (side, side), (0, 0, 0, 0))
        canvas.paste(rgba, ((side - rgba.width) // 2, (side - rgba.height) // 2))
        small = canvas.convert("RGBa").resize((size, size), Image.LANCZOS).convert("RGBA")
        small.save(out / f"{i:04d}-{name}.png")
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/emoji1k"))
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0, help="which draw of glyphs")
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args()
    print(f"{args.out}: {build(args.out, args.count, args.seed, args.size)} emoji")


if __name__ == "__main__":
    main()
