"""What every bench script ends with: its rows written as JSON, with the machine and the command that made them."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path


def write_results(out: Path, command: str, rows: list[dict]) -> None:
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "processor": platform.machine()},
        "command": command,
        "rows": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
