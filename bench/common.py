"""What bench scripts share: their argument parser, the fastest of several timed rounds, and the rows written as
JSON with the machine and the command that made them."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path


def bench_parser(doc: str | None, name: str, *, rounds: int | None = None) -> argparse.ArgumentParser:
    """The script's parser, its docstring as help, with ``--out`` (default ``bench/results/NAME.json``) and, given a
    default, ``--rounds``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(f"bench/results/{name}.json"), help="the JSON written")
    if rounds is not None:
        parser.add_argument("--rounds", type=int, default=rounds, help="timed rounds; the fastest counts")
    return parser


def fastest(call: Callable[[], object], *, rounds: int, calls: int = 1) -> float:
    """Seconds per call: the fastest of ``rounds`` rounds of ``calls`` calls each (the least disturbed by the rest of
    the machine)."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            call()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def write_results(out: Path, command: str, rows: list[dict]) -> None:
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "processor": platform.machine()},
        "command": command,
        "rows": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
