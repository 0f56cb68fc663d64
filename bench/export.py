"""What folding the post-processing into the ONNX graph saves: uint8 NHWC out of the graph, against float NCHW out
of the graph followed by the same mapping in numpy (what every caller would otherwise write). Both graphs draw
their latents from seeds with the same sampler in front (``training.sampler``).

    python bench/export.py RUN_DIR [--threads 1]
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from common import bench_parser

from service.imaging import to_uint8
from training.checkpoint import load_generator
from training.export import export_checkpoint
from training.sampler import with_sampler


def _float_graph(run: Path, path: Path) -> None:
    g, cfg = load_generator(run)
    z = torch.zeros(2, cfg.model.latent_dim)
    args = (z, torch.zeros(2, dtype=torch.int64)) if g.num_classes else (z,)
    batch = torch.export.Dim("batch", min=1, max=4096)
    dynamic = ({0: batch},) * len(args)
    with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(g, args, path, dynamo=True, dynamic_shapes=dynamic, external_data=False,
                          input_names=["z", "labels"][: len(args)], output_names=["images"])  # fmt: skip
    onnx.save(with_sampler(onnx.load(path), latent_dim=cfg.model.latent_dim, classes=g.num_classes), path)


def _time(fn, *, min_seconds: float = 1.0) -> float:
    fn()
    n, start = 0, time.process_time()
    while time.process_time() - start < min_seconds:
        fn()
        n += 1
    return (time.process_time() - start) / n


def main() -> None:
    parser = bench_parser(__doc__, "export")
    parser.add_argument("run", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folded_dir, float_path = Path(tmp) / "folded", Path(tmp) / "float.onnx"
        manifest = export_checkpoint(args.run, folded_dir)
        _float_graph(args.run, float_path)
        folded = ort.InferenceSession(str(folded_dir / "generator.onnx"), options, providers=["CPUExecutionProvider"])
        plain = ort.InferenceSession(str(float_path), options, providers=["CPUExecutionProvider"])
        for n in (1, 16, 64):
            feeds = {"seeds": np.arange(n, dtype=np.int64), "truncation": np.full(n, np.inf, np.float32)}
            if manifest.conditional:
                feeds["labels"] = np.full(n, -1, np.int64)  # by seed
            t_folded = _time(lambda feeds=feeds: folded.run(["images"], feeds))
            t_plain = _time(lambda feeds=feeds: to_uint8(plain.run(["images"], feeds)[0]))
            t_numpy = _time(lambda feeds=feeds, out=plain.run(["images"], feeds)[0]: to_uint8(out))
            rows.append({
                "batch": n,
                "folded_us_per_image": t_folded / n * 1e6,
                "float_plus_numpy_us_per_image": t_plain / n * 1e6,
                "numpy_part_us_per_batch": t_numpy * 1e6,
            })  # fmt: skip
    print(f"{'batch':>5} {'folded µs/img':>14} {'float+numpy µs/img':>19} {'numpy µs/batch':>15} {'saved':>7}")
    for r in rows:
        saved = 1 - r["folded_us_per_image"] / r["float_plus_numpy_us_per_image"]
        print(f"{r['batch']:>5} {r['folded_us_per_image']:>14.1f} {r['float_plus_numpy_us_per_image']:>19.1f} "
              f"{r['numpy_part_us_per_batch']:>15.1f} {saved:>7.1%}")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "export", "run": str(args.run), "threads": args.threads,
                                    "cpu_time": True, "rows": rows}, indent=2) + "\n")  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
