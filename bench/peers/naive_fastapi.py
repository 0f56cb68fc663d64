"""The naive peer a user would write instead: FastAPI + uvicorn, onnxruntime per request, PNG with Pillow.

GANSERVE_MODEL_DIR=models/default uvicorn bench.peers.naive_fastapi:app --port 3401
"""

import io
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI
from fastapi.responses import Response
from PIL import Image
from pydantic import BaseModel

from service.imaging import tile
from service.manifest import read_manifest

FOLDER = Path(os.environ.get("GANSERVE_MODEL_DIR", "models/default"))
manifest = read_manifest(FOLDER)
session = ort.InferenceSession(str(FOLDER / "generator.onnx"), providers=["CPUExecutionProvider"])
app = FastAPI()


class Body(BaseModel):
    n: int = 1
    seed: int = 0
    label: int | None = None


@app.post("/generate")
def generate(body: Body) -> Response:
    seeds = [body.seed + i for i in range(body.n)]
    # the exported graph draws its own latents: seeds in, images out
    feeds = {"seeds": np.array(seeds, np.int64), "truncation": np.full(body.n, np.inf, np.float32)}
    if manifest.class_names:
        feeds["labels"] = np.full(body.n, -1 if body.label is None else body.label, np.int64)
    images = session.run(["images"], feeds)[0]
    picture = images[0] if body.n == 1 else tile(images)
    buffer = io.BytesIO()
    Image.fromarray(picture[..., 0]).save(buffer, format="PNG")
    return Response(buffer.getvalue(), media_type="image/png", headers={"X-Seeds": ",".join(map(str, seeds))})
