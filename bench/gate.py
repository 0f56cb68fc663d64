"""The quality gate's wall time, with its stages: a model judged against an equal production.

Each case runs ``training.judging.gate.evaluate`` under cProfile in this process with the same model as candidate
and production: the retrain job's case, two models' samples, the self-test and the paired FID interval (judged
alone, a model skips the second model's sampling, features and judges). The stage table reads the profile's
cumulative time of the functions that do the work, so a stage nested in another (the self-test's features inside
"self-test") counts in both, and the total is the gate's own clock.

    python bench/gate.py --samples 5000 \\
        --case fashion=models/default:configs/fashion-mnist.yaml \\
        --case emoji=runs/emoji-model:configs/emoji.yaml

A case is NAME=MODEL_FOLDER:RUN_CONFIG; its evaluator is found by the data's key (shipped, or under
``--runs-dir``/evaluators), as ``ganserve evaluate`` finds it.
"""

from __future__ import annotations

import cProfile
import pstats
import time
from pathlib import Path

from common import bench_parser, write_results

from training.config import load_config
from training.judging.evaluator import EVALUATORS
from training.judging.gate import GateConfig, evaluate

# where the gate spends its time: a stage's label, then the module file and the function whose cumulative time it is
STAGES = {
    "self-test (evaluator's power)": "selftest.py run_selftest",
    "draw samples (onnxruntime, latents in the graph)": "runtime.py generate",
    "evaluator features": "evaluator.py __call__",
    "FID (+ bootstrap)": "metrics.py fid_bootstrap", "paired FID interval": "metrics.py fid_paired_difference",
    "feature judge (logistic)": "metrics.py logistic_judge", "pixel judges (CNN D)": "metrics.py pixel_judge",
    "clusters: k-means": "metrics.py kmeans", "KID": "metrics.py kid",
    "precision / recall": "metrics.py precision_recall",
    "density / coverage": "metrics.py density_coverage",
    "nearest neighbours (memorization)": "metrics.py nearest_neighbour_distances",
}  # fmt: skip


def _stages(profile: cProfile.Profile) -> dict[str, float]:
    stats = pstats.Stats(profile).stats  # {(file, line, name): (cc, nc, tt, ct, callers)}
    where = {label: tuple(at.split()) for label, at in STAGES.items()}
    return {
        label: sum(row[3] for (file, _, fn), row in stats.items() if fn == name and file.endswith(suffix))
        for label, (suffix, name) in where.items()
    }


def run_case(name: str, model: Path, config: Path, *, samples: int, runs_dir: Path) -> list[dict]:
    data = load_config(config).data
    rows = []
    for against in (model,):
        profile = cProfile.Profile()
        started = time.perf_counter()
        profile.enable()
        report = evaluate(model, production=against, data=data, evaluators=runs_dir / EVALUATORS,
                          cfg=GateConfig(samples=samples))  # fmt: skip
        profile.disable()
        wall = time.perf_counter() - started
        rows.append({
            "case": name, "against": "itself" if against else "none", "samples": samples,
            "image": f"{data.image_size}x{data.image_size}x{data.channels}",
            "heldout": report["power"]["heldout_images"] if "power" in report else None,
            "decision": report["decision"], "wall_s": round(wall, 1), "gate_s": report["seconds"],
            "stages_s": {k: round(v, 1) for k, v in _stages(profile).items()},
        })  # fmt: skip
        print(f"{name} against {rows[-1]['against']}: {wall:.1f} s ({report['decision']})", flush=True)
    return rows


def main() -> None:
    parser = bench_parser(__doc__, "gate")
    parser.add_argument("--case", action="append", required=True, help="NAME=MODEL_FOLDER:RUN_CONFIG")
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"))
    args = parser.parse_args()
    rows = []
    for case in args.case:
        name, _, rest = case.partition("=")
        model, _, config = rest.partition(":")
        rows += run_case(name, Path(model), Path(config), samples=args.samples, runs_dir=args.runs_dir)

    labels = list(STAGES)
    heads = [f"{r['case']} vs {r['against']}" for r in rows]
    width = max(map(len, [*labels, "stage"])) + 2
    print("\n" + "stage".ljust(width) + "".join(h.rjust(22) for h in heads))
    for label in labels:
        print(label.ljust(width) + "".join(f"{r['stages_s'][label]:>21.1f}s" for r in rows))
    print("total (gate's clock)".ljust(width) + "".join(f"{r['gate_s']:>21.1f}s" for r in rows))
    write_results(
        args.out,
        "python bench/gate.py " + " ".join(f"--case {c}" for c in args.case) + f" --samples {args.samples}",
        rows,
    )


if __name__ == "__main__":
    main()
