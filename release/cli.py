"""The release stage's commands of ``ganserve``: judge into a report, and list, import, promote, roll back and
retrain the store's models. They join the training commands on one app (``training.cli``); this module is the
``ganserve`` entry point and ``python -m release``."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from training.cli import app, setup_logging, user_errors, validated

__all__ = ["app", "main"]

LINE = typer.Option("default", "--line", "-l", help="the model line, e.g. fashion or emoji (service.lines)")


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
    from release.report import write_report
    from training.config import apply_overrides, load_config
    from training.judging.evaluator import EVALUATORS
    from training.judging.gate import GateConfig
    from training.judging.gate import evaluate as run_gate

    setup_logging()
    with user_errors():
        production = _resolve_against(against, line)
        cfg = validated(GateConfig, apply_overrides({}, overrides))
        data = load_config(config).data if config is not None else None
        report = run_gate(model, evaluator=evaluator, evaluators=runs_dir / EVALUATORS, production=production,
                          data=data, checkpoint=checkpoint, cfg=cfg)  # fmt: skip
        write_report(model, report)
    _verdict(report["decision"], report["reasons"], model / "report.md")
    raise typer.Exit(0 if report["decision"] == "pass" else 3)


@app.command()
def models(line: str = typer.Option(None, "--line", "-l", help="only this model line (default: every line)")) -> None:
    """List the registry: each line's candidates and promotions, newest last, with their gate figures."""
    from service.rows import version_of

    with user_errors():
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
                                 version_of(e.sha256)))  # fmt: skip
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
    with user_errors():
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
    with user_errors():
        entry = _registry(line).promote(version, force=force)
    typer.echo(f"promoted {entry.metadata.get('promoted_from')} as {entry.tag}")


@app.command()
def rollback(line: str = LINE) -> None:
    """Return the line's production to the promotion before the current one."""
    with user_errors():
        entry = _registry(line).rollback()
    typer.echo(f"production is now {entry.tag} ({entry.metadata.get('promoted_from')})")


@app.command()
def retrain(
    config: Path = typer.Option(None, "--config", "-c", help="a run config (default: configs/default.yaml)"),
    data: Path = typer.Option(
        None, "--data", "-d", help="a folder of PNG/JPEG images: the recipe is chosen from it, no config needed"
    ),
    line: str = LINE,
    overrides: list[str] = typer.Option([], "--set", "-s", help="override a key, e.g. --set max_steps=4000"),
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

    With --data DIR the job reads the folder and prints the recipe it chose for it, and why (release/recipe.py);
    --set overrides any choice. Exit status: 0 promoted, 3 rejected by the gate, 2 a user error (the message says
    what to fix), 1 a failure.
    Run it again after an interruption to resume."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    from release.recipe import choose_recipe
    from release.retrain import retrain as run_job
    from training.config import ConfigError, apply_overrides, load_config
    from training.judging.gate import GateConfig

    setup_logging()
    try:
        with user_errors(), logging_redirect_tqdm():
            gate = validated(GateConfig, apply_overrides({}, gate_overrides))
            if data is not None:
                if config is not None:
                    raise ConfigError("--data chooses the recipe from the folder; drop --config (or --data)")
                recipe = choose_recipe(data, overrides, gate=gate)
                s = recipe.survey
                logging.getLogger("ganserve.recipe").info(
                    "%s: %d images%s; the recipe:\n  %s", s.root, s.images,
                    f" in {len(s.classes)} classes" if len(s.classes) >= 2 else ", no labels",
                    "\n  ".join(recipe.describe()),
                )  # fmt: skip
                cfg = recipe.config
            else:
                cfg = load_config(config or Path("configs/default.yaml"), overrides)
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

    from release.registry import KEEP_RETIRED, Registry
    from service.lines import DEFAULT_LINE
    from training.config import ConfigError

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


def _verdict(status: str, reasons: list[str], report: Path, candidate: str | None = None) -> None:
    color = typer.colors.GREEN if status in ("pass", "promoted") else typer.colors.YELLOW
    typer.secho(f"{status.upper()}{f' {candidate}' if candidate else ''}: see {report}", fg=color, bold=True)
    for reason in reasons:
        typer.echo(f"  - {reason}")


def _num(value) -> str:
    return "-" if value is None else f"{value:.4g}"


def main() -> None:
    app()
