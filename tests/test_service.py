"""The real service: `bentoml serve` on a free loopback port, a real model store, real HTTP."""

import asyncio
import base64
import io
import shutil
import time

import httpx
import numpy as np
import pytest
from conftest import CLASSES, BlobGenerator, LabelledBlobs, Server, promote
from PIL import Image

from service.imaging import grid_shape, tile
from service.latents import MIN_TRUNCATION
from service.manifest import ImageSpec
from service.runtime import GeneratorRuntime
from training.export import export_module

IMAGE = ImageSpec(height=28, width=28, channels=1)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["batched", "inprocess"])
def layout(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def home(layout, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"serve-{layout}")
    export_module(LabelledBlobs(), root / "conditional", latent_dim=800, image=IMAGE, class_names=CLASSES)
    export_module(BlobGenerator(square=120), root / "plain", latent_dim=800, image=IMAGE)
    promote(root, root / "conditional")
    return root


@pytest.fixture(scope="module")
def server(home, layout):
    s = Server(home, GANSERVE_LAYOUT=layout)
    yield s
    s.stop()


def png(body: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(body))
    assert image.format == "PNG"
    return np.asarray(image)


def post(server, path="/generate", **body) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, timeout=30)


def test_one_image_and_a_grid_with_their_seeds(server):
    one = post(server, n=1, seed=7, label="upper")
    assert one.status_code == 200 and one.headers["content-type"] == "image/png"
    assert one.headers["x-seeds"] == "7" and len(one.headers["x-model-version"]) == 12
    assert png(one.content).shape == (28, 28)
    grid = post(server, n=5, seed=7, label=1)
    assert grid.headers["x-seeds"] == "7,8,9,10,11"
    assert png(grid.content).shape == (2 * 28 + 3 * 2, 3 * 28 + 4 * 2)  # 2 rows x 3 columns, 2 px apart


def test_an_image_seed_gives_the_same_pixels_in_any_request(server):
    alone = png(post(server, n=1, seed=10, label=2).content)
    grid = png(post(server, n=4, seed=7, label=2).content)
    singles = [png(post(server, n=1, seed=s, label=2).content)[..., None] for s in (7, 8, 9, 10)]
    np.testing.assert_array_equal(grid, tile(np.stack(singles))[..., 0])  # the grid is its seeds' images
    np.testing.assert_array_equal(singles[3][..., 0], alone)
    batch = post(server, "/generate_batch", n=4, seed=7, label=2).json()
    assert [i["seed"] for i in batch["images"]] == [7, 8, 9, 10] and batch["images"][0]["label"] == "lower"
    np.testing.assert_array_equal(png(base64.b64decode(batch["images"][3]["png"])), alone)

    async def concurrently() -> list[bytes]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            calls = [client.post("/generate", json={"n": 1 + i % 4, "seed": 10 - i % 4, "label": 2}) for i in range(24)]
            return [r.content for r in await asyncio.gather(*calls)]

    for i, body in enumerate(asyncio.run(concurrently())):  # every request ends with seed 10, amid other traffic
        n = 1 + i % 4
        np.testing.assert_array_equal(tile_at(png(body), n, n - 1), alone)


def test_the_service_the_gate_and_the_runtime_draw_the_same_images(server, home):
    """One path from seeds to images: the same seed, label and truncation give the same pixels everywhere."""
    from training.judging.gate import _open, _sample

    served = png(post(server, n=1, seed=10).content)
    truncated = png(post(server, n=1, seed=10, label=2, truncation=0.5).content)
    named = post(server, "/generate_batch", n=1, seed=10).json()["images"][0]
    runtime = GeneratorRuntime(home / "conditional")
    by_seed = runtime.generate([10])
    np.testing.assert_array_equal(by_seed.images[0, ..., 0], served)
    assert named["label_index"] == by_seed.labels[0] == 2 and named["label"] == CLASSES[2]  # 10 mod 4 classes
    np.testing.assert_array_equal(runtime.generate([10], 2, 0.5).images[0, ..., 0], truncated)
    images, _, labels = _sample(_open(home / "conditional"), range(10, 11))
    np.testing.assert_array_equal(images[0, ..., 0], served)
    assert labels.tolist() == by_seed.labels.tolist()


def tile_at(grid: np.ndarray, n: int, i: int, size: int = 28, pad: int = 2) -> np.ndarray:
    if n == 1:
        return grid
    cols = grid_shape(n)[1]
    r, c = divmod(i, cols)
    return grid[
        pad + r * (size + pad) : pad + r * (size + pad) + size, pad + c * (size + pad) : pad + c * (size + pad) + size
    ]


def test_without_a_seed_random_seeds_are_drawn_and_returned(server):
    first, second = post(server, n=2), post(server, n=2)
    assert first.headers["x-seeds"] != second.headers["x-seeds"]
    seed = int(first.headers["x-seeds"].split(",")[0])
    again = post(server, n=2, seed=seed)
    assert again.content == first.content


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"n": "two"}, 400, "Input should be a valid integer"),
        ({"n": 0}, 400, "greater than or equal to 1"),
        ({"n": 65}, 400, "less than or equal to 64"),
        ({"seed": -1}, 400, "greater than or equal to 0"),
        ({"seed": 2**32}, 400, "less than or equal to 4294967295"),
        ({"truncation": 0}, 400, "greater than or equal to 0.01"),
        ({"truncation": 1e-300}, 400, "greater than or equal to 0.01"),
        ({"truncation": 4.5}, 400, "less than or equal to 4"),
        ({"n": True}, 400, "Input should be a valid integer"),  # strict types: no booleans or strings for numbers
        ({"n": "1"}, 400, "Input should be a valid integer"),
        ({"n": 2.0}, 400, "Input should be a valid integer"),
        ({"label": True}, 400, "Input should be a valid string"),
        ({"truncation": "0.5"}, 400, "Input should be a valid number"),
        ({"seed": "7"}, 400, "Input should be a valid integer"),
        ({"label": "zebra"}, 400, "unknown label 'zebra'"),
        ({"label": 4}, 400, "unknown label 4"),
        ({"colour": "red"}, 400, "Extra inputs are not permitted"),
    ],
)
def test_bad_input_gets_a_4xx_that_says_what_is_wrong(server, body, status, says):
    r = post(server, **body)
    assert r.status_code == status and says in r.text, r.text
    assert "error" in r.json()


def test_a_body_over_the_limit_is_refused(server):
    r = httpx.post(f"{server.url}/generate", content=b'{"n": 1, "pad": "' + b"x" * 10_000 + b'"}',
                   headers={"content-type": "application/json"})  # fmt: skip
    assert r.status_code == 413 and "at most 4096 bytes" in r.json()["error"]


def test_truncation_is_reproducible_and_changes_the_image(server):
    a, b = post(server, seed=3, truncation=0.5, label=0), post(server, seed=3, truncation=0.5, label=0)
    assert a.content == b.content and a.content != post(server, seed=3, label=0).content


def test_poison_truncations_answer_at_once_while_others_are_served(server):
    """{"truncation": 1e-300} used to pin a worker for ever: the latents were redrawn until |z| <= t, on the event
    loop. Now it is refused, and the strongest allowed truncation costs what any request costs."""
    poison = [(1, 1e-300), (16, 1e-5), (64, MIN_TRUNCATION), (64, 1e-4)] * 4

    async def attack() -> list[tuple[int, float]]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:

            async def timed(path: str, body: dict | None = None) -> tuple[int, float]:
                start = time.monotonic()
                r = await (client.get(path) if body is None else client.post(path, json=body))
                return r.status_code, time.monotonic() - start

            calls = [timed("/generate", {"n": n, "truncation": t}) for n, t in poison]
            calls += [timed("/generate", {"n": 1, "seed": i}) for i in range(16)] + [timed("/livez") for _ in range(4)]
            return await asyncio.gather(*calls)

    results = asyncio.run(attack())
    assert max(seconds for _, seconds in results) < 2, results
    statuses = [status for status, _ in results]
    assert statuses[: len(poison)] == [400, 400, 200, 400] * 4 and set(statuses[len(poison) :]) == {200}


def test_unknown_label_lists_the_allowed_ones(server):
    assert post(server, label="zebra").json()["allowed"] == CLASSES


def test_a_body_that_is_not_json(server):
    r = httpx.post(f"{server.url}/generate", content=b"n=3", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "Invalid JSON" in r.text


def test_the_bentoml_api_route_keeps_the_same_contract(home, server, layout, tmp_path):
    """GANSERVE_ROUTE=api serves /generate through @bentoml.api instead of the ASGI app's route: the same images,
    the same 4xx."""
    if layout != "inprocess":
        pytest.skip("one layout is enough: the route is the same code in both")
    # A home of its own: two servers on one BENTOML_HOME share its Prometheus files, and the one that stops first
    # takes the other's metrics with it.
    shutil.copytree(home, tmp_path / "home")
    s = Server(tmp_path / "home", GANSERVE_LAYOUT="inprocess", GANSERVE_ROUTE="api")
    try:
        r = httpx.post(f"{s.url}/generate", json={"n": 2, "seed": 7, "truncation": 0.5}, timeout=30)
        assert r.status_code == 200 and r.headers["x-seeds"] == "7,8"
        assert r.content == post(server, n=2, seed=7, truncation=0.5).content
        batch = httpx.post(f"{s.url}/generate_batch", json={"n": 1, "seed": 7}, timeout=30).json()
        assert batch == post(server, "/generate_batch", n=1, seed=7).json()
        for body, says in [({"n": 0}, "greater than or equal to 1"), ({"label": "zebra"}, "unknown label")]:
            bad = httpx.post(f"{s.url}/generate", json=body, timeout=30)
            assert bad.status_code == 400 and says in bad.json()["error"] + str(bad.json().get("detail"))
    finally:
        s.stop()


def test_info_health_metrics_and_openapi(server):
    info = httpx.get(f"{server.url}/info").json()
    assert (
        info["class_names"] == CLASSES and info["limits"]["n"] == [1, 64] and info["provider"] == "CPUExecutionProvider"
    )
    assert httpx.get(f"{server.url}/livez").status_code == 200
    post(server, n=3)
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'ganserve_images_generated_total{endpoint="generate"}' in metrics
    assert f'version="{info["model_version"]}"' in metrics
    assert "/generate" in httpx.get(f"{server.url}/docs.json").json()["paths"]
    assert "<title>ganserve</title>" in httpx.get(f"{server.url}/ui").text


def test_more_than_300_requests_through_the_batching_path(server, layout):
    """Concurrent requests share onnxruntime runs in both layouts. In the batched one they cross the inter-service
    connection, which bentoml#5540 recycles every 100 calls: the workaround must hold."""

    async def load() -> list[int]:
        limits = httpx.Limits(max_connections=32)
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client:
            sem = asyncio.Semaphore(32)

            async def one(i: int) -> int:
                async with sem:
                    return (await client.post("/generate", json={"n": 1, "seed": i})).status_code

            return await asyncio.gather(*(one(i) for i in range(320)))

    metric = "bentoml_service_adaptive_batch_size" if layout == "batched" else "ganserve_batch_requests"
    before = httpx.get(f"{server.url}/metrics").text
    statuses = asyncio.run(load())
    assert statuses.count(200) == 320, {s: statuses.count(s) for s in set(statuses)}
    after = httpx.get(f"{server.url}/metrics").text
    runs = _metric(after, f"{metric}_count") - _metric(before, f"{metric}_count")
    requests = _metric(after, f"{metric}_sum") - _metric(before, f"{metric}_sum")
    assert requests >= 320 and requests / runs > 1.0  # concurrent requests were merged into shared runs


def _metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_hot_promotion_under_load_fails_no_request(home, server):
    before = httpx.get(f"{server.url}/info").json()["model_version"]

    async def load_until_switch() -> tuple[list[int], set[str]]:
        statuses, versions = [], set()
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            deadline = time.monotonic() + 40
            promoted = False
            while time.monotonic() < deadline:
                batch = await asyncio.gather(*(client.post("/generate", json={"n": 2}) for _ in range(8)))
                statuses += [r.status_code for r in batch]
                versions |= {r.headers.get("x-model-version") for r in batch}
                if not promoted:
                    await asyncio.to_thread(promote, home, home / "plain")  # unconditional: labels now refused
                    promoted = True
                elif len(versions) > 1 and len(statuses) > 100:
                    break
        return statuses, versions

    statuses, versions = asyncio.run(load_until_switch())
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    assert before in versions and len(versions) == 2  # the switch happened, within the 30 s budget
    # Each worker follows production on its own clock: wait (within the budget) until every answer is the new model.
    deadline, streak = time.monotonic() + 30, 0
    while streak < 10 and time.monotonic() < deadline:
        after = httpx.get(f"{server.url}/info").json()
        streak = streak + 1 if after["model_version"] != before else 0
        time.sleep(0.05 if streak else 0.5)
    assert streak == 10 and after["class_names"] == []
    r = post(server, label="upper")
    assert r.status_code == 400 and "unconditional" in r.text


def test_an_api_key_guards_generation_and_metrics_but_not_health(home, layout):
    s = Server(home, GANSERVE_API_KEY="s3cret", GANSERVE_LAYOUT=layout)
    try:
        assert httpx.post(f"{s.url}/generate", json={}).status_code == 401
        wrong = httpx.post(f"{s.url}/generate", json={}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "Authorization: Bearer" in wrong.json()["error"]
        assert httpx.get(f"{s.url}/info").status_code == 401
        ok = httpx.post(f"{s.url}/generate", json={}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert httpx.get(f"{s.url}/readyz").status_code == 200 and httpx.get(f"{s.url}/livez").status_code == 200
        assert httpx.get(f"{s.url}/metrics").status_code == 401  # it names the model version that /info guards
        assert httpx.get(f"{s.url}/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    finally:
        s.stop()
