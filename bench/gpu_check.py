"""A one-shot GPU check, for the day a machine with an NVIDIA GPU is lent: one script, under 5 minutes.

It prints, for the model folder given:
- the execution provider onnxruntime really uses (onnxruntime-gpu lists CUDA as available even without a GPU);
- parity, CPU against CUDA, on the golden seeds of tests/test_latents.py and more: pixel levels apart, and the
  latents the graph draws on the device against the numpy reference (service.latents);
- whether every node of the graph, the latent-drawing ones included, runs on the device (a session that may not
  fall back to the CPU);
- images/s at batch 1 to 1,024, with IO binding off (``session.run``) and on (outputs bound on the device);
- n=1 and n=64 latency through the real service (``bentoml serve``, the batched layout a GPU gets by default).

Without CUDA it stops with one line that says so (exit 1). Writes JSON like every bench script.

    python bench/gpu_check.py --model models/default
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from common import bench_parser

from service.latents import latents_for_seeds
from service.runtime import GeneratorRuntime, nvidia_driver_present

GOLDEN_SEEDS = [0, 7, 2**32 - 1, *range(1, 62)]  # tests/test_latents.py's golden seeds, then more
BATCHES = (1, 4, 16, 64, 256, 1024)
CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"


class NoCuda(Exception):
    """onnxruntime cannot run the model on CUDA here."""


def cuda_runtime(folder: Path) -> GeneratorRuntime:
    """The model on CUDA, or NoCuda with what onnxruntime offers and what it actually used."""
    import onnxruntime as ort

    if not nvidia_driver_present():
        raise NoCuda("no CUDA: no NVIDIA driver (libcuda) on this machine; run this where an NVIDIA GPU is lent")
    if CUDA not in ort.get_available_providers():
        raise NoCuda(f"no CUDA: this onnxruntime ({ort.__version__}) offers {ort.get_available_providers()}; "
                     "install onnxruntime-gpu on a machine with an NVIDIA GPU")  # fmt: skip
    runtime = GeneratorRuntime(folder, providers=[CUDA, CPU])
    if runtime.provider != CUDA:
        raise NoCuda(f"no CUDA: onnxruntime offers CUDA but runs the model on {runtime.provider} (no usable GPU, "
                     "driver or CUDA libraries)")  # fmt: skip
    return runtime


def parity(reference: GeneratorRuntime, other: GeneratorRuntime, seeds: list[int]) -> dict:
    """Pixel levels apart (max, and the share of pixels that differ) and each side's latents against numpy's."""
    a, b = reference.generate(seeds).images, other.generate(seeds).images
    levels = np.abs(a.astype(np.int16) - b.astype(np.int16))
    expected = latents_for_seeds(np.asarray(seeds, np.uint64), reference.manifest.latent_dim)
    return {
        "seeds": len(seeds),
        "max_levels": int(levels.max()),
        "pixels_differing": float((levels > 0).mean()),
        "allowed_levels": reference.manifest.parity_levels,
        "z_vs_numpy": {
            side.provider: float(np.abs(_latents(side, seeds) - expected).max()) for side in (reference, other)
        },
    }


def _latents(runtime: GeneratorRuntime, seeds: list[int]) -> np.ndarray:
    """The latents the model's graph draws for the seeds (its ``z`` output), on the runtime's device."""
    return runtime.session.run(["z"], _feeds(runtime, len(seeds), seeds))[0]


def every_node_on(folder: Path, provider: str) -> str:
    """'yes', or why not: a session that may not fall back to the CPU refuses to start if any node would."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if provider != CPU:  # the CPU provider is the fallback itself
        options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    try:
        ort.InferenceSession(str(folder / "generator.onnx"), options, providers=[provider])
    except Exception as err:  # onnxruntime raises its own Fail with the nodes it could not place
        return f"no: {str(err).splitlines()[0][:300]}"
    return "yes"


def _feeds(runtime: GeneratorRuntime, n: int, seeds: list[int] | None = None) -> dict[str, np.ndarray]:
    feeds = {"seeds": np.asarray(seeds if seeds is not None else range(n), np.int64),
             "truncation": np.full(n, np.inf, np.float32)}  # fmt: skip
    if runtime.manifest.conditional:
        feeds["labels"] = np.full(n, -1, np.int64)
    return feeds


def throughput(runtime: GeneratorRuntime, batches=BATCHES, seconds: float = 1.0) -> list[dict]:
    """Images/s at each batch size, IO binding off (``session.run``) and on (inputs and outputs bound, the images
    left on the device and copied to the host once per run)."""
    rows = []
    for n in batches:
        for io, once in (("off", _plain(runtime, n)), ("on", _bound(runtime, n))):
            once()  # warm: the first run of a shape allocates
            runs, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                once()
                runs += 1
            elapsed = time.perf_counter() - start
            rows.append({"batch": n, "io_binding": io, "images_per_s": runs * n / elapsed,
                         "ms_per_run": elapsed / runs * 1e3})  # fmt: skip
    return rows


def _plain(runtime: GeneratorRuntime, n: int):
    feeds = _feeds(runtime, n)
    return lambda: runtime.session.run(["images"], feeds)


def _bound(runtime: GeneratorRuntime, n: int):
    binding = runtime.session.io_binding()
    for name, value in _feeds(runtime, n).items():
        binding.bind_cpu_input(name, value)
    binding.bind_output("images", "cuda" if runtime.provider == CUDA else "cpu")

    def once() -> None:
        runtime.session.run_with_iobinding(binding)
        binding.copy_outputs_to_cpu()

    return once


def service_latency(folder: Path, requests: dict[int, int]) -> dict[str, dict]:
    """p50/p99 of ``requests[n]`` sequential /generate calls for each n, through ``bentoml serve`` on this machine."""
    from serve import free_port, start, stop

    from release.registry import Registry

    with tempfile.TemporaryDirectory() as home:
        Registry(Path(home)).import_model(folder, promote_if_empty=True, force=True)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "bentoml", "serve", "--host", "127.0.0.1", "--port", str(port),
               "service.service:GANServe"]  # fmt: skip
        proc = start(cmd, {**os.environ, "BENTOML_HOME": home, "BENCH_LOGS": home}, f"{base}/generate", "gpu-check")
        try:
            out = {}
            with httpx.Client(base_url=base, timeout=60) as client:
                for n, count in requests.items():
                    times = []
                    for i in range(count):
                        start_time = time.perf_counter()
                        client.post("/generate", json={"n": n, "seed": i}).raise_for_status()
                        times.append((time.perf_counter() - start_time) * 1e3)
                    times.sort()
                    out[f"n={n}"] = {"requests": count, "p50_ms": statistics.median(times),
                                     "p99_ms": times[min(len(times) - 1, int(0.99 * len(times)))]}  # fmt: skip
            out["provider"] = httpx.get(f"{base}/info", timeout=10).json()["provider"]
            return out
        finally:
            stop(proc)


def main() -> None:
    parser = bench_parser(__doc__, "gpu_check")
    parser.add_argument("--model", type=Path, default=Path("models/default"))
    parser.add_argument("--seconds", type=float, default=1.0, help="per batch size and IO binding mode")
    args = parser.parse_args()
    try:
        gpu = cuda_runtime(args.model)
    except NoCuda as err:
        sys.exit(str(err))
    cpu = GeneratorRuntime(args.model, providers=[CPU])
    result = {"benchmark": "gpu_check", "model": str(args.model), "provider": gpu.provider}
    print(f"provider in use: {gpu.provider} (asked for {CUDA}, {CPU})")
    result["parity"] = parity(cpu, gpu, GOLDEN_SEEDS)
    p = result["parity"]
    print(f"parity CPU vs CUDA on {p['seeds']} seeds: at most {p['max_levels']} levels apart (allowed "
          f"{p['allowed_levels']}), {100 * p['pixels_differing']:.2f} % of pixels differ; latents vs numpy: "
          + ", ".join(f"{k} {v:.1e}" for k, v in p["z_vs_numpy"].items()))  # fmt: skip
    result["every_node_on_device"] = every_node_on(args.model, CUDA)
    print(f"every node on CUDA, the latent-drawing ones included: {result['every_node_on_device']}")
    result["throughput"] = throughput(gpu, seconds=args.seconds)
    for row in result["throughput"]:
        print(f"  batch {row['batch']:>5}  IO binding {row['io_binding']:<3}  {row['images_per_s']:>10.0f} img/s  "
              f"{row['ms_per_run']:8.2f} ms/run")  # fmt: skip
    result["service"] = service_latency(args.model, {1: 200, 64: 50})
    s = result["service"]
    one, many = s["n=1"], s["n=64"]
    print(f"through the service ({s['provider']}): n=1 p50 {one['p50_ms']:.1f} ms p99 {one['p99_ms']:.1f} ms; "
          f"n=64 p50 {many['p50_ms']:.1f} ms p99 {many['p99_ms']:.1f} ms")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
