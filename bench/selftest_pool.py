"""The evaluator's self-test on a small folder, with its halves drawn from the held-out images and from every image
(``reference="heldout"`` and ``"all"``): is it the evaluator that is weak at 1,000 images, or the test's sample
size?

The evaluator is trained as ``retrain --data`` would (default ``EvaluatorConfig``, the recipe's data) but without
the self-test that would refuse to save it, then tested both ways with the same seed.

    python scripts/icons.py --out data/icons1k && python bench/selftest_pool.py --data data/icons1k
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from common import bench_parser, write_results

from release.recipe import choose_recipe
from training.data import load_splits
from training.judging.evaluator import Evaluator, EvaluatorConfig, train_evaluator
from training.judging.selftest import run_selftest

TESTS = ("blur", "noise", "shuffle", "clusters")


def main() -> None:
    parser = bench_parser(__doc__, "selftest_pool")
    parser.add_argument("--data", type=Path, default=Path("data/icons1k"))
    args = parser.parse_args()
    data = choose_recipe(args.data).config.data
    splits = load_splits(data)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        train_evaluator(EvaluatorConfig(data=data, selftest=False), Path(tmp) / "evaluator", progress=True)
        evaluator = Evaluator(Path(tmp) / "evaluator")
        for pool, reference in (("held out", "heldout"), ("every image", "all")):
            result = run_selftest(evaluator, splits, seed=0, reference=reference)
            passed = all(result["tests"][name]["passed"] for name in TESTS)
            rows.append({"pool": pool, "images": result["reference_images"], "passed": passed,
                         **{name: result["tests"][name] for name in TESTS}})  # fmt: skip
    print("\npool | images | noise FID interval (limit) | noise judge (limit) | clusters NDB (limit) | passed")
    for r in rows:
        n, c = r["noise"], r["clusters"]
        print(
            f"{r['pool']} | {r['images']} | {n['fid_difference_ci95']} ({n['fid_limit']}) | {n['judge_accuracy']} "
            f"({n['judge_limit']}) | {c['ndb']} of {c['ndb_k']} ({c['ndb_limit']}) | {r['passed']}"
        )
    write_results(args.out, f"python bench/selftest_pool.py --data {args.data}", rows)


if __name__ == "__main__":
    main()
