"""Model lines: several generators in one registry and one service, each with its own production pointer.

A line is a name such as ``fashion`` or ``emoji``. Its candidates are the BentoML model ``ganserve-candidate.<line>``
and its promotions ``ganserve-generator.<line>``, whose ``latest`` pointer is the line's production; the line
``default`` keeps the plain names ``ganserve-candidate`` and ``ganserve-generator``, so a store made before lines
existed is the default line as it stands. Pure names: shared by the registry (training) and the service.

The HTTP API calls a line a *model*: a body's ``model`` (``service.requests.Line``, where it is documented), ``/info``'s
``?model=``, the ``X-Model`` header and a response's ``model`` each name a line; ``ganserve --line`` names the same.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from service.errors import GanserveError

__all__ = [
    "CANDIDATE_PREFIX",
    "DEFAULT_LINE",
    "LINE_PATTERN",
    "PRODUCTION_PREFIX",
    "LineError",
    "candidate_name",
    "check_line",
    "line_id",
    "line_of",
    "ordered",
    "production_name",
]

DEFAULT_LINE = "default"
CANDIDATE_PREFIX = "ganserve-candidate"
PRODUCTION_PREFIX = "ganserve-generator"
LINE_PATTERN = r"[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?"  # lower case, digits and inner dashes: a URL and a tag part
_LINE = re.compile(LINE_PATTERN)


class LineError(GanserveError, ValueError):
    """A model line name that is not allowed."""


def check_line(line: str) -> str:
    if not isinstance(line, str) or not _LINE.fullmatch(line):
        raise LineError(
            f"model line {line!r} is not allowed: use 1 to 32 lower-case letters, digits and inner dashes, "
            "e.g. fashion or emoji-64"
        )
    return line


def production_name(line: str) -> str:
    """The BentoML model name of ``line``'s promotions; ``<name>:latest`` is its production."""
    return _name(PRODUCTION_PREFIX, line)


def candidate_name(line: str) -> str:
    return _name(CANDIDATE_PREFIX, line)


def line_id(line: str) -> int:
    """A number for ``line`` that every process derives alike from its name alone (48 bits of its sha256, exact in
    the float64 request rows of ``service.rows``): no process depends on another's list of lines or its order."""
    return int.from_bytes(hashlib.sha256(line.encode()).digest()[:6], "big")


def line_of(model_name: str) -> str | None:
    """The line a BentoML model name belongs to (either kind), or None for a model that is not ganserve's."""
    for prefix in (PRODUCTION_PREFIX, CANDIDATE_PREFIX):
        if model_name == prefix:
            return DEFAULT_LINE
        if model_name.startswith(prefix + ".") and _LINE.fullmatch(line := model_name[len(prefix) + 1 :]):
            return line
    return None


def ordered(lines: Iterable[str | None]) -> list[str]:
    """The lines as every listing shows them: the default line first, then by name; None (not a line) dropped."""
    return sorted(set(lines) - {None}, key=lambda line: (line != DEFAULT_LINE, line))


def _name(prefix: str, line: str) -> str:
    return prefix if check_line(line) == DEFAULT_LINE else f"{prefix}.{line}"
