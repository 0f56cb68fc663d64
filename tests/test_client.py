"""The SDK against the real service, real error responses from real servers, and its install footprint."""

import asyncio
import base64
import http.server
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
from conftest import CLASSES, ROOT, Server, labelled_blobs_in_production
from ganserve_client import (
    AsyncGanClient,
    GanClient,
    InvalidRequest,
    ModelInfo,
    RateLimited,
    Timeout,
    TransportError,
    Unauthorized,
    Unavailable,
)
from ganserve_client._models import GenerateRequest as ClientRequest
from PIL import Image

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return labelled_blobs_in_production(tmp_path_factory.mktemp("client"))


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
    assert images[0].model_version == raw["model_version"]
    for image, wire in zip(images, raw["images"], strict=True):
        assert image.png == base64.b64decode(wire["png"])
        assert np.asarray(image.image).shape == (28, 28)


def test_async_client_gives_the_same_images(server):
    async def draw():
        async with AsyncGanClient(server.url) as client:
            return await client.generate(3, seed=2, label=1), await client.info(), await client.health()

    images, info, health = asyncio.run(draw())
    with GanClient(server.url) as client:
        assert [i.png for i in images] == [i.png for i in client.generate(3, seed=2, label="upper")]
    assert info.class_names == CLASSES and health.live and health.ready


def test_grid_info_health_and_save(server, tmp_path):
    with GanClient(server.url) as client:
        grid = client.grid(5, seed=1)
        assert grid.size == (3 * 28 + 4 * 2, 2 * 28 + 3 * 2) and grid.info["seeds"] == [1, 2, 3, 4, 5]
        info = client.info()
        assert isinstance(info, ModelInfo) and info.limits.n == [1, 64] and info.image.height == 28
        path = client.generate(1, seed=9)[0].save(tmp_path / "x.png")
        assert Image.open(path).size == (28, 28)
    assert GanClient("http://127.0.0.1:9").health().live is False  # nothing listens there; health never raises


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


def test_the_cli_writes_one_png_per_seed(server, tmp_path):
    cli = Path(sys.executable).parent / "ganserve-client"
    done = subprocess.run([str(cli), "--url", server.url, "generate", "-n", "4", "--seed", "3", "--label", "upper",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["3.png", "4.png", "5.png", "6.png"]
    info = subprocess.run([str(cli), "--url", server.url, "info"], capture_output=True, text=True, timeout=60)
    assert json.loads(info.stdout)["class_names"] == CLASSES
    bad = subprocess.run(
        [str(cli), "--url", server.url, "generate", "--label", "zebra"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "unknown label 'zebra'" in bad.stderr


def test_wire_models_match_the_services_schema(server):
    """The contract: the SDK's models and the service's own, field by field, so the two cannot drift."""
    from service.service import GenerateRequest as ServiceRequest

    assert set(ClientRequest.model_fields) == set(ServiceRequest.model_fields)
    openapi = httpx.get(f"{server.url}/docs.json").json()
    body = openapi["paths"]["/generate"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    schema = body if "properties" in body else openapi["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]
    assert set(schema["properties"]) == set(ClientRequest.model_fields)
    info = httpx.get(f"{server.url}/info").json()
    assert set(info) == set(ModelInfo.model_fields)
    ModelInfo.model_validate(info)
    batch = httpx.post(f"{server.url}/generate_batch", json={"n": 1}).json()
    from ganserve_client._models import _WireBatch, _WireImage

    assert set(batch) == set(_WireBatch.model_fields) and set(batch["images"][0]) == set(_WireImage.model_fields)


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
