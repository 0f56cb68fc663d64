"""The model registry: BentoML's model store, with atomic promotion and rollback under a lock, per model line.

A registry is one model line's (``service.lines``: ``default``, ``fashion``, ...). Every exported candidate is
stored under the line's candidate name (``ganserve-candidate`` for the default line, ``ganserve-candidate.<line>``
for the others) with its manifest, gate report and grid. Promoting copies it into a new version of the line's
production name (``ganserve-generator[.<line>]``), whose ``latest`` pointer is the line's production: the service
and ``bentoml build`` read it. Each line has its own lock, pointer and history: nothing done to one line touches
another's.

Why not plain ``bentoml.models.create``: it writes the version folder in place, so a crash mid-copy leaves a
half-written version in the store. Here a version is built in a staging folder on the same file system, checked
against its manifest's sha256, renamed into the store (atomic), and only then does ``latest`` move, by
``os.replace`` (atomic). A crash at any point leaves production as it was; an orphaned version newer than
``latest`` is retired by the next promotion, and staging folders left by a killed job are removed by it too.
Rollback points ``latest`` at the promotion before the current one and retires the current one. Retired versions
past the newest ``keep_retired`` are deleted.

Nothing unverified reaches production: a promotion checks the candidate's ONNX file against its manifest (always;
``force`` does not override a corrupt file) and takes the gate's decision from the candidate's ``report.json`` only
when that report judged this very file (its ``candidate.sha256``). A report of another model counts as none: the
candidate is "not judged" and needs ``force``. This guards against accidents and mix-ups, not forgery: whoever can
rewrite the files can rewrite their hashes too.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from service.errors import GanserveError
from service.lines import DEFAULT_LINE, candidate_name, check_line, line_of, ordered, production_name
from service.manifest import (
    DISCRIMINATOR_NAME,
    MANIFEST_NAME,
    MODEL_NAME,
    GateHeadline,
    Manifest,
    ManifestError,
    judged,
    read_manifest,
)
from service.rows import version_of
from training.artifacts import move_into_place, staging_folder

__all__ = [
    "CANDIDATE_NAME",
    "PRODUCTION_NAME",
    "Entry",
    "Registry",
    "RegistryError",
    "RegistryLocked",
    "model_metadata",
    "verified_report",
]

CANDIDATE_NAME = candidate_name(DEFAULT_LINE)
PRODUCTION_NAME = production_name(DEFAULT_LINE)
MODEL_FILES = (MODEL_NAME, DISCRIMINATOR_NAME, MANIFEST_NAME, "report.json", "report.md", "grid.png")
KEEP_RETIRED = 5


class RegistryError(GanserveError, RuntimeError):
    """A registry operation that cannot be done as asked; the message says why."""


class RegistryLocked(RegistryError):
    """Another job holds the promotion lock."""


def verified_report(folder: Path) -> tuple[Manifest, dict | None, str]:
    """The model in ``folder`` checked against its manifest, its gate report if that judged this very file, and the
    decision that follows: the report's, or "not judged". A file that fails its sha256 is a ``RegistryError``."""
    manifest = _verified(folder)
    path = Path(folder) / "report.json"
    if not path.is_file():
        return manifest, None, "not judged"
    try:
        report = json.loads(path.read_text())
        sha256, decision = report["candidate"]["sha256"], report["decision"]
    except (ValueError, TypeError, KeyError) as err:
        raise RegistryError(f"{path} is not a gate report ({type(err).__name__}: {err})") from None
    if not judged(manifest, report, discriminator=False):  # the decision is about G's images, whatever D it had
        return (
            manifest,
            None,
            f"not judged: its report judged {version_of(str(sha256))}, not this file ({version_of(manifest.sha256)})",
        )
    return manifest, report, decision


def _verified(folder: Path) -> Manifest:
    try:
        return read_manifest(folder)
    except ManifestError as err:
        raise RegistryError(f"refusing a model that fails verification: {err}") from None


def model_metadata(manifest: Manifest, report: dict | None, decision: str | None = None) -> dict[str, Any]:
    """What ``ganserve models`` shows of a model: its hash, run, and the gate's decision and headline figures
    (those it has: BentoML's metadata takes no None), read from the report's headline (``GateHeadline``); its DRS
    verdict only when the report judged this folder's D too."""
    headline = GateHeadline.from_report(report) if report is not None and "figures" in report else None
    drs = headline.drs if headline is not None and judged(manifest, report) else None
    shown = {
        "sha256": manifest.sha256,
        "run_id": manifest.training.run_id if manifest.training else None,
        "step": manifest.training.step if manifest.training else None,
        "decision": decision or (report["decision"] if report else "not judged"),
        **{k: getattr(headline, k) for k in GateHeadline.RECORDED if headline is not None},
        "drs": drs.verdict if drs is not None else None,
        "fid_drs": drs.fid.drs if drs is not None and drs.fid is not None else None,
    }
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in shown.items() if v is not None}


@dataclass(frozen=True)
class Entry:
    tag: str
    name: str
    version: str
    created: datetime
    path: Path
    labels: dict[str, str]
    metadata: dict[str, Any]

    @property
    def sha256(self) -> str:
        return self.metadata.get("sha256", "")


class Registry:
    """Model line ``line`` of the store under ``home`` (BentoML's home, ``$BENTOML_HOME`` or ~/bentoml, by
    default)."""

    def __init__(self, home: Path | None = None, *, line: str = DEFAULT_LINE, keep_retired: int = KEEP_RETIRED) -> None:
        from bentoml._internal.configuration.containers import BentoMLContainer
        from bentoml._internal.models.model import ModelStore

        if keep_retired < 0:
            raise RegistryError(f"keep_retired must be 0 or more, not {keep_retired}")
        self.line = check_line(line)
        self.candidates, self.promotions = candidate_name(line), production_name(line)
        self.keep_retired = keep_retired
        self.home = Path(home) if home is not None else Path(BentoMLContainer.bentoml_home.get())
        self.models_dir = self.home / "models"
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.store = ModelStore(str(self.models_dir))
        self._hook = None  # tests inject a failure between the steps of a promotion

    # --- reading ----------------------------------------------------------------------------------------------

    def lines(self) -> list[str]:
        """Every line with a candidate or a promotion in this store, the default line first."""
        return ordered(line_of(p.name) for p in self.models_dir.iterdir() if p.is_dir())

    def entries(self, name: str) -> list[Entry]:
        """Versions of ``name``, oldest first; half-written folders (no model.yaml) are skipped."""
        folder = self.models_dir / name
        if not folder.is_dir():
            return []
        out = []
        for path in folder.iterdir():
            if path.is_dir() and (path / "model.yaml").is_file():
                model = self.store.get(f"{name}:{path.name}")
                out.append(self._entry(model))
        return sorted(out, key=lambda e: e.created)

    def production(self) -> Entry | None:
        """The version the line's ``latest`` pointer names, or None before its first promotion."""
        latest = self.models_dir / self.promotions / "latest"
        if not latest.is_file():
            return None
        from bentoml.exceptions import NotFound

        try:
            return self._entry(self.store.get(f"{self.promotions}:{latest.read_text().strip()}"))
        except NotFound:
            return None

    def get(self, version: str) -> Entry:
        """A candidate or production version of this line, by version, ``name:version`` or a unique version
        prefix."""
        name, _, ver = version.rpartition(":")
        if name and name not in (self.candidates, self.promotions):
            raise RegistryError(f"{version!r} is not a model of line {self.line!r}: its models are "
                                f"{self.candidates} and {self.promotions}")  # fmt: skip
        names = [name] if name else [self.candidates, self.promotions]
        found = [e for n in names for e in self.entries(n) if e.version.startswith(ver)]
        if len(found) != 1:
            known = ", ".join(e.tag for n in names for e in self.entries(n)) or "none"
            raise RegistryError(f"{'no' if not found else 'several'} model versions match {version!r}; known: {known}")
        return found[0]

    # --- writing ----------------------------------------------------------------------------------------------

    def add_candidate(self, folder: Path, *, metadata: dict[str, Any]) -> Entry:
        """Store an exported, evaluated model folder as a new candidate version."""
        labels = {"stage": "candidate", "line": self.line}
        return self._commit(self.candidates, folder, labels=labels, metadata=metadata)

    def import_model(self, folder: Path, *, promote_if_empty: bool = False, force: bool = False) -> Entry:
        """Store an exported model folder (e.g. the shipped ``models/default``) as a candidate, with the figures of
        its gate report; with ``promote_if_empty``, also promote it when there is no production model yet (which,
        like any promotion, needs a passing report that judged this file, or ``force``)."""
        manifest, report, decision = verified_report(folder)
        promote = promote_if_empty and self.production() is None
        if promote and decision != "pass" and not force:  # refused before it is stored, so a retry stores one copy
            raise RegistryError(f"{folder} did not pass the quality gate ({decision}); use --force to promote")
        metadata = {**model_metadata(manifest, report, decision), "imported_from": str(folder)}
        entry = self.add_candidate(folder, metadata=metadata)
        if promote:
            self.promote(entry.version, expected_production=None, force=force)
        return entry

    def promote(self, version: str, *, expected_production: str | None = "unchecked", force: bool = False) -> Entry:
        """Make a candidate production. ``expected_production`` (a sha256, or None for "no production yet")
        refuses the promotion if production changed since the candidate was judged against it."""
        with self.lock():
            candidate = self.get(version if ":" in version else f"{self.candidates}:{version}")
            _, _, decision = verified_report(candidate.path)
            if decision != "pass" and not force:
                raise RegistryError(
                    f"{candidate.tag} did not pass the quality gate ({decision}); use --force to promote"
                )
            current = self.production()
            if expected_production != "unchecked" and (current.sha256 if current else None) != expected_production:
                raise RegistryError("production changed while the candidate was judged; judge it again")
            self._retire_orphans()
            self._clean_staging()
            metadata = {**candidate.metadata, "decision": decision, "promoted_from": candidate.tag}
            labels = {"stage": "production", "line": self.line}
            entry = self._commit(self.promotions, candidate.path, labels=labels, metadata=metadata)
            self._point_latest(entry.version)
            return entry

    def rollback(self) -> Entry:
        """Point production at the promotion before the current one; the current one is retired."""
        with self.lock():
            self._retire_orphans()
            current = self.production()
            history = self.entries(self.promotions)
            if current is None or len(history) < 2:
                raise RegistryError("there is no earlier promotion to roll back to")
            previous = history[history.index(current) - 1]
            self._point_latest(previous.version)
            self._step("rolled-back")
            self._retire(current)
            return previous

    @contextmanager
    def lock(self) -> Iterator[None]:
        """An exclusive, non-blocking lock on the line's promotions; released when the process ends, however it
        ends. One lock per line, so two lines promote at the same time."""
        path = self.home / (
            "ganserve-promotion.lock" if self.line == DEFAULT_LINE else f"ganserve-promotion.{self.line}.lock"
        )
        with open(path, "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                raise RegistryLocked(
                    f"another job is promoting ({fh.read().strip() or 'unknown'}); try again"
                ) from None
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()}")
            fh.flush()
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # --- internals --------------------------------------------------------------------------------------------

    def _commit(self, name: str, folder: Path, *, labels: dict[str, str], metadata: dict[str, Any]) -> Entry:
        import bentoml
        from bentoml._internal.models.model import ModelStore

        with self._staging(shared=True), staging_folder(self.home / "ganserve-staging", prefix=f"{name}-") as root:
            staging = ModelStore(str(root))
            with bentoml.models.create(name, labels=labels, metadata=metadata, _model_store=staging) as m:
                for file in MODEL_FILES:
                    if (Path(folder) / file).is_file():
                        shutil.copy2(Path(folder) / file, m.path_of(file))
                # what enters the store is what was verified: the copy, not the source, is checked
                m.info.metadata["sha256"] = _verified(Path(m.path)).sha256
            version = m.tag.version
            self._step("staged")
            move_into_place(root / name / version, self.models_dir / name / version)
            self._step("renamed")
            if name == self.candidates:
                self._point_latest(version, name)
        return self._entry(self.store.get(f"{name}:{version}"))

    @contextmanager
    def _staging(self, *, shared: bool) -> Iterator[bool]:
        """A lock on the staging area: shared while a job builds a version there (blocking, for the moment a
        cleanup takes), exclusive to clean it (not blocking). Yields whether the lock was had. flock dies with
        its process, so a killed job never keeps it."""
        (self.home / "ganserve-staging").mkdir(parents=True, exist_ok=True)
        with open(self.home / "ganserve-staging.lock", "a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_SH if shared else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _clean_staging(self) -> None:
        """Remove what killed jobs left in the staging area; only when no live job is building a version there."""
        with self._staging(shared=False) as alone:
            if alone:
                for leftover in (self.home / "ganserve-staging").iterdir():
                    shutil.rmtree(leftover, ignore_errors=True)

    def _point_latest(self, version: str, name: str | None = None) -> None:
        name = name or self.promotions
        tmp = self.models_dir / name / f".latest.{uuid.uuid4().hex}"
        tmp.write_text(version)
        os.replace(tmp, self.models_dir / name / "latest")

    def _retire_orphans(self) -> None:
        """Versions newer than ``latest`` (or any, before the first promotion): left by a promotion that crashed
        before moving ``latest``. Without this, BentoML would take the newest of them as ``latest`` one day."""
        current = self.production()
        for entry in self.entries(self.promotions):
            if current is None or entry.created > current.created:
                self._retire(entry)

    def _retire(self, entry: Entry) -> None:
        """Move a version out of the store; keep the newest ``keep_retired`` retired versions, delete the rest."""
        retired = self.home / "ganserve-retired" / entry.name
        retired.mkdir(parents=True, exist_ok=True)
        os.rename(entry.path, retired / entry.version)
        os.utime(retired / entry.version)  # the retirement time orders them
        by_age = sorted(retired.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in by_age[self.keep_retired :]:
            shutil.rmtree(old, ignore_errors=True)

    def _step(self, name: str) -> None:
        if self._hook is not None:
            self._hook(name)

    @staticmethod
    def _entry(model: Any) -> Entry:
        return Entry(
            tag=str(model.tag), name=model.tag.name, version=model.tag.version, created=model.creation_time,
            path=Path(model.path), labels=dict(model.info.labels), metadata=dict(model.info.metadata),
        )  # fmt: skip
