"""The ``ganserve`` command: thin wrappers over importable functions, heavy imports inside each command."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

__all__ = ["app", "main"]

app = typer.Typer(
    help="ganserve: train a GAN, gate it on quality, and serve its generator.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Keeps Typer in sub-command mode while there is only one command."""


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

    from training.checkpoint import CheckpointError
    from training.config import ConfigError, apply_overrides, load_config
    from training.data import DataError
    from training.train import resume as resume_run
    from training.train import train as train_run

    _setup_logging()
    try:
        with logging_redirect_tqdm():
            if resume is not None:
                if config is not None:
                    raise ConfigError("--resume takes the run's own config; drop --config")
                run_dir = resume_run(resume, overrides=apply_overrides({}, overrides), progress=progress)
            else:
                if config is None:
                    raise ConfigError("pass --config FILE (e.g. configs/fashion-mnist.yaml) or --resume RUN_DIR")
                run_dir = train_run(load_config(config, overrides), runs_dir=runs_dir, progress=progress)
    except (ConfigError, DataError, CheckpointError) as err:
        typer.secho(f"error: {err}", fg="red", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.secho("interrupted; the last checkpoint is saved, continue with --resume RUN_DIR", err=True)
        raise typer.Exit(130) from None
    typer.echo(str(run_dir))


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")


def main() -> None:
    app()
