"""Image files: PNG, WebP and JPEG for images, animated WebP, GIF and PNG strips for walks; each with its provenance.

Provenance is a JSON object (what drew the file and the request that draws it again) written inside the file, where
each format keeps text: a PNG ``tEXt`` chunk with the keyword ``ganserve``; in WebP and JPEG an XMP packet whose
``ganserve:provenance`` element holds the JSON; in GIF the comment extension. ``ganserve_client`` reads it back.

PNG is written by ``service.imaging.encode_png`` (the fast path, without Pillow); the others by Pillow, imported on
first use. Gray images are written as gray where the format has gray (PNG, JPEG, GIF) and as RGB in WebP, which has
none. GIF holds 256 colours: exact for gray images, a palette for RGB ones.
"""

from __future__ import annotations

import io
import json
from typing import Any
from xml.sax.saxutils import escape

import numpy as np

from service.imaging import encode_png, tile

__all__ = [
    "ANIMATIONS",
    "DEFAULT_JPEG_QUALITY",
    "FORMATS",
    "PROVENANCE_KEY",
    "encode_animation",
    "encode_image",
    "negotiate",
    "xmp_packet",
]

FORMATS = {"png": "image/png", "webp": "image/webp", "jpeg": "image/jpeg"}  # images
ANIMATIONS = {"webp": "image/webp", "gif": "image/gif", "png": "image/png"}  # walks; png: one strip of frames
DEFAULT_JPEG_QUALITY = 90
PROVENANCE_KEY = "ganserve"
XMP_NAMESPACE = "https://ganserve.dev/ns/provenance/1.0/"


def encode_image(image: np.ndarray, fmt: str, *, quality: int | None = None, provenance: dict[str, Any]) -> bytes:
    """uint8 HWC (1 or 3 channels) -> the bytes of a ``fmt`` file. WebP is lossless unless a ``quality`` is given;
    JPEG takes ``quality`` (default 90)."""
    text = json.dumps(provenance, separators=(",", ":"))
    if fmt == "png":
        return encode_png(image, text={PROVENANCE_KEY: text})
    out = io.BytesIO()
    picture = _pil(image)
    if fmt == "webp":
        picture.save(out, "WEBP", xmp=xmp_packet(text), **_webp(quality))
    elif fmt == "jpeg":
        # 4:4:4: a GAN's images are small, and halving their colour resolution costs more than the bytes it saves
        picture.save(out, "JPEG", quality=quality or DEFAULT_JPEG_QUALITY, subsampling=0, xmp=xmp_packet(text))
    else:
        raise ValueError(f"unknown image format {fmt!r}; allowed: {sorted(FORMATS)}")
    return out.getvalue()


def encode_animation(
    frames: np.ndarray, fmt: str, *, duration_ms: int, quality: int | None = None, provenance: dict[str, Any]
) -> bytes:
    """uint8 NHWC frames -> an animated WebP (lossless unless ``quality``) or GIF that loops forever, or a PNG of the
    frames side by side with no gap (frame i at x = i * width)."""
    text = json.dumps(provenance, separators=(",", ":"))
    if fmt == "png":
        return encode_png(tile(frames, cols=len(frames), padding=0), text={PROVENANCE_KEY: text})
    first, *rest = (_pil(f) for f in frames)
    out = io.BytesIO()
    common = {"save_all": True, "append_images": rest, "duration": duration_ms, "loop": 0}
    if fmt == "webp":
        first.save(out, "WEBP", xmp=xmp_packet(text), **common, **_webp(quality))
    elif fmt == "gif":
        first.save(out, "GIF", comment=text.encode(), optimize=False, **common)
    else:
        raise ValueError(f"unknown animation format {fmt!r}; allowed: {sorted(ANIMATIONS)}")
    return out.getvalue()


def negotiate(accept: str | None, offered: dict[str, str], default: str) -> str | None:
    """The format an ``Accept`` header prefers among ``offered`` (name -> media type): the one with the highest
    weight. A type the client names wins a tie with a wildcard (``*/*``, ``image/*``), which weighs every offered
    format and, among those, prefers ``default``. ``default`` when there is no header; None when it takes none (a
    type named with ``q=0`` is refused, whatever the wildcards say)."""
    if not accept:
        return default
    order = list(offered)
    ranks: dict[str, tuple] = {}  # name -> (weight, named, is the default, earlier in offered)
    refused = set()
    for part in accept.split(","):
        media, _, params = part.strip().partition(";")
        media, q = media.strip().lower(), 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip() == "q":
                try:
                    q = min(max(float(value), 0.0), 1.0)
                except ValueError:
                    q = 0.0
        if media in ("*/*", "image/*"):
            names, named = order, False
        else:
            names, named = [n for n, m in offered.items() if m == media], True
            if q == 0:
                refused.update(names)
        for name in names:
            rank = (q, named, name == default, -order.index(name))
            ranks[name] = max(ranks.get(name, rank), rank)
    allowed = [(rank, name) for name, rank in ranks.items() if rank[0] > 0 and name not in refused]
    return max(allowed)[1] if allowed else None


def xmp_packet(text: str) -> bytes:
    """An XMP packet that carries ``text`` (the provenance JSON) as the ``ganserve:provenance`` property."""
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        f'<rdf:Description rdf:about="" xmlns:ganserve="{XMP_NAMESPACE}">'
        f"<ganserve:provenance>{escape(text)}</ganserve:provenance>"
        '</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="r"?>'
    ).encode()


def _webp(quality: int | None) -> dict:
    """Pillow's WebP options: lossy at ``quality``, else lossless at its fastest setting."""
    return {"quality": quality} if quality is not None else {"lossless": True, "quality": 100, "method": 0}


def _pil(image: np.ndarray):
    from PIL import Image

    return Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image, "L" if image.shape[2] == 1 else "RGB")
