"""ganserve_client: GAN images from a ganserve service in two lines.

    from ganserve_client import GanClient
    images = GanClient("http://127.0.0.1:3000").generate(4, seed=0, label="sneaker")

Every file the service makes says how it was drawn (``read_provenance``), so ``GanClient.reproduce`` can ask for it
again. Errors form one tree, rooted at GanserveError (also named GanServeError; see ganserve_client._errors for the
drawing): InvalidRequest, Unauthorized, RateLimited, Unavailable (and its Timeout), TransportError.
"""

from ganserve_client._client import DEFAULT_TIMEOUT, DEFAULT_URL, AsyncGanClient, GanClient
from ganserve_client._errors import (
    GanServeError,
    GanserveError,
    InvalidRequest,
    RateLimited,
    Timeout,
    TransportError,
    Unauthorized,
    Unavailable,
)
from ganserve_client._models import Animation, BulkSummary, GeneratedImage, Health, ModelInfo, Reproduction
from ganserve_client._provenance import DrsInfo, Provenance, read_provenance

__all__ = [
    "DEFAULT_TIMEOUT",
    "DEFAULT_URL",
    "Animation",
    "AsyncGanClient",
    "BulkSummary",
    "DrsInfo",
    "GanClient",
    "GanServeError",
    "GanserveError",
    "GeneratedImage",
    "Health",
    "InvalidRequest",
    "ModelInfo",
    "Provenance",
    "RateLimited",
    "Reproduction",
    "Timeout",
    "TransportError",
    "Unauthorized",
    "Unavailable",
    "read_provenance",
]
