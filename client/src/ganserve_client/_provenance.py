"""Reading the provenance a ganserve service writes inside every file, and comparing two files' pixels.

Where it sits, by format: PNG, a text chunk with keyword "ganserve"; WebP and JPEG, XMP whose element
``<ganserve:provenance>`` holds the JSON (XML-escaped); GIF, the comment extension, the JSON itself.
"""

from __future__ import annotations

import html
import io
import re
from pathlib import Path

from PIL import Image, ImageSequence
from pydantic import ValidationError

from ganserve_client._errors import GanServeError
from ganserve_client._models import Provenance

__all__ = ["read_provenance", "same_pixels"]

_XMP_ELEMENT = re.compile(rb"<ganserve:provenance(?:\s[^>]*)?>(.*?)</ganserve:provenance>", re.DOTALL)


def read_provenance(file: bytes | str | Path) -> Provenance | None:
    """The provenance inside a ganserve file (its bytes or its path), or None when it carries none.

    Raises ``GanServeError`` when the file has a ganserve provenance that cannot be read, and Pillow's
    ``UnidentifiedImageError`` (an ``OSError``) when it is not an image."""
    raw = _raw(_open(file))
    if raw is None:
        return None
    try:
        return Provenance.model_validate_json(raw)
    except ValidationError as err:
        raise GanServeError(f"the file's ganserve provenance is malformed: {err.errors()[0]['msg']}") from None


def same_pixels(a: bytes | str | Path, b: bytes | str | Path) -> bool:
    """Whether two image files decode to the same pixels, frame by frame (an animation's too), whatever their
    encoding: a PNG and a lossless WebP of one image are the same pixels, not the same bytes."""
    first, second = _open(a), _open(b)
    if first.size != second.size or getattr(first, "n_frames", 1) != getattr(second, "n_frames", 1):
        return False
    for x, y in zip(ImageSequence.Iterator(first), ImageSequence.Iterator(second), strict=True):
        # RGBA covers every mode the service sends (gray, RGB, palette GIF frames) without losing a value
        if x.convert("RGBA").tobytes() != y.convert("RGBA").tobytes():
            return False
    return True


def _open(file: bytes | str | Path) -> Image.Image:
    # read whole: Image.open on a path keeps the file open until the image is decoded or dropped
    return Image.open(io.BytesIO(file if isinstance(file, bytes) else Path(file).read_bytes()))


def _raw(image: Image.Image) -> bytes | str | None:
    if image.format == "PNG":
        # ``text`` also reads the chunks after the pixels, which ``info`` skips until the image is decoded
        return image.text.get("ganserve")  # type: ignore[attr-defined]
    if image.format == "GIF":
        comment = image.info.get("comment")  # any GIF may carry a comment: only ganserve's JSON is read
        return comment if comment and comment.lstrip().startswith(b"{") and b'"ganserve"' in comment else None
    xmp = image.info.get("xmp")
    if not xmp:
        return None
    found = _XMP_ELEMENT.search(xmp if isinstance(xmp, bytes) else xmp.encode())
    return html.unescape(found.group(1).decode()) if found else None
