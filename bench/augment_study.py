"""Does augmentation help on a small folder? Each variant trains the recipe ``--data`` picks for the folder, with
its augmentation (and D) changed, at several budgets (checkpoints of one run, continued by ``resume``) and seeds.

At each budget the EMA generator draws images for seeds 0..N-1 (the latent protocol every caller uses) and gets:

- FID against every real image, in the folder's label-free evaluator (``evaluator_for``: the retrain job's own);
- a measure that does not depend on that evaluator: a fresh pixel-space judge (C2ST, ``metrics.pixel_judge``),
  trained on half of real vs generated and scored on the other half (0.5: cannot tell them apart);
- recall in the evaluator's features (the gate's own check, >= 0.5 passes);
- D's overfitting, ADA's heuristic r_t = E[sign(D(x))] on training reals against held-out reals (a gap: D has
  learned the training images, not the distribution), and ADA's p.

It writes the table (and JSON), one grid per folder with a row of samples per variant (first seed, last budget)
and the FID curves. Runs go one after another: two trainings side by side on 2 cores slow both several times.

    python scripts/icons.py --out data/icons1k && python scripts/emoji.py --out data/emoji1k
    python bench/augment_study.py --data data/icons1k data/emoji1k --budgets 2000,4000,6000 --seeds 0,1
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from common import bench_parser, write_results

from release.recipe import choose_recipe
from training.artifacts import save_grid
from training.checkpoint import CHECKPOINT_NAME, load_checkpoint, load_generator
from training.config import RunConfig
from training.data import load_splits
from training.judging import metrics
from training.judging.evaluator import EVALUATORS, Evaluator, evaluator_for
from training.judging.reference import reference_images
from training.networks import Discriminator
from training.train import draw, resume, train

VARIANTS = {
    "none": ["augment.mode=none"],
    "DiffAugment": ["augment.mode=fixed"],
    "ADA": ["augment.mode=ada", "augment.policy=flip,rotate,translation,color"],
    # LeCam's own small-data BigGAN runs on CIFAR-10: DiffAugment's translation and cutout (no colour), x-flips and
    # LeCam at 0.3 (google/lecam-gan, scripts/lc-DiffAugment-biggan-cifar10-0.1.sh)
    "LeCam + DiffAugment-BigGAN": ["augment.mode=fixed", "augment.policy=flip,translation,cutout", "loss.lecam=0.3"],
    "DiffAugment + SN-D": ["augment.mode=fixed", "model.d_norm=spectral"],
    "none + SN-D": ["augment.mode=none", "model.d_norm=spectral"],
}
GRID_COLUMNS = 12


def study_run(data: Path, variant: str, seed: int, budgets: list[int], *, runs: Path, measure, samples: int):
    """Train one variant and seed, yielding a row at each budget (as it comes: a cut-short study keeps it)."""
    overrides = [*VARIANTS[variant], f"seed={seed}", f"max_steps={budgets[0]}", "checkpoint_every=100000",
                 "grid_size=16", "log_every=100"]  # fmt: skip
    cfg = choose_recipe(data, overrides).config
    trained, start = 0.0, time.perf_counter()
    run_dir = train(cfg, runs_dir=runs, progress=False)
    for i, budget in enumerate(budgets):
        if i:
            start = time.perf_counter()
            resume(run_dir, overrides={"max_steps": budget}, progress=False)
        trained = round(trained + time.perf_counter() - start, 1)  # training alone, without the measurements
        r = {"data": data.name, "variant": variant, "seed": seed, "steps": budget, "train_s": trained,
             **measure(run_dir, samples), "run": str(run_dir)}  # fmt: skip
        print(f"  {data.name} {variant} seed {seed} @ {budget}: FID {r['fid']:.2f}, pixel judge "
              f"{r['pixel_judge']:.3f}, recall {r['recall']:.3f}, r_t train {r['r_t_train']:+.2f} / held-out "
              f"{r['r_t_heldout']:+.2f}, p {r['aug_p']}", flush=True)  # fmt: skip
        yield r


class Measure:
    """Everything measured of a checkpoint, against one folder's real images and evaluator."""

    def __init__(self, cfg: RunConfig, evaluator: Path) -> None:
        self.splits = load_splits(cfg.data)
        self.real = reference_images(self.splits)  # every real image, as the gate compares on a small folder
        self.evaluator = Evaluator(evaluator)
        self.real_features = self.evaluator.features(self.real)

    def __call__(self, run_dir: Path, samples: int) -> dict:
        fake = self.draw(run_dir, range(samples))
        features = self.evaluator.features(fake)
        pixel = metrics.pixel_judge(self.real, fake, seeds=[0])
        state = load_checkpoint(run_dir / CHECKPOINT_NAME)
        d = Discriminator(RunConfig.model_validate(state["config"]).model)
        d.load_state_dict(state["D"])
        return {
            "fid": round(metrics.fid(self.real_features, features), 3),
            "pixel_judge": round(pixel["accuracy"], 4),
            "recall": round(metrics.precision_recall(self.real_features, features)["recall"], 4),
            "r_t_train": round(_r_t(d, self.splits.train.images), 3),
            "r_t_heldout": round(_r_t(d, self.splits.heldout.images), 3),
            "aug_p": round(state["augment"]["p"], 3),
        }

    @staticmethod
    def draw(run_dir: Path, seeds: range) -> np.ndarray:
        g, cfg = load_generator(run_dir / CHECKPOINT_NAME)
        return draw(g, seeds, cfg.model.latent_dim)


@torch.no_grad()
def _r_t(d: Discriminator, images: torch.Tensor, batch: int = 64) -> float:
    """E[sign(D(x))] over whole batches of ``images`` (uint8 NCHW), D in training mode as in its own step (its
    batch norm then normalises each batch by itself, and only this rebuilt copy's running statistics move)."""
    d = d.train()
    x = images.float().div(127.5).sub(1.0)
    signs = [torch.sign(d(x[i : i + batch])).mean() for i in range(0, len(x) - batch + 1, batch)]
    return float(torch.stack(signs).mean())


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and spread over seeds, per folder, variant and budget; the FID change against "none" at that budget."""
    table = []
    order = list(VARIANTS)
    keys = sorted({(r["data"], r["variant"], r["steps"]) for r in rows}, key=lambda k: (k[0], k[2], order.index(k[1])))
    for data, variant, steps in keys:
        group = [r for r in rows if (r["data"], r["variant"], r["steps"]) == (data, variant, steps)]
        base = [r["fid"] for r in rows if (r["data"], r["variant"], r["steps"]) == (data, "none", steps)]
        fid = float(np.mean([r["fid"] for r in group]))
        table.append({
            "data": data, "variant": variant, "steps": steps, "seeds": len(group),
            "fid": round(fid, 2), "fid_sd": round(float(np.std([r["fid"] for r in group])), 2),
            "fid_vs_none": round(fid / float(np.mean(base)) - 1, 3) if base else None,
            "pixel_judge": round(float(np.mean([r["pixel_judge"] for r in group])), 3),
            "recall": round(float(np.mean([r["recall"] for r in group])), 3),
            "r_t_train": round(float(np.mean([r["r_t_train"] for r in group])), 2),
            "r_t_heldout": round(float(np.mean([r["r_t_heldout"] for r in group])), 2),
            "aug_p": round(float(np.mean([r["aug_p"] for r in group])), 2),
        })  # fmt: skip
    return table


def print_table(table: list[dict]) -> None:
    head = f"{'data':<10} {'variant':<18} {'steps':>6} {'seeds':>5} {'FID':>12} {'vs none':>8} {'pixel judge':>11} "
    print("\n" + head + f"{'recall':>6} {'r_t train/held-out':>18} {'p':>5}")
    for r in table:
        vs = "" if r["fid_vs_none"] is None or r["variant"] == "none" else f"{r['fid_vs_none']:+.0%}"
        print(f"{r['data']:<10} {r['variant']:<18} {r['steps']:>6} {r['seeds']:>5} {r['fid']:>6.2f} "
              f"±{r['fid_sd']:<4.2f} {vs:>8} {r['pixel_judge']:>11.3f} {r['recall']:>6.3f} "
              f"{r['r_t_train']:>+8.2f} / {r['r_t_heldout']:<+7.2f} {r['aug_p']:>5.2f}")  # fmt: skip


def write_figures(rows: list[dict], table: list[dict], images: Path) -> None:
    """Per folder: a grid, one row per variant (the first seed's last budget), and FID by budget per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images.mkdir(parents=True, exist_ok=True)
    for data in sorted({r["data"] for r in rows}):
        mine = [r for r in rows if r["data"] == data]
        last, first_seed = max(r["steps"] for r in mine), min(r["seed"] for r in mine)
        shown = [r for v in VARIANTS for r in mine if (r["variant"], r["steps"], r["seed"]) == (v, last, first_seed)]
        grid = np.concatenate([Measure.draw(Path(r["run"]), range(GRID_COLUMNS)) for r in shown])
        save_grid(grid, images / f"augment-{data}.png", cols=GRID_COLUMNS)
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for variant in VARIANTS:
            mine_t = [t for t in table if (t["data"], t["variant"]) == (data, variant)]
            points = [(t["steps"], t["fid"], t["fid_sd"]) for t in mine_t]
            if points:
                steps, fid, sd = zip(*points, strict=True)
                ax.errorbar(steps, fid, yerr=sd, marker="o", capsize=3, label=variant)
        ax.set(xlabel="G steps", ylabel="FID (label-free evaluator)", title=f"{data}: FID by budget, mean of seeds")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(images / f"augment-{data}-fid.png", dpi=100)
        plt.close(fig)
        print(f"wrote {images / f'augment-{data}.png'} (rows: {', '.join(r['variant'] for r in shown)})")


def main() -> None:
    parser = bench_parser(__doc__, "augment_study")
    parser.add_argument("--data", type=Path, nargs="+", default=[Path("data/icons1k"), Path("data/emoji1k")])
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of: {', '.join(VARIANTS)}")
    parser.add_argument("--budgets", default="2000,4000,6000", help="G steps at which each run is measured")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--samples", type=int, default=1000, help="generated images per measurement")
    parser.add_argument("--runs", type=Path, default=Path("runs/augment-study"))
    parser.add_argument("--images", type=Path, default=Path("docs/images"))
    parser.add_argument("--rows", type=Path, help="train nothing: tabulate the rows of an earlier (cut-short) study")
    parser.add_argument("--done", type=Path, help="rows of an earlier study: its runs are kept, not trained again")
    args = parser.parse_args()
    variants, seeds = args.variants.split(","), [int(s) for s in args.seeds.split(",")]
    budgets = [int(b) for b in args.budgets.split(",")]
    if unknown := set(variants) - set(VARIANTS):
        parser.error(f"unknown variant(s) {', '.join(sorted(unknown))}; known: {', '.join(VARIANTS)}")
    if args.rows is not None:
        rows = [json.loads(line) for line in args.rows.read_text().splitlines() if line.strip()]
        table = summarise(rows)
        print_table(table)
        write_figures(rows, table, args.images)
        write_results(args.out, f"python bench/augment_study.py --rows {args.rows}", [{"table": table, "runs": rows}])
        return
    measures = {}
    for data in args.data:  # every folder's evaluator first: the retrain job's, trained once and kept
        cfg = choose_recipe(data, []).config
        measures[data] = Measure(cfg, evaluator_for(cfg.data, store=args.runs / EVALUATORS, progress=False))
    rows = [] if args.done is None else [json.loads(line) for line in args.done.read_text().splitlines() if line]
    done = {(r["data"], r["variant"], r["seed"]) for r in rows}
    partial = args.out.with_suffix(".partial.jsonl")
    partial.parent.mkdir(parents=True, exist_ok=True)
    with partial.open("w") as log:
        log.writelines(json.dumps(row) + "\n" for row in rows)  # with the kept runs: one file tabulates them all
        for seed in seeds:  # every variant at the first seed before the second: a cut-short study still compares
            for data in args.data:
                for variant in [v for v in variants if (data.name, v, seed) not in done]:
                    for row in study_run(data, variant, seed, budgets, runs=args.runs, measure=measures[data],
                                         samples=args.samples):  # fmt: skip
                        rows.append(row)
                        log.write(json.dumps(row) + "\n")
                        log.flush()
    table = summarise(rows)
    print_table(table)
    write_figures(rows, table, args.images)
    command = (f"python bench/augment_study.py --data {' '.join(map(str, args.data))} --variants '{args.variants}' "
               f"--budgets {args.budgets} --seeds {args.seeds} --samples {args.samples}"
               + (f" --done {args.done}" if args.done else ""))  # fmt: skip
    write_results(args.out, command, [{"table": table, "runs": rows}])


if __name__ == "__main__":
    main()
