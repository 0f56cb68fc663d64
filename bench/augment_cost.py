"""What augmentation costs a training step: G steps/s of ``ganserve train`` at the recipe ``--data`` picks, with
augmentation off, DiffAugment (``fixed``, p = 1: every op on every image, the most it can cost), ADA (its blit
group and colour) and LeCam's BigGAN recipe: the variants of bench/augment_study.py.

Each round trains every mode for ``--steps`` G steps from scratch, in turn, in this process with the same thread
count, so a slow moment of the shared machine hits all modes alike; a mode's figure is its best round, and the
cost is the ratio to "none" within the table (absolute speed on a shared machine is noise). A run's own start-up
(the grid, the checkpoint, the plot) is in every mode alike.

    python scripts/icons.py --out data/icons1k && python bench/augment_cost.py --data data/icons1k
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from augment_study import VARIANTS
from common import bench_parser, fastest, write_results

from release.recipe import choose_recipe
from training.train import train

# The study's variants (bench/augment_study.py), so a cost here is the cost of a row there. ADA's ops are computed for
# the whole batch and kept or not per image, so it costs the same at any p.
MODES = {name: VARIANTS[name] for name in ("none", "DiffAugment", "ADA", "LeCam + DiffAugment-BigGAN")}


def steps_per_second(data: Path, overrides: list[str], steps: int, runs: Path) -> float:
    """G steps per second of ``ganserve train`` with the recipe ``ganserve retrain --data`` picks for the folder and
    ``overrides`` (the augmentation mode), without EMA: the training loop's cost, startup included."""
    cfg = choose_recipe(data, [*overrides, f"max_steps={steps}", "ema.enabled=false"]).config
    return steps / fastest(lambda: train(cfg, runs_dir=runs, progress=False), rounds=1)


def main() -> None:
    parser = bench_parser(__doc__, "augment_cost", rounds=3)
    parser.add_argument("--data", type=Path, default=Path("data/icons1k"))
    parser.add_argument("--steps", type=int, default=300, help="G steps per mode and round")
    args = parser.parse_args()
    seen: dict[str, list[float]] = {name: [] for name in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for name, overrides in MODES.items():
                seen[name].append(steps_per_second(args.data, overrides, args.steps, Path(tmp)))
            print(f"round {round_ + 1}/{args.rounds}: " + "   ".join(f"{n} {v[-1]:.2f}" for n, v in seen.items()))
    base = max(seen["none"])
    rows = [{"mode": name, "best_steps_per_s": round(max(v), 3), "rounds": [round(x, 3) for x in v],
             "cost_of_a_step": round(base / max(v) - 1, 4)} for name, v in seen.items()]  # fmt: skip
    print(f"\n{'augmentation':<30} {'G steps/s (best)':>17} {'cost of a step':>15}")
    for r in rows:
        print(f"{r['mode']:<30} {r['best_steps_per_s']:>17.2f} {r['cost_of_a_step']:>+15.1%}")
    command = f"python bench/augment_cost.py --data {args.data} --steps {args.steps} --rounds {args.rounds}"
    write_results(args.out, command, [r | {"threads": torch.get_num_threads()} for r in rows])


if __name__ == "__main__":
    main()
