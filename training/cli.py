"""The ``ganserve`` command: thin wrappers over importable functions, heavy imports inside each command."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

__all__ = ["app", "main"]

LINE = typer.Option("default", "--line", "-l", help="the model line, e.g. fashion or emoji (service.lines)")

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

    _setup_logging()
    try:
        with _errors(), logging_redirect_tqdm():
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

    _setup_logging()
    with _errors():
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

    _setup_logging()
    with _errors():
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

    _setup_logging()
    with _errors():
        cfg = _validated(FitConfig, apply_overrides({}, overrides))
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

    _setup_logging()
    with _errors():
        raw = {"data": load_config(config).data.model_dump(mode="json")} if config is not None else {}
        cfg = _validated(EvaluatorConfig, apply_overrides(raw, overrides))
        manifest = train_evaluator(cfg, out, progress=progress)
    accuracy = "" if manifest.test_accuracy is None else f" test accuracy {manifest.test_accuracy:.4f}"
    typer.echo(
        f"{out} {manifest.method} after {manifest.steps} steps,{accuracy} self-test passed; sha256 {manifest.sha256}"
    )


@app.command()
def evaluate(
    model: Path = typer.Argument(..., help="an exported model folder"),
    against: str = typer.Option("production", "--against", help="'production', 'none', or a model folder"),
    line: str = typer.Option(None, "--line", "-l", help="with --against production: this line's (default: default)"),
    evaluator: Path = typer.Option(
        None, "--evaluator", help="default: the one for the model's data (shipped, or under RUNS_DIR/evaluators)"
    ),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="where retrain keeps the evaluators it trained"),
    checkpoint: Path = typer.Option(None, "--checkpoint", help="the run, to score the GAN's own D (diagnostic)"),
    config: Path = typer.Option(None, "--config", "-c", help="a run config naming the data (default: the model's)"),
    overrides: list[str] = typer.Option([], "--set", "-s", help="gate settings, e.g. --set samples=2000"),
) -> None:
    """Run the quality gate on MODEL and write report.json, report.md and grid.png beside it.

    Exit status: 0 pass, 3 reject, 2 cannot judge (the message says why)."""
    from training.config import apply_overrides, load_config
    from training.judging.gate import GateConfig, write_report
    from training.judging.gate import evaluate as run_gate

    _setup_logging()
    with _errors():
        production = _resolve_against(against, line)
        cfg = _validated(GateConfig, apply_overrides({}, overrides))
        data = load_config(config).data if config is not None else None
        report = run_gate(model, evaluator=evaluator, evaluators=runs_dir / "evaluators", production=production,
                          data=data, checkpoint=checkpoint, cfg=cfg)  # fmt: skip
        write_report(model, report)
    _verdict(report["decision"], report["reasons"], model / "report.md")
    raise typer.Exit(0 if report["decision"] == "pass" else 3)


@app.command()
def models(line: str = typer.Option(None, "--line", "-l", help="only this model line (default: every line)")) -> None:
    """List the registry: each line's candidates and promotions, newest last, with their gate figures."""
    with _errors():
        registry = _registry(line)
        rows = []
        for name in [line] if line else registry.lines():
            registry = _registry(name)
            current = registry.production()
            for kind in (registry.candidates, registry.promotions):
                for e in registry.entries(kind):
                    stage = "candidate" if kind == registry.candidates else "production"
                    if current is not None and e.version == current.version:
                        stage = "PRODUCTION (current)"
                    m = e.metadata
                    rows.append((name, e.tag, stage, e.created.strftime("%Y-%m-%d %H:%M"), m.get("decision", "-"),
                                 _num(m.get("fid")), _num(m.get("feature_judge_accuracy")), m.get("drs", "-"),
                                 e.sha256[:12]))  # fmt: skip
    if not rows:
        typer.echo(f"no models in {registry.models_dir}; run ganserve retrain, or make serve to import the default")
        return
    header = ("line", "tag", "stage", "created", "gate", "FID", "judge acc", "DRS", "sha256")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        typer.echo("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


@app.command("import")
def import_cmd(
    folder: Path = typer.Argument(..., help="an exported model folder, e.g. models/default"),
    line: str = LINE,
    promote_if_empty: bool = typer.Option(False, "--promote-if-empty", help="promote it if there is no production"),
    force: bool = typer.Option(
        False, "--force", help="with --promote-if-empty: promote it even without a passing report of this file"
    ),
) -> None:
    """Store an exported model folder in the registry as a candidate (what `make serve` does with models/default).

    The ONNX file must match its manifest's sha256; the gate's decision counts only from a report that judged it."""
    with _errors():
        registry = _registry(line)
        current = registry.production()
        if promote_if_empty and current is not None:
            typer.echo(f"production is {current.tag}; nothing imported")
            return
        entry = registry.import_model(folder, promote_if_empty=promote_if_empty, force=force)
        now = registry.production()
    typer.echo(f"imported {folder} as {entry.tag}" + (f"; production is {now.tag}" if now else ""))


@app.command()
def promote(
    version: str = typer.Argument(..., help="a candidate version (or name:version, or a unique prefix)"),
    line: str = LINE,
    force: bool = typer.Option(False, "--force", help="promote even if the gate rejected or did not judge it"),
) -> None:
    """Make a candidate the production model (atomic; the service picks it up within seconds).

    Refused, even with --force, when its ONNX file does not match its manifest's sha256."""
    with _errors():
        entry = _registry(line).promote(version, force=force)
    typer.echo(f"promoted {entry.metadata.get('promoted_from')} as {entry.tag}")


@app.command()
def rollback(line: str = LINE) -> None:
    """Return the line's production to the promotion before the current one."""
    with _errors():
        entry = _registry(line).rollback()
    typer.echo(f"production is now {entry.tag} ({entry.metadata.get('promoted_from')})")


@app.command()
def retrain(
    config: Path = typer.Option(Path("configs/default.yaml"), "--config", "-c"),
    line: str = LINE,
    overrides: list[str] = typer.Option([], "--set", "-s"),
    evaluator: Path = typer.Option(
        None,
        "--evaluator",
        help="default: the one trained on this data (shipped, or under RUNS_DIR/evaluators; "
        "trained first if there is none)",
    ),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir"),
    gate_overrides: list[str] = typer.Option([], "--gate", help="gate settings, e.g. --gate samples=2000"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Train, export, judge against the line's production, store, and promote only when the gate passes.

    Exit status: 0 promoted, 3 rejected by the gate, 2 a user error (the message says what to fix), 1 a failure.
    Run it again after an interruption to resume."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    from training.config import apply_overrides, load_config
    from training.judging.gate import GateConfig
    from training.retrain import retrain as run_job

    _setup_logging()
    try:
        with _errors(), logging_redirect_tqdm():
            cfg = load_config(config, overrides)
            gate = _validated(GateConfig, apply_overrides({}, gate_overrides))
            registry = _registry(line)
            result = run_job(
                cfg, evaluator=evaluator, runs_dir=runs_dir, registry=registry, gate=gate, progress=progress
            )
    except KeyboardInterrupt:
        typer.secho("INTERRUPTED: run the same command again to resume from the last checkpoint", err=True)
        raise typer.Exit(130) from None
    except typer.Exit:  # a user error, already said in one line
        raise
    except Exception as err:  # a scheduled job's last line must say what happened, whatever happened
        logging.getLogger("ganserve.retrain").exception("the job failed")
        typer.secho(f"FAILED: {type(err).__name__}: {err}; production is unchanged", fg="red", err=True)
        raise typer.Exit(1) from None
    _verdict(result.status, result.reasons, result.model_dir / "report.md", candidate=result.candidate)
    raise typer.Exit(result.exit_code)


def _registry(line: str | None = None):
    """A line of the registry in BentoML's home; GANSERVE_KEEP_RETIRED retired versions are kept (5 by default)."""
    import os

    from service.lines import DEFAULT_LINE
    from training.config import ConfigError
    from training.registry import KEEP_RETIRED, Registry

    keep = os.environ.get("GANSERVE_KEEP_RETIRED", str(KEEP_RETIRED))
    if not keep.isdigit():
        raise ConfigError(f"GANSERVE_KEEP_RETIRED={keep!r}: use a whole number of versions, 0 or more")
    return Registry(line=line or DEFAULT_LINE, keep_retired=int(keep))


def _resolve_against(against: str, line: str | None = None) -> Path | None:
    if against == "none":
        return None
    if against == "production":
        current = _registry(line).production()
        return current.path if current else None
    return Path(against)


def _validated(model_cls, raw: dict):
    from pydantic import ValidationError

    from training.config import ConfigError

    try:
        return model_cls.model_validate(raw)
    except ValidationError as err:  # one line, as every user error: each setting and what it must be
        wrong = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors(include_url=False))
        raise ConfigError(f"bad {model_cls.__name__} setting: {wrong}") from None


def _verdict(status: str, reasons: list[str], report: Path, candidate: str | None = None) -> None:
    color = typer.colors.GREEN if status in ("pass", "promoted") else typer.colors.YELLOW
    typer.secho(f"{status.upper()}{f' {candidate}' if candidate else ''}: see {report}", fg=color, bold=True)
    for reason in reasons:
        typer.echo(f"  - {reason}")


def _num(value) -> str:
    return "-" if value is None else f"{value:.4g}"


@contextmanager
def _errors() -> Iterator[None]:
    """Turn the errors a user can fix (``GanserveError``, the project's one base) into one line on stderr and exit
    status 2, without a traceback."""
    from service.errors import GanserveError

    try:
        yield
    except GanserveError as err:
        typer.secho(f"error: {err}", fg="red", err=True)
        raise typer.Exit(2) from None


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    for chatty in ("onnxscript", "onnx_ir", "torch.onnx"):  # the ONNX exporter narrates every pass at INFO
        logging.getLogger(chatty).setLevel(logging.ERROR)


def main() -> None:
    app()
