"""The SDK against the real service, real error responses from real servers, and its install footprint."""

import asyncio
import base64
import csv
import http.server
import io
import json
import subprocess
import sys
import threading
import time
import venv
from pathlib import Path
from typing import ClassVar

import httpx
import numpy as np
import pytest
from conftest import CLASSES, ROOT, LabelledBlobs, Server, SquareJudge, promote
from ganserve_client import (
    AsyncGanClient,
    DrsInfo,
    GanClient,
    InvalidRequest,
    ModelInfo,
    Provenance,
    RateLimited,
    Timeout,
    TransportError,
    Unauthorized,
    Unavailable,
    read_provenance,
)
from ganserve_client._models import GenerateRequest as ClientRequest
from ganserve_client._models import InterpolateLimits, Limits, ModelLine, Promotion, _WireBatch, _WireImage
from ganserve_client._models import InterpolateRequest as ClientWalk
from PIL import Image, PngImagePlugin

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """LabelledBlobs (conditional, CLASSES) in production, exported with SquareJudge as its discriminator so that
    requests may ask for DRS; its plain images are the same as without one."""
    from service.manifest import ImageSpec
    from training.export import export_module

    root = tmp_path_factory.mktemp("client")
    export_module(LabelledBlobs(), root / "labelled", latent_dim=800, image=ImageSpec(height=28, width=28, channels=1),
                  class_names=CLASSES, discriminator=SquareJudge())  # fmt: skip
    promote(root, root / "labelled")
    return root


@pytest.fixture(scope="module")
def server(home):
    s = Server(home)
    yield s
    s.stop()


def test_images_and_seeds_match_the_servers_batch(server):
    with GanClient(server.url) as client:
        images = client.generate(4, seed=7, label="upper")
    raw = httpx.post(f"{server.url}/generate_batch", json={"n": 4, "seed": 7, "label": "upper"}).json()
    assert [i.seed for i in images] == [7, 8, 9, 10] and {i.label for i in images} == {"upper"}
    assert images[0].model_version == raw["model_version"] and images[0].model == raw["model"] == "default"
    assert (images[0].format, images[0].media_type) == ("png", "image/png")
    for image, wire in zip(images, raw["images"], strict=True):
        assert image.data == base64.b64decode(wire["data"])
        assert np.asarray(image.image).shape == (28, 28)


def test_async_client_gives_the_same_images(server):
    async def draw():
        async with AsyncGanClient(server.url) as client:
            images = await client.generate(3, seed=2, label=1, format="webp")
            walk = await client.interpolate([2, 3], frames=2, format="png")
            return images, walk, await client.info(), await client.health()

    images, walk, info, health = asyncio.run(draw())
    with GanClient(server.url) as client:
        assert [i.data for i in images] == [i.data for i in client.generate(3, seed=2, label="upper", format="webp")]
        assert walk.data == client.interpolate([2, 3], frames=2, format="png").data
    assert info.class_names == CLASSES and health.live and health.ready


def test_grid_info_health_and_save(server, tmp_path):
    with GanClient(server.url) as client:
        grid = client.grid(5, seed=1)
        assert grid.size == (3 * 28 + 4 * 2, 2 * 28 + 3 * 2) and grid.info["seeds"] == [1, 2, 3, 4, 5]
        assert grid.format == "PNG" and grid.info["model"] == "default"
        assert client.grid(4, seed=1, format="jpeg", quality=80).format == "JPEG"
        info = client.info()
        assert isinstance(info, ModelInfo) and info.limits.n == [1, 64] and info.image.height == 28
        assert info.model == info.default_model == "default" and set(info.models) == {"default"}
        assert info.models["default"].model_version == info.model_version
        assert [h.current for h in info.history] == [True] and "webp" in info.limits.formats
        assert client.info(model="default").model_version == info.model_version
        image = client.generate(1, seed=9)[0]
        path = image.save(tmp_path / "x.png")
        assert path.read_bytes() == image.data and Image.open(path).size == (28, 28)
    assert GanClient("http://127.0.0.1:9").health().live is False  # nothing listens there; health never raises


def test_formats_decode_to_the_pngs_pixels(server):
    """Lossless WebP gives the PNG's pixels exactly; JPEG at its default quality 90 stays within 4 levels of 255 on
    average (these noisy 28x28 images measure about 3); a lossy WebP decodes too. Each file says what drew it."""
    with GanClient(server.url) as client:
        png = client.generate(4, seed=11, label="lower")
        webp = client.generate(4, seed=11, label="lower", format="webp")
        jpeg = client.generate(4, seed=11, label="lower", format="jpeg")
        lossy = client.generate(1, seed=11, label="lower", format="webp", quality=40)[0]
    assert [i.data[:8] for i in png] == [b"\x89PNG\r\n\x1a\n"] * 4
    assert all(i.data[:4] == b"RIFF" and i.data[8:12] == b"WEBP" for i in webp) and lossy.image.format == "WEBP"
    assert all(i.data[:3] == b"\xff\xd8\xff" and i.media_type == "image/jpeg" for i in jpeg)
    for p, w, j in zip(png, webp, jpeg, strict=True):
        pixels = np.asarray(p.image.convert("L"), dtype=float)
        assert np.array_equal(np.asarray(w.image.convert("L"), dtype=float), pixels)
        assert np.abs(np.asarray(j.image.convert("L"), dtype=float) - pixels).mean() < 4
        for image in (p, w, j):
            made = image.provenance
            assert (made.seed, made.label, made.model_version, made.endpoint) == (p.seed, "lower", p.model_version,
                                                                                  "/generate")  # fmt: skip
            redraw = {"n": 1, "seed": p.seed, "label": "lower", "model": "default", "format": image.format,
                      "sampler": "plain"}  # fmt: skip
            assert made.request == redraw
    assert read_provenance(lossy.data).request["quality"] == 40


def test_interpolate_frames_seeds_and_provenance(server):
    with GanClient(server.url) as client:
        walk = client.interpolate([1, 2, 3], frames=4, label="upper")
        strip = client.interpolate([1, 2, 3], frames=4, label="upper", format="png")
        looped = client.interpolate([1, 2, 3], frames=4, loop=True, format="gif", duration_ms=50)
        per_key = client.interpolate([5, 6], frames=3, label=["upper", "lower"], format="png")
        info = client.info()
        with pytest.raises(InvalidRequest, match="seeds: List should have at least 2 items"):
            client.interpolate([1])  # refused before any round trip
        with pytest.raises(InvalidRequest, match="400: .*frames"):
            client.interpolate([1, 2], frames=info.limits.interpolate.frames[1] + 1)
    assert (walk.frames, walk.seeds, walk.format, walk.media_type) == (9, [1, 2, 3], "webp", "image/webp")
    assert walk.image.n_frames == 9 and walk.model == "default" and walk.model_version == info.model_version
    assert strip.frames == 9 and strip.image.size == (9 * 28, 28)  # frames side by side, no padding
    # the strip is the animation's frames: the first and last frames are the key seeds' images
    frames = np.asarray(strip.image.convert("L")).reshape(28, 9, 28).transpose(1, 0, 2)
    first, last = (pixels(server, seed, "upper") for seed in (1, 3))
    assert np.array_equal(frames[0], first) and np.array_equal(frames[-1], last)
    assert looped.frames == 12 and looped.image.n_frames == 12 and looped.data[:6] == b"GIF89a"
    assert per_key.frames == 4 and per_key.provenance.label == ["upper", "lower"]
    made = walk.provenance
    assert made.endpoint == "/interpolate" and made.seeds == [1, 2, 3] and made.model_version == walk.model_version
    assert made.request["seeds"] == [1, 2, 3] and made.request["frames"] == 4 and made.request["format"] == "webp"
    assert looped.provenance.request["loop"] is True and looped.provenance.request["duration_ms"] == 50


def pixels(server, seed: int, label: str) -> np.ndarray:
    with GanClient(server.url) as client:
        return np.asarray(client.generate(1, seed=seed, label=label)[0].image.convert("L"))


def test_invalid_requests_carry_the_servers_message(server):
    with GanClient(server.url) as client:
        with pytest.raises(InvalidRequest) as err:
            client.generate(label="zebra")
        assert err.value.status == 400 and err.value.allowed == CLASSES and "unknown label 'zebra'" in str(err.value)
        with pytest.raises(InvalidRequest, match="400: .*n: Input should be less than or equal to 64"):
            client.generate(65)
        with pytest.raises(InvalidRequest, match="n: Input should be greater than or equal to 1"):
            client.generate(0)  # refused before any round trip
        with pytest.raises(InvalidRequest, match="label: Value error, a boolean is not a number or a label"):
            client.generate(label=True)  # Python's True is an int; the server takes it for neither
        with pytest.raises(InvalidRequest, match="body: Value error, quality applies to format 'jpeg' or 'webp'"):
            client.generate(quality=50)
        with pytest.raises(InvalidRequest, match="400: .*format"):
            client.generate(format="tiff")
        with pytest.raises(InvalidRequest, match="400: ") as err:
            client.generate(model="no-such-line")
        assert "no-such-line" in str(err.value)


def test_drs_through_the_sdk(server, tmp_path):
    """sampler="drs": each image says its D score, candidates and acceptance, in a batch, a grid and the file's own
    provenance; a drs file reproduces; generate_many records it in images.csv; refusals carry the server's words."""
    with GanClient(server.url) as client:
        info = client.info()
        assert info.sampler == "plain" and info.models["default"].sampler == "plain"  # no gate verdict: plain
        assert info.discriminator is not None and info.discriminator["target_acceptance"] == 0.5
        assert info.limits.samplers == ["plain", "drs"] and info.limits.max_candidates == [1, 64]
        assert info.limits.default_candidates == 16
        drawn = client.generate(8, seed=40, sampler="drs")
        plain = client.generate(8, seed=40)
        grid = client.grid(8, seed=40, sampler="drs")
        bounded = client.generate(8, seed=40, sampler="drs", max_candidates=1)
    assert {i.sampler for i in drawn} == {"drs"} and all(isinstance(i.drs, DrsInfo) for i in drawn)
    assert {i.sampler for i in plain} == {"plain"} and {i.drs for i in plain} == {None}
    assert all(1 <= i.drs.candidates <= 16 and isinstance(i.drs.accepted, bool) for i in drawn)
    assert max(i.drs.candidates for i in drawn) > 1 and "drs=DrsInfo(" in repr(drawn[0])
    # SquareJudge: log 4 for class 0's square (top-left), 0 for the others
    assert {round(i.drs.score, 4) for i in drawn} <= {0.0, 1.3863}
    assert all((i.drs.score > 0) == (i.label == "top-left") for i in drawn)
    assert grid.info["sampler"] == "drs" and len(grid.info["drs"]) == 8
    assert grid.info["drs"] == [image.drs for image in drawn]  # headers and JSON say the same
    assert {i.drs.candidates for i in bounded} == {1}  # one candidate each: the plain images
    assert all(np.array_equal(np.asarray(b.image), np.asarray(p.image)) for b, p in zip(bounded, plain, strict=True))
    for image in drawn:
        made = image.provenance
        assert made.sampler == "drs" and made.drs == image.drs
        assert made.request == {"n": 1, "seed": image.seed, "model": "default", "format": "png", "sampler": "drs",
                                "max_candidates": 16}  # fmt: skip
    assert plain[0].provenance.sampler == "plain" and plain[0].provenance.drs is None

    # a drs file draws again to the same pixels, and not to its seed's plain image when a later candidate won
    redrawn = next(i for i in drawn if i.drs.accepted and i.drs.candidates > 1)
    assert not np.array_equal(np.asarray(redrawn.image), np.asarray(plain[drawn.index(redrawn)].image))
    with GanClient(server.url) as client:
        again = client.reproduce(redrawn.save(tmp_path / "drs.png"))
    assert again.same_pixels and again.same_bytes and not again.version_changed

    async def draw():
        async with AsyncGanClient(server.url) as client:
            return await client.generate(3, seed=40, sampler="drs", max_candidates=16)

    assert [(i.data, i.drs) for i in asyncio.run(draw())] == [(i.data, i.drs) for i in drawn[:3]]

    with GanClient(server.url) as client:
        with pytest.raises(InvalidRequest) as err:
            client.generate(max_candidates=4)  # the model's default sampler is plain: the server's 400
        assert err.value.status == 400 and err.value.allowed == ["drs"]
        assert "max_candidates applies to sampler drs only" in str(err.value)
        for options, says in (({"sampler": "plain", "max_candidates": 4}, "max_candidates applies to sampler 'drs'"),
                               ({"sampler": "drs", "max_candidates": 65}, "less than or equal to 64"),
                               ({"sampler": "drs", "max_candidates": 0}, "greater than or equal to 1"),
                               ({"sampler": "best"}, "sampler: Input should be 'plain' or 'drs'")):  # fmt: skip
            with pytest.raises(InvalidRequest, match=says) as err:
                client.generate(**options)  # refused before any round trip
            assert err.value.status is None

        out = tmp_path / "many"
        summary = client.generate_many(8, out=out, seed=40, sampler="drs", progress=False)
        assert (summary.written, summary.skipped) == (8, 0)
        with pytest.raises(InvalidRequest, match="sampler='drs' \\(not 'plain'\\)"):
            client.generate_many(8, out=out, sampler="plain")
        with pytest.raises(InvalidRequest, match="max_candidates=None \\(not 4\\)"):
            client.generate_many(8, out=out, sampler="drs", max_candidates=4)
        assert client.generate_many(8, out=out, sampler="drs", progress=False).skipped == 8
    with open(out / "images.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["seed", "label", "model_version", "file", "sampler", "drs_score", "drs_candidates",
                             "drs_accepted"]  # fmt: skip
    assert [(int(r["seed"]), r["sampler"]) for r in rows] == [(i.seed, "drs") for i in drawn]
    for row, image in zip(rows, drawn, strict=True):
        assert float(row["drs_score"]) == image.drs.score and int(row["drs_candidates"]) == image.drs.candidates
        assert row["drs_accepted"] == str(int(image.drs.accepted))
        assert (out / row["file"]).read_bytes() == image.data

    # the command line: --sampler and --max-candidates, and inspect saying how a file was sampled
    done = cli("--url", server.url, "generate", "-n", "2", "--seed", "40", "--sampler", "drs", "--max-candidates",
               "4", "--out", str(tmp_path / "cli"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (
        (tmp_path / "cli" / "images.csv")
        .read_text()
        .splitlines()[0]
        .endswith(",sampler,drs_score,drs_candidates,drs_accepted")
    )
    shown = cli("--url", server.url, "inspect", str(tmp_path / "drs.png"), "--reproduce")
    assert shown.returncode == 0, shown.stderr
    made = json.loads(shown.stdout[: shown.stdout.rindex("}") + 1])
    assert made["sampler"] == "drs" and made["drs"] == redrawn.drs.model_dump()
    line = f"sampler: drs, D score {redrawn.drs.score:g}, {redrawn.drs.candidates} of at most 16 candidates, accepted"
    assert line in shown.stdout.splitlines() and shown.stdout.splitlines()[-1].startswith("reproduced: identical")
    bad = cli("--url", server.url, "generate", "--sampler", "best", "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "invalid choice: 'best'" in bad.stderr


def test_unauthorized_and_rate_limited_come_from_real_responses(home):
    s = Server(home, GANSERVE_API_KEY="k", GANSERVE_MAX_CONCURRENCY="1")
    try:
        with pytest.raises(Unauthorized):
            GanClient(s.url).generate()
        assert len(GanClient(s.url, api_key="k").generate(2)) == 2

        async def crowd():
            async with AsyncGanClient(s.url, api_key="k", retries=0) as client:
                return await asyncio.gather(*(client.generate(16) for _ in range(24)), return_exceptions=True)

        outcomes = asyncio.run(crowd())
        assert any(isinstance(o, RateLimited) for o in outcomes), outcomes
        assert all(isinstance(o, (list, RateLimited)) for o in outcomes), outcomes
    finally:
        s.stop()


class _Scripted(http.server.BaseHTTPRequestHandler):
    """A real HTTP server that answers from a script: a status, or a delay, per request."""

    script: ClassVar[list] = []
    seen: ClassVar[list] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        step = self.script.pop(0) if self.script else 200
        self.seen.append(time.monotonic())
        if isinstance(step, float):
            time.sleep(step)
            step = 200
        body = json.dumps({"model_version": "x", "images": []} if step == 200 else {"error": "busy"}).encode()
        self.send_response(step)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def scripted():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Scripted.seen.clear()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Scripted
    server.shutdown()


def test_retries_on_503_then_succeed(scripted):
    url, handler = scripted
    handler.script[:] = [503, 408, 504, 200]
    assert GanClient(url, retries=3, backoff=0.01).generate() == []
    assert len(handler.seen) == 4
    handler.script[:] = [408]
    with pytest.raises(Timeout, match="408"):  # the server got no whole request in its time: transient
        GanClient(url, retries=0).generate()


def test_retries_stop_after_the_bound(scripted):
    url, handler = scripted
    handler.script[:] = [503] * 10
    with pytest.raises(Unavailable, match="503: busy"):
        GanClient(url, retries=2, backoff=0.01).generate()
    assert len(handler.seen) == 3  # the first call and two retries
    handler.script[:] = [503] * 10
    handler.seen.clear()
    started = time.monotonic()
    with pytest.raises(Unavailable):
        GanClient(url, retries=100, backoff=0.2, retry_budget=1.0).generate()
    assert time.monotonic() - started < 1.5 and len(handler.seen) < 10  # the time budget bounds them too


def test_a_4xx_is_never_retried(scripted):
    url, handler = scripted
    handler.script[:] = [400, 200]
    with pytest.raises(InvalidRequest):
        GanClient(url, retries=3, backoff=0.01).generate()
    assert len(handler.seen) == 1


def test_timeouts_fire(scripted):
    url, handler = scripted
    handler.script[:] = [2.0]
    started = time.monotonic()
    with pytest.raises(Timeout):
        GanClient(url, timeout=0.3, retries=0).generate()
    assert time.monotonic() - started < 1.5


def test_transport_errors_are_translated():
    with pytest.raises(TransportError, match="cannot reach the server"):
        GanClient("http://127.0.0.1:9", retries=1, backoff=0.01).generate()


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "ganserve-client"), *args], capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def test_the_cli_writes_one_file_per_seed(server, tmp_path):
    done = cli("--url", server.url, "generate", "-n", "4", "--seed", "3", "--label", "upper", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no progress bar when stderr is not a terminal
    assert "wrote 4 images" in done.stdout and "seeds 3 to 6" in done.stdout
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["3.png", "4.png", "5.png", "6.png"]
    version = read_provenance(tmp_path / "3.png").model_version
    assert (tmp_path / "images.csv").read_text().splitlines()[:2] == ["seed,label,model_version,file",
                                                                       f"3,upper,{version},3.png"]  # fmt: skip
    info = cli("--url", server.url, "info")
    assert json.loads(info.stdout)["class_names"] == CLASSES and json.loads(info.stdout)["model"] == "default"
    bad = cli("--url", server.url, "generate", "--label", "zebra", "--out", str(tmp_path / "z"))
    assert bad.returncode == 2 and "unknown label 'zebra'" in bad.stderr and len(bad.stderr.splitlines()) == 1
    for args in (["generate", "-n", "x", "--out", "o"], ["interpolate", "--seeds", "1,2", "--out", "walk.mp4"],
                 ["inspect", str(tmp_path / "missing.png")], ["inspect", str(tmp_path / "images.csv")]):  # fmt: skip
        bad = cli("--url", server.url, *args)
        assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1 and "Traceback" not in bad.stderr, bad.stderr


def test_provenance_round_trip_through_the_cli(server, tmp_path):
    """A PNG, a WebP and an interpolation: inspect prints what drew each, --reproduce draws it again identically."""
    with GanClient(server.url) as client:
        client.generate(1, seed=21, label="lower")[0].save(tmp_path / "one.png")
        client.generate(1, seed=22, format="webp", quality=70)[0].save(tmp_path / "one.webp")
        version = client.info().model_version
    walked = cli("--url", server.url, "interpolate", "--seeds", "4,8,15", "--frames", "3", "--loop",
                 "--label", "upper,lower,upper", "--out", str(tmp_path / "walk.gif"))  # fmt: skip
    assert walked.returncode == 0, walked.stderr
    assert "9 frames through seeds 4,8,15" in walked.stdout and Image.open(tmp_path / "walk.gif").n_frames == 9
    for name, expected in (("one.png", {"seed": 21, "label": "lower"}), ("one.webp", {"seed": 22}),
                           ("walk.gif", {"seeds": [4, 8, 15], "label": ["upper", "lower", "upper"]})):  # fmt: skip
        done = cli("--url", server.url, "inspect", str(tmp_path / name), "--reproduce")
        assert done.returncode == 0, done.stderr
        shown = json.loads(done.stdout[: done.stdout.rindex("}") + 1])
        assert shown.items() >= {"model": "default", "model_version": version, **expected}.items()
        assert done.stdout.splitlines()[-1] == f"reproduced: identical (model version {version})"

    # A file drawn by a model version since replaced: the same request now gives the same pixels in a new file.
    made = read_provenance(tmp_path / "one.png").model_dump(exclude_none=True)
    text = PngImagePlugin.PngInfo()
    text.add_text("ganserve", json.dumps({**made, "model_version": "0123456789ab"}))
    Image.open(tmp_path / "one.png").save(tmp_path / "old.png", pnginfo=text)
    done = cli("--url", server.url, "inspect", str(tmp_path / "old.png"), "--reproduce")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == (
        f"reproduced: same pixels (the model version has moved on from 0123456789ab to {version})"
    )
    # ... and one whose pixels are not what its request draws now
    Image.new("L", (28, 28), 255).save(tmp_path / "changed.png", pnginfo=text)
    done = cli("--url", server.url, "inspect", str(tmp_path / "changed.png"), "--reproduce")
    assert done.returncode == 1  # so a script can tell
    assert "reproduced: differs (the model version has moved on from 0123456789ab" in done.stdout
    with GanClient(server.url) as client:
        again = client.reproduce(tmp_path / "changed.png")
        assert (again.same_bytes, again.same_pixels, again.version_changed) == (False, False, True)
        assert again.data == (tmp_path / "one.png").read_bytes()
        with pytest.raises(InvalidRequest, match="carries no ganserve provenance"):
            client.reproduce(plain_png())


def plain_png() -> bytes:
    out = io.BytesIO()
    Image.new("L", (4, 4)).save(out, "PNG")
    return out.getvalue()


def test_wire_models_match_the_services_schema(server):
    """The contract: the SDK's models and the service's own, field by field, so the two cannot drift. The SDK
    reads what it knows and ignores what a newer server adds, so every field it declares must be sent."""
    from service.requests import GenerateRequest as ServiceRequest
    from service.requests import InterpolateRequest as ServiceWalk

    assert set(ClientRequest.model_fields) == set(ServiceRequest.model_fields)
    assert set(ClientWalk.model_fields) == set(ServiceWalk.model_fields)
    openapi = httpx.get(f"{server.url}/docs.json").json()
    for path, model in (("/generate", ClientRequest), ("/interpolate", ClientWalk)):
        body = openapi["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        schema = body if "properties" in body else openapi["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]
        assert set(schema["properties"]) == set(model.model_fields)
    info = httpx.get(f"{server.url}/info").json()
    assert set(info) == set(ModelInfo.model_fields)
    assert set(info["limits"]) == set(Limits.model_fields)
    assert set(info["limits"]["interpolate"]) == set(InterpolateLimits.model_fields)
    assert set(info["history"][0]) == set(Promotion.model_fields)
    assert set(info["models"]["default"]) | {"not_ready"} == set(ModelLine.model_fields)  # not_ready: no model yet
    ModelInfo.model_validate(info)
    batch = httpx.post(f"{server.url}/generate_batch", json={"n": 1}).json()
    assert set(batch) == set(_WireBatch.model_fields)
    assert set(batch["images"][0]) | {"drs"} == set(_WireImage.model_fields)  # drs: with sampler drs only
    made = read_provenance(base64.b64decode(batch["images"][0]["data"]))  # one image: "seed" where a grid has "seeds"
    assert made.model_fields_set | {"seeds", "drs"} == set(Provenance.model_fields) and not made.model_extra
    drs = httpx.post(f"{server.url}/generate_batch", json={"n": 1, "sampler": "drs"}).json()
    assert set(drs["images"][0]) == set(_WireImage.model_fields)
    assert set(drs["images"][0]["drs"]) == set(DrsInfo.model_fields)
    made = read_provenance(base64.b64decode(drs["images"][0]["data"]))
    assert made.model_fields_set | {"seeds"} == set(Provenance.model_fields) and not made.model_extra


def test_installing_the_sdk_alone_pulls_no_bentoml_torch_or_numpy(tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    cmd = [str(py), "-m", "pip", "install", "-q", str(ROOT / "client")]
    install = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-2000:]
    listed = subprocess.run([str(py), "-m", "pip", "list", "--format=json"], capture_output=True, text=True).stdout
    names = {p["name"].lower() for p in json.loads(listed)}
    assert {"httpx", "pydantic", "pillow", "ganserve-client"} <= names
    assert not names & {"bentoml", "torch", "numpy", "onnxruntime"}, names
    timing = "import time; t = time.perf_counter(); import ganserve_client; print(time.perf_counter() - t)"
    seconds = min(float(subprocess.run([str(py), "-c", timing], capture_output=True, text=True).stdout)
                  for _ in range(3))  # fmt: skip
    assert seconds < 0.3, seconds


def test_reproduce_never_sends_a_files_request_anywhere_but_the_drawing_endpoints(tmp_path):
    """A file is data from anywhere: a provenance naming another path is refused before any request is sent."""
    from ganserve_client import read_provenance

    from service.formats import encode_image

    forged = {"ganserve": 1, "model": "default", "model_version": "0" * 12, "endpoint": "/metrics", "request": {}}
    path = tmp_path / "forged.png"
    path.write_bytes(encode_image(np.zeros((2, 2, 1), np.uint8), "png", provenance=forged))
    assert read_provenance(path).endpoint == "/metrics"
    with GanClient("http://127.0.0.1:9", retries=0) as client, pytest.raises(InvalidRequest, match="'/metrics'"):
        client.reproduce(path)  # InvalidRequest, not the TransportError a request to port 9 would raise


def test_info_reads_a_line_that_has_no_model_yet():
    """/info names every line served; one whose model is not loaded has only ``not_ready``, and the rest of the
    answer must still read (generate_many asks /info for the page size first)."""
    info = {"model": "fashion", "default_model": "fashion", "model_version": "e56468728ae1", "provider": "CPU",
            "image": {"height": 28, "width": 28, "channels": 1}, "latent_dim": 100, "latent_protocol": "p",
            "class_names": [], "gate": None, "refused": None, "history": [],
            "models": {"fashion": {"model_version": "e56468728ae1", "image": {"height": 28, "width": 28, "channels": 1},
                                   "class_names": [], "gate": None},
                       "emoji": {"not_ready": "model emoji: no verified model to serve yet"}},
            "limits": {"n": [1, 64], "seed": [0, 2**32 - 1], "truncation": "0.01 <= t <= 4", "max_concurrency": 256,
                       "auth": False}}  # fmt: skip
    parsed = ModelInfo.model_validate(info)
    assert parsed.models["emoji"].not_ready.endswith("yet") and parsed.models["fashion"].model_version


def sdk_imports() -> dict[str, set[str]]:
    """Each module of ganserve_client and the package's modules it imports, anywhere in it (a function's late import
    too), read with ``ast``: ``from ganserve_client.x import y`` and ``from ganserve_client import x`` lead to x,
    ``from ganserve_client import Name`` to the package's ``__init__``."""
    import ast

    from ganserve_client import _errors

    folder = Path(_errors.__file__).parent
    modules = {p.stem for p in folder.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for name in modules:
        graph[name] = set()
        for node in ast.walk(ast.parse((folder / f"{name}.py").read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from within the package, whose modules sit in one folder
                    base = ".".join(filter(None, ("ganserve_client", node.module)))
                targets = [f"{base}.{alias.name}" if base == "ganserve_client" else base for alias in node.names]
            else:
                continue
            for target in targets:
                head, _, rest = target.partition(".")
                if head == "ganserve_client":
                    module = rest.split(".")[0]
                    graph[name].add(module if module in modules else "__init__")
    return graph


def import_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """A circle of imports in ``graph`` (its modules in order, the first again at the end), or None."""
    state: dict[str, str] = {}  # "open" while its imports are being followed, "done" once they all were

    def follow(module: str, path: list[str]) -> list[str] | None:
        state[module] = "open"
        for imported in sorted(graph.get(module, ())):
            if state.get(imported) == "open":
                return [*path[path.index(imported) :], imported]
            if imported not in state and (circle := follow(imported, [*path, imported])):
                return circle
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state and (circle := follow(module, [module])):
            return circle
    return None


def test_the_sdk_imports_no_module_in_a_circle():
    """_models and _provenance once imported each other (one of the two late, inside a function); what they share
    of the files is ganserve_client._container's, which imports none of the package."""
    assert import_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # the check finds one
    assert import_circle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    graph = sdk_imports()
    assert {"__init__", "_client", "_models", "_provenance", "_container", "cli"} <= set(graph)
    assert "_provenance" in graph["_models"] and graph["cli"] == {"__init__"}  # the reading works
    assert import_circle(graph) is None, import_circle(graph)
    assert graph["_container"] == set()


def test_every_error_is_drawn_in_the_exception_tree():
    """The tree in ganserve_client._errors' docstring draws every exception class the SDK defines, under its base."""
    import importlib
    import re

    import ganserve_client
    from ganserve_client import GanServeError, GanserveError, _errors

    folder = Path(_errors.__file__).parent
    for path in folder.glob("*.py"):  # a class defined anywhere in the package counts
        importlib.import_module("ganserve_client" if path.stem == "__init__" else f"ganserve_client.{path.stem}")
    assert GanServeError is GanserveError and {"GanserveError", "GanServeError"} <= set(ganserve_client.__all__)

    def defined(cls: type) -> set[type]:
        return {cls} | {c for sub in cls.__subclasses__() for c in defined(sub)}

    classes = {c for c in defined(GanserveError) if c.__module__.startswith("ganserve_client")}
    tree = _errors.__doc__.split("\n\n", 1)[1].splitlines()
    drawn, parents = {}, [tree[0].split()[0]]  # the root, then the last class drawn at each depth
    for line in tree[1:]:
        if match := re.match(r"((?:[│ ]   )*)[├└]── (\w+)", line):
            depth = len(match[1]) // 4 + 1
            parents[depth:] = [match[2]]
            drawn[match[2]] = parents[depth - 1]
    assert parents[0] == "GanserveError"
    assert set(drawn) | {"GanserveError"} == {c.__name__ for c in classes}
    for cls in classes - {GanserveError}:
        assert drawn[cls.__name__] == cls.__bases__[0].__name__, cls
