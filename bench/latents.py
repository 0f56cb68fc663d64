"""What drawing latents costs per image: untruncated, truncated by the quantile map (``service.latents``), and the
redraw-until-inside loop it replaced, whose cost grows without bound as t shrinks (one request with t = 1e-300 never
ended). One process, the same seeds for every row.

    python bench/latents.py --latent-dim 100 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from service.latents import latents_for_seeds


def redraw_loop(seeds: range, latent_dim: int, t: float, budget: float) -> np.ndarray | None:
    """The rule before: redraw entries with |z| > t from the seed's generator until none is left (None past
    ``budget`` seconds, for the t where it would run for minutes or for ever)."""
    out, start = np.empty((len(seeds), latent_dim), np.float32), time.perf_counter()
    for row, seed in enumerate(seeds):
        rng = np.random.default_rng(seed)
        z = rng.standard_normal(latent_dim, dtype=np.float32)
        while (outside := np.abs(z) > t).any():
            if time.perf_counter() - start > budget:
                return None
            z[outside] = rng.standard_normal(int(outside.sum()), dtype=np.float32)
        out[row] = z
    return out


def per_image_us(draw, n: int, rounds: int) -> float | None:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        if draw() is None:
            return None
        best = min(best, time.perf_counter() - start)
    return best / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latent-dim", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--budget", type=float, default=2.0, help="seconds before the old loop counts as stuck")
    parser.add_argument("--out", type=Path, default=Path("bench/results/latents.json"))
    args = parser.parse_args()

    rows = []
    print(f"{'t':>8} {'n':>4} {'quantile map µs/img':>20} {'old redraw loop µs/img':>23}")
    for t in (None, 4.0, 1.0, 0.5, 0.1, 0.01, 1e-4):
        for n in (1, 16, 64):
            seeds = range(1000, 1000 + n)
            row = {"truncation": t, "n": n}
            if t is None or t >= 0.01:
                row["quantile_map_us"] = per_image_us(
                    lambda s=seeds, t=t: latents_for_seeds(s, args.latent_dim, truncation=t), n, args.rounds
                )
            if t is not None:
                row["redraw_loop_us"] = per_image_us(
                    lambda s=seeds, t=t: redraw_loop(s, args.latent_dim, t, args.budget),
                    n,
                    1 if t < 0.5 else args.rounds,
                )
            rows.append(row)
            new, old = row.get("quantile_map_us"), row.get("redraw_loop_us", "-")
            print(f"{t!s:>8} {n:>4} {'refused (400)' if new is None else f'{new:.1f}':>20} "
                  f"{'stuck' if old is None else old if old == '-' else f'{old:.1f}':>23}")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "latents", "latent_dim": args.latent_dim, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
