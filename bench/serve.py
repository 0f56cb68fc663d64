"""Serving speed, every side measured in one run on this machine with one load generator (`hey`, Debian's package):

- the in-process ceiling: seeds -> onnxruntime (latents drawn in the graph) -> PNG in a tight loop
  (``GeneratorRuntime.generate``), one process and two 1-thread processes;
- ganserve (`bentoml serve service.service:GANServe`) in each layout asked for, n = 1 and n = 16 at concurrency 1, 8
  and 32, with the mean number of requests per onnxruntime run read from /metrics; /generate is a route of the ASGI
  app BentoML mounts (the default), and, for the first layout, also BentoML's ``@bentoml.api`` route
  (``GANSERVE_ROUTE=api``) doing the same work;
- the naive peer a user would write instead (FastAPI + uvicorn + onnxruntime per request, bench/peers/naive_fastapi.py);
- BentoML's floor: a no-op endpoint returning a constant PNG (bench/peers/noop_bento.py);
- then ganserve (the first layout) under mixed load: n=1 alone (``ALONE`` connections), then the same n=1 client
  beside every other kind of request at once (``MIXED``: grids of 16 and 64, /generate_batch, rejection sampling
  with 64 candidates, 120-frame walks, bodies that are not JSON), 32 connections in all; with the summed RSS of the
  service's processes idle and through the mixed load (a soak when ``--mixed-seconds`` is long).

    python bench/serve.py --model models/default --seconds 8
    python bench/serve.py --phases mixed --mixed-seconds 600      # the 10-minute soak
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from common import bench_parser

from service.imaging import encode_png
from service.runtime import GeneratorRuntime

ROOT = Path(__file__).resolve().parent.parent
LOADS = [(n, c) for n in (1, 16) for c in (1, 8, 32)]
ALONE = 4  # connections of the n=1 client, alone and within the mixed load
MIXED = {  # the rest of the mixed load: connections, path and body of each kind; 32 connections with the n=1 client
    "n=16": (6, "/generate", {"n": 16, "seed": 1}),
    "n=64": (6, "/generate", {"n": 64, "seed": 1}),
    "batch n=16": (4, "/generate_batch", {"n": 16, "seed": 1}),
    "drs n=4 x64": (4, "/generate", {"n": 4, "seed": 1, "sampler": "drs", "max_candidates": 64}),
    "walk 120": (4, "/interpolate", {"seeds": [1, 2], "frames": 120}),
    "not JSON": (4, "/generate", '{"n": 1,'),
}


def _ceiling_worker(folder: str, seconds: float, n: int, threads: int, out: mp.Queue) -> None:
    runtime = GeneratorRuntime(Path(folder), threads=threads)
    done, seed, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        images = runtime.generate(np.arange(seed, seed + n)).images  # the service's path: the graph draws z too
        for image in images:  # one PNG per image, as /generate_batch encodes them
            encode_png(image)
        done, seed = done + n, seed + n
    out.put(done / (time.perf_counter() - start))


def ceiling(folder: Path, seconds: float, *, processes: int, threads: int, n: int = 64) -> float:
    queue: mp.Queue = mp.get_context("spawn").Queue()
    workers = [mp.get_context("spawn").Process(target=_ceiling_worker, args=(str(folder), seconds, n, threads, queue))
               for _ in range(processes)]  # fmt: skip
    for w in workers:
        w.start()
    rates = [queue.get(timeout=seconds + 120) for _ in workers]
    for w in workers:
        w.join()
    return sum(rates)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], env: dict, ready: str, name: str) -> subprocess.Popen:
    log = open(Path(env["BENCH_LOGS"]) / f"{name.replace(' ', '-')}.log", "a")  # noqa: SIM115
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.post(ready, json={"n": 1, "seed": 0}, timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"{' '.join(cmd)} did not come up; see {log.name}")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def hey(url: str, n: int, c: int, seconds: float, *, body: dict | str | None = None, expect: int = 200) -> dict:
    """``hey`` posting ``body`` (default: n images from seed 1) for ``seconds`` over ``c`` connections."""
    body = body if isinstance(body, str) else json.dumps(body or {"n": n, "seed": 1})
    cmd = ["hey", "-z", f"{seconds}s", "-c", str(c), "-m", "POST", "-T", "application/json", "-d", body, url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    statuses = {int(k): int(v) for k, v in re.findall(r"\[(\d+)\]\s+(\d+) responses", out)}
    if not statuses.get(expect):
        raise RuntimeError(f"no {expect} response from {url} with {body}, c={c}:\n{out[-2000:]}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)) * statuses[expect] / sum(statuses.values())
    pct = {int(p): float(s) * 1000 for p, s in re.findall(r"(\d+)% in ([\d.]+) secs", out)}
    slowest = float(re.search(r"Slowest:\s+([\d.]+)", out).group(1)) * 1000
    # hey leaves out percentiles it has too few samples for: fall back to the slowest request
    return {"requests_per_s": rps, "images_per_s": rps * n, "p50_ms": pct.get(50, slowest),
            "p99_ms": pct.get(99, slowest), "max_ms": slowest,
            "statuses": statuses, "errors": sum(v for k, v in statuses.items() if k != expect)}  # fmt: skip


def tree_rss_mb(root: int) -> float:
    """Summed resident memory of a process and all its descendants (Linux /proc), in MB."""
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            todo += [int(c) for t in Path(f"/proc/{pid}/task").glob("*/children") for c in t.read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total / 1e6


class RssSampler(threading.Thread):
    """``tree_rss_mb`` every ``every`` seconds until stopped: (seconds since start, MB) pairs."""

    def __init__(self, root: int, every: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.root, self.every, self.samples, self.halt = root, every, [], threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        while not self.halt.is_set():
            self.samples.append((time.monotonic() - start, tree_rss_mb(self.root)))
            self.halt.wait(self.every)


def mixed(base: str, root: int, seconds: float) -> dict:
    """n=1 alone, then n=1 within the mixed load, with the service's RSS idle and through the mixed load."""
    for _, path, body in MIXED.values():  # warm every path once (a walk builds its cut graph on first use)
        httpx.post(base + path, content=body if isinstance(body, str) else json.dumps(body), timeout=60)
    idle = tree_rss_mb(root)
    alone = hey(f"{base}/generate", 1, ALONE, min(seconds, 20))
    sampler = RssSampler(root)
    sampler.start()
    kinds: dict[str, dict | Exception] = {}

    def load(kind: str, c: int, path: str, body: dict | str) -> None:
        try:
            kinds[kind] = hey(base + path, 0, c, seconds, body=body, expect=400 if isinstance(body, str) else 200)
        except Exception as err:  # raised below, once every load has stopped
            kinds[kind] = err

    threads = [
        threading.Thread(target=load, args=(k, *v))
        for k, v in {"n=1": (ALONE, "/generate", {"n": 1, "seed": 1}), **MIXED}.items()
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sampler.halt.set()
    sampler.join()
    if failed := [err for err in kinds.values() if isinstance(err, Exception)]:
        raise failed[0]
    rss = [mb for _, mb in sampler.samples]
    half = rss[len(rss) // 2 :]
    result = {
        "seconds": seconds, "connections": ALONE + sum(c for c, _, _ in MIXED.values()),
        "n1_alone": alone, "kinds": kinds, "server_errors": sum(
            n for k in kinds.values() for status, n in k["statuses"].items() if status >= 500
        ),
        "n1_p99_under_load_vs_alone": kinds["n=1"]["p99_ms"] / alone["p99_ms"],
        "rss_mb": {"idle": idle, "start": rss[0], "middle": rss[len(rss) // 2], "end": rss[-1], "max": max(rss)},
        "rss_vs_idle_max": max(rss) / idle, "rss_growth_second_half": half[-1] / half[0] - 1,
        "rss_samples": sampler.samples,
    }  # fmt: skip
    print(f"n=1 alone (c={ALONE}): p50 {alone['p50_ms']:.1f} ms, p99 {alone['p99_ms']:.1f} ms; "
          f"within the mixed load (c={result['connections']}, {seconds:.0f} s): p50 {kinds['n=1']['p50_ms']:.1f} ms, "
          f"p99 {kinds['n=1']['p99_ms']:.1f} ms ({result['n1_p99_under_load_vs_alone']:.1f}x)")  # fmt: skip
    for kind, r in kinds.items():
        print(f"  {kind:<12} {r['requests_per_s']:7.1f} req/s  p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms  "
              f"statuses {r['statuses']}")  # fmt: skip
    mb = result["rss_mb"]
    print(f"RSS (MB): idle {idle:.0f}, start {mb['start']:.0f}, middle {mb['middle']:.0f}, end {mb['end']:.0f}, "
          f"max {mb['max']:.0f} ({result['rss_vs_idle_max']:.2f}x idle); second half "
          f"{100 * result['rss_growth_second_half']:+.1f} %; 5xx: {result['server_errors']}")  # fmt: skip
    return result


def batch_counters(base: str) -> tuple[float, float]:
    """Runs and requests so far: BentoML's adaptive batching (batched layout) or ganserve's batcher (in process)."""
    text = httpx.get(f"{base}/metrics", timeout=10).text

    def total(suffix: str) -> float:
        names = (f"bentoml_service_adaptive_batch_size_{suffix}", f"ganserve_batch_requests_{suffix}")
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(names))

    return total("count"), total("sum")


def cpu_seconds(root: int) -> float:
    """User + system CPU time of a process and all its descendants (Linux /proc), to price a request in CPU.
    Children are listed per thread; cutime/cstime add descendants that have already exited and been waited for."""
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")
        for children in Path(f"/proc/{pid}/task").glob("*/children"):
            try:
                todo += [int(c) for c in children.read_text().split()]
            except (FileNotFoundError, ProcessLookupError):
                continue
    return total


def _line(r: dict) -> str:
    return (f"{r['side']:<20} n={r['n']:<3} c={r['concurrency']:<3} {r['images_per_s']:>8.0f} img/s "
            f"{r['requests_per_s']:>8.0f} req/s  p50 {r['p50_ms']:>7.1f} ms  p99 {r['p99_ms']:>7.1f} ms  "
            f"server CPU {r['server_cpu_us_per_request']:>6.0f} µs/req"
            + (f"  {r['mean_batch_requests']:.1f} req/run" if r.get("mean_batch_requests") else ""))  # fmt: skip


def throughput(sides: dict, env: dict, seconds: float) -> list[dict]:
    """Each side started in turn, every (n, c) load of ``LOADS`` against it."""
    rows = []
    for side, (cmd, side_env) in sides.items():
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        proc = start([*cmd, "--port", str(port)], {**env, **side_env}, f"{base}/generate", side)
        try:
            for n, c in LOADS:
                hey(f"{base}/generate", n, c, 1)  # warm-up
                batches = batch_counters(base) if side.startswith("ganserve") else None
                cpu = cpu_seconds(proc.pid)
                row = {"side": side, "n": n, "concurrency": c, **hey(f"{base}/generate", n, c, seconds)}
                done = max(row["requests_per_s"] * seconds, 1)
                row["server_cpu_us_per_request"] = (cpu_seconds(proc.pid) - cpu) / done * 1e6
                if batches is not None:
                    after = batch_counters(base)
                    runs, requests = after[0] - batches[0], after[1] - batches[1]
                    row["mean_batch_requests"] = requests / runs if runs else None
                rows.append(row)
                print(_line(row), flush=True)
        finally:
            stop(proc)
    return rows


def targets(result: dict, rows: list[dict], ours: str) -> dict:
    by = {(r["side"], r["n"], r["concurrency"]): r for r in rows}
    return {
        "side": ours,
        "vs_naive": {
            f"n={n} c={c}": by[(ours, n, c)]["requests_per_s"] / by[("naive FastAPI", n, c)]["requests_per_s"]
            for n, c in LOADS
        },
        "n16_c32_vs_ceiling": by[(ours, 16, 32)]["images_per_s"] / result["ceiling_2proc_img_s"],
        "n1_c32_vs_floor": by[(ours, 1, 32)]["requests_per_s"] / by[("BentoML no-op floor", 1, 32)]["requests_per_s"],
        "n1_c32_asgi_vs_api_route": by[(ours, 1, 32)]["requests_per_s"] / by[(f"{ours} api", 1, 32)]["requests_per_s"],
    }


def main() -> None:
    parser = bench_parser(__doc__, "serve")
    parser.add_argument("--model", type=Path, default=Path("models/default"))
    parser.add_argument("--seconds", type=float, default=8, help="each (n, c) load")
    parser.add_argument("--mixed-seconds", type=float, default=60, help="the mixed load (600: the soak)")
    parser.add_argument("--phases", default="throughput,mixed", help="comma-separated: throughput, mixed")
    parser.add_argument(
        "--layouts",
        default="inprocess,batched",
        help="ganserve layouts to run, comma-separated; the first is held to the targets",
    )
    args = parser.parse_args()
    if not shutil.which("hey"):
        sys.exit("needs hey: apt-get install -y hey")
    phases, layouts = args.phases.split(","), args.layouts.split(",")
    result = {"benchmark": "serve", "model": str(args.model), "seconds": args.seconds, "cores": os.cpu_count(),
              "command": " ".join(sys.argv)}  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        env = {**os.environ, "BENTOML_HOME": str(home), "BENCH_LOGS": str(home), "GANSERVE_MODEL_DIR": str(args.model)}
        from release.registry import Registry

        Registry(home).import_model(args.model, promote_if_empty=True, force=True)  # speed needs no gate
        py = sys.executable
        bento = [py, "-m", "bentoml", "serve", "--host", "127.0.0.1"]
        serve = [*bento, "service.service:GANServe"]
        if "throughput" in phases:
            result["ceiling_1proc_img_s"] = ceiling(args.model, args.seconds, processes=1, threads=0)
            result["ceiling_2proc_img_s"] = ceiling(args.model, args.seconds, processes=2, threads=1)
            print(f"in-process ceiling: {result['ceiling_1proc_img_s']:.0f} img/s (1 process), "
                  f"{result['ceiling_2proc_img_s']:.0f} img/s (2 processes x 1 thread)")  # fmt: skip
            sides = {f"ganserve {layout}": (serve, {"GANSERVE_LAYOUT": layout}) for layout in layouts}
            sides[f"ganserve {layouts[0]} api"] = (serve, {"GANSERVE_LAYOUT": layouts[0], "GANSERVE_ROUTE": "api"})
            sides["naive FastAPI"] = (
                [py, "-m", "uvicorn", "bench.peers.naive_fastapi:app", "--host", "127.0.0.1", "--log-level", "warning"],
                {},
            )
            sides["BentoML no-op floor"] = ([*bento, "bench.peers.noop_bento:Noop"], {})
            result["rows"] = throughput(sides, env, args.seconds)
            result["targets"] = targets(result, result["rows"], f"ganserve {layouts[0]}")
            print(json.dumps(result["targets"], indent=2))
        if "mixed" in phases:
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            proc = start([*serve, "--port", str(port)], {**env, "GANSERVE_LAYOUT": layouts[0]}, f"{base}/generate",
                         f"ganserve {layouts[0]} mixed")  # fmt: skip
            try:
                result["mixed"] = {"side": f"ganserve {layouts[0]}", **mixed(base, proc.pid, args.mixed_seconds)}
            finally:
                stop(proc)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
