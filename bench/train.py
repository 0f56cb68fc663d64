"""Training throughput: ``ganserve train`` against a minimal plain-PyTorch loop, same networks, batch and data.

The plain loop is the pytorch/examples DCGAN loop (DataLoader over a TensorDataset, BCE, one G forward per step),
given our networks. Both sides run in this process with the same thread count, alternating, ``--rounds`` times;
the ratio of their best rounds is the figure (absolute speed on a shared machine is noise).

    python bench/train.py --images 12800 --rounds 3
"""

from __future__ import annotations

import json
import platform
import tempfile
import time
from pathlib import Path

import torch
from common import bench_parser, fastest
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from training.config import RunConfig, load_config
from training.data import load_splits
from training.networks import build_networks
from training.train import train


def ganserve_train(cfg: RunConfig, runs_dir: Path) -> float:
    """One epoch of ``ganserve train`` (stats, grid, checkpoint and plot included); training images per second."""
    images = (cfg.data.limit // cfg.batch_size) * cfg.batch_size
    return images / fastest(lambda: train(cfg, runs_dir=runs_dir, progress=False), rounds=1)


def plain_pytorch(cfg: RunConfig, images: torch.Tensor) -> float:
    """One epoch of the pytorch/examples DCGAN loop over ``images``; returns training images per second."""
    torch.manual_seed(cfg.seed)
    model_cfg = cfg.model.model_copy(update={"num_classes": 0})
    netG, netD = build_networks(model_cfg)
    criterion = nn.BCEWithLogitsLoss()
    optD = torch.optim.Adam(netD.parameters(), lr=cfg.optim.lr_d, betas=cfg.optim.betas)
    optG = torch.optim.Adam(netG.parameters(), lr=cfg.optim.lr_g, betas=cfg.optim.betas)
    loader = DataLoader(TensorDataset(images), batch_size=cfg.batch_size, shuffle=True, drop_last=True)
    seen, start = 0, time.perf_counter()
    for (data,) in loader:
        real = data.float().div(127.5).sub(1.0)
        b = real.size(0)
        netD.zero_grad()
        output = netD(real)
        errD_real = criterion(output, torch.ones(b))
        errD_real.backward()
        noise = torch.randn(b, cfg.model.latent_dim)
        fake = netG(noise)
        output = netD(fake.detach())
        errD_fake = criterion(output, torch.zeros(b))
        errD_fake.backward()
        optD.step()
        netG.zero_grad()
        output = netD(fake)
        errG = criterion(output, torch.ones(b))
        errG.backward()
        optG.step()
        seen += b
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = bench_parser(__doc__, "train", rounds=3)
    parser.add_argument("--config", type=Path, default=Path("configs/fashion-mnist.yaml"))
    parser.add_argument("--images", type=int, default=12800, help="training images per round (one epoch)")
    args = parser.parse_args()

    overrides = [f"data.limit={args.images}", "epochs=1", "ema.enabled=false", "model.conditional=false"]
    cfg = load_config(args.config, overrides)
    images = load_splits(cfg.data).train.images
    ours, plain = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            plain.append(plain_pytorch(cfg, images))
            ours.append(ganserve_train(cfg, Path(tmp)))
            print(f"round {round_ + 1}/{args.rounds}: plain {plain[-1]:8.1f} img/s   ganserve {ours[-1]:8.1f} img/s")
    ratio = max(ours) / max(plain)
    rows = [("plain PyTorch loop (pytorch/examples DCGAN)", max(plain)), ("ganserve train", max(ours))]
    print(f"\n{'loop':<46} {'best img/s':>10}")
    for name, value in rows:
        print(f"{name:<46} {value:>10.1f}")
    print(f"{'ratio ganserve / plain':<46} {ratio:>10.3f}")
    result = {
        "benchmark": "train",
        "config": str(args.config),
        "images_per_round": args.images,
        "rounds": args.rounds,
        "batch_size": cfg.batch_size,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "plain_images_per_sec": plain,
        "ganserve_images_per_sec": ours,
        "ratio_best": round(ratio, 4),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
