"""The project's one exception base, and a pydantic ``ValidationError`` told as the user reads it. Pure: the standard
library only (pydantic's errors are read by duck typing), so every part of ganserve (and training) can share it.

Every error a user can fix derives from ``GanserveError`` and carries a message that says what is wrong and what
is allowed; the ``ganserve`` CLI catches this base once and prints that message as one line (exit 2). Each class,
its module and, in brackets, its other parents (tests/test_errors.py checks this tree against the code)::

    GanserveError
    ├── LineError(ValueError)           service.lines               a model line name that is not allowed
    ├── ManifestError(ValueError)       service.manifest            a model folder that is not a valid exported model
    ├── ConfigError(ValueError)         training.config             a config key or value that cannot be used
    ├── DataError(ValueError)           training.data               data that cannot be read as configured
    ├── CheckpointError(ValueError)     training.checkpoint         not a checkpoint of a schema this version reads
    ├── ExportError(RuntimeError)       training.export             the graph does not reproduce PyTorch
    ├── FitError(ValueError)            training.discriminator      no fitted discriminator can be made
    ├── EvaluatorError                  training.judging.evaluator  no usable evaluator
    ├── GateError(RuntimeError)         training.judging.gate       the gate cannot judge: wrong evaluator or data
    └── RegistryError(RuntimeError)     release.registry            a registry operation that cannot be done
        └── RegistryLocked              release.registry            another job holds the promotion lock
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["GanserveError", "one_line", "problems"]


class GanserveError(Exception):
    """A problem the user can fix; its message is one line that says what is wrong and what is allowed."""


def problems(
    err,
    *,
    where: Callable[[str], str] = str,
    whole: str | None = None,
    what: Callable[[dict], str] | None = None,
) -> list[str]:
    """Each error of a pydantic ``ValidationError`` (anything with ``errors()``) as ``where: what``: its location
    dotted (``label.0``), or as ``where`` names it (a setting's variable), and its message, or ``what(error)``.

    An error of the whole (no location) reads ``whole: what``; without ``whole``, its message alone, less pydantic's
    ``Value error, ``: a check across fields names the fields itself."""
    out = []
    for e in err.errors():
        at, msg = ".".join(map(str, e["loc"])), what(e) if what else e["msg"]
        if at:
            out.append(f"{where(at)}: {msg}")
        else:
            out.append(f"{whole}: {msg}" if whole is not None else msg.removeprefix("Value error, "))
    return out


def one_line(err, **how) -> str:
    """``problems`` (``how``: its options) in one line: ``n: Input should be ...; seed: ...``."""
    return "; ".join(problems(err, **how))
