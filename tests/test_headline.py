"""The gate's headline (``service.manifest.GateHeadline``): built once from a report, written byte for byte as before,
read by the store's metadata and the service as one shape; and the one rule for "did this report judge these files"."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from release.registry import model_metadata
from service.manifest import MODEL_NAME, GateHeadline, Manifest, file_sha256, judged, read_manifest
from service.requests import GenerateRequest, default_sampler, sampler_for

DEFAULT = Path(__file__).resolve().parents[1] / "models" / "default"


@pytest.fixture
def shipped() -> tuple[Manifest, dict]:
    """The shipped default model's manifest and the gate report that wrote its headline."""
    return read_manifest(DEFAULT), json.loads((DEFAULT / "report.json").read_text())


def test_the_shipped_manifest_reads_and_writes_back_unchanged(shipped):
    manifest, _ = shipped
    text = (DEFAULT / "manifest.json").read_text()
    assert isinstance(manifest.gate, GateHeadline)
    assert json.loads(manifest.model_dump_json(indent=2)) == json.loads(text)
    assert manifest.model_dump_json(indent=2) + "\n" == text  # what write_manifest would write: the same bytes
    assert manifest.sha256 == file_sha256(DEFAULT / MODEL_NAME) == json.loads(text)["sha256"]


def test_the_headline_built_from_the_report_is_the_one_the_manifest_holds(shipped):
    manifest, report = shipped
    headline = GateHeadline.from_report(report)
    assert headline == manifest.gate
    assert headline.model_dump(mode="json") == json.loads((DEFAULT / "manifest.json").read_text())["gate"]
    assert list(headline.model_dump()) == [
        "decision", "reasons", "fid", "kid", "class_entropy", "feature_judge_accuracy", "pixel_judge_accuracy",
        "jsd_lower_bound_nats", "evaluator_sha256", "against", "drs",
    ]  # fmt: skip
    assert headline.drs.sampler == "plain" and headline.drs.max_candidates == 16
    assert (
        headline.fid == report["figures"]["candidate"]["fid"]
        and headline.drs.fid.drs == report["figures"]["drs"]["fid"]["drs"]
    )


def test_a_report_without_drs_or_class_figures_writes_those_keys_as_null():
    report = json.loads((DEFAULT / "report.json").read_text())
    del report["figures"]["drs"], report["figures"]["candidate"]["class_entropy"]
    dumped = GateHeadline.from_report(report).model_dump(mode="json")
    assert dumped["drs"] is None and dumped["class_entropy"] is None and len(dumped) == 11


def test_a_headline_with_fewer_keys_reads_and_writes_only_those():
    """One written before DRS was judged, or by hand (as tests/test_page.py does): /info shows it as it is."""
    given = {"decision": "pass", "reasons": ["every check passed"], "fid": 9.05, "kid": 0.718,
             "feature_judge_accuracy": 0.579, "pixel_judge_accuracy": 0.59}  # fmt: skip
    headline = GateHeadline.model_validate(given)
    assert headline.model_dump(mode="json") == given and json.loads(headline.model_dump_json()) == given
    assert headline.drs is None and headline.fid == 9.05 and "drs" not in headline.model_fields_set


def test_a_headline_handed_in_as_a_dict_is_written_as_a_checked_headline(shipped, tmp_path):
    """``model_copy(update=...)`` validates nothing: the dict is checked when written, and written as it was."""
    manifest, _ = shipped
    given = {"decision": "pass", "reasons": [], "fid": 1.0, "kid": 0.0, "feature_judge_accuracy": 0.5,
             "pixel_judge_accuracy": 0.5}  # fmt: skip
    assert json.loads(manifest.model_copy(update={"gate": given}).model_dump_json())["gate"] == given
    with pytest.raises(ValueError, match="decision"):
        manifest.model_copy(update={"gate": {**given, "decision": "maybe"}}).model_dump_json()


def test_a_headline_refuses_keys_it_does_not_know():
    with pytest.raises(ValueError, match="extra"):
        GateHeadline.model_validate({"decision": "pass", "reasons": [], "fid": 1.0, "kid": 0.0, "fied": 1.0,
                                     "feature_judge_accuracy": 0.5, "pixel_judge_accuracy": 0.5})  # fmt: skip


def test_judged_asks_for_this_generator_and_this_discriminator(shipped):
    manifest, report = shipped
    assert judged(manifest, report) and judged(manifest, report, discriminator=False)
    other_d = copy.deepcopy(report)
    other_d["candidate"]["discriminator_sha256"] = "0" * 64
    assert not judged(manifest, other_d) and judged(manifest, other_d, discriminator=False)
    no_d = copy.deepcopy(report)
    del no_d["candidate"]["discriminator_sha256"]  # a report of the model without a D
    assert not judged(manifest, no_d) and judged(_without_d(manifest), no_d)
    assert not judged(_without_d(manifest), report)  # judged with a D this folder does not have
    other_g = copy.deepcopy(report)
    other_g["candidate"]["sha256"] = "1" * 64
    assert not judged(manifest, other_g) and not judged(manifest, other_g, discriminator=False)


def _without_d(manifest: Manifest) -> Manifest:
    return manifest.model_copy(update={"discriminator": None})


def test_the_store_records_the_headline_figures_and_drs_only_for_the_d_judged(shipped):
    manifest, report = shipped
    figures = {"sha256": manifest.sha256, "run_id": "00000-default", "step": 9360, "decision": "pass", "fid": 9.0524,
               "feature_judge_accuracy": 0.5788, "pixel_judge_accuracy": 0.5899}  # fmt: skip
    drs = {"drs": "no detectable difference", "fid_drs": 8.8207}
    assert list(model_metadata(manifest, report).items()) == list({**figures, **drs}.items())
    other_d = copy.deepcopy(report)
    other_d["candidate"]["discriminator_sha256"] = "0" * 64
    assert model_metadata(manifest, other_d) == figures
    judged_only = {"decision": "reject", "candidate": {"sha256": manifest.sha256}}  # no figures: none shown
    assert model_metadata(manifest, judged_only) == {**{k: figures[k] for k in ("sha256", "run_id", "step")},
                                                     "decision": "reject"}  # fmt: skip
    assert model_metadata(manifest, None)["decision"] == "not judged"
    assert set(GateHeadline.RECORDED) <= set(figures)


def test_the_service_takes_its_default_sampler_and_bound_from_the_description(shipped):
    """The description is the manifest as JSON (``service.production``); its headline is read back typed."""
    manifest, _ = shipped
    info = {"model": "default", "version": "v", **manifest.model_dump(mode="json")}
    assert default_sampler(info) == "plain" and sampler_for(GenerateRequest(), info) == ("plain", 16)
    helps = copy.deepcopy(info)
    helps["gate"]["drs"].update(verdict="helps", sampler="drs")
    assert default_sampler(helps) == "drs" and sampler_for(GenerateRequest(), helps) == ("drs", 16)
    assert default_sampler({**helps, "gate": None}) == "plain"
