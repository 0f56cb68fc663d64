"""BentoML's floor: the same kind of endpoint returning a constant PNG, no model.

bentoml serve bench.peers.noop_bento:Noop --port 3402
"""

import os
from typing import Annotated

import bentoml
from bentoml.validators import ContentType
from pydantic import Field

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d494844520000001c0000001c0800000000577b0fa70000001049444154789c63601805a360"
    "148c5400000b8c0001c8e5d8bf0000000049454e44ae426082"
)


@bentoml.service(workers=os.cpu_count() or 1, traffic={"timeout": 60, "max_concurrency": 256})  # ganserve's layout
class Noop:
    @bentoml.api(route="/generate")
    async def generate(
        self, n: Annotated[int, Field(ge=1, le=64)] = 1, seed: int | None = None, label: int | str | None = None
    ) -> Annotated[bytes, ContentType("image/png")]:
        return PNG
