"""The model registry: BentoML's model store, with atomic promotion and rollback under a lock.

Every exported candidate is stored under ``ganserve-candidate`` with its manifest, gate report and grid. Promoting
copies it into a new version of ``ganserve-generator``, whose ``latest`` pointer is production: the service and
``bentoml build`` read ``ganserve-generator:latest``.

Why not plain ``bentoml.models.create``: it writes the version folder in place, so a crash mid-copy leaves a
half-written version in the store. Here a version is built in a staging folder on the same file system, renamed
into the store (atomic), and only then does ``latest`` move, by ``os.replace`` (atomic). A crash at any point
leaves production as it was; an orphaned version newer than ``latest`` is retired by the next promotion.
Rollback points ``latest`` at the promotion before the current one and retires the current one.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = [
    "CANDIDATE_NAME",
    "PRODUCTION_NAME",
    "Entry",
    "Registry",
    "RegistryError",
    "RegistryLocked",
    "model_metadata",
]

CANDIDATE_NAME = "ganserve-candidate"
PRODUCTION_NAME = "ganserve-generator"
MODEL_FILES = ("generator.onnx", "manifest.json", "report.json", "report.md", "grid.png")


class RegistryError(RuntimeError):
    """A registry operation that cannot be done as asked; the message says why."""


class RegistryLocked(RegistryError):
    """Another job holds the promotion lock."""


def model_metadata(manifest: Any, report: dict | None) -> dict[str, Any]:
    """What ``ganserve models`` shows of a model: its hash, run, and the gate's headline figures."""
    figures = report["figures"]["candidate"] if report else {}

    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 4)

    return {
        "sha256": manifest.sha256,
        "run_id": manifest.training.run_id if manifest.training else None,
        "step": manifest.training.step if manifest.training else None,
        "decision": report["decision"] if report else "not judged",
        "fid": rounded(figures.get("fid")),
        "feature_judge_accuracy": rounded(figures.get("feature_judge", {}).get("accuracy")),
        "pixel_judge_accuracy": rounded(figures.get("pixel_judge", {}).get("accuracy")),
    }


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
    """The store under ``home`` (BentoML's home, ``$BENTOML_HOME`` or ~/bentoml, by default)."""

    def __init__(self, home: Path | None = None) -> None:
        from bentoml._internal.configuration.containers import BentoMLContainer
        from bentoml._internal.models.model import ModelStore

        self.home = Path(home) if home is not None else Path(BentoMLContainer.bentoml_home.get())
        self.models_dir = self.home / "models"
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.store = ModelStore(str(self.models_dir))
        self._hook = None  # tests inject a failure between the steps of a promotion

    # --- reading ----------------------------------------------------------------------------------------------

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
        """The version ``ganserve-generator:latest`` names, or None before the first promotion."""
        latest = self.models_dir / PRODUCTION_NAME / "latest"
        if not latest.is_file():
            return None
        from bentoml.exceptions import NotFound

        try:
            return self._entry(self.store.get(f"{PRODUCTION_NAME}:{latest.read_text().strip()}"))
        except NotFound:
            return None

    def get(self, version: str) -> Entry:
        """A candidate or production version, by version, ``name:version`` or a unique version prefix."""
        name, _, ver = version.rpartition(":")
        names = [name] if name else [CANDIDATE_NAME, PRODUCTION_NAME]
        found = [e for n in names for e in self.entries(n) if e.version.startswith(ver)]
        if len(found) != 1:
            known = ", ".join(e.tag for n in names for e in self.entries(n)) or "none"
            raise RegistryError(f"{'no' if not found else 'several'} model versions match {version!r}; known: {known}")
        return found[0]

    # --- writing ----------------------------------------------------------------------------------------------

    def add_candidate(self, folder: Path, *, metadata: dict[str, Any]) -> Entry:
        """Store an exported, evaluated model folder as a new candidate version."""
        return self._commit(CANDIDATE_NAME, folder, labels={"stage": "candidate"}, metadata=metadata)

    def import_model(self, folder: Path, *, promote_if_empty: bool = False) -> Entry:
        """Store an exported model folder (e.g. the shipped ``models/default``) as a candidate, with the figures of
        its gate report; with ``promote_if_empty``, also promote it when there is no production model yet."""
        import json

        from service.manifest import read_manifest

        manifest = read_manifest(folder)  # refuses a folder whose ONNX file does not match its manifest
        report_path = Path(folder) / "report.json"
        report = json.loads(report_path.read_text()) if report_path.is_file() else None
        metadata = {**model_metadata(manifest, report), "imported_from": str(folder)}
        entry = self.add_candidate(folder, metadata=metadata)
        if promote_if_empty and self.production() is None:
            self.promote(entry.version, expected_production=None, force=True)
        return entry

    def promote(self, version: str, *, expected_production: str | None = "unchecked", force: bool = False) -> Entry:
        """Make a candidate production. ``expected_production`` (a sha256, or None for "no production yet")
        refuses the promotion if production changed since the candidate was judged against it."""
        with self.lock():
            candidate = self.get(version if ":" in version else f"{CANDIDATE_NAME}:{version}")
            if candidate.metadata.get("decision") != "pass" and not force:
                decision = candidate.metadata.get("decision", "not judged")
                raise RegistryError(
                    f"{candidate.tag} did not pass the quality gate ({decision}); use --force to promote"
                )
            current = self.production()
            if expected_production != "unchecked" and (current.sha256 if current else None) != expected_production:
                raise RegistryError("production changed while the candidate was judged; judge it again")
            self._retire_orphans()
            metadata = {**candidate.metadata, "promoted_from": candidate.tag}
            entry = self._commit(PRODUCTION_NAME, candidate.path, labels={"stage": "production"}, metadata=metadata)
            self._point_latest(entry.version)
            return entry

    def rollback(self) -> Entry:
        """Point production at the promotion before the current one; the current one is retired."""
        with self.lock():
            self._retire_orphans()
            current = self.production()
            history = self.entries(PRODUCTION_NAME)
            if current is None or len(history) < 2:
                raise RegistryError("there is no earlier promotion to roll back to")
            previous = history[history.index(current) - 1]
            self._point_latest(previous.version)
            self._step("rolled-back")
            self._retire(current)
            return previous

    @contextmanager
    def lock(self) -> Iterator[None]:
        """An exclusive, non-blocking lock on promotions; released when the process ends, however it ends."""
        path = self.home / "ganserve-promotion.lock"
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

        staging_root = self.home / "ganserve-staging" / uuid.uuid4().hex
        try:
            staging = ModelStore(str(staging_root))
            with bentoml.models.create(name, labels=labels, metadata=metadata, _model_store=staging) as m:
                for file in MODEL_FILES:
                    if (Path(folder) / file).is_file():
                        shutil.copy2(Path(folder) / file, m.path_of(file))
            version = m.tag.version
            self._step("staged")
            (self.models_dir / name).mkdir(exist_ok=True)
            os.rename(staging_root / name / version, self.models_dir / name / version)  # atomic on one file system
            self._step("renamed")
            if name == CANDIDATE_NAME:
                self._point_latest(version, name)
        finally:
            shutil.rmtree(staging_root, ignore_errors=True)
        return self._entry(self.store.get(f"{name}:{version}"))

    def _point_latest(self, version: str, name: str = PRODUCTION_NAME) -> None:
        tmp = self.models_dir / name / f".latest.{uuid.uuid4().hex}"
        tmp.write_text(version)
        os.replace(tmp, self.models_dir / name / "latest")

    def _retire_orphans(self) -> None:
        """Versions newer than ``latest`` (or any, before the first promotion): left by a promotion that crashed
        before moving ``latest``. Without this, BentoML would take the newest of them as ``latest`` one day."""
        current = self.production()
        for entry in self.entries(PRODUCTION_NAME):
            if current is None or entry.created > current.created:
                self._retire(entry)

    def _retire(self, entry: Entry) -> None:
        retired = self.home / "ganserve-retired" / entry.name
        retired.mkdir(parents=True, exist_ok=True)
        os.rename(entry.path, retired / entry.version)

    def _step(self, name: str) -> None:
        if self._hook is not None:
            self._hook(name)

    @staticmethod
    def _entry(model: Any) -> Entry:
        return Entry(
            tag=str(model.tag), name=model.tag.name, version=model.tag.version, created=model.creation_time,
            path=Path(model.path), labels=dict(model.info.labels), metadata=dict(model.info.metadata),
        )  # fmt: skip
