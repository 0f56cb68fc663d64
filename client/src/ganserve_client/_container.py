"""The image files a ganserve service sends, as containers: opening one, finding the provenance JSON written inside
it, and comparing two files' pixels. Pillow only: the models and the provenance reader build on this module, and it
imports none of ganserve_client, so they never import each other in a circle.

Where the provenance sits, by format: PNG, a text chunk with keyword "ganserve"; WebP and JPEG, XMP whose element
``<ganserve:provenance>`` holds the JSON (XML-escaped); GIF, the comment extension, the JSON itself.
"""

from __future__ import annotations

import html
import io
import re
from pathlib import Path

from PIL import Image, ImageSequence

__all__ = ["embedded_provenance", "open_image", "same_pixels"]

_XMP_ELEMENT = re.compile(rb"<ganserve:provenance(?:\s[^>]*)?>(.*?)</ganserve:provenance>", re.DOTALL)


def open_image(file: bytes | str | Path) -> Image.Image:
    """A file (its bytes or its path) opened with Pillow, lazily decoded."""
    # read whole: Image.open on a path keeps the file open until the image is decoded or dropped
    return Image.open(io.BytesIO(file if isinstance(file, bytes) else Path(file).read_bytes()))


def embedded_provenance(image: Image.Image) -> bytes | str | None:
    """The provenance JSON a ganserve file carries, as written, or None when it carries none."""
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


def same_pixels(a: bytes | str | Path, b: bytes | str | Path) -> bool:
    """Whether two image files decode to the same pixels, frame by frame (an animation's too), whatever their
    encoding: a PNG and a lossless WebP of one image are the same pixels, not the same bytes."""
    first, second = open_image(a), open_image(b)
    if first.size != second.size or getattr(first, "n_frames", 1) != getattr(second, "n_frames", 1):
        return False
    for x, y in zip(ImageSequence.Iterator(first), ImageSequence.Iterator(second), strict=True):
        # RGBA covers every mode the service sends (gray, RGB, palette GIF frames) without losing a value
        if x.convert("RGBA").tobytes() != y.convert("RGBA").tobytes():
            return False
    return True
