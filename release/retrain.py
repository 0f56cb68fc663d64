"""The offline job: train, export, judge against production, store, and promote only what passes.

The job keeps its place in ``<runs_dir>/retrain-<name>[.<line>].json``; run again after an interruption, it resumes the
training run from its last checkpoint and skips the stages already done. A finished job (promoted or rejected)
removes that file, so the next run starts a new training run.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from release.registry import Registry, model_metadata
from release.report import write_report
from service.lines import DEFAULT_LINE
from service.manifest import read_manifest
from training.artifacts import new_run_dir
from training.checkpoint import CHECKPOINT_NAME, load_checkpoint
from training.config import RunConfig
from training.export import export_checkpoint
from training.judging.evaluator import EVALUATORS, evaluator_for
from training.judging.gate import GateConfig, evaluate
from training.train import planned_steps, resume, train

__all__ = ["RetrainResult", "retrain"]

log = logging.getLogger("ganserve.retrain")


@dataclass(frozen=True)
class RetrainResult:
    status: Literal["promoted", "rejected"]
    candidate: str
    model_dir: Path
    reasons: list[str]

    @property
    def exit_code(self) -> int:
        return 0 if self.status == "promoted" else 3


def retrain(
    cfg: RunConfig,
    *,
    evaluator: Path | None = None,
    runs_dir: Path = Path("runs"),
    registry: Registry | None = None,
    gate: GateConfig | None = None,
    progress: bool = True,
) -> RetrainResult:
    registry = registry or Registry()
    line = "" if registry.line == DEFAULT_LINE else f".{registry.line}"  # two lines may retrain one config at once
    state_path = runs_dir / f"retrain-{cfg.name}{line}.json"
    if evaluator is None:  # the one for this data (shipped, or kept under runs_dir/evaluators by the data's key);
        # found or trained first, so a job whose data no evaluator can judge stops before it trains a generator
        evaluator = evaluator_for(cfg.data, store=runs_dir / EVALUATORS, progress=progress)
    config_sha = hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    run_dir = Path(state["run_dir"]) if state.get("config_sha256") == config_sha else None

    if run_dir is not None and (run_dir / CHECKPOINT_NAME).exists():
        done = load_checkpoint(run_dir)
        if done["step"] < planned_steps(RunConfig.model_validate(done["config"]), done["data"]["train"]["images"]):
            log.info("resuming the interrupted job's run %s at step %d", run_dir, done["step"])
            resume(run_dir, progress=progress)
    else:
        run_dir = new_run_dir(runs_dir, cfg.name)
        # recorded before training starts, so a job interrupted while training resumes this run
        state_path.write_text(json.dumps({"run_dir": str(run_dir), "config_sha256": config_sha}) + "\n")
        train(cfg, run_dir=run_dir, progress=progress)

    model_dir = run_dir / "export"
    if not (model_dir / "manifest.json").exists():
        export_checkpoint(run_dir, model_dir)
    production = registry.production()
    report = evaluate(
        model_dir, evaluator=evaluator, production=production.path if production else None, checkpoint=run_dir, cfg=gate
    )
    write_report(model_dir, report)  # and its headline into the manifest
    manifest = read_manifest(model_dir)

    candidate = registry.add_candidate(model_dir, metadata=model_metadata(manifest, report))
    if report["decision"] == "pass":
        registry.promote(candidate.tag, expected_production=production.sha256 if production else None)
        status = "promoted"
    else:
        status = "rejected"
    state_path.unlink(missing_ok=True)
    return RetrainResult(status, candidate.tag, model_dir, report["reasons"])
