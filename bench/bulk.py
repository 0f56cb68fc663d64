"""Bulk generation end to end: images per second into a folder, from request to file on disk.

- ``generate_many`` (the SDK: pages at the server's limit, up to ``concurrency`` requests in flight, each file
  written atomically, a row in images.csv per image) at concurrency 1, 4 and 8;
- the loop a user would write instead: one /generate_batch request at a time at the server's n limit, each image
  decoded from base64 and written as ``<seed>.png`` with a row in images.csv (no resume, no atomic writes).

Both write the same files, into a fresh folder per run, against one `bentoml serve` of the model (started here on
a free loopback port, in the service's default layout) on this machine: client and server share its cores.

    python bench/bulk.py --model models/default --images 5000
"""

from __future__ import annotations

import base64
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from common import bench_parser
from ganserve_client import GanClient
from serve import free_port, start, stop  # bench/serve.py, beside this script: how the benches start servers

from release.registry import Registry

FIRST_SEED = 1_000_000


def plain_loop(url: str, out: Path, images: int, page: int) -> None:
    """One request at a time at the server's n limit; each image written as it is decoded."""
    out.mkdir()
    with httpx.Client(base_url=url, timeout=60) as http, open(out / "images.csv", "w", newline="") as fh:
        rows = csv.writer(fh)
        rows.writerow(["seed", "label", "model_version", "file"])
        for offset in range(0, images, page):
            n = min(page, images - offset)
            response = http.post("/generate_batch", json={"n": n, "seed": FIRST_SEED + offset})
            response.raise_for_status()
            batch = response.json()
            for image in batch["images"]:
                name = f"{image['seed']}.png"
                (out / name).write_bytes(base64.b64decode(image["data"]))
                rows.writerow([image["seed"], image["label"] or "", batch["model_version"], name])


def sdk(url: str, out: Path, images: int, concurrency: int) -> None:
    with GanClient(url, timeout=60) as client:
        client.generate_many(images, out=out, seed=FIRST_SEED, concurrency=concurrency, progress=False)


def timed(work, out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    work(out)
    seconds = time.perf_counter() - started
    shutil.rmtree(out)
    return seconds


def serve(model: Path, home: Path) -> tuple[subprocess.Popen, str]:
    Registry(home).import_model(model, promote_if_empty=True, force=True)  # speed needs no gate
    port = free_port()
    env = {**os.environ, "BENTOML_HOME": str(home), "BENCH_LOGS": str(home)}
    cmd = [sys.executable, "-m", "bentoml", "serve", "service.service:GANServe", "--host", "127.0.0.1", "--port",
           str(port)]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    return start(cmd, env, f"{url}/generate", "ganserve bulk"), url


def main() -> None:
    parser = bench_parser(__doc__, "bulk")
    parser.add_argument("--model", type=Path, default=Path("models/default"))
    parser.add_argument("--images", type=int, default=5000, help="images per run (default 5000)")
    parser.add_argument("--concurrency", default="1,4,8", help="generate_many's concurrency levels")
    parser.add_argument("--repeats", type=int, default=3, help="runs per cell; the median is reported")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        home, folder = Path(tmp) / "home", Path(tmp) / "images"
        home.mkdir()
        proc, url = serve(args.model, home)
        try:
            with GanClient(url) as client:
                info = client.info()
                page = info.limits.n[1]
                client.generate_many(2 * page, out=Path(tmp) / "warm", concurrency=2, progress=False)  # warm-up
            sides = {"plain /generate_batch loop": lambda out: plain_loop(url, out, args.images, page)}
            for c in levels:
                sides[f"generate_many c={c}"] = lambda out, c=c: sdk(url, out, args.images, c)
            rows = []
            for side, work in sides.items():
                runs = [timed(work, folder) for _ in range(args.repeats)]
                seconds = statistics.median(runs)
                rows.append({"side": side, "images": args.images, "seconds": seconds,
                             "images_per_s": args.images / seconds, "runs_s": runs})  # fmt: skip
                print(f"{side:<28} {args.images / seconds:>8.0f} images/s  ({seconds:.2f} s median of "
                      f"{', '.join(f'{r:.2f}' for r in runs)})", flush=True)  # fmt: skip
        finally:
            stop(proc)

    base = rows[0]["images_per_s"]
    for row in rows:
        row["vs_plain_loop"] = row["images_per_s"] / base
    print(f"\n{'side':<28} {'images/s':>9} {'vs loop':>8}")
    for row in rows:
        print(f"{row['side']:<28} {row['images_per_s']:>9.0f} {row['vs_plain_loop']:>7.2f}x")
    result = {"benchmark": "bulk", "model": str(args.model), "model_version": info.model_version,
              "images": args.images, "page": page, "repeats": args.repeats, "cores": os.cpu_count(),
              "rows": rows}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
