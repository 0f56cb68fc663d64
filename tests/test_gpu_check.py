"""bench/gpu_check.py as far as it runs without a GPU: its one-line refusal, and each of its parts on the CPU."""

import subprocess
import sys
from pathlib import Path

import pytest

from service.runtime import GeneratorRuntime, nvidia_driver_present

ROOT = Path(__file__).parent.parent
MODEL = ROOT / "models" / "default"
sys.path.insert(0, str(ROOT / "bench"))
import gpu_check  # noqa: E402


@pytest.mark.skipif(nvidia_driver_present(), reason="an NVIDIA driver is here: the check would run")
def test_without_cuda_it_stops_with_one_line_that_says_so():
    done = subprocess.run([sys.executable, "bench/gpu_check.py"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.startswith("no CUDA: ") and len(done.stderr.strip().splitlines()) == 1, done.stderr
    with pytest.raises(gpu_check.NoCuda, match="^no CUDA: "):
        gpu_check.cuda_runtime(MODEL)


def test_parity_of_two_runtimes_on_the_golden_seeds_and_their_latents_against_numpy():
    a, b = (GeneratorRuntime(MODEL, providers=[gpu_check.CPU], threads=t) for t in (1, 2))
    p = gpu_check.parity(a, b, gpu_check.GOLDEN_SEEDS[:8])
    assert p["seeds"] == 8 and p["max_levels"] == 0 and p["pixels_differing"] == 0
    assert p["z_vs_numpy"][gpu_check.CPU] < 1e-5


def test_every_node_runs_on_the_cpu_and_a_provider_that_cannot_is_named():
    assert gpu_check.every_node_on(MODEL, gpu_check.CPU) == "yes"
    if not nvidia_driver_present():
        assert gpu_check.every_node_on(MODEL, gpu_check.CUDA).startswith("no: ")


def test_throughput_measures_each_batch_with_io_binding_off_and_on():
    runtime = GeneratorRuntime(MODEL, providers=[gpu_check.CPU], threads=1)
    rows = gpu_check.throughput(runtime, batches=(1, 4), seconds=0.02)
    assert [(r["batch"], r["io_binding"]) for r in rows] == [(1, "off"), (1, "on"), (4, "off"), (4, "on")]
    assert all(r["images_per_s"] > 0 and r["ms_per_run"] > 0 for r in rows)


def test_latency_through_the_real_service():
    out = gpu_check.service_latency(MODEL, {1: 3, 64: 1})
    assert out["provider"] == gpu_check.CPU
    assert out["n=1"]["requests"] == 3 and out["n=64"]["requests"] == 1
    assert 0 < out["n=1"]["p50_ms"] <= out["n=1"]["p99_ms"]
