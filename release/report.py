"""The gate report on disk: report.json, report.md and grid.png beside the model, and its headline in the manifest.

The gate (``training.judging.gate``) only judges and returns the report as a dict; writing it is the release
stage's, like everything else that changes a model folder or the store.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from service.manifest import GateHeadline, judged, write_manifest
from training.artifacts import save_grid
from training.judging.gate import DRS_SHOWN, open_model, sample

__all__ = ["write_report"]


def write_report(folder: Path, report: dict) -> None:
    """Write report.json, report.md and grid.png (the first judged seeds again, one class a column) beside the model,
    and the report's headline into its manifest when the report judged these very files (G, and D if any)."""
    model = open_model(folder)
    if judged(model.manifest, report):
        write_manifest(folder, model.manifest.model_copy(update={"gate": GateHeadline.from_report(report)}))
    classes = len(model.manifest.class_names)
    first = report["seeds"]["first"]
    drawn = sample(model, range(first, first + (6 * classes if classes else 64)))
    images, labels = drawn.images, drawn.labels
    if labels is not None:
        images = images[np.argsort(labels, kind="stable").reshape(classes, -1).T.ravel()]
    save_grid(images, folder / "grid.png", cols=classes or None)
    (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (folder / "report.md").write_text(_markdown(report))


def _markdown(r: dict) -> str:
    lines = [
        f"# Quality gate: **{r['decision'].upper()}**",
        "",
        f"- mode: {r['mode']}",
        f"- candidate: `{r['candidate']['sha256'][:16]}` {r['candidate'].get('run_id', '')}",
        f"- production: `{r['production']['sha256'][:16]}`" if r["production"] else "- production: none",
        f"- evaluator: `{r['evaluator']['sha256'][:16]}` ({_evaluator_line(r['evaluator'])})",
        f"- compared with: {_reference_line(r['data'])}; held out (memorization): {r['data']['heldout_images']} "
        f"images (sha256 `{r['data']['heldout_sha256'][:16]}`)",
        f"- smallest differences this run could detect: FID {r['power']['fid_detectable']:.3g}, feature judge "
        f"{r['power']['feature_judge_detectable']:.3f}, cluster share {r['power']['cluster_share_detectable']:.3f}",
        f"- {r['seeds']['count']} samples per model from seed {r['seeds']['first']}; {r['seconds']} s",
        "",
        "## Checks",
        "",
        "| check | value | rule | |",
        "|---|---|---|---|",
    ]
    for c in r["checks"]:
        lines.append(
            f"| {c['name']} | {c['value']:.4g} | {c['op']} {c['limit']:.4g} | {'ok' if c['passed'] else 'FAIL'} |"
        )
    lines += ["", "## Figures", "", "| figure | candidate | production |", "|---|---|---|"]
    cand, prod = r["figures"]["candidate"], r["figures"].get("production", {})
    rows = [
        ("FID (evaluator features)", "fid"), ("FID sd (half subsets)", "fid_sd"), ("KID", "kid"),
        ("precision", "precision"), ("recall", "recall"), ("density", "density"), ("coverage", "coverage"),
        ("class entropy", "class_entropy"),
        ("smallest class share", "min_class_share"), ("label accuracy", "label_accuracy"),
        ("memorization ratio", "memorization_ratio"), ("mean level", "mean_level"),
    ]  # fmt: skip
    for title, key in rows:
        if key in cand:
            lines.append(
                f"| {title} | {cand[key]:.4g} | {prod[key]:.4g} |"
                if key in prod
                else f"| {title} | {cand[key]:.4g} | |"
            )
    for title, key in (("NDB (different clusters)", "ndb"), ("dropped clusters share", "dropped_share")):
        row = [f"{m['clusters'][key]:.4g} of {m['clusters']['ndb_k']}" if key == "ndb" else f"{m['clusters'][key]:.4g}"
               for m in (cand, prod) if "clusters" in m]  # fmt: skip
        lines.append(f"| {title} | {' | '.join(row)} |")
    for title, key in (("feature judge", "feature_judge"), ("pixel judge", "pixel_judge")):
        row = [_judge_cell(m[key]) for m in (cand, prod) if key in m]
        lines.append(f"| {title} accuracy | {' | '.join(row)} |")
    if "own_discriminator" in cand:
        own = cand["own_discriminator"]
        lines.append(f"| GAN's own D accuracy (diagnostic) | {own['accuracy']:.4f} | |")
    if "drs" in r["figures"]:
        lines += _drs_markdown(r["figures"]["drs"])
    lines += ["", "## Decision", ""] + [f"- {reason}" for reason in r["reasons"]] + ["", "![samples](grid.png)", ""]
    return "\n".join(lines)


def _drs_markdown(drs: dict) -> list[str]:
    fid = drs["fid"]
    lines = [
        "",
        f"## Rejection sampling (DRS): {drs['verdict']}; default sampler {drs['sampler']}",
        "",
        f"Same seeds, at most {drs['max_candidates']} candidates per image: {drs['candidates_per_image']:.3f} drawn "
        f"per image (acceptance {drs['acceptance_rate']:.3f}), {drs['fallback_share']:.2%} fell back to the best "
        f"scored. FID difference DRS - plain {fid['difference']:.4g}, "
        f"interval {fid['ci95'][0]:.3g}..{fid['ci95'][1]:.3g}.",
        "",
        "| figure | plain | DRS |",
        "|---|---|---|",
        f"| FID | {fid['plain']:.4g} | {fid['drs']:.4g} |",
    ]
    lines += [
        f"| {k.replace('_', ' ')} | {drs[k]['plain']:.4g} | {drs[k]['drs']:.4g} |"
        for k in (*DRS_SHOWN, "dropped_share")
        if k in drs
    ]
    for k in ("feature_judge", "pixel_judge"):
        j = drs[k]
        lines.append(f"| {k.replace('_', ' ')} accuracy | {j['plain']:.4f} | {j['drs']:.4f} (noise {j['noise']:.4f}) |")
    return lines


def _reference_line(data: dict) -> str:
    """What the distribution statistics compared with (reports from before the reference pool: the held-out split)."""
    if data.get("reference") == "all":
        return f"all {data['reference_images']} real images (training and held-out)"
    return f"the {data.get('reference_images', data['heldout_images'])} held-out images"


def _evaluator_line(e: dict) -> str:
    test = e.get("selftest")
    selftest = "self-test not run" if test is None else f"self-test passed in {test['seconds']} s"
    accuracy = f", test accuracy {e['test_accuracy']:.4f}" if e.get("test_accuracy") is not None else ""
    return f"{e['method']}{accuracy}, {selftest}"


def _judge_cell(j: dict) -> str:
    return f"{j['accuracy']:.4f} ± {j['accuracy_sd']:.4f} (JSD ≥ {j['jsd_lower_bound_nats']:.3f} nats)"
