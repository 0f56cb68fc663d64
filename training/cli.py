"""The training stage's commands of ``ganserve`` (train, export, upgrade, fit-discriminator, train-evaluator):
thin wrappers over importable functions, heavy imports inside each command. ``release.cli`` adds the commands
that judge into reports and change the store, and is the ``ganserve`` entry point; ``python -m training`` offers
the training commands alone (what torchrun launches)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

__all__ = ["app", "main", "setup_logging", "user_errors", "validated"]

app = typer.Typer(
    help="ganserve: train a GAN, gate it on quality, and serve its generator.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def train(
    config: Path = typer.Option(None, "--config", "-c", help="YAML run config, e.g. configs/fashion-mnist.yaml"),
    overrides: list[str] = typer.Option([], "--set", "-s", help="override a key, e.g. --set loss.name=hinge"),
    resume: Path = typer.Option(None, "--resume", help="continue the run in this folder from its last checkpoint"),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="where new numbered run folders go"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show a progress bar"),
) -> None:
    """Train a GAN into a new numbered folder under --runs-dir (or continue one with --resume).

    Under torchrun each process trains on its slice of the batch:
    torchrun --nproc-per-node 2 -m training train --config configs/fashion-mnist.yaml
    """
    from tqdm.contrib.logging import logging_redirect_tqdm

    from training.config import ConfigError, apply_overrides, load_config
    from training.train import resume as resume_run
    from training.train import train as train_run

    setup_logging()
    try:
        with user_errors(), logging_redirect_tqdm():
            if resume is not None:
                if config is not None:
                    raise ConfigError("--resume takes the run's own config; drop --config")
                run_dir = resume_run(resume, overrides=apply_overrides({}, overrides), progress=progress)
            else:
                if config is None:
                    raise ConfigError("pass --config FILE (e.g. configs/fashion-mnist.yaml) or --resume RUN_DIR")
                run_dir = train_run(load_config(config, overrides), runs_dir=runs_dir, progress=progress)
    except KeyboardInterrupt:
        typer.secho("interrupted; the last checkpoint is saved, continue with --resume RUN_DIR", err=True)
        raise typer.Exit(130) from None
    typer.echo(str(run_dir))


@app.command()
def export(
    source: Path = typer.Argument(..., help="a run folder or checkpoint file"),
    out: Path = typer.Option(..., "--out", "-o", help="new folder for generator.onnx and manifest.json"),
    raw: bool = typer.Option(False, "--raw", help="export G's raw weights instead of the EMA"),
) -> None:
    """Export a generator to ONNX with its manifest; refuses a graph that does not match PyTorch."""
    from training.export import export_checkpoint

    setup_logging()
    with user_errors():
        manifest = export_checkpoint(source, out, ema=not raw)
    typer.echo(f"{out} sha256 {manifest.sha256}")


@app.command()
def upgrade(
    source: Path = typer.Argument(..., help="a model folder exported under latent protocol v1 (its graph takes z)"),
    out: Path = typer.Option(..., "--out", "-o", help="new folder for the re-exported model"),
) -> None:
    """Put the sampler of latent protocol v2 in front of a v1 model (same weights), so that it takes seeds.

    Seeds draw other images than under v1: judge the new folder again with `ganserve evaluate`."""
    from training.export import upgrade as upgrade_folder

    setup_logging()
    with user_errors():
        manifest = upgrade_folder(source, out)
    typer.echo(f"{out} sha256 {manifest.sha256}, parity within {manifest.parity_levels} level(s); judge it again")


@app.command("fit-discriminator")
def fit_discriminator_cmd(
    model: Path = typer.Argument(..., help="an exported model folder"),
    out: Path = typer.Option(..., "--out", "-o", help="new folder for the generator with its fitted D"),
    run: Path = typer.Option(None, "--from", help="start from this training run's D (default: from scratch)"),
    overrides: list[str] = typer.Option([], "--set", "-s", help="e.g. --set steps=3000 --set batch_size=64"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Fit a discriminator to MODEL's generator, frozen, and calibrate it, for rejection sampling (DRS).

    The generator is copied unchanged; judge the new folder with `ganserve evaluate`, which compares DRS with plain
    sampling on the same seeds and sets the model's default sampler by the result."""
    from training.config import apply_overrides
    from training.discriminator import FitConfig, fit_discriminator

    setup_logging()
    with user_errors():
        cfg = validated(FitConfig, apply_overrides({}, overrides))
        manifest = fit_discriminator(model, out, cfg=cfg, run=run, progress=progress)
    c = manifest.discriminator.fit.calibration
    seen = " (images the run's D trained on: optimistic)" if c.seen_in_training else ""
    typer.echo(f"{out}: D fitted for {cfg.steps} steps; calibrated accuracy {c.accuracy:.4f} on {c.images} real{seen} "
               f"and as many generated images (0.5: D cannot tell them apart, and DRS cannot help)")  # fmt: skip


@app.command("train-evaluator")
def train_evaluator_cmd(
    out: Path = typer.Option(Path("models/evaluator"), "--out", "-o", help="folder for evaluator.onnx and manifest"),
    config: Path = typer.Option(None, "--config", "-c", help="take the data from this run config"),
    overrides: list[str] = typer.Option([], "--set", "-s", help="e.g. --set max_steps=1000 --set data.kind=idx"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Train the frozen evaluator the quality gate scores generators with, and self-test it.

    Labelled data gets a classifier, unlabelled data self-supervised (contrastive) features; training stops on a
    plateau within a step budget. An evaluator that fails its self-test is not saved (exit 2)."""
    from training.config import apply_overrides, load_config
    from training.judging.evaluator import EvaluatorConfig, train_evaluator

    setup_logging()
    with user_errors():
        raw = {"data": load_config(config).data.model_dump(mode="json")} if config is not None else {}
        cfg = validated(EvaluatorConfig, apply_overrides(raw, overrides))
        manifest = train_evaluator(cfg, out, progress=progress)
    accuracy = "" if manifest.test_accuracy is None else f" test accuracy {manifest.test_accuracy:.4f}"
    typer.echo(
        f"{out} {manifest.method} after {manifest.steps} steps,{accuracy} self-test passed; sha256 {manifest.sha256}"
    )


def validated(model_cls, raw: dict):
    from pydantic import ValidationError

    from service.errors import one_line
    from training.config import ConfigError

    try:
        return model_cls.model_validate(raw)
    except ValidationError as err:  # one line, as every user error: each setting and what it must be
        raise ConfigError(f"bad {model_cls.__name__} setting: {one_line(err)}") from None


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can fix (``GanserveError``, the project's one base) into one line on stderr and exit
    status 2, without a traceback."""
    from service.errors import GanserveError

    try:
        yield
    except GanserveError as err:
        typer.secho(f"error: {err}", fg="red", err=True)
        raise typer.Exit(2) from None


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    for chatty in ("onnxscript", "onnx_ir", "torch.onnx"):  # the ONNX exporter narrates every pass at INFO
        logging.getLogger(chatty).setLevel(logging.ERROR)


def main() -> None:
    app()
