"""generate_many and `ganserve-client generate` against the real service: pages at the server's limit, resumes a
killed run without losing, repeating or truncating anything, and keeps a folder to the options it was started with."""

import asyncio
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Server, labelled_blobs_in_production
from ganserve_client import AsyncGanClient, GanClient, InvalidRequest, read_provenance
from PIL import Image

pytestmark = pytest.mark.slow

MAX_N = 16  # the server's most images per request, below the default 64: generate_many must page by what it says
CLI = Path(sys.executable).parent / "ganserve-client"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(labelled_blobs_in_production(tmp_path_factory.mktemp("bulk")), GANSERVE_MAX_N=str(MAX_N))
    yield s
    s.stop()


def rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "images.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_a_killed_run_resumes_with_every_seed_once(server, tmp_path):
    out = tmp_path / "out"
    command = [str(CLI), "--url", server.url, "generate", "-n", "2000", "--concurrency", "4", "--out", str(out)]
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and run.poll() is None:
        if out.exists() and sum(name.endswith(".png") for name in os.listdir(out)) >= 300:
            break
        time.sleep(0.002)
    assert run.poll() is None, "the run ended before it could be killed part-way: " + run.communicate()[1]
    run.send_signal(signal.SIGKILL)  # no handler, no cleanup: the process stops wherever it was
    run.communicate(timeout=30)

    first = json.loads((out / ".ganserve-run.json").read_text())["first_seed"]
    expected = {(first + i) % 2**32 for i in range(2000)}
    killed = rows(out)
    # files are written before their rows, one page at a time: up to a page of files may have no row yet
    assert 300 - MAX_N <= len(killed) < 2000 and {int(r["seed"]) for r in killed} <= expected
    # What else an interruption can leave, made certain: half a row, half a file under its temporary name, a file
    # whose row was never written, and a row whose file is gone.
    (out / f".{first + 1999}.png.part").write_bytes(b"\x89PNG\r\n")
    no_row, no_file = killed[0], killed[1]
    text = (out / "images.csv").read_text().replace(",".join(no_row.values()) + "\n", "")
    (out / "images.csv").write_text(text + f"{first + 1998},upp")
    (out / no_file["file"]).unlink()

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"seeds {first} to {(first + 1999) % 2**32}" in resumed.stdout, resumed.stdout
    done = rows(out)
    seeds = [int(r["seed"]) for r in done]
    assert len(seeds) == len(set(seeds)) == 2000 and set(seeds) == expected
    assert sorted(os.listdir(out)) == sorted([".ganserve-run.json", "images.csv", *(f"{s}.png" for s in expected)])
    version = done[0]["model_version"]
    for row in done:
        assert row["file"] == f"{row['seed']}.png" and row["model_version"] == version
        with Image.open(out / row["file"]) as image:
            image.load()  # a truncated file fails here
            assert image.size == (28, 28)
        assert read_provenance(out / row["file"]).seed == int(row["seed"])

    again = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "wrote 0 images" in again.stdout and "2000 already there" in again.stdout
    assert rows(out) == done


def test_sync_and_async_fill_a_folder_alike(server, tmp_path):
    with GanClient(server.url) as client:
        sync = client.generate_many(100, out=tmp_path / "sync", seed=5, format="webp", concurrency=3, progress=False)

    async def fill():
        async with AsyncGanClient(server.url) as client:
            return await client.generate_many(100, out=tmp_path / "async", seed=5, format="webp", concurrency=3)

    asynced = asyncio.run(fill())
    assert (sync.written, sync.skipped, sync.first_seed) == (asynced.written, asynced.skipped, 5) == (100, 0, 5)
    names = sorted(p.name for p in (tmp_path / "sync").glob("*.webp"))
    assert names == sorted(f"{s}.webp" for s in range(5, 105))
    assert names == sorted(p.name for p in (tmp_path / "async").glob("*.webp"))
    for name in names:
        assert (tmp_path / "sync" / name).read_bytes() == (tmp_path / "async" / name).read_bytes()

    def by_seed(folder: str) -> list[dict[str, str]]:
        return sorted(rows(tmp_path / folder), key=lambda r: int(r["seed"]))  # pages land in any order

    assert by_seed("sync") == by_seed("async") and {r["label"] for r in by_seed("sync")} == {
        "top-left", "upper", "lower", "bottom-right"
    }  # fmt: skip

    with GanClient(server.url) as client:
        jpeg = client.generate_many(3, out=tmp_path / "jpeg", seed=1, label="upper", format="jpeg", quality=80)
    assert sorted(p.name for p in jpeg.out.glob("*.jpg")) == ["1.jpg", "2.jpg", "3.jpg"]
    assert {r["label"] for r in rows(jpeg.out)} == {"upper"}


def test_a_folder_keeps_the_options_it_was_started_with(server, tmp_path):
    with GanClient(server.url) as client:
        client.generate_many(20, out=tmp_path, seed=40, label="upper", progress=False)
        with pytest.raises(InvalidRequest, match=r"holds images drawn with label='upper' \(not 'lower'\)"):
            client.generate_many(20, out=tmp_path, label="lower")
        with pytest.raises(InvalidRequest, match=r"seed=40 \(not 41\)"):
            client.generate_many(20, out=tmp_path, seed=41, label="upper")
        with pytest.raises(InvalidRequest, match=r"format='png' \(not 'webp'\)"):
            client.generate_many(20, out=tmp_path, label="upper", format="webp")
        more = client.generate_many(30, out=tmp_path, label="upper")  # no seed: the folder's
    assert (more.first_seed, more.written, more.skipped) == (40, 10, 20)
    assert sorted(int(r["seed"]) for r in rows(tmp_path)) == list(range(40, 70))

    bar = subprocess.run([str(CLI), "--url", server.url, "generate", "-n", "35", "--label", "upper", "--progress",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert bar.returncode == 0 and "5/5 images 100%" in bar.stderr and bar.stderr.endswith("\n")
    mixed = subprocess.run([str(CLI), "--url", server.url, "generate", "-n", "35", "--out", str(tmp_path)],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert mixed.returncode == 2 and mixed.stderr.startswith("error: ") and len(mixed.stderr.splitlines()) == 1
    assert "label='upper' (not None)" in mixed.stderr
