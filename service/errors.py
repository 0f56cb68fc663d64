"""The project's one exception base. Pure: no imports, so every part of ganserve (and training) can share it.

Every error a user can fix derives from ``GanserveError`` and carries a message that says what is wrong and what
is allowed; the ``ganserve`` CLI catches this base once and prints that message as one line (exit 2)::

    GanserveError
    ├── ManifestError     (service.manifest)   a model folder that is not a valid exported model
    ├── ConfigError       (training.config)    a config key or value that cannot be used
    ├── DataError         (training.data)      data that cannot be read as configured
    ├── CheckpointError   (training.checkpoint)
    ├── ExportError       (training.export)
    ├── GateError         (training.judging)   the gate cannot judge: wrong or weak evaluator, wrong model
    └── RegistryError     (release.registry)
        └── RegistryLocked
"""

from __future__ import annotations

__all__ = ["GanserveError"]


class GanserveError(Exception):
    """A problem the user can fix; its message is one line that says what is wrong and what is allowed."""
