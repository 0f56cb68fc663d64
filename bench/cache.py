"""The memory-mapped data cache: build speed, memory, and training speed from it against an in-memory tensor.

Writes a synthetic folder of ``--images`` 64x64 RGB PNGs (smooth procedural images, so the files are small; two
processes; kept between runs in ``--workdir``), then, each phase in a fresh process so its peak memory is its own:

1. build: ``load_splits`` decodes the folder into the cache (images/s, peak RSS split into anonymous and file-backed);
2. train: ``ganserve train`` of a small 64x64 RGB DCGAN for ``--steps`` G steps reading batches from the cache, and
   the same run with the training split copied into an ordinary in-memory tensor first, alternating ``--rounds``
   times. Training images/s is the mean of stats.jsonl's windows after the first (warm-up); the figure is the ratio
   of the best rounds, with CPU time per image beside it;
3. gather: the one step that differs, a batch of random rows made into floats, from the map and from memory.

    python bench/cache.py --images 200000 --steps 60 --rounds 3
"""

from __future__ import annotations

import json
import multiprocessing as mp
import platform
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from common import bench_parser
from PIL import Image

from training.config import DataConfig, validate_config
from training.data import load_splits

SIZE = 64


# --- the synthetic folder -----------------------------------------------------------------------------------------


def _smooth_image(seed: int) -> np.ndarray:
    """A few low-frequency waves per channel: smooth, so the PNG is a few KB, yet every image differs."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    image = np.zeros((SIZE, SIZE, 3))
    for c in range(3):
        for _ in range(3):
            (fx, fy), phase = rng.uniform(0.5, 3, 2), rng.uniform(0, 2 * np.pi)
            image[..., c] += np.sin(2 * np.pi * (fx * x + fy * y) + phase)
    return ((image / 6 + 0.5) * 255).clip(0, 255).astype(np.uint8)


def _write_range(args: tuple[Path, int, int]) -> None:
    folder, start, stop = args
    for i in range(start, stop):
        Image.fromarray(_smooth_image(i)).save(folder / f"{i:07d}.png", compress_level=6)


def make_folder(folder: Path, n: int, workers: int = 2) -> float:
    """Write ``n`` PNGs into ``folder`` unless it already holds exactly them; returns the seconds spent."""
    done = folder / f".complete-{n}"
    if done.exists():
        return 0.0
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    start = time.perf_counter()
    chunks = [(folder, lo, min(lo + 2000, n)) for lo in range(0, n, 2000)]
    with mp.get_context("spawn").Pool(workers) as pool:
        for k, _ in enumerate(pool.imap_unordered(_write_range, chunks), 1):
            print(f"\rwriting PNGs: {min(k * 2000, n):,}/{n:,}", end="", flush=True)
    print()
    done.touch()
    return time.perf_counter() - start


# --- memory, sampled ----------------------------------------------------------------------------------------------


def _status() -> dict[str, int]:
    """This process's RSS figures from /proc/self/status, in bytes."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out


class PeakMemory:
    """Samples RssAnon and RssFile every 20 ms (the kernel keeps a peak only of their sum, VmHWM)."""

    def __init__(self) -> None:
        self.peak = {"RssAnon": 0, "RssFile": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = _status()
            for key in self.peak:
                self.peak[key] = max(self.peak[key], now[key])
            time.sleep(0.02)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak["VmHWM"] = _status()["VmHWM"]


# --- phases, each in a fresh process ------------------------------------------------------------------------------


def _data_config(folder: Path, cache: Path) -> DataConfig:
    return DataConfig(kind="folder", path=folder, image_size=SIZE, channels=3, cache_dir=cache)


def build_phase(folder: Path, cache: Path) -> dict:
    shutil.rmtree(cache, ignore_errors=True)
    with PeakMemory() as mem:
        start, cpu = time.perf_counter(), time.process_time()
        splits = load_splits(_data_config(folder, cache))
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    n = len(splits.train) + len(splits.heldout)
    return {"images": n, "seconds": round(seconds, 2), "images_per_sec": round(n / seconds, 1),
            "cpu_us_per_image": round(cpu / n * 1e6, 1), **mem.peak}  # fmt: skip


def train_phase(folder: Path, cache: Path, mode: str, steps: int, batch: int) -> dict:
    import training.train as train_module

    real_load, load_cpu = train_module.load_splits, []

    def timed_load(cfg: DataConfig):
        """The cached splits; for "memory", the training images copied out of the map into ordinary (anonymous)
        memory first. Its CPU time is left out of the per-image figure."""
        start = time.process_time()
        splits = real_load(cfg)
        if mode == "memory":
            train = type(splits.train)(splits.train.images.clone(), splits.train.labels, splits.train.class_names)
            splits = type(splits)(train, splits.heldout, splits.skipped)
        load_cpu.append(time.process_time() - start)
        return splits

    train_module.load_splits = timed_load
    cfg = validate_config(
        {
            "name": f"bench-{mode}", "max_steps": steps, "epochs": 1, "batch_size": batch, "log_every": 20,
            "checkpoint_every": 10**6, "grid_size": 16, "ema": {"enabled": False},
            "data": _data_config(folder, cache).model_dump(mode="json"),
            "model": {"latent_dim": 64, "g_width": 16, "d_width": 16},
        }
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as runs, PeakMemory() as mem:
        cpu = time.process_time()
        run_dir = train_module.train(cfg, runs_dir=Path(runs), progress=False)
        cpu = time.process_time() - cpu - sum(load_cpu)
        records = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    rates = [r["images_per_sec"] for r in records if r.get("kind") == "step"][1:]  # the first window warms up
    cpu_us = round(cpu / (steps * batch) * 1e6, 1)  # steadier than images/s on a shared machine (whole run)
    return {"mode": mode, "images_per_sec": round(float(np.mean(rates)), 1), "windows": len(rates),
            "cpu_us_per_image": cpu_us, **mem.peak}  # fmt: skip


def gather_phase(folder: Path, cache: Path, batch: int, blocks: int = 5, reps: int = 200) -> dict:
    """The one step that differs between the two: a batch of random rows made into float [-1, 1] NCHW, as
    ``_real_batch`` does, from the map and from an in-memory copy, in alternating blocks; median µs per batch."""
    mapped = load_splits(_data_config(folder, cache)).train.images
    sources = {"cache": mapped, "memory": mapped.clone()}
    gen = torch.Generator().manual_seed(0)
    times: dict[str, list[float]] = {mode: [] for mode in sources}
    for _ in range(blocks):
        for mode, images in sources.items():
            idx = torch.randint(len(images), (reps, batch), generator=gen)
            start = time.perf_counter()
            for row in idx:
                images[row].float().div_(127.5).sub_(1.0).contiguous(memory_format=torch.channels_last)
            times[mode].append((time.perf_counter() - start) / reps * 1e6)
    return {mode: round(float(np.median(t)), 1) for mode, t in times.items()}


def in_fresh_process(fn, *args) -> dict:
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


# --- report -------------------------------------------------------------------------------------------------------


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def main() -> None:
    parser = bench_parser(__doc__, "cache", rounds=3)
    parser.add_argument("--images", type=int, default=200_000)
    parser.add_argument("--steps", type=int, default=60, help="G steps per training round")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "ganserve-bench-cache")
    args = parser.parse_args()

    folder, cache = args.workdir / f"png-{args.images}", args.workdir / "cache"
    generated = make_folder(folder, args.images)
    build = in_fresh_process(build_phase, folder, cache)
    gather = in_fresh_process(gather_phase, folder, cache, args.batch)
    rounds = {"cache": [], "memory": []}
    for round_ in range(args.rounds):
        for mode in ("cache", "memory") if round_ % 2 == 0 else ("memory", "cache"):  # neither always goes first
            rounds[mode].append(in_fresh_process(train_phase, folder, cache, mode, args.steps, args.batch))
        print(f"round {round_ + 1}/{args.rounds}: "
              + "   ".join(f"{m} {rounds[m][-1]['images_per_sec']:8.1f} img/s" for m in rounds))  # fmt: skip
    best = {m: max(rounds[m], key=lambda r: r["images_per_sec"]) for m in rounds}
    ratio = best["cache"]["images_per_sec"] / best["memory"]["images_per_sec"]
    dataset_bytes = build["images"] * 3 * SIZE * SIZE

    print(f"\n{args.images:,} PNGs of {SIZE}x{SIZE} RGB; decoded: {_gib(dataset_bytes)}")
    print(f"{'phase':<34} {'images/s':>10} {'CPU µs/img':>10} {'peak RSS':>10} {'anon':>10} {'file':>10}")
    rows = [("build the cache", build)] + [(f"train from {m}", best[m]) for m in ("cache", "memory")]
    for name, r in rows:
        print(f"{name:<34} {r['images_per_sec']:>10.1f} {r.get('cpu_us_per_image', '-'):>10} "
              f"{_gib(r['VmHWM']):>10} {_gib(r['RssAnon']):>10} {_gib(r['RssFile']):>10}")  # fmt: skip
    cpu_ratio = min(r["cpu_us_per_image"] for r in rounds["cache"]) / min(
        r["cpu_us_per_image"] for r in rounds["memory"]
    )
    print(f"{'ratio train cache / memory':<34} {ratio:>10.3f} {cpu_ratio:>10.3f}  (images/s; CPU per image)")
    print(f"batch of {args.batch} random rows to float: {gather['cache']:.0f} µs from the cache, "
          f"{gather['memory']:.0f} µs from memory")  # fmt: skip
    result = {
        "benchmark": "cache", "images": args.images, "size": SIZE, "dataset_bytes": dataset_bytes,
        "generate_seconds": round(generated, 1), "build": build, "gather_us_per_batch": gather,
        "train_rounds": rounds, "steps": args.steps, "batch_size": args.batch, "ratio_best": round(ratio, 4),
        "cpu_ratio_best": round(cpu_ratio, 4), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "machine": platform.machine(),
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
