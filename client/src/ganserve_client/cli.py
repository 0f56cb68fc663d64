"""``ganserve-client``: draw images into a folder (resumable), walk between seeds, inspect and reproduce a file, or
show the model. A thin layer over the SDK: each command is one of its calls."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import NoReturn

from ganserve_client import DEFAULT_URL, GanClient, GanserveError, Provenance, read_provenance

# The format an interpolation's file name asks for, when --format does not say.
ANIMATION_FORMATS = {".webp": "webp", ".gif": "gif", ".png": "png"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # one line, as for every other user error, rather than argparse's usage block
        self.exit(2, f"{self.prog}: error: {message}\n")


def _label(text: str | None) -> int | str | None:
    return int(text) if text is not None and text.isdigit() else text


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seeds like 1,2,3, not {text!r}") from None


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ganserve-client", description=__doc__)
    parser.add_argument("--url", default=os.environ.get("GANSERVE_URL", DEFAULT_URL))
    parser.add_argument("--api-key", default=os.environ.get("GANSERVE_API_KEY"), help="or set GANSERVE_API_KEY")
    parser.add_argument("--timeout", type=float, default=30.0)
    commands = parser.add_subparsers(dest="command", required=True)

    gen = commands.add_parser("generate", help="write N images into a folder, one file per seed, and images.csv; "
                              "run it again to finish an interrupted run")  # fmt: skip
    gen.add_argument("-n", type=int, default=1)
    gen.add_argument("--out", type=Path, required=True, help="the folder (created if missing)")
    gen.add_argument("--seed", type=int, help="the first seed (default: the folder's, else random)")
    gen.add_argument("--label", help="class name or index")
    gen.add_argument("--truncation", type=float)
    gen.add_argument("--model", help="model line (default: the service's)")
    gen.add_argument("--format", default="png", help="png (default), webp or jpeg")
    gen.add_argument("--quality", type=int, help="1-100: jpeg, or lossy webp")
    gen.add_argument("--sampler", choices=["plain", "drs"],
                     help="drs: discriminator rejection sampling (default: the model's, see info)")  # fmt: skip
    gen.add_argument("--max-candidates", type=int, metavar="N", help="drs: candidates per image at most, 1-64")
    gen.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    gen.add_argument("--progress", action=argparse.BooleanOptionalAction, help="a progress bar (default: on a tty)")

    walk = commands.add_parser("interpolate", help="an animation walking through latent space between seeds")
    walk.add_argument("--seeds", type=_seeds, required=True, help="key seeds, e.g. 1,2,3")
    walk.add_argument("--frames", type=int, default=16, help="frames per segment (default 16)")
    walk.add_argument("--out", type=Path, required=True, help="the file, e.g. walk.webp")
    walk.add_argument("--label", help="one class, or one per key: upper,lower,upper")
    walk.add_argument("--truncation", type=float)
    walk.add_argument("--loop", action="store_true", help="walk back from the last key to the first")
    walk.add_argument("--format", help="webp, gif or png (a strip); default: from --out's extension")
    walk.add_argument("--quality", type=int, help="1-100: lossy webp")
    walk.add_argument("--duration-ms", type=int, help="per frame")
    walk.add_argument("--model", help="model line (default: the service's)")

    inspect = commands.add_parser("inspect", help="what a ganserve file says about how it was drawn")
    inspect.add_argument("file", type=Path)
    inspect.add_argument("--reproduce", action="store_true", help="draw it again and compare (exit 1 if it differs)")

    info = commands.add_parser("info", help="the served model, its lines and history, and the API's limits")
    info.add_argument("--model", help="model line (default: the service's)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        with GanClient(args.url, api_key=args.api_key, timeout=args.timeout) as client:
            return COMMANDS[args.command](client, args)
    except (GanserveError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted" + (": run the same command again to resume" if args.command == "generate" else ""),
              file=sys.stderr)  # fmt: skip
        return 130


def _generate(client: GanClient, args: argparse.Namespace) -> int:
    done = client.generate_many(args.n, out=args.out, seed=args.seed, label=_label(args.label),
                                truncation=args.truncation, model=args.model, format=args.format,
                                quality=args.quality, sampler=args.sampler, max_candidates=args.max_candidates,
                                concurrency=args.concurrency, progress=args.progress)  # fmt: skip
    last = (done.first_seed + args.n - 1) % 2**32
    print(f"wrote {done.written} images to {done.out} in {done.seconds:.1f} s ({done.images_per_s:.0f} images/s); "
          f"seeds {done.first_seed} to {last}, {done.skipped} already there; listed in images.csv")  # fmt: skip
    return 0


def _interpolate(client: GanClient, args: argparse.Namespace) -> int:
    format = args.format or ANIMATION_FORMATS.get(args.out.suffix.lower())
    if format is None:
        raise ValueError(f"cannot tell the format from {args.out.name!r}: name it .webp, .gif or .png, or pass "
                         "--format")  # fmt: skip
    labels = None if args.label is None else [_label(s) for s in args.label.split(",")]
    label = labels[0] if labels and len(labels) == 1 else labels  # one label for all keys, or one per key
    walk = client.interpolate(args.seeds, frames=args.frames, label=label, truncation=args.truncation, loop=args.loop,
                              format=format, quality=args.quality, duration_ms=args.duration_ms,
                              model=args.model)  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    walk.save(args.out)
    print(f"wrote {args.out}: {walk.frames} frames through seeds {','.join(map(str, walk.seeds))}, "
          f"model {walk.model} version {walk.model_version}")  # fmt: skip
    return 0


def _inspect(client: GanClient, args: argparse.Namespace) -> int:
    data = args.file.read_bytes()
    provenance = read_provenance(data)
    if provenance is None:
        raise ValueError(f"{args.file} carries no ganserve provenance")
    print(provenance.model_dump_json(indent=2, exclude_unset=True))  # what the file holds, as it holds it
    if provenance.sampler is not None:
        print(_sampled(provenance))
    if not args.reproduce:
        return 0
    again = client.reproduce(data)
    verdict = "identical" if again.same_bytes else "same pixels" if again.same_pixels else "differs"
    print(f"reproduced: {verdict}" + (f" (the model version has moved on from {again.old_version} to "
          f"{again.new_version})" if again.version_changed else f" (model version {again.new_version})"))  # fmt: skip
    return 0 if again.same_pixels else 1


def _sampled(provenance: Provenance) -> str:
    """One line on how the file was sampled: plain, or by DRS with the image's score and candidates."""
    drs = provenance.drs
    if provenance.sampler != "drs":
        return f"sampler: {provenance.sampler}"
    bound = provenance.request.get("max_candidates")
    if isinstance(drs, list):  # a grid: each image's figures
        fallbacks = sum(not d.accepted for d in drs)
        return f"sampler: drs, {len(drs)} images, at most {bound} candidates each, {fallbacks} fell back"
    outcome = "accepted" if drs.accepted else "none accepted, the best-scored kept"
    score = "not finite" if drs.score is None else f"{drs.score:g}"
    return f"sampler: drs, D score {score}, {drs.candidates} of at most {bound} candidates, {outcome}"


def _info(client: GanClient, args: argparse.Namespace) -> int:
    print(client.info(model=args.model).model_dump_json(indent=2))
    return 0


COMMANDS = {"generate": _generate, "interpolate": _interpolate, "inspect": _inspect, "info": _info}

if __name__ == "__main__":
    sys.exit(main())
