"""The folder ``generate_many`` fills: one file per seed, ``images.csv``, and a small state file, kept so that a run
killed at any moment resumes where it stopped, with the same seeds, no duplicate row and no truncated file.

The order of writes is what makes that hold: each image goes to a hidden temporary name and is renamed into place
(a rename is atomic), and only then is its row appended to images.csv. A seed counts as done when it has both its
file and its row; a file without its row (the run died between the two) is drawn and written again.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from ganserve_client._errors import InvalidRequest
from ganserve_client._models import EXTENSIONS, BulkSummary, GeneratedImage

__all__ = ["CSV_NAME", "STATE_NAME", "Folder"]

CSV_NAME = "images.csv"
STATE_NAME = ".ganserve-run.json"
COLUMNS = ["seed", "label", "model_version", "file"]
# A folder drawn with rejection sampling also says how each image was drawn.
DRS_COLUMNS = [*COLUMNS, "sampler", "drs_score", "drs_candidates", "drs_accepted"]
SEEDS = 2**32
PART = ".part"


class Folder:
    """Plans the pages still to draw into ``out`` and lands each page's images there as it arrives."""

    def __init__(self, out: str | Path, *, n: int, seed: int | None, options: dict[str, Any], page: int,
                 progress: bool | None) -> None:  # fmt: skip
        if not 1 <= n <= SEEDS:
            raise InvalidRequest(f"n must be between 1 and 2^32, not {n}")
        if seed is not None and not 0 <= seed < SEEDS:
            raise InvalidRequest(f"seed must be between 0 and 2^32-1, not {seed}")
        self.started = time.monotonic()
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        for part in self.out.glob(f".*{PART}"):  # what a killed run was writing: never a finished image
            part.unlink(missing_ok=True)
        self.options = options
        self.ext = EXTENSIONS.get(options["format"], f".{options['format']}")
        self.columns: list[str] | None = None  # images.csv's header: read from the file, else chosen by the first page
        self.recorded = self._read_csv()
        state = self._read_state()
        self.first = self._first_seed(seed, state)
        self._state_written = state is not None
        present = set(os.listdir(self.out))
        todo = [i for i in range(n) if not self._done((self.first + i) % SEEDS, present)]
        self.skipped, self.written = n - len(todo), 0
        self.pages = _pages(todo, self.first, page)
        self._progress = _Progress(len(todo), enabled=sys.stderr.isatty() if progress is None else progress)
        self._csv: TextIO | None = None

    def land(self, images: list[GeneratedImage]) -> None:
        """Write a page's images, each atomically, then append their rows to images.csv."""
        if not self._state_written:  # written once a page has come back, so a refused first request leaves none
            _write_atomically(self.out / STATE_NAME, json.dumps({"first_seed": self.first, **self.options}).encode())
            self._state_written = True
        if self.columns is None:  # a new images.csv: rejection sampling's columns when it drew (or was asked for)
            drs = self.options.get("sampler") == "drs" or any(image.drs is not None for image in images)
            self.columns = DRS_COLUMNS if drs else COLUMNS
        rows = []
        for image in images:
            name = f"{image.seed}{self.ext}"
            _write_atomically(self.out / name, image.data)
            if image.seed not in self.recorded:
                row: list[Any] = [image.seed, image.label or "", image.model_version, name]
                if self.columns == DRS_COLUMNS:
                    d = image.drs
                    row += [image.sampler, *(("", "", "") if d is None else (d.score, d.candidates, int(d.accepted)))]
                rows.append(row)
                self.recorded.add(image.seed)
        if rows:
            if self._csv is None:
                self._csv = self._open_csv()
            csv.writer(self._csv, lineterminator="\n").writerows(rows)
            self._csv.flush()  # into the OS now: a killed process loses nothing it has written
        self.written += len(images)
        self._progress.advance(len(images))

    def close(self) -> BulkSummary:
        if self._csv is not None:
            self._csv.close()
        self._progress.close()
        return BulkSummary(out=self.out, first_seed=self.first, written=self.written, skipped=self.skipped,
                           seconds=time.monotonic() - self.started)  # fmt: skip

    def _done(self, seed: int, present: set[str]) -> bool:
        return seed in self.recorded and f"{seed}{self.ext}" in present

    def _first_seed(self, seed: int | None, state: dict[str, Any] | None) -> int:
        if state is None:
            if seed is not None:
                return seed
            # a folder from before the state file, or whose state file was removed: its lowest seed
            return min(self.recorded) if self.recorded else random.randrange(SEEDS)
        changed = {k: (state.get(k), v) for k, v in self.options.items() if state.get(k) != v}
        if seed is not None and seed != state["first_seed"]:
            changed["seed"] = (state["first_seed"], seed)
        if changed:
            said = ", ".join(f"{k}={old!r} (not {new!r})" for k, (old, new) in changed.items())
            raise InvalidRequest(f"{self.out} holds images drawn with {said}: resume with the same options, "
                                 "or write to another folder")  # fmt: skip
        return int(state["first_seed"])

    def _read_state(self) -> dict[str, Any] | None:
        path = self.out / STATE_NAME
        if not path.exists():
            return None
        try:
            state = json.loads(path.read_text())
            int(state["first_seed"])
        except (ValueError, KeyError, TypeError):
            raise InvalidRequest(f"{path} is not a state file ganserve-client wrote; remove it to start over") from None
        return state

    def _read_csv(self) -> set[int]:
        """The seeds images.csv records, after cutting off a last row that a killed run left half-written."""
        path = self.out / CSV_NAME
        if not path.exists():
            return set()
        raw = path.read_bytes()
        if raw and not raw.endswith(b"\n"):
            raw = raw[: raw.rfind(b"\n") + 1]
            with open(path, "r+b") as fh:
                fh.truncate(len(raw))
        rows = list(csv.reader(io.StringIO(raw.decode())))
        if rows and rows[0] not in (COLUMNS, DRS_COLUMNS):
            raise InvalidRequest(f"{path} is not an images.csv ganserve-client wrote (columns {','.join(COLUMNS)}, "
                                 f"and with sampler drs {','.join(DRS_COLUMNS[len(COLUMNS):])})")  # fmt: skip
        if rows:
            self.columns = DRS_COLUMNS if rows[0] == DRS_COLUMNS else COLUMNS
        try:
            return {int(row[0]) for row in rows[1:] if row}
        except ValueError:
            raise InvalidRequest(f"{path} has a row whose seed is not a number") from None

    def _open_csv(self) -> TextIO:
        path = self.out / CSV_NAME
        fh = open(path, "a", newline="")  # noqa: SIM115 - kept open across pages, closed in close()
        if fh.tell() == 0:
            fh.write(",".join(self.columns or COLUMNS) + "\n")
        return fh


def _pages(todo: list[int], first: int, size: int) -> list[tuple[int, int]]:
    """(first seed, count) for each request: runs of consecutive offsets in ``todo``, cut at ``size`` images."""
    pages: list[tuple[int, int]] = []
    start = prev = None
    for offset in [*todo, None]:
        if start is not None and (offset is None or offset != prev + 1 or offset - start == size):
            pages.append(((first + start) % SEEDS, prev - start + 1))
            start = None
        if offset is not None and start is None:
            start = offset
        prev = offset
    return pages


def _write_atomically(path: Path, data: bytes) -> None:
    # No fsync: this guards against a killed process, which cannot leave half a file under the final name; surviving
    # a power cut as well would cost a disk flush per image.
    part = path.with_name(f".{path.name}{PART}")
    part.write_bytes(data)
    os.replace(part, path)


class _Progress:
    """A one-line progress bar on stderr, drawn by hand, at most ten times a second."""

    def __init__(self, total: int, *, enabled: bool) -> None:
        self.total, self.enabled, self.done, self.shown = total, enabled, 0, -1
        self.started = self.drawn = time.monotonic()

    def advance(self, count: int) -> None:
        self.done += count
        if self.enabled and time.monotonic() - self.drawn >= 0.1:
            self._draw()

    def close(self) -> None:
        if self.enabled and self.total:
            if self.shown != self.done:
                self._draw()
            sys.stderr.write("\n")
            sys.stderr.flush()

    def _draw(self) -> None:
        now = self.drawn = time.monotonic()
        self.shown = self.done
        share = self.done / self.total if self.total else 1.0
        bar = "#" * int(share * 30)
        rate = self.done / max(now - self.started, 1e-9)
        sys.stderr.write(f"\r[{bar:<30}] {self.done}/{self.total} images {share:4.0%} {rate:,.0f} img/s ")
        sys.stderr.flush()
