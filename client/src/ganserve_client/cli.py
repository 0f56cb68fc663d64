"""``ganserve-client``: generate images into a folder, one PNG per image named by its seed, or show the model."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ganserve_client import DEFAULT_URL, GanClient, GanServeError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ganserve-client", description=__doc__)
    parser.add_argument("--url", default=os.environ.get("GANSERVE_URL", DEFAULT_URL))
    parser.add_argument("--api-key", default=os.environ.get("GANSERVE_API_KEY"), help="or set GANSERVE_API_KEY")
    parser.add_argument("--timeout", type=float, default=30.0)
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="write one PNG per image, named <seed>.png")
    gen.add_argument("-n", type=int, default=1)
    gen.add_argument("--seed", type=int)
    gen.add_argument("--label")
    gen.add_argument("--truncation", type=float)
    gen.add_argument("--out", type=Path, default=Path("."))
    commands.add_parser("info", help="the served model and the API's limits")
    args = parser.parse_args(argv)

    label = int(args.label) if args.command == "generate" and args.label and args.label.isdigit() else None
    try:
        with GanClient(args.url, api_key=args.api_key, timeout=args.timeout) as client:
            if args.command == "info":
                print(client.info().model_dump_json(indent=2))
                return 0
            images = client.generate(args.n, seed=args.seed, truncation=args.truncation,
                                     label=label if label is not None else args.label)  # fmt: skip
    except GanServeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    for image in images:
        print(image.save(args.out / f"{image.seed}.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
