"""A flat folder of real 32x32 icons with transparency, from Debian's Moka and Faenza icon themes.

Neither theme has 1,000 distinct 32x32 icons (Moka 833, Faenza 734, after links are resolved), so the folder draws
from both: RGBA, palette-with-transparency and LA files, as a team's own icon folder would hold. The draw is seeded,
so a figure measured on it can be measured again.

    python scripts/icons.py --out data/icons1k --count 1000 --seed 0
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
from pathlib import Path

THEMES = {"moka-icon-theme": Path("/usr/share/icons/Moka"), "faenza-icon-theme": Path("/usr/share/icons/Faenza")}


def icon_files() -> list[Path]:
    """Every distinct 32x32 PNG of the themes (links resolved, dangling ones skipped), in a fixed order."""
    found = set()
    for root in THEMES.values():
        for path in root.rglob("*.png"):
            if (path.parent.name == "32" or "32x32" in path.parts) and "@2x" not in str(path) and path.exists():
                found.add(os.path.realpath(path))
    return [Path(p) for p in sorted(found)]


def build(out: Path, count: int, seed: int) -> int:
    missing = [package for package, root in THEMES.items() if not root.is_dir()]
    if missing:
        sys.exit(f"error: the icon themes are missing; install them as root: apt-get install -y {' '.join(missing)}")
    files = icon_files()
    if count > len(files):
        sys.exit(f"error: the themes hold {len(files)} distinct 32x32 icons, fewer than --count {count}")
    picked = random.Random(seed).sample(files, count)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for i, path in enumerate(picked):
        shutil.copyfile(path, out / f"{i:04d}-{path.parent.parent.name}-{path.name}")
    return len(picked)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/icons1k"))
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0, help="which draw of icons")
    args = parser.parse_args()
    print(f"{args.out}: {build(args.out, args.count, args.seed)} icons")


if __name__ == "__main__":
    main()
