"""What drawing a batch of latents costs, in one process and one run: latent protocol v2 in the graph (the sampler
nodes alone, run by onnxruntime with one thread, as each serving worker runs them) and in its numpy reference,
against protocol v1 (one ``numpy.random.default_rng(seed)`` per image, what every latent cost before v2).

    python bench/latents.py --latent-dim 100 --rounds 7
"""

from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort
from common import bench_parser, fastest, write_results

from service.latents import latents_for_seeds
from training.sampler import sampler_model


def v1_per_image(seeds: np.ndarray, latent_dim: int) -> np.ndarray:
    """Protocol v1, kept here only as the baseline: one generator per image seed."""
    out = np.empty((len(seeds), latent_dim), dtype=np.float32)
    for row, seed in enumerate(seeds):
        out[row] = np.random.default_rng(int(seed)).standard_normal(latent_dim, dtype=np.float32)
    return out


def best_us(draw, rounds: int, min_seconds: float = 0.2) -> float:
    """The fastest of ``rounds`` timings, each averaged over enough calls to last ``min_seconds``."""
    draw()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_seconds / 4:
        draw()
        calls += 1
    per_round = max(1, int(calls * 4 * min_seconds / max(time.perf_counter() - start, 1e-9) / 4))
    return fastest(draw, rounds=rounds, calls=per_round) * 1e6


def main() -> None:
    parser = bench_parser(__doc__, "latents", rounds=7)
    parser.add_argument("--latent-dim", type=int, default=100)
    args = parser.parse_args()

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    graph = ort.InferenceSession(
        sampler_model(args.latent_dim, 0).SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    rows, rounds = [], args.rounds
    print(f"{'n':>5} {'truncation':>10} {'v1 per image µs':>16} {'v2 numpy µs':>12} {'v2 graph µs':>12} "
          f"{'numpy/v1':>9} {'graph/v1':>9}")  # fmt: skip
    for n in (1, 16, 64, 256):
        seeds = np.arange(1000, 1000 + n, dtype=np.int64)
        for t in (None, 0.5):
            trunc = np.full(n, np.inf if t is None else t, np.float32)
            row = {
                "n": n,
                "truncation": t,
                "v1_per_image_us": None if t else best_us(lambda s=seeds: v1_per_image(s, args.latent_dim), rounds),
                "v2_numpy_us": best_us(lambda s=seeds, tr=trunc: latents_for_seeds(s, args.latent_dim, truncation=tr),
                                       rounds),
                "v2_graph_us": best_us(lambda s=seeds, tr=trunc: graph.run(["z"], {"seeds": s, "truncation": tr}),
                                       rounds),
            }  # fmt: skip
            base = rows[-1]["v1_per_image_us"] if t else row["v1_per_image_us"]  # v1 had no bounded truncation
            row["numpy_over_v1"], row["graph_over_v1"] = row["v2_numpy_us"] / base, row["v2_graph_us"] / base
            rows.append(row)
            v1 = "-" if row["v1_per_image_us"] is None else f"{row['v1_per_image_us']:.1f}"
            print(f"{n:>5} {t or '-':>10} {v1:>16} {row['v2_numpy_us']:>12.1f} {row['v2_graph_us']:>12.1f} "
                  f"{row['numpy_over_v1']:>9.3f} {row['graph_over_v1']:>9.3f}")  # fmt: skip
    write_results(args.out, f"python bench/latents.py --latent-dim {args.latent_dim} --rounds {args.rounds}", rows)


if __name__ == "__main__":
    main()
