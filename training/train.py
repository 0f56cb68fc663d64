"""The training run: one GAN, one numbered folder, resumable, on one CPU/GPU or many processes under torchrun.

A "step" is one G update; each G step is preceded by ``loss.d_steps`` D updates, each on a fresh real batch.
The fake batch of the last D step is reused for the G step (as pytorch/examples' DCGAN does), so a step with
``d_steps=1`` runs G forward once. Under torchrun every process takes its slice of the same global batch
(``batch_size`` is global), gradients are averaged by DistributedDataParallel, and only rank 0 writes files.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from service.imaging import to_uint8
from service.latents import labels_for_seeds, latents_for_seeds
from training.artifacts import StatsLog, new_run_dir, plot_losses, save_grid, to_unit
from training.augment import ada_step, augment
from training.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from training.config import ConfigError, RunConfig
from training.data import Splits, load_splits
from training.losses import LOSSES, clip_weights, gradient_penalty, lecam_penalty
from training.networks import build_networks

__all__ = ["RESUMABLE_KEYS", "draw", "planned_steps", "resume", "train"]

log = logging.getLogger("ganserve.train")

RESUMABLE_KEYS = frozenset({"epochs", "max_steps", "log_every", "checkpoint_every"})  # safe to change on resume


@dataclass(frozen=True)
class _Process:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def train(cfg: RunConfig, *, runs_dir: Path = Path("runs"), run_dir: Path | None = None, progress: bool = True) -> Path:
    """Start a new run in a new numbered folder under ``runs_dir`` (or in ``run_dir``, a new empty folder made by
    ``artifacts.new_run_dir``); return that folder."""
    return _run(cfg, runs_dir=runs_dir, run_dir=run_dir, state=None, progress=progress)


def resume(run_dir: Path, *, overrides: dict | None = None, progress: bool = True) -> Path:
    """Continue a stopped run from its last checkpoint, in the same folder. Only RESUMABLE_KEYS may change."""
    state = load_checkpoint(run_dir / CHECKPOINT_NAME)
    overrides = overrides or {}
    if unknown := set(overrides) - RESUMABLE_KEYS:
        allowed = ", ".join(sorted(RESUMABLE_KEYS))
        raise ConfigError(f"cannot change {', '.join(sorted(unknown))} on resume; only {allowed}")
    cfg = RunConfig.model_validate({**state["config"], **overrides})
    return _run(cfg, runs_dir=run_dir.parent, run_dir=run_dir, state=state, progress=progress)


def planned_steps(cfg: RunConfig, train_images: int) -> int:
    """G steps a run of ``cfg`` makes in all: its epochs, or ``max_steps`` if that comes first."""
    per_epoch = train_images // cfg.batch_size // cfg.loss.d_steps
    return min(cfg.epochs * per_epoch, cfg.max_steps or cfg.epochs * per_epoch)


def _run(cfg: RunConfig, *, runs_dir: Path, run_dir: Path | None, state: dict | None, progress: bool) -> Path:
    proc = _start_process(cfg)
    try:
        return _Trainer(cfg, proc, runs_dir, run_dir, state, progress).fit()
    finally:
        if proc.world > 1:
            dist.destroy_process_group()


def _start_process(cfg: RunConfig) -> _Process:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but torch sees no CUDA device; use device=auto or cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        if cfg.batch_size % world:
            raise ConfigError(f"batch_size {cfg.batch_size} must divide evenly across {world} processes")
        return _Process(dist.get_rank(), world, device)
    return _Process(0, 1, device)


class _Trainer:
    def __init__(
        self, cfg: RunConfig, proc: _Process, runs_dir: Path, run_dir: Path | None, state: dict | None, progress: bool
    ) -> None:
        self.proc, self.progress = proc, progress and proc.main
        self.splits: Splits = load_splits(cfg.data)
        cfg = self._complete(cfg)
        self.cfg, self.loss = cfg, LOSSES[cfg.loss.name]
        self.local_batch = cfg.batch_size // proc.world
        self.batches_per_epoch = len(self.splits.train) // cfg.batch_size
        if self.batches_per_epoch < cfg.loss.d_steps:
            raise ConfigError(
                f"{len(self.splits.train)} training images make {self.batches_per_epoch} batch(es) of "
                f"{cfg.batch_size}; a G step needs {cfg.loss.d_steps}: lower batch_size or loss.d_steps"
            )
        self.total_steps = planned_steps(cfg, len(self.splits.train))
        self.run_dir = run_dir if state is not None else self._new_folder(runs_dir, run_dir)

        torch.manual_seed(cfg.seed)  # weight init depends on the seed alone
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.G, self.D = (net.to(proc.device, memory_format=self.memory_format) for net in build_networks(cfg.model))
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False) if cfg.ema.enabled else None
        self.opt_G, self.opt_D = self._optimizer(self.G, cfg.optim.lr_g), self._optimizer(self.D, cfg.optim.lr_d)
        # Noise (latents, GP mixing) comes from one generator per process, saved in the checkpoint.
        self.noise = torch.Generator(proc.device).manual_seed(cfg.seed * 1000 + proc.rank)
        self.step, self.epoch, self.batch = 0, 0, 0
        # Augmentation's probability, and ADA's sums since its last adjustment: (sum of sign(D(real)), real images),
        # per process and on the device, so a step adds no sync; they are all-reduced when p is adjusted.
        self.aug_p = cfg.augment.p if cfg.augment.mode != "none" else 0.0
        self.ada_pending = torch.zeros(2, device=proc.device)
        # LeCam's moving averages of D's mean score on reals and on fakes, and the weight 1 - decay^t that removes
        # their bias towards the zero they start from (as the reference code's zero_debias).
        self.lecam_ema = torch.zeros(3, device=proc.device)
        if state is not None:
            self._restore(state)
        self.G_train, self.D_train = self._wrap(self.G), self._wrap(self.D)

        # The images stay where load_splits put them (in memory, or a memory-mapped cache: a batch then reads only its
        # rows); on a GPU a set under 1 GiB is copied there once, a larger one is moved a batch at a time.
        images = self.splits.train.images
        self.images = images.to(proc.device) if images.nbytes < 2**30 else images
        self.labels = None if self.splits.train.labels is None else self.splits.train.labels.to(proc.device)
        use_amp = cfg.amp and proc.device.type == "cuda" and torch.cuda.is_bf16_supported()
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else nullcontext()
        self.stop_requested, self.saved_step, self.grid_step = False, self.step, self.step
        if proc.main:
            log.info(
                "run %s on %s%s, %d process(es), bf16 autocast %s; G %s params, D %s params; %d train / %d held-out",
                self.run_dir, proc.device, f" ({torch.get_num_threads()} threads)" if proc.device.type == "cpu" else "",
                proc.world, "on" if use_amp else "off", f"{_count(self.G):,}", f"{_count(self.D):,}",
                len(self.splits.train), len(self.splits.heldout),
            )  # fmt: skip

    # --- set-up -----------------------------------------------------------------------------------------------

    def _complete(self, cfg: RunConfig) -> RunConfig:
        """Add what only the data knows: the class count of a conditional model."""
        num_classes = len(self.splits.train.class_names) if self.splits.train.labels is not None else 0
        if cfg.model.conditional and num_classes < 2:
            raise ConfigError(
                f"model.conditional needs labelled data with 2+ classes; {cfg.data.path} has {num_classes}"
            )
        return cfg.model_copy(update={"model": cfg.model.model_copy(update={"num_classes": num_classes})})

    def _new_folder(self, runs_dir: Path, given: Path | None) -> Path:
        name = [str(given or new_run_dir(runs_dir, self.cfg.name))] if self.proc.main else [""]
        if self.proc.world > 1:
            dist.broadcast_object_list(name, src=0)
        run_dir = Path(name[0])
        if self.proc.main:
            (run_dir / "config.json").write_text(self.cfg.model_dump_json(indent=2) + "\n")
            (run_dir / "dataset.json").write_text(json.dumps(self.splits.describe(), indent=2) + "\n")
        return run_dir

    def _optimizer(self, net: nn.Module, lr: float) -> torch.optim.Optimizer:
        if self.cfg.optim.name == "rmsprop":
            return torch.optim.RMSprop(net.parameters(), lr=lr)
        return torch.optim.Adam(net.parameters(), lr=lr, betas=self.cfg.optim.betas)

    def _wrap(self, net: nn.Module) -> nn.Module:
        if self.proc.world == 1:
            return net
        # D runs on real and fake batches before one backward; broadcasting BN buffers on each forward would
        # modify tensors autograd still needs, so each process keeps its own running statistics.
        device_ids = [self.proc.device.index] if self.proc.device.type == "cuda" else None
        return DistributedDataParallel(net, device_ids=device_ids, broadcast_buffers=False)

    def _restore(self, state: dict) -> None:
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        if self.G_ema is not None:
            self.G_ema.load_state_dict(state["G_ema"])
        self.opt_G.load_state_dict(state["opt_G"])
        self.opt_D.load_state_dict(state["opt_D"])
        torch.set_rng_state(state["rng"]["torch"])
        noise_states = state["rng"]["noise"]
        if len(noise_states) != self.proc.world:
            raise ConfigError(f"the run was checkpointed with {len(noise_states)} process(es); resume it with as many")
        self.noise.set_state(noise_states[self.proc.rank])
        self.step, self.epoch, self.batch = state["step"], state["epoch"], state["batch"]
        if (aug := state.get("augment")) is not None:  # absent in checkpoints from before augmentation
            self.aug_p = aug["p"]
            self.ada_pending = aug["pending"][self.proc.rank].to(self.proc.device)
        if (lecam := state.get("lecam")) is not None:  # absent in checkpoints from before LeCam
            self.lecam_ema = lecam[self.proc.rank].to(self.proc.device)

    # --- the loop ---------------------------------------------------------------------------------------------

    def fit(self) -> Path:
        cfg = self.cfg
        stats = StatsLog(self.run_dir / "stats.jsonl", after_step=self.step) if self.proc.main else None
        bar = tqdm(total=self.total_steps, initial=self.step, unit="step", disable=not self.progress)
        previous_handler = signal.signal(signal.SIGINT, self._request_stop) if self.proc.main else None
        window, epoch_window = _Window(), _Window()
        order, order_epoch = None, None
        try:
            while self.step < self.total_steps and not self._should_stop():
                if order_epoch != self.epoch:
                    order, order_epoch = self._epoch_order(), self.epoch
                    bar.set_description(f"epoch {self.epoch + 1}/{cfg.epochs}")
                figures = self._train_step(order)
                window.add(figures)
                epoch_window.add(figures)
                bar.update(1)
                if self.step % cfg.log_every == 0:
                    record = window.flush(self.step, self.epoch + 1, self._reduce) | self._aug_figures()
                    if stats is not None:
                        stats.write(record)
                        bar.set_postfix(_postfix(record), refresh=False)
                if self.batch + cfg.loss.d_steps > self.batches_per_epoch:  # the epoch is done
                    record = epoch_window.flush(self.step, self.epoch + 1, self._reduce, kind="epoch")
                    record |= self._aug_figures()
                    self.epoch, self.batch = self.epoch + 1, 0
                    if stats is not None:
                        stats.write(record)
                    # A grid and a checkpoint per epoch, but at most one per checkpoint_every steps: an epoch of
                    # 850 icons is 13 steps, and a 10,000-step run on them wrote 769 of each.
                    if self.epoch == 1 or self.step - self.grid_step >= cfg.checkpoint_every:
                        self._grid_and_checkpoint()
                elif self.step % cfg.checkpoint_every == 0:
                    self._checkpoint()
            if self.grid_step != self.step and not self.stop_requested:  # the samples of the model it ends with
                self._grid_and_checkpoint()
            if self.saved_step != self.step:
                self._checkpoint()
        finally:
            bar.close()
            if previous_handler is not None:
                signal.signal(signal.SIGINT, previous_handler)
            if stats is not None:
                stats.close()
        if self.proc.main:
            plot_losses(self.run_dir / "stats.jsonl", self.run_dir / "losses.png", probability=self.loss.probabilistic)
            verb = "stopped" if self.stop_requested else "finished"
            log.info("%s after %d G steps, %d complete epoch(s): %s", verb, self.step, self.epoch, self.run_dir)
        if self.stop_requested:
            raise KeyboardInterrupt
        return self.run_dir

    def _epoch_order(self) -> torch.Tensor:
        """The epoch's shuffled image order: the same on every process and after a resume."""
        gen = torch.Generator().manual_seed(self.cfg.seed * 100_003 + self.epoch)
        return torch.randperm(len(self.images), generator=gen).to(self.proc.device)

    def _real_batch(self, order: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        start = self.batch * self.cfg.batch_size + self.proc.rank * self.local_batch
        idx = order[start : start + self.local_batch]
        self.batch += 1
        images = self.images[idx.to(self.images.device)].to(self.proc.device)  # a no-op when the set is there
        images = to_unit(images).contiguous(memory_format=self.memory_format)  # [-1, 1], as G's tanh
        return images, None if self.labels is None else self.labels[idx]

    def _train_step(self, order: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg, loss = self.cfg, self.loss
        signs = torch.zeros((), device=self.proc.device)  # sum of sign(D(real)) over this step's D steps
        for k in range(cfg.loss.d_steps):
            # A conditional G draws fakes for the real batch's labels: fakes then follow the data's class mix,
            # and the gradient penalty interpolates between images of one class.
            real, labels = self._real_batch(order)
            z = torch.randn(len(real), self.cfg.model.latent_dim, generator=self.noise, device=self.proc.device)
            last = k == cfg.loss.d_steps - 1
            with self.autocast, torch.set_grad_enabled(last):  # the last fake batch also trains G: keep its graph
                fake = self.G_train(z, labels)
            # D only ever sees augmented images, real and fake alike (a no-op when augmentation is off).
            real_seen, fake_seen = self._augment(real), self._augment(fake.detach())
            with self.autocast:
                d_real = self.D_train(real_seen, labels)
                d_fake = self.D_train(fake_seen, labels)
                loss_d = loss.d_loss(d_real.float(), d_fake.float())
                if loss.penalty:
                    penalty = gradient_penalty(self.D_train, labels, real_seen, fake_seen, self.noise)
                    loss_d = loss_d + cfg.loss.gp_weight * penalty
                if cfg.loss.lecam > 0:
                    loss_d = loss_d + cfg.loss.lecam * self._lecam(d_real.float(), d_fake.float())
            signs += torch.sign(d_real.detach().float()).sum()
            self.opt_D.zero_grad(set_to_none=True)
            loss_d.backward()
            self.opt_D.step()
            if loss.clip:
                clip_weights(self.D, cfg.loss.clip)

        fake_seen = self._augment(fake)  # fresh draws; G's gradient flows back through the augmentation
        with self.autocast:
            loss_g = loss.g_loss(self.D_train(fake_seen, labels).float())
        self.opt_G.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_G.step()
        self.step += 1
        self._update_ema()
        reals = float(len(real) * cfg.loss.d_steps)
        if cfg.augment.mode == "ada":
            self.ada_pending += torch.stack([signs, torch.tensor(reals, device=signs.device)])
            if self.step % cfg.augment.interval == 0:
                self._adjust_p()

        squash = torch.sigmoid if loss.probabilistic else (lambda t: t)
        return {
            "loss_d": loss_d.detach(),
            "loss_g": loss_g.detach(),
            "d_real": squash(d_real.detach().float()).mean(),
            "d_fake": squash(d_fake.detach().float()).mean(),
            "r_t": signs / reals,  # ADA's overfitting heuristic E[sign(D(real))]: near 1 when D is sure of the reals
            "images": torch.tensor(float(cfg.batch_size * cfg.loss.d_steps)),
        }

    def _lecam(self, d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
        """Fold this D step's mean scores into the moving averages, then LeCam's penalty against them."""
        decay = self.cfg.loss.lecam_decay
        seen = torch.stack([d_real.detach().mean(), d_fake.detach().mean(), torch.ones((), device=d_real.device)])
        self.lecam_ema.mul_(decay).add_(seen, alpha=1 - decay)
        ema_real, ema_fake = self.lecam_ema[0] / self.lecam_ema[2], self.lecam_ema[1] / self.lecam_ema[2]
        return lecam_penalty(d_real, d_fake, ema_real, ema_fake)

    def _augment(self, images: torch.Tensor) -> torch.Tensor:
        aug = self.cfg.augment
        if aug.mode == "none":
            return images
        # gather and where return NCHW; D's convolutions are faster in the layout the run chose (channels_last)
        return augment(images, aug.policy, self.aug_p, self.noise).contiguous(memory_format=self.memory_format)

    def _adjust_p(self) -> None:
        """ADA: move p by the sign of r_t - target, r_t over all processes' real images since the last adjustment,
        so every process computes the same p."""
        pending = self.ada_pending.clone()
        if self.proc.world > 1:
            dist.all_reduce(pending)
        signs, images = pending.tolist()
        aug = self.cfg.augment
        r_t = signs / images
        self.aug_p = ada_step(self.aug_p, r_t, target=aug.target, images=images, speed_images=aug.speed_images)
        self.ada_pending.zero_()

    def _aug_figures(self) -> dict[str, float]:
        return {} if self.cfg.augment.mode == "none" else {"aug_p": round(self.aug_p, 6)}

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.G_ema is None:
            return
        decay = min(self.cfg.ema.decay, (1 + self.step) / (10 + self.step))  # warm-up: early weights fade fast
        for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters(), strict=True):
            p_ema.lerp_(p, 1.0 - decay)
        for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers(), strict=True):
            b_ema.copy_(b)

    # --- process coordination, files --------------------------------------------------------------------------

    def _request_stop(self, signum: int, frame: object) -> None:
        if self.stop_requested:  # a second Ctrl-C means now
            raise KeyboardInterrupt
        self.stop_requested = True
        tqdm.write("stopping after this step and writing a checkpoint (Ctrl-C again to abort at once)")

    def _should_stop(self) -> bool:
        if self.proc.world == 1:
            return self.stop_requested
        if self.step % self.cfg.log_every:  # agree across processes at log points only: no sync every step
            return False
        flag = torch.tensor(float(self.stop_requested), device=self.proc.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # every process stops at the same step, or DDP hangs
        self.stop_requested = bool(flag.item())
        return self.stop_requested

    def _reduce(self, values: torch.Tensor) -> torch.Tensor:
        """Average per-process figures across processes."""
        if self.proc.world > 1:
            values = values.to(self.proc.device)
            dist.all_reduce(values)
            values /= self.proc.world
        return values

    def _checkpoint(self) -> None:
        noise, pending, lecam = [self.noise.get_state()], [self.ada_pending.cpu()], [self.lecam_ema.cpu()]
        if self.proc.world > 1:
            noise, pending, lecam = [None] * self.proc.world, [None] * self.proc.world, [None] * self.proc.world
            dist.all_gather_object(noise, self.noise.get_state())
            dist.all_gather_object(pending, self.ada_pending.cpu())
            dist.all_gather_object(lecam, self.lecam_ema.cpu())
        self.saved_step = self.step
        if not self.proc.main:
            return
        save_checkpoint(
            self.run_dir / CHECKPOINT_NAME,
            {
                "config": self.cfg.model_dump(mode="json"),
                "data": self.splits.describe(),
                "step": self.step,
                "epoch": self.epoch,
                "batch": self.batch,
                "G": self.G.state_dict(),
                "D": self.D.state_dict(),
                "G_ema": None if self.G_ema is None else self.G_ema.state_dict(),
                "opt_G": self.opt_G.state_dict(),
                "opt_D": self.opt_D.state_dict(),
                "rng": {"torch": torch.get_rng_state(), "noise": [s.cpu() for s in noise]},
                "augment": {"p": self.aug_p, "pending": pending},
                "lecam": lecam,
            },
        )

    def _grid_and_checkpoint(self) -> None:
        if self.proc.main:
            self._save_grid()
        self.grid_step = self.step
        self._checkpoint()

    def _save_grid(self) -> None:
        """A grid from fixed seeds 0..grid_size-1 (``draw``), so grids of successive epochs compare image by image."""
        g = self.G_ema if self.G_ema is not None else self.G
        was_training = g.training
        images = draw(g, range(self.cfg.grid_size), self.cfg.model.latent_dim, device=self.proc.device)
        g.train(was_training)
        classes = self.G.num_classes
        save_grid(images, self.run_dir / f"grid-epoch{self.epoch:04d}.png", cols=classes or None)


class _Window:
    """Sums of per-step figures, kept on the device until flushed, so logging adds no per-step sync."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count, self.started = 0, time.perf_counter()

    def add(self, figures: dict[str, torch.Tensor]) -> None:
        for key, value in figures.items():
            self.sums[key] = self.sums.get(key, 0) + value
        self.count += 1

    def flush(self, step: int, epoch: int, reduce, kind: str = "step") -> dict:
        seconds = time.perf_counter() - self.started
        keys = [k for k in self.sums if k != "images"]
        means = reduce(torch.stack([self.sums[k].float() for k in keys]).cpu() / max(self.count, 1)).cpu().tolist()
        images = float(self.sums.get("images", 0))
        record = {
            "kind": kind,
            "step": step,
            "epoch": epoch,
            **{k: round(v, 6) for k, v in zip(keys, means, strict=True)},
        }
        record["images_per_sec"] = round(images / seconds, 1) if seconds > 0 else None
        record["seconds"] = round(seconds, 3)
        self.__init__()
        return record


def _postfix(record: dict) -> dict[str, str]:
    return {
        "D": f"{record['loss_d']:.3f}",
        "G": f"{record['loss_g']:.3f}",
        "D(x)": f"{record['d_real']:.3f}",
        "D(G(z))": f"{record['d_fake']:.3f}",
        "img/s": f"{record['images_per_sec']:.0f}",
        **({"p": f"{record['aug_p']:.2f}"} if "aug_p" in record else {}),
    }


def _count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@torch.no_grad()
def draw(g: nn.Module, seeds: range, latent_dim: int, *, device: torch.device | str = "cpu") -> np.ndarray:
    """uint8 NHWC images of ``g`` (put in eval mode: BatchNorm then uses its running statistics) for ``seeds``,
    by the latent protocol's numpy reference, so seed s here is the image the exported model serves for seed s."""
    g.eval()
    classes = getattr(g, "num_classes", 0)
    z = torch.from_numpy(latents_for_seeds(seeds, latent_dim)).to(device)
    labels = torch.from_numpy(labels_for_seeds(seeds, classes)).to(device) if classes else None
    parts = [g(z[i : i + 500], None if labels is None else labels[i : i + 500]) for i in range(0, len(z), 500)]
    return to_uint8(torch.cat(parts).float().cpu().numpy())
