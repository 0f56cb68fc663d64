"""What discriminator rejection sampling costs, every side measured in one run on this machine:

- in the runtime (``GeneratorRuntime``, one process): candidates drawn per image and how they spread, fallbacks, and
  images/s with plain sampling and with DRS, for batches of 1 and 64;
- through ganserve (`bentoml serve`, in-process layout, `hey` as in bench/serve.py): images/s and latency with
  ``"sampler": "plain"`` and ``"sampler": "drs"``, n = 1 and n = 16 at concurrency 8.

    python bench/drs.py --model /path/to/model-with-discriminator --seconds 8

The model must carry its discriminator (``ganserve export RUN_DIR`` writes the run's; ``ganserve fit-discriminator``
fits one to an exported generator). Quality with and without DRS is the
gate's business (``ganserve evaluate``), not this script's.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import bench_parser
from serve import free_port, hey, start, stop  # bench/serve.py, beside this script: how the benches start servers

from release.registry import Registry
from service.imaging import encode_png
from service.runtime import GeneratorRuntime

LOADS = [(1, 8), (16, 8)]


def cost(model: GeneratorRuntime, seeds: int) -> dict:
    """Candidates per image over ``seeds`` image seeds, at the manifest's calibration and the default bound."""
    drawn = model.rejection_sample(np.arange(seeds))
    c = drawn.candidates
    return {"images": seeds, "candidates_per_image": float(c.mean()), "p50": float(np.percentile(c, 50)),
            "p99": float(np.percentile(c, 99)), "max": int(c.max()), "fallback_share": float(1 - drawn.accepted.mean()),
            "acceptance_rate": float(seeds / c.sum())}  # fmt: skip


def speed(model: GeneratorRuntime, n: int, seconds: float, drs: bool) -> float:
    """Images/s drawn and encoded to PNG in a tight loop, n seeds a call."""
    done, seed, start_ = 0, 0, time.perf_counter()
    while time.perf_counter() - start_ < seconds:
        seeds = np.arange(seed, seed + n)
        drawn = model.rejection_sample(seeds) if drs else model.generate(seeds)
        for image in drawn.images:
            encode_png(image)
        done, seed = done + n, seed + n
    return done / (time.perf_counter() - start_)


def main() -> None:
    parser = bench_parser(__doc__, "drs")
    parser.add_argument("--model", type=Path, required=True, help="an exported model folder with discriminator.onnx")
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--seeds", type=int, default=10_000, help="image seeds for the candidate counts")
    args = parser.parse_args()
    model = GeneratorRuntime(args.model)
    if model.discriminator is None:
        sys.exit(
            f"{args.model} has no discriminator.onnx: export it from its run with ganserve export RUN_DIR, or fit "
            "one with ganserve fit-discriminator"
        )

    result = {"benchmark": "drs", "model": str(args.model), "version": model.version, "seconds": args.seconds,
              "cores": os.cpu_count(), "calibration": model.manifest.discriminator.model_dump()}  # fmt: skip
    result["cost"] = cost(model, args.seeds)
    k = result["cost"]
    print(f"candidates per image {k['candidates_per_image']:.3f} (p50 {k['p50']:.0f}, p99 {k['p99']:.0f}, "
          f"max {k['max']}), acceptance {k['acceptance_rate']:.3f}, fallbacks {k['fallback_share']:.2%}")  # fmt: skip

    rows = []
    for n in (1, 64):
        plain, drs = speed(model, n, args.seconds, False), speed(model, n, args.seconds, True)
        rows.append({"side": "runtime", "n": n, "plain_img_s": plain, "drs_img_s": drs, "drs_vs_plain": drs / plain})
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        env = {**os.environ, "BENTOML_HOME": str(home), "BENCH_LOGS": str(home), "GANSERVE_LAYOUT": "inprocess"}
        Registry(home).import_model(args.model, promote_if_empty=True, force=True)  # speed needs no gate
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "bentoml", "serve", "--host", "127.0.0.1", "service.service:GANServe"]
        proc = start([*cmd, "--port", str(port)], env, f"{base}/generate", "ganserve drs")
        try:
            for n, c in LOADS:
                measured = {}
                for sampler in ("plain", "drs"):
                    hey(f"{base}/generate", n, c, 1, sampler=sampler)  # warm-up
                    measured[sampler] = hey(f"{base}/generate", n, c, args.seconds, sampler=sampler)
                plain, drs = measured["plain"], measured["drs"]
                rows.append({"side": f"ganserve n={n} c={c}", "n": n, "plain_img_s": plain["images_per_s"],
                             "drs_img_s": drs["images_per_s"], "drs_vs_plain": drs["images_per_s"] /
                             plain["images_per_s"], "plain_p50_ms": plain["p50_ms"], "drs_p50_ms": drs["p50_ms"],
                             "plain_p99_ms": plain["p99_ms"], "drs_p99_ms": drs["p99_ms"],
                             "errors": plain["errors"] + drs["errors"]})  # fmt: skip
        finally:
            stop(proc)
    result["rows"] = rows
    print(f"\n{'side':<22} {'plain img/s':>12} {'DRS img/s':>10} {'DRS / plain':>12}  p50 plain / DRS")
    for r in rows:
        latency = f"  {r['plain_p50_ms']:.1f} / {r['drs_p50_ms']:.1f} ms" if "plain_p50_ms" in r else ""
        side = r["side"] if r["side"] != "runtime" else f"runtime n={r['n']}"
        print(f"{side:<22} {r['plain_img_s']:>12.0f} {r['drs_img_s']:>10.0f} {r['drs_vs_plain']:>12.2f}{latency}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
