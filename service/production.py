"""The model a serving process holds: production from the model store, verified, hot-swapped, never lost to a bad file.

At start the newest version that verifies against its manifest and runs is served: production first, then the
promotions before it, newest first. A version that does not is refused with one log line, never a traceback or a
crash loop: a worker restarted beside a corrupt production file serves the last good promotion. With no loadable
version at all the process stays up, not ready, and keeps looking.

While serving, ``follow`` polls the production pointer. A newly promoted version is loaded and warmed up beside the
old one, then swapped in with one assignment, so no request sees a half-loaded model; one that does not load is
refused, and the model in hand keeps serving. ``refusal`` says which production version is not being served and
why, for /info and the ``ganserve_production_refused`` metric. A file that fails its sha256 is refused until its
files change; any other failure to load (onnxruntime, memory) is tried again at the next check.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from service.lines import PRODUCTION_PREFIX, line_id, line_of, ordered, production_name
from service.manifest import MANIFEST_NAME, MODEL_NAME, GateHeadline, ManifestError
from service.rows import pack_images, unpack_request, version_of, widen
from service.runtime import GeneratorRuntime

__all__ = ["Lines", "NotReady", "Production", "history", "lines_in_store"]

log = logging.getLogger("bentoml.ganserve")
UNTIL_READY_SECONDS = 5.0  # how often a process with no model looks again, even when told not to follow promotions


class NotReady(RuntimeError):
    """No model version could be loaded yet."""


class Production:
    """The model behind ``tag`` (``name:latest`` follows promotions and falls back to earlier ones; ``name:version``
    serves that version or nothing). ``on_refusal(tag, refused)`` hears when a production version is refused and
    when that ends."""

    def __init__(
        self, tag: str, *, threads: int = 0, spin: bool = True, on_refusal: Callable[[str, bool], None] | None = None
    ) -> None:
        self.tag, self.threads, self.spin, self.on_refusal = tag, threads, spin, on_refusal
        self.runtime: GeneratorRuntime | None = None
        self._description: dict[str, Any] = {}  # of the runtime and refusal: made when they change, not per request
        self.retired: dict[str, Any] | None = None  # the model swapped out last, for images it drew before the swap
        self.refusal: dict[str, str] | None = None  # the production version not served, and why
        self._failed: dict[tuple, str] = {}  # a version's files, as they were when they failed verification -> why
        self._said: set[str] = set()
        self._check_safely()

    @property
    def ready(self) -> bool:
        return self.runtime is not None

    def check(self) -> None:
        """Serve what the store's production pointer names, if it loads; else keep (or find) the best that does."""
        import bentoml
        from bentoml.exceptions import NotFound

        try:
            current = bentoml.models.get(self.tag)
        except NotFound:
            self._set_refusal(None)
            if self.runtime is None:
                self._say(f"no model {self.tag} in the store; not ready, looking again later")
            return
        tag, folder = str(current.tag), Path(current.path)
        if self.runtime is not None and folder == self.runtime.folder:
            self._set_refusal(None)
            return
        fresh, why = self._load(tag, folder)
        if fresh is not None:
            self._set_refusal(None)
            self._swap(fresh)
            return
        self._set_refusal({"tag": tag, "reason": why})
        if self.runtime is None:  # at start: the newest earlier promotion that loads
            for older_tag, older in self._earlier(current):
                if (fresh := self._load(older_tag, older)[0]) is not None:
                    log.warning("serving %s, the newest earlier promotion that verifies, instead of %s", older_tag, tag)
                    self._swap(fresh)
                    return
            self._say(f"no version of {self.tag} loads; not ready, looking again later")

    async def follow(self, every: float) -> None:
        """Check the store every ``every`` seconds, off the event loop, for as long as the process serves; with 0,
        only until a model is loaded."""
        while every > 0 or not self.ready:
            await asyncio.sleep(every or UNTIL_READY_SECONDS)
            await asyncio.to_thread(self._check_safely)

    def describe(self, version: str | None = None) -> dict[str, Any]:
        """The model being served (or the one swapped out last, marked ``retired``, when asked for its version)."""
        if self.retired is not None and version == self.retired["version"]:
            return self.retired
        if self.runtime is None:
            raise NotReady(self._not_ready())
        return self._description

    def draw(
        self, seeds: np.ndarray, labels: np.ndarray, truncations: np.ndarray, candidates: np.ndarray
    ) -> np.ndarray:
        """Image rows (``service.rows``) stamped with their labels and the version that drew them; rows with a
        candidate bound are drawn by rejection sampling, by plain sampling when the model has no discriminator (a
        swap to such a model landed after the request was checked: the rows say so). Blocking: call it off the
        event loop."""
        runtime = self._runtime()  # one model for the whole batch, even if a promotion lands meanwhile
        drs = candidates > 0 if runtime.discriminator is not None else np.zeros(len(seeds), bool)
        if not drs.any():
            drawn = runtime.generate(seeds, labels, truncations)
            return pack_images(drawn.images, drawn.labels, runtime.version)
        parts = []
        if not drs.all():
            at = np.flatnonzero(~drs)
            drawn = runtime.generate(seeds[at], labels[at], truncations[at])
            parts.append((at, pack_images(drawn.images, drawn.labels, runtime.version)))
        at = np.flatnonzero(drs)
        drawn = runtime.rejection_sample(seeds[at], labels[at], truncations[at], candidates=candidates[at])
        parts.append((at, pack_images(drawn.images, drawn.labels, runtime.version, scores=drawn.score,
                                      candidates=drawn.candidates, accepted=drawn.accepted)))  # fmt: skip
        return _merge(parts, len(seeds))

    def walk(self, keys: list[int], frames: int, labels: list[int], truncation: float | None, loop: bool) -> np.ndarray:
        """The frames of a walk between key seeds (``GeneratorRuntime.interpolate``) as image rows. Blocking."""
        runtime = self._runtime()
        drawn = runtime.interpolate(keys, frames, labels=np.asarray(labels), truncation=truncation, loop=loop)
        return pack_images(drawn.images, drawn.labels, runtime.version)

    def _runtime(self) -> GeneratorRuntime:
        if (runtime := self.runtime) is None:
            raise NotReady(self._not_ready())
        return runtime

    def _check_safely(self) -> None:
        try:
            self.check()
        except Exception:  # an unreadable store must not take the model down, nor crash-loop a starting worker
            log.exception("could not read the model store; %s", "serving as before" if self.ready else "not ready")

    def _earlier(self, current: Any) -> list[tuple[str, Path]]:
        """(tag, folder) of the versions before ``current``, newest first, when ``tag`` follows ``latest``; a
        version whose own description cannot be read is passed over."""
        import bentoml

        if self.tag.partition(":")[2] not in ("", "latest"):
            return []  # a pinned version is served or nothing
        earlier = []
        for folder in Path(current.path).parent.iterdir():
            if folder.is_dir() and folder != Path(current.path):
                try:
                    model = bentoml.models.get(f"{current.tag.name}:{folder.name}")
                except Exception as err:
                    self._say(f"passing over {folder}: {type(err).__name__}: {err}")
                    continue
                if model.creation_time < current.creation_time:
                    earlier.append(model)
        return [(str(m.tag), Path(m.path)) for m in sorted(earlier, key=lambda m: m.creation_time, reverse=True)]

    def _load(self, tag: str, folder: Path) -> tuple[GeneratorRuntime | None, str]:
        """The version's runtime, warmed up; or None and why, said in one log line."""
        identity = _identity(folder)
        if identity in self._failed:
            return None, self._failed[identity]
        try:
            runtime = GeneratorRuntime(folder, threads=self.threads, spin=self.spin)
            runtime.warm_up()
        except Exception as err:  # a file that fails its sha256; a model onnxruntime cannot load or run
            why = f"{type(err).__name__}: {str(err).strip().splitlines()[0]}"
            if isinstance(err, ManifestError):
                self._failed[identity] = why  # until its files change
            self._say(f"refusing {tag} ({folder}): {why}")
            return None, why
        return runtime, ""

    def _swap(self, fresh: GeneratorRuntime) -> None:
        if self.runtime is not None:
            self.retired = {**self.describe(), "retired": True}
        manifest = fresh.manifest.model_dump(mode="json")
        self._description = {"version": fresh.version, "provider": fresh.provider, "refused": self.refusal, **manifest}
        self.runtime = fresh  # one assignment: a batch in flight keeps the runtime it started with
        log.info("now serving %s (%s)", fresh.version, fresh.folder)

    def _set_refusal(self, refusal: dict[str, str] | None) -> None:
        if refusal != self.refusal and self.on_refusal is not None:
            if self.refusal is not None:
                self.on_refusal(self.refusal["tag"], False)
            if refusal is not None:
                self.on_refusal(refusal["tag"], True)
        self.refusal = refusal
        if self._description.get("refused") != refusal:
            self._description = {**self._description, "refused": refusal}

    def _say(self, message: str) -> None:
        """Log an error once, not at every check."""
        if message not in self._said:
            log.error(message)
            self._said.add(message)

    def _not_ready(self) -> str:
        why = f": {self.refusal['tag']} was refused ({self.refusal['reason']})" if self.refusal else ""
        return f"no verified model to serve yet{why}"


def _identity(folder: Path) -> tuple:
    """A version's folder and its files' size and modification time: a file repaired in place is tried again."""
    stats = []
    for name in (MODEL_NAME, MANIFEST_NAME):
        try:
            s = (folder / name).stat()
            stats.append((s.st_size, s.st_mtime_ns))
        except OSError:
            stats.append(None)
    return (folder, *stats)


class Lines:
    """The production of each served model line (``service.lines``); request rows name their line by its
    ``line_id`` (``service.rows``)."""

    def __init__(
        self,
        names: list[str],
        *,
        threads: int = 0,
        spin: bool = True,
        on_refusal: Callable[[str, bool], None] | None = None,
    ) -> None:
        self.names = list(names)
        self.by_id = {line_id(name): name for name in self.names}
        self.productions = {
            name: Production(f"{production_name(name)}:latest", threads=threads, spin=spin, on_refusal=on_refusal)
            for name in self.names
        }

    @property
    def ready(self) -> bool:
        return all(p.ready for p in self.productions.values())

    async def follow(self, every: float) -> None:
        await asyncio.gather(*(p.follow(every) for p in self.productions.values()))

    def describe(self, line: str, version: str | None = None) -> dict[str, Any]:
        return {**self._production(line_id(line)).describe(version), "model": line}

    def draw(self, rows: np.ndarray) -> np.ndarray:
        """Request rows of any lines -> image rows, in the same order. Blocking."""
        seeds, labels, truncations, lines, candidates = unpack_request(rows)
        first = lines[0]
        if (lines == first).all():  # every row of one line: the usual batch
            return self._production(first).draw(seeds, labels, truncations, candidates)
        parts = []
        for index in np.unique(lines):
            at = np.flatnonzero(lines == index)
            parts.append((at, self._production(index).draw(seeds[at], labels[at], truncations[at], candidates[at])))
        return _merge(parts, len(rows))

    def walk(self, line: str, *args: Any) -> np.ndarray:
        return self._production(line_id(line)).walk(*args)

    def _production(self, line: int) -> Production:
        if (name := self.by_id.get(int(line))) is None:  # a line first promoted after this process started
            raise NotReady("this worker started before the model line's first promotion; restart the service")
        return self.productions[name]


def _merge(parts: list[tuple[np.ndarray, np.ndarray]], rows: int) -> np.ndarray:
    """Image rows drawn in parts (each with the indices it answers) -> one array in request order, padded to the
    widest image (``service.rows.widen``)."""
    widest = max(part.shape[1] for _, part in parts)
    out = np.empty((rows, widest), np.uint8)
    for at, part in parts:
        out[at] = widen(part, widest)
    return out


def lines_in_store() -> list[str]:
    """The lines with a production model in BentoML's store, the default line first."""
    import bentoml

    names = {m.tag.name for m in bentoml.models.list()}
    found = {line_of(n) for n in names if n == PRODUCTION_PREFIX or n.startswith(PRODUCTION_PREFIX + ".")}
    return ordered(found)


def history(line: str) -> list[dict[str, Any]]:
    """The line's promotions still in the store, oldest first, with the gate figures recorded when each was
    stored (``GateHeadline.RECORDED``, as the store's metadata keeps them); ``current`` marks production."""
    import bentoml
    from bentoml.exceptions import NotFound

    name = production_name(line)
    try:
        models = sorted(bentoml.models.list(name), key=lambda m: m.creation_time)
        current = bentoml.models.get(f"{name}:latest").tag.version
    except NotFound:
        return []
    shown = []
    for m in models:
        meta = m.info.metadata
        shown.append({
            "version": m.tag.version, "model_version": version_of(str(meta.get("sha256", ""))),
            "created": m.creation_time.isoformat(timespec="seconds"), "decision": meta.get("decision"),
            **{k: meta.get(k) for k in GateHeadline.RECORDED}, "current": m.tag.version == current,
        })  # fmt: skip
    return shown
