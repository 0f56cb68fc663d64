"""The service under attack and faults, against the real `bentoml serve` on loopback (docs/HARDENING.md).

Every load here goes to 127.0.0.1 only, is bounded in count and time, and stops by itself.
"""

import asyncio
import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
from conftest import BlobGenerator, Server, corrupt, labelled_blobs_in_production, promote
from openapi_spec_validator import validate

from release.registry import Registry
from service.manifest import ImageSpec
from training.export import export_module

pytestmark = pytest.mark.slow
KEY = "k3y"
AUTH = {"Authorization": f"Bearer {KEY}"}
IMAGE = ImageSpec(height=28, width=28, channels=1)
RECEIVE_TIMEOUT = 2.0


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return labelled_blobs_in_production(tmp_path_factory.mktemp("hardening"))


@pytest.fixture(scope="module")
def server(home):
    # 16 slots (8 a worker): trickling clients that held slots would turn every other request into a 429.
    env = {"GANSERVE_RECEIVE_TIMEOUT": str(RECEIVE_TIMEOUT), "GANSERVE_MAX_CONCURRENCY": "16"}
    s = Server(home, GANSERVE_API_KEY=KEY, GANSERVE_LAYOUT="inprocess", **env)
    yield s
    s.stop()


def raw(server: Server, *parts: bytes, pause: float = 0.0, timeout: float = 10.0) -> tuple[int | None, bytes, float]:
    """Send ``parts`` over one connection, ``pause`` seconds apart, then read until the server closes it. Returns
    the status (None if the server closed without answering), the body and the seconds from the last part."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as s:
        for i, part in enumerate(parts):
            if i:
                time.sleep(pause)
            s.sendall(part)
        start, chunks = time.monotonic(), []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    answer = b"".join(chunks)
    status = int(answer.split(b" ", 2)[1]) if answer else None
    return status, answer.partition(b"\r\n\r\n")[2], time.monotonic() - start


def request(path: str, body: bytes, *, content_type: bytes = b"application/json", extra: bytes = b"") -> bytes:
    head = (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: ganserve\r\nConnection: close\r\nAuthorization: Bearer "
            + KEY.encode() + b"\r\nContent-Type: " + content_type + b"\r\n" + extra)  # fmt: skip
    return head + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body


def chunked(body: bytes, size: int = 1000) -> bytes:
    pieces = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in pieces) + b"0\r\n\r\n"


# --- who may ask, and what a request may be -------------------------------------------------------------------------


def test_authorization_comes_before_validation_and_covers_metrics(server):
    bad = httpx.post(f"{server.url}/generate", json={"n": "x", "colour": 1})
    assert bad.status_code == 401 and "integer" not in bad.text and "colour" not in bad.text  # no schema for free
    assert httpx.post(f"{server.url}/generate", json={"n": "x"}, headers=AUTH).status_code == 400
    assert httpx.get(f"{server.url}/info").status_code == 401
    metrics = httpx.get(f"{server.url}/metrics")
    assert metrics.status_code == 401 and "metrics key" in metrics.json()["error"]
    assert "bentoml_service_request_total" in httpx.get(f"{server.url}/metrics", headers=AUTH).text
    for open_path in ("/livez", "/readyz", "/docs.json", "/ui"):
        assert httpx.get(f"{server.url}{open_path}").status_code == 200, open_path


def test_bodies_are_bounded_however_they_are_sent(server):
    too_big = b'{"n": 1, "pad": "' + b"x" * 5000 + b'"}'
    status, body, _ = raw(server, request("/generate", too_big))
    assert status == 413 and json.loads(body)["error"] == "request body too large: at most 4096 bytes"
    chunked_head = request("/generate", b"", extra=b"Transfer-Encoding: chunked\r\n").replace(
        b"Content-Length: 0\r\n", b""
    )
    assert raw(server, chunked_head + chunked(too_big))[0] == 413  # it declares no length: counted as it comes
    assert raw(server, chunked_head + chunked(b'{"n": 2, "seed": 1}', 4))[0] == 200


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        (b"multipart/form-data", b"n=1"),  # no boundary: crashed BentoML's parser with a 500
        (b"multipart/form-data; boundary=X", b'--X\r\nContent-Disposition: form-data; name="n"\r\n\r\n1\r\n--X--\r\n'),
        (b"application/x-www-form-urlencoded", b"n=1"),
        (b"application/vnd.bentoml+pickle", b"\x80\x04K\x01."),
    ],
)
def test_bodies_that_are_not_json_get_415(server, content_type, body):
    status, answer, _ = raw(server, request("/generate", body, content_type=content_type))
    assert status == 415 and "must be JSON (Content-Type: application/json)" in json.loads(answer)["error"]


def test_json_sent_as_text_plain_is_taken(server):
    status, _, _ = raw(server, request("/generate", b'{"n": 1}', content_type=b"text/plain;charset=UTF-8"))
    assert status == 200  # what a browser's fetch() sends for a string body


def test_slow_headers_and_slow_bodies_get_408(server):
    status, body, waited = raw(server, request("/generate", b'{"n": 1}')[:-3], timeout=RECEIVE_TIMEOUT + 10)
    assert status == 408 and "body did not arrive within 2 s" in json.loads(body)["error"]
    assert RECEIVE_TIMEOUT - 0.5 < waited < RECEIVE_TIMEOUT + 3
    status, body, waited = raw(server, b"POST /generate HTTP/1.1\r\nHost: gan", timeout=RECEIVE_TIMEOUT + 10)
    assert status == 408 and "headers did not arrive within 2 s" in json.loads(body)["error"]
    assert RECEIVE_TIMEOUT - 0.5 < waited < RECEIVE_TIMEOUT + 3
    status, _, waited = raw(server, b"", timeout=RECEIVE_TIMEOUT + 10)  # a connection that says nothing is closed
    assert status is None and waited < RECEIVE_TIMEOUT + 3


def test_300_slow_connections_leave_other_clients_served(server):
    """Half send headers a byte at a time, half send headers and one byte of a body; each reconnects as soon as it
    is cut off, so 300 are held for the whole 20 s. Meanwhile a client's requests all succeed."""
    held_for, attackers = 20.0, 300

    async def attacker(i: int, until: float, cut_off: list[int]) -> None:
        while time.monotonic() < until:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                head = b"POST /generate HTTP/1.1\r\nHost: ganserve\r\n"
                writer.write(head if i % 2 else request("/generate", b'{"n": 1}')[:-7])
                await writer.drain()
                answer = await asyncio.wait_for(reader.read(200), max(0.1, until - time.monotonic()))
                cut_off.append(int(answer.split(b" ", 2)[1]) if answer else 0)
                writer.close()
            except (asyncio.TimeoutError, OSError):
                pass

    async def client(until: float) -> list[int]:
        statuses = []
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=10) as c:
            while time.monotonic() < until:
                statuses.append((await c.post("/generate", json={"n": 4})).status_code)
                await asyncio.sleep(0.05)
        return statuses

    async def scene() -> tuple[list[int], list[int]]:
        until, cut_off = time.monotonic() + held_for, []
        attack = [asyncio.create_task(attacker(i, until, cut_off)) for i in range(attackers)]
        await asyncio.sleep(1)  # all 300 are in before the client starts
        statuses = await client(until)
        await asyncio.gather(*attack)
        return statuses, cut_off

    statuses, cut_off = asyncio.run(scene())
    assert len(statuses) > 50 and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    assert cut_off.count(408) > attackers  # every attacker was cut off at least once, and came back


def test_a_client_error_logs_one_line_without_a_traceback(server):
    before = server.output.count("\n")
    with httpx.Client(base_url=server.url, headers=AUTH) as c:
        for i in range(50):
            body = [{"n": "x"}, {"n": 0}, {"seed": -1}, {"x": 1}, {"label": True}][i % 5]
            assert c.post("/generate", json=body).status_code == 400
    time.sleep(0.5)  # the log is written by the server's processes
    added = server.output.splitlines()[before:]
    about_requests = [line for line in added if "/generate" in line or "Traceback" in line]  # not start-up lines
    assert len(about_requests) <= 2 * 50, "\n".join(added[:20])  # BentoML's access line and one line saying why
    assert not any("Traceback" in line or "[ERROR]" in line for line in added), "\n".join(added[:20])
    assert any("400 n: Input should be greater than or equal to 1" in line for line in added)


# --- the API's description, and a fuzzer that reads it ---------------------------------------------------------------


def test_the_openapi_document_is_valid_and_describes_the_api(server):
    doc = httpx.get(f"{server.url}/docs.json").json()
    validate(doc)  # OpenAPI 3.0, by openapi-spec-validator
    fields = doc["components"]["schemas"]["GenerateRequest"]["properties"]
    assert fields["seed"]["nullable"] and fields["truncation"]["nullable"] and fields["seed"]["maximum"] == 2**32 - 1
    assert [v["type"] for v in fields["label"]["anyOf"]] == ["integer", "string"]
    responses = doc["paths"]["/generate"]["post"]["responses"]
    assert {"200", "400", "401", "408", "413", "415", "429", "503", "504"} <= set(responses)
    assert doc["paths"]["/metrics"]["get"]["security"] == [{"bearer": []}]


def test_a_schema_driven_fuzzer_finds_no_server_error_and_no_response_off_the_schema(server, tmp_path):
    checks = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
    st = Path(sys.executable).parent / "st"
    cmd = [str(st), "run", f"{server.url}/docs.json", "--checks", checks, "--max-examples", "30", "--max-time", "40",
           "--seed", "1", "--request-timeout", "10", "-H", f"Authorization: Bearer {KEY}", "--no-color"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=180)
    assert done.returncode == 0, done.stdout[-4000:]
    assert re.search(r"\d+ generated, \d+ passed", done.stdout), done.stdout[-2000:]
    assert "Traceback" not in server.output


# --- deadlines and stopping -------------------------------------------------------------------------------------------


class Slow(torch.nn.Module):
    """A generator that costs ~10 ms of CPU an image: 64 images outlive a 0.3 s deadline."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(16, 16, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.interpolate(z.reshape(-1, 16, 8, 8), size=(160, 160))
        for _ in range(8):
            h = torch.tanh(self.conv(h))
        return torch.nn.functional.adaptive_avg_pool2d(h[:, :1], 28)


def test_a_request_past_its_deadline_gets_504_and_the_worker_serves_on(tmp_path):
    export_module(Slow(), tmp_path / "slow", latent_dim=1024, image=IMAGE)
    promote(tmp_path, tmp_path / "slow")
    deadlines = {"GANSERVE_TIMEOUT": "0.3", "GANSERVE_RECEIVE_TIMEOUT": "0.2"}
    s = Server(tmp_path, GANSERVE_LAYOUT="inprocess", GANSERVE_WORKERS="1", **deadlines)
    try:
        start = time.monotonic()
        late = httpx.post(f"{s.url}/generate", json={"n": 64}, timeout=30)
        assert late.status_code == 504 and "0.3 seconds" in late.json()["error"]
        assert time.monotonic() - start < 1.5
        assert httpx.get(f"{s.url}/livez").status_code == 200  # the event loop was never held
        time.sleep(2)  # the run itself finishes in its thread; its answer has no one left to go to
        assert httpx.post(f"{s.url}/generate", json={"n": 1}, timeout=30).status_code == 200
    finally:
        s.stop()


def test_sigterm_stops_the_server_within_seconds_even_with_slow_clients_connected(home):
    s = Server(home, GANSERVE_RECEIVE_TIMEOUT=str(RECEIVE_TIMEOUT), GANSERVE_LAYOUT="inprocess")
    held = []
    try:
        for i in range(100):
            conn = socket.create_connection(("127.0.0.1", s.port))
            conn.sendall(b"POST /generate HTTP/1.1\r\nHost: g" if i % 2 else request("/generate", b'{"n": 1}')[:-3])
            held.append(conn)
        assert httpx.post(f"{s.url}/generate", json={"n": 2}, headers=AUTH).status_code == 200
        start = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        s.proc.wait(timeout=60)
        assert time.monotonic() - start < RECEIVE_TIMEOUT + 5, s.output[-3000:]
    finally:
        for conn in held:
            conn.close()
        s.stop()


# --- a model file that does not verify --------------------------------------------------------------------------------


def promote_rotten(registry: Registry, folder: Path) -> str:
    """Promote ``folder`` and flip bytes of its ONNX file once it is in the store, before production points at it:
    the store's copy rots after the registry verified it, which a promotion can no longer bring about otherwise."""
    candidate = registry.add_candidate(folder, metadata={})

    def rot(step: str) -> None:
        if step == "renamed":
            corrupt(max((registry.models_dir / "ganserve-generator").iterdir(), key=lambda p: p.stat().st_mtime))

    registry._hook = rot
    try:
        return registry.promote(candidate.version, force=True).tag
    finally:
        registry._hook = None


@pytest.mark.parametrize("layout", ["inprocess", "batched"])
def test_a_model_file_that_fails_verification_never_takes_the_service_down(tmp_path, layout):
    for name, square in (("a", 230.0), ("b", 120.0), ("c", 60.0)):
        export_module(BlobGenerator(square=square), tmp_path / name, latent_dim=800, image=IMAGE)
    reg = Registry(tmp_path)
    promote_rotten(reg, tmp_path / "a")
    s = Server(tmp_path, ready=False, GANSERVE_LAYOUT=layout, GANSERVE_WORKERS="1")  # one process owns the model
    try:
        # Nothing loadable: up, not ready, and saying why; no crash loop.
        assert httpx.get(f"{s.url}/readyz").status_code == 503
        refused = httpx.post(f"{s.url}/generate", json={})
        assert refused.status_code == 503 and "was refused (ManifestError" in refused.json()["error"]
        good = Registry(tmp_path).get(promote(tmp_path, tmp_path / "b")).sha256[:12]
        wait_for(lambda: httpx.get(f"{s.url}/readyz").status_code == 200)
        assert httpx.post(f"{s.url}/generate", json={}).headers["x-model-version"] == good

        # A promotion whose file rots in the store: refused once, the model in hand serves on, and says so.
        bad_tag = promote_rotten(reg, tmp_path / "c")
        wait_for(lambda: (httpx.get(f"{s.url}/info").json()["refused"] or {}).get("tag") == bad_tag)
        assert "sha256" in httpx.get(f"{s.url}/info").json()["refused"]["reason"]
        assert re.search(
            rf'ganserve_production_refused{{[^}}]*tag="{bad_tag}"[^}}]*}} 1\.0', httpx.get(f"{s.url}/metrics").text
        )
        assert httpx.get(f"{s.url}/readyz").status_code == 200

        # A worker restarted beside the bad file serves the last good promotion instead of crash-looping.
        process = "Generator" if layout == "batched" else "GANServe"
        (victim,) = s.workers(process)
        said = s.output.count(f"refusing {bad_tag}")
        subprocess.run(["kill", "-9", str(victim)], check=True)
        wait_for(lambda: len(s.workers(process)) == 1 and victim not in s.workers(process))
        (respawned,) = s.workers(process)
        wait_for(lambda: all_ok(s, good), timeout=60)
        assert s.workers(process) == [respawned]  # it stayed up
        assert s.output.count(f"refusing {bad_tag}") == said + 1  # it saw the bad file, said so once, and serves
        assert "Traceback" not in s.output and "Exception in ASGI" not in s.output

        Registry(tmp_path).rollback()  # production is the good one again: nothing refused
        wait_for(lambda: httpx.get(f"{s.url}/info").json()["refused"] is None)
    finally:
        s.stop()


def all_ok(s: Server, version: str) -> bool:
    answers = [httpx.post(f"{s.url}/generate", json={"n": 1}, timeout=10) for _ in range(8)]
    return all(a.status_code == 200 and a.headers["x-model-version"] == version for a in answers)


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"not within {timeout} s")
