"""The smallest folder the gate can judge: the evaluator's self-test and the gate's verdicts by folder size.

The world is a flat folder of unlabelled RGB 32x32 images of three kinds of shapes (disc, square, diamond) of a
random colour, size and place on a noisy background, drawn by a generator written by hand (``Shapes``), so the true
answer is known. For each size and draw the folder is written from fresh seeds, held out as ``--data`` would
(``release.recipe``), an evaluator is trained on it (``evaluator_for``, the retrain job's path) and the gate judges
three generators with its default settings and no production:

- ``true``: the data's own generator, fresh samples of the true distribution (must pass);
- ``one-kind``: discs only, two of the three kinds dropped (must be rejected);
- ``replay``: training images returned as samples (must be rejected).

The table gives, per size: whether the self-test passed, the three verdicts, and the gate's stated power (the FID
difference, feature-judge accuracy and cluster share it would detect 80 % of the time) with the replay's and the
true generator's memorization ratios and the recall of the true and the one-kind generators.

    python bench/small_gate.py --sizes 250,500,1000,2000,5000 --draws 0
    python bench/small_gate.py --sizes 1000 --draws 0,1,2
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path

import torch
from common import bench_parser, write_results
from PIL import Image
from torch import nn

from release.recipe import choose_recipe
from service.errors import GanserveError
from service.manifest import ImageSpec
from service.runtime import GeneratorRuntime
from training.config import MAX_HOLDOUT_FRACTION
from training.export import export_module
from training.judging.evaluator import EVALUATORS, evaluator_for
from training.judging.gate import MIN_HELDOUT, MIN_REFERENCE, GateConfig, evaluate

SIZE = 32
LATENT = 8 + 3 * SIZE * SIZE


class Shapes(nn.Module):
    """z[0] picks the kind (among ``allowed``), z[1:4] the colour, z[4] the size, z[5:7] the place, z[8:] the
    background noise (levels 0..59 per channel); every draw is uniform through the normal CDF."""

    def __init__(self, allowed: tuple[int, ...] = (0, 1, 2)) -> None:
        super().__init__()
        self.register_buffer("allowed", torch.tensor(allowed))
        grid = torch.arange(SIZE, dtype=torch.float32)
        self.register_buffer("yy", grid[:, None].expand(SIZE, SIZE).clone())
        self.register_buffer("xx", grid[None, :].expand(SIZE, SIZE).clone())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        u = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
        kind = self.allowed[(u[:, 0] * len(self.allowed)).long().clamp(max=len(self.allowed) - 1)]
        colour = (u[:, 1:4] * 200 + 55)[:, :, None, None]
        r = (4 + u[:, 4] * 6)[:, None, None]
        cy = r + u[:, 5, None, None] * (SIZE - 1 - 2 * r)
        cx = r + u[:, 6, None, None] * (SIZE - 1 - 2 * r)
        dy, dx = (self.yy - cy).abs(), (self.xx - cx).abs()
        masks = torch.stack([dy**2 + dx**2 <= r**2, torch.maximum(dy, dx) <= 0.85 * r, dy + dx <= 1.2 * r], 1)
        chosen = (kind[:, None] == torch.arange(3, device=z.device)).float()[:, :, None, None]  # no gather: the
        mask = (masks.float() * chosen).sum(1, keepdim=True)  # exported graph keeps its batch dimension dynamic
        background = (u[:, 8:].reshape(-1, 3, SIZE, SIZE) * 60).floor()
        return (background * (1 - mask) + colour * mask) / 127.5 - 1


class Replay(nn.Module):
    """Training images returned as samples, chosen by z[0]."""

    def __init__(self, images: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("images", images.float() / 127.5 - 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        u = 0.5 * (1 + torch.erf(z[:, 0] / math.sqrt(2)))
        return self.images[(u * len(self.images)).long().clamp(max=len(self.images) - 1)]


def write_folder(root: Path, model: Path, count: int, draw: int) -> None:
    """``count`` images of the true generator, through the one path from seeds to images, on seeds of their own
    (draw x 100,000 on; the gate draws from 1,000,000)."""
    images = GeneratorRuntime(model, providers=["CPUExecutionProvider"]).generate(
        range(draw * 100_000, draw * 100_000 + count)
    )
    root.mkdir(parents=True)
    for i, image in enumerate(images.images):
        Image.fromarray(image).save(root / f"{i:05d}.png")


def run(count: int, draw: int, work: Path) -> dict:
    from training.data import load_splits

    started = time.perf_counter()
    folder = work / f"shapes-{count}-{draw}"
    image = ImageSpec(height=SIZE, width=SIZE, channels=3)
    export_module(Shapes(), work / f"{folder.name}-true", latent_dim=LATENT, image=image)
    write_folder(folder, work / f"{folder.name}-true", count, draw)
    # below the recipe's smallest folder the gate's minimums are lowered to what the folder has: does the
    # instrument itself work there?
    gate = GateConfig(min_reference=min(count, MIN_REFERENCE),
                      min_heldout=min(int(count * MAX_HOLDOUT_FRACTION), MIN_HELDOUT))  # fmt: skip
    recipe = choose_recipe(folder, gate=gate)
    data = recipe.config.data.model_copy(update={"cache_dir": work / "cache"})
    row: dict = {"images": count, "draw": draw, "holdout_fraction": data.holdout_fraction, "heldout": None,
                 "selftest": None}  # fmt: skip
    try:
        evaluator = evaluator_for(data, store=work / EVALUATORS, progress=False)
    except GanserveError as err:
        return row | {"selftest": "failed", "why": str(err)[:300], "seconds": round(time.perf_counter() - started)}
    row["selftest"] = "passed"
    splits = load_splits(data)
    row["heldout"] = len(splits.heldout)
    for name, g in (("true", None), ("one-kind", Shapes(allowed=(0,))), ("replay", Replay(splits.train.images))):
        if g is not None:  # the true generator is exported already: it drew the folder
            export_module(g, work / f"{folder.name}-{name}", latent_dim=LATENT, image=image)
        try:
            report = evaluate(work / f"{folder.name}-{name}", evaluator=evaluator, data=data, cfg=gate)
        except GanserveError as err:
            row[name] = {"decision": "cannot judge", "why": str(err)[:300]}
            continue
        c = report["figures"]["candidate"]
        row[name] = {"decision": report["decision"], "reasons": report["reasons"],
                     "memorization_ratio": c["memorization_ratio"], "dropped_share": c["clusters"]["dropped_share"],
                     "recall": c["recall"], "coverage": c["coverage"], "fid": c["fid"],
                     "feature_judge": c["feature_judge"]["accuracy"]}  # fmt: skip
        if name == "true":
            row["power"] = report["power"]
    row["seconds"] = round(time.perf_counter() - started)
    return row


def _cell(row: dict, name: str) -> str:
    v = row.get(name)
    return "-" if v is None else v["decision"]


def main() -> None:
    parser = bench_parser(__doc__, "small_gate")
    parser.add_argument("--sizes", default="250,500,1000,2000,5000")
    parser.add_argument("--draws", default="0")
    parser.add_argument("--work", type=Path, default=None, help="keep the folders here (default: a temporary one)")
    args = parser.parse_args()
    sizes, draws = [int(s) for s in args.sizes.split(",")], [int(d) for d in args.draws.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        for count in sizes:
            for draw in draws:
                rows.append(run(count, draw, work))
                print(json.dumps(rows[-1]), flush=True)
    head = ("images", "draw", "held out", "self-test", "true", "one-kind", "replay", "FID det.", "judge det.",
            "cluster det.", "replay mem.", "true mem.", "true recall", "one-kind recall")  # fmt: skip
    print("\n" + " | ".join(head))
    for r in rows:
        p = r.get("power", {})
        mem = [r.get(n, {}).get(key, math.nan) for key, n in (("memorization_ratio", "replay"),
               ("memorization_ratio", "true"), ("recall", "true"), ("recall", "one-kind"))]  # fmt: skip
        print(" | ".join(map(str, (r["images"], r["draw"], r["heldout"], r["selftest"], _cell(r, "true"),
              _cell(r, "one-kind"), _cell(r, "replay"), p.get("fid_detectable"), p.get("feature_judge_detectable"),
              p.get("cluster_share_detectable"), *mem))))  # fmt: skip
    write_results(args.out, f"python bench/small_gate.py --sizes {args.sizes} --draws {args.draws}", rows)


if __name__ == "__main__":
    main()
