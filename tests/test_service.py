"""The real service: `bentoml serve` on a free loopback port, a real model store, real HTTP."""

import asyncio
import base64
import io
import shutil
import time

import httpx
import numpy as np
import pytest
from conftest import CLASSES, BlobGenerator, LabelledBlobs, Server, SquareJudge, Tinted, promote
from PIL import Image

from service.imaging import grid_shape, tile
from service.latents import MIN_TRUNCATION
from service.manifest import ImageSpec
from service.runtime import GeneratorRuntime
from training.export import export_module

IMAGE = ImageSpec(height=28, width=28, channels=1)
TINTED = ImageSpec(height=16, width=16, channels=3)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["batched", "inprocess"])
def layout(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def home(layout, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"serve-{layout}")
    # D favours class 0's square: DRS accepts about a third of the other classes' candidates
    export_module(LabelledBlobs(), root / "conditional", latent_dim=800, image=IMAGE, class_names=CLASSES,
                  discriminator=SquareJudge())  # fmt: skip
    export_module(BlobGenerator(square=120), root / "plain", latent_dim=800, image=IMAGE)
    export_module(Tinted(), root / "tinted", latent_dim=300, image=TINTED)
    export_module(Tinted((0.1, 0.4, 1.0)), root / "tinted-blue", latent_dim=300, image=TINTED)
    promote(root, root / "conditional")
    promote(root, root / "tinted", line="tinted")  # a second line: RGB, another size, unconditional
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
    np.testing.assert_array_equal(png(base64.b64decode(batch["images"][3]["data"])), alone)

    async def concurrently() -> list[bytes]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            calls = [client.post("/generate", json={"n": 1 + i % 4, "seed": 10 - i % 4, "label": 2}) for i in range(24)]
            return [r.content for r in await asyncio.gather(*calls)]

    for i, body in enumerate(asyncio.run(concurrently())):  # every request ends with seed 10, amid other traffic
        n = 1 + i % 4
        np.testing.assert_array_equal(tile_at(png(body), n, n - 1), alone)


def test_the_service_the_gate_and_the_runtime_draw_the_same_images(server, home):
    """One path from seeds to images: the same seed, label and truncation give the same pixels everywhere."""
    from training.judging.gate import open_model, sample

    served = png(post(server, n=1, seed=10).content)
    truncated = png(post(server, n=1, seed=10, label=2, truncation=0.5).content)
    named = post(server, "/generate_batch", n=1, seed=10).json()["images"][0]
    runtime = GeneratorRuntime(home / "conditional")
    by_seed = runtime.generate([10])
    np.testing.assert_array_equal(by_seed.images[0, ..., 0], served)
    assert named["label_index"] == by_seed.labels[0] == 2 and named["label"] == CLASSES[2]  # 10 mod 4 classes
    np.testing.assert_array_equal(runtime.generate([10], 2, 0.5).images[0, ..., 0], truncated)
    judged = sample(open_model(home / "conditional"), range(10, 11))
    np.testing.assert_array_equal(judged.images[0, ..., 0], served)
    assert judged.labels.tolist() == by_seed.labels.tolist()


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


@pytest.mark.parametrize("path", ["/generate", "/generate_batch"])
def test_the_hot_routes_take_post_only_and_say_so(server, path):
    r = httpx.get(f"{server.url}{path}")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert r.json() == {"error": f"{path} takes POST with a JSON body, not GET", "allowed": ["POST"]}


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
    assert 'ganserve_images_generated_total{endpoint="generate",model="default"}' in metrics
    assert f'version="{info["model_version"]}"' in metrics
    assert "/generate" in httpx.get(f"{server.url}/docs.json").json()["paths"]
    assert "<title>ganserve</title>" in httpx.get(f"{server.url}/ui").text


def test_drs_over_http_reproducible_bounded_and_reported(server):
    """sampler drs: each image is its seed's first accepted candidate, the same alone, in a grid and in a batch; its
    D score, candidates and acceptance are in headers and JSON; the bound is enforced and its fallbacks counted."""
    grid = post(server, n=6, seed=40, label="upper", sampler="drs")
    assert grid.status_code == 200 and grid.headers["x-sampler"] == "drs"
    candidates = [int(c) for c in grid.headers["x-drs-candidates"].split(",")]
    accepted = grid.headers["x-drs-accepted"].split(",")
    assert len(grid.headers["x-drs-scores"].split(",")) == 6 and max(candidates) > 1 and max(candidates) <= 16
    assert grid.headers["x-drs-fallbacks"] == str(accepted.count("0"))
    batch = post(server, "/generate_batch", n=6, seed=40, label="upper", sampler="drs").json()
    assert batch["sampler"] == "drs" and [i["drs"]["candidates"] for i in batch["images"]] == candidates
    for i in (0, candidates.index(max(candidates))):
        alone = post(server, n=1, seed=40 + i, label="upper", sampler="drs")
        np.testing.assert_array_equal(png(alone.content), tile_at(png(grid.content), 6, i))
        np.testing.assert_array_equal(png(alone.content), png(base64.b64decode(batch["images"][i]["data"])))
        mark = provenance(alone.content)
        assert mark["sampler"] == "drs" and mark["drs"] == batch["images"][i]["drs"]
        assert mark["request"]["sampler"] == "drs" and mark["request"]["max_candidates"] == 16
    plain = post(server, n=6, seed=40, label="upper")
    assert plain.headers["x-sampler"] == "plain" and "x-drs-scores" not in plain.headers  # no gate verdict: plain
    assert provenance(plain.content)["request"]["sampler"] == "plain"
    one = post(server, n=32, seed=40, label="upper", sampler="drs", max_candidates=1)
    assert set(one.headers["x-drs-candidates"].split(",")) == {"1"} and int(one.headers["x-drs-fallbacks"]) > 5
    plain_32 = post(server, n=32, seed=40, label="upper")
    np.testing.assert_array_equal(png(one.content), png(plain_32.content))  # one candidate: the plain images
    info = httpx.get(f"{server.url}/info").json()
    assert info["sampler"] == "plain" and info["discriminator"]["target_acceptance"] == 0.5
    assert info["limits"]["samplers"] == ["plain", "drs"] and info["limits"]["max_candidates"] == [1, 64]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"sampler": "drs", "model": "tinted"}, "has no discriminator"),
        ({"max_candidates": 4}, "max_candidates applies to sampler drs"),
        ({"sampler": "drs", "max_candidates": 65}, "less than or equal to 64"),
        ({"sampler": "best"}, "'plain' or 'drs'"),
    ],
)
def test_drs_requests_it_cannot_serve_get_a_400_that_says_why(server, body, says):
    r = post(server, **body)
    assert r.status_code == 400 and says in r.json()["error"] + str(r.json().get("detail")), r.json()


def test_two_lines_are_served_side_by_side(server):
    """Requests name their line; in one merged run (batched layout) images of two sizes come back unmixed."""
    info = httpx.get(f"{server.url}/info").json()
    assert info["model"] == info["default_model"] == "default" and set(info["models"]) == {"default", "tinted"}
    tinted = httpx.get(f"{server.url}/info", params={"model": "tinted"}).json()
    assert (
        tinted["image"] == {**TINTED.model_dump(), "dtype": "uint8", "layout": "NHWC"} and tinted["class_names"] == []
    )
    assert [h["current"] for h in tinted["history"]] == [True] and tinted["history"][0]["decision"] == "not judged"
    alone = {line: png(post(server, seed=5, model=line).content) for line in ("default", "tinted")}
    assert alone["tinted"].shape == (16, 16, 3) and alone["default"].shape == (28, 28)

    async def mixed() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            lines = ("default", "tinted")
            return await asyncio.gather(*(client.post("/generate", json={"n": 1, "seed": 5, "model": lines[i % 2]})
                                          for i in range(32)))  # fmt: skip

    for i, r in enumerate(asyncio.run(mixed())):
        line = ("default", "tinted")[i % 2]
        assert r.headers["x-model"] == line
        np.testing.assert_array_equal(png(r.content), alone[line])
    unknown = post(server, model="nope")
    assert unknown.status_code == 400 and unknown.json()["allowed"] == ["default", "tinted"]
    assert httpx.get(f"{server.url}/info", params={"model": "nope"}).status_code == 400


def decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def provenance(data: bytes) -> dict:
    """The provenance a file carries, read as any reader would: PNG text, XMP in WebP and JPEG, GIF comment."""
    import json
    import re
    from html import unescape

    info = Image.open(io.BytesIO(data)).info
    if "ganserve" in info:
        return json.loads(info["ganserve"])
    if "xmp" in info:
        xmp = info["xmp"].decode() if isinstance(info["xmp"], bytes) else info["xmp"]
        return json.loads(unescape(re.search(r"<ganserve:provenance>(.*?)</ganserve:provenance>", xmp).group(1)))
    return json.loads(info["comment"])


def test_formats_decode_to_the_pngs_pixels_and_carry_their_provenance(server):
    """WebP is lossless by default and JPEG at quality 90 stays within 3 levels on average of the PNG."""
    body = {"n": 1, "seed": 9, "label": "upper", "truncation": 0.8}
    reference = post(server, **body)
    pixels = decoded(reference.content)
    webp, jpeg = post(server, **body, format="webp"), post(server, **body, format="jpeg")
    assert webp.headers["content-type"] == "image/webp" and jpeg.headers["content-type"] == "image/jpeg"
    np.testing.assert_array_equal(decoded(webp.content), pixels)
    assert np.abs(decoded(jpeg.content) - pixels).mean() <= 3
    assert np.abs(decoded(post(server, **body, format="jpeg", quality=30).content) - pixels).mean() > 0
    lossy = post(server, **body, format="webp", quality=50).content
    assert lossy != webp.content and np.abs(decoded(lossy) - pixels).mean() <= 8
    for r in (reference, webp, jpeg):
        mark = provenance(r.content)
        assert {k: mark[k] for k in ("model", "seed", "label", "truncation", "endpoint")} == {
            "model": "default", "seed": 9, "label": "upper", "truncation": 0.8, "endpoint": "/generate"
        }  # fmt: skip
        assert mark["model_version"] == r.headers["x-model-version"] and mark["latent_protocol"].endswith("/v2")
        again = httpx.post(f"{server.url}{mark['endpoint']}", json=mark["request"], timeout=30)
        assert again.content == r.content  # the request inside the file draws the file again, byte for byte

    batch = post(server, "/generate_batch", n=3, seed=9, label="upper", truncation=0.8, format="webp").json()
    assert batch["format"] == "webp" and batch["media_type"] == "image/webp"
    first = base64.b64decode(batch["images"][0]["data"])
    np.testing.assert_array_equal(decoded(first), pixels)
    assert [provenance(base64.b64decode(i["data"]))["seed"] for i in batch["images"]] == [9, 10, 11]
    assert httpx.post(f"{server.url}/generate", json=provenance(first)["request"]).content == first


@pytest.mark.parametrize(
    ("accept", "status", "media"),
    [
        ("image/webp", 200, "image/webp"),
        ("image/avif,image/webp;q=0.9,*/*;q=0.8", 200, "image/webp"),
        ("image/jpeg;q=0.5, image/png", 200, "image/png"),
        ("*/*", 200, "image/png"),
        ("image/avif", 406, "application/json"),
    ],
)
def test_the_accept_header_picks_the_format(server, accept, status, media):
    r = httpx.post(f"{server.url}/generate", json={"seed": 1}, headers={"accept": accept})
    assert r.status_code == status and r.headers["content-type"] == media
    if status == 406:
        assert r.json()["allowed"] == ["image/png", "image/webp", "image/jpeg"]


def test_quality_is_refused_where_it_means_nothing(server):
    r = post(server, format="png", quality=80)
    assert r.status_code == 400 and r.json() == {"error": "quality applies to jpeg and webp, not png",
                                                 "allowed": ["jpeg", "webp"]}  # fmt: skip


def test_interpolate_counts_frames_and_draws_each_key_exactly(server):
    body = {"seeds": [3, 4, 5], "frames": 4, "label": ["upper", "lower", 0]}
    walk = post(server, "/interpolate", **body)
    assert walk.status_code == 200 and walk.headers["content-type"] == "image/webp"
    assert walk.headers["x-frames"] == "9" and walk.headers["x-seeds"] == "3,4,5"
    animation = Image.open(io.BytesIO(walk.content))
    assert animation.n_frames == 9 and animation.info["loop"] == 0
    assert post(server, "/interpolate", **body).content == walk.content  # every frame reproducible
    strip = post(server, "/interpolate", **body, format="png")
    frames = png(strip.content)
    assert frames.shape == (28, 9 * 28)
    keys = [
        png(post(server, seed=s, label=label).content) for s, label in zip(body["seeds"], body["label"], strict=True)
    ]
    for frame, key in zip((0, 4, 8), keys, strict=True):
        np.testing.assert_array_equal(frames[:, frame * 28 : (frame + 1) * 28], key)  # the walk passes through its keys
    assert len({frames[:, i * 28 : (i + 1) * 28].tobytes() for i in range(9)}) > 3  # and moves between them
    looped = post(server, "/interpolate", **body, loop=True, format="gif")
    assert looped.headers["x-frames"] == "12" and Image.open(io.BytesIO(looped.content)).format == "GIF"
    mark = provenance(looped.content)
    assert mark["seeds"] == [3, 4, 5] and mark["label"] == ["upper", "lower", "top-left"] and mark["frames"] == 12
    assert httpx.post(f"{server.url}/interpolate", json=mark["request"], timeout=30).content == looped.content
    by_seed = provenance(post(server, "/interpolate", seeds=[5, 6], frames=2).content)
    assert by_seed["label"] == [CLASSES[5 % 4], CLASSES[6 % 4]]  # the classes the keys were drawn for, by seed
    tinted = post(server, "/interpolate", seeds=[1, 2], frames=3, model="tinted", format="png")
    assert png(tinted.content).shape == (16, 4 * 16, 3)


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"seeds": [1]}, "at least 2 items"),
        ({"seeds": list(range(17))}, "at most 16 items"),
        ({"seeds": [1, 2], "frames": 121}, "less than or equal to 120"),
        ({"seeds": list(range(16)), "frames": 120}, "1801 frames of 28x28x1"),
        ({"seeds": [1, 2], "label": ["upper"]}, "1 labels for 2 key seeds"),
        ({"seeds": [1, 2], "format": "jpeg"}, "'webp', 'gif' or 'png'"),
        ({"seeds": [1, 2], "format": "gif", "quality": 5}, "quality applies to webp, not gif"),
        ({"seeds": [1, 2], "duration_ms": 5}, "greater than or equal to 20"),
    ],
)
def test_interpolate_refuses_what_it_cannot_draw_and_says_why(server, body, says):
    r = post(server, "/interpolate", **body)
    assert r.status_code == 400 and says in r.text, r.text


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


def test_two_lines_are_promoted_independently_under_load_and_fail_no_request(home, server):
    """Traffic to both lines while each is promoted in turn: every request answered, and each line's version moves
    only with its own promotion."""
    before = {line: httpx.get(f"{server.url}/info", params={"model": line}).json()["model_version"]
              for line in ("default", "tinted")}  # fmt: skip

    async def load_through(promotions: list[tuple[str, str]]) -> tuple[list[int], list[tuple[int, str, str]]]:
        statuses, seen = [], []  # (phase, line, version) of each answer
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            deadline, phase, since = time.monotonic() + 60, 0, 0
            while time.monotonic() < deadline:
                calls = [
                    client.post("/generate", json={"n": 2, "model": ("default", "tinted")[i % 2]}) for i in range(8)
                ]
                for r in await asyncio.gather(*calls):
                    statuses.append(r.status_code)
                    seen.append((phase, r.headers.get("x-model"), r.headers.get("x-model-version")))
                line = promotions[phase - 1][0] if phase else None
                switched = phase and any(p == phase and x == line and v != before[line] for p, x, v in seen)
                if phase == 0 or (switched and len(statuses) - since > 48):
                    if phase == len(promotions):
                        break
                    line, folder = promotions[phase]
                    await asyncio.to_thread(promote, home, home / folder, line)
                    phase, since = phase + 1, len(statuses)
        return statuses, seen

    # default: to an unconditional model (labels now refused); then tinted: to a blue tint
    statuses, seen = asyncio.run(load_through([("default", "plain"), ("tinted", "tinted-blue")]))
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    versions = {line: {v for _, x, v in seen if x == line} for line in ("default", "tinted")}
    assert all(before[line] in versions[line] and len(versions[line]) == 2 for line in versions), versions
    assert {v for p, x, v in seen if x == "tinted" and p == 1} == {before["tinted"]}  # untouched by default's
    # Each worker follows production on its own clock: wait (within the budget) until every answer is the new model.
    deadline, streak = time.monotonic() + 30, 0
    while streak < 10 and time.monotonic() < deadline:
        after = httpx.get(f"{server.url}/info").json()
        streak = streak + 1 if after["model_version"] != before["default"] else 0
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


def test_a_model_whose_gate_found_that_drs_helps_gets_it_by_default_with_the_bound_it_was_judged_at():
    from service.requests import GenerateRequest, Refused, default_sampler, sampler_for

    info = {"model": "default", "version": "abc", "discriminator": {"sha256": "d"},
            "gate": {"drs": {"verdict": "helps", "sampler": "drs", "max_candidates": 8}}}  # fmt: skip
    assert default_sampler(info) == "drs"
    assert sampler_for(GenerateRequest(), info) == ("drs", 8)
    assert sampler_for(GenerateRequest(max_candidates=3), info) == ("drs", 3)
    assert sampler_for(GenerateRequest(sampler="plain"), info)[0] == "plain"
    no_d = {**info, "discriminator": None}  # a verdict, but no discriminator to sample with
    assert default_sampler(no_d) == "plain" and sampler_for(GenerateRequest(), no_d)[0] == "plain"
    with pytest.raises(Refused, match="has no discriminator"):
        sampler_for(GenerateRequest(sampler="drs"), no_d)
    assert default_sampler({**info, "gate": {"drs": {"verdict": "no detectable difference", "sampler": "plain"}}}) == (
        "plain"
    )


def test_a_shared_store_set_by_ganserve_store_is_served_and_followed(tmp_path):
    """GANSERVE_STORE: a replica serves the store the retrain job promotes into (deploy/: a shared volume), not
    BentoML's own, and follows a promotion there without a restart."""
    shared, own = tmp_path / "shared", tmp_path / "own"
    export_module(BlobGenerator(square=120), tmp_path / "plain", latent_dim=800, image=IMAGE)
    export_module(BlobGenerator(square=200), tmp_path / "bright", latent_dim=800, image=IMAGE)
    promote(shared, tmp_path / "plain")
    own.mkdir()  # BentoML's own home stays empty: a model served comes from the shared store
    server = Server(own, GANSERVE_STORE=str(shared / "models"), GANSERVE_LAYOUT="inprocess")
    try:
        first = post(server, n=1).headers["x-model-version"]
        promote(shared, tmp_path / "bright")
        deadline = time.monotonic() + 30
        while (now := post(server, n=1).headers["x-model-version"]) == first and time.monotonic() < deadline:
            time.sleep(0.3)
        assert now != first, "the promotion in the shared store was not followed"
    finally:
        server.stop()
    assert not any((own / "models").glob("*")), "BentoML's own store was written"
