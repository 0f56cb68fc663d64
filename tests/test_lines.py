"""Model lines: several generators in one store, each promoted, rolled back and locked on its own, all packed."""

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, BlobGenerator, Tinted
from test_registry import add

from release.registry import Registry, RegistryError, RegistryLocked
from service.lines import LineError, candidate_name, check_line, line_of, production_name
from service.manifest import ImageSpec
from training.export import export_module


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("line-models")
    export_module(
        BlobGenerator(square=230.0), root / "a", latent_dim=800, image=ImageSpec(height=28, width=28, channels=1)
    )
    export_module(
        BlobGenerator(square=200.0), root / "b", latent_dim=800, image=ImageSpec(height=28, width=28, channels=1)
    )
    export_module(Tinted(), root / "rgb", latent_dim=300, image=ImageSpec(height=16, width=16, channels=3))
    return root


def test_line_names_map_to_model_names_and_back():
    assert (production_name("default"), candidate_name("default")) == ("ganserve-generator", "ganserve-candidate")
    assert (production_name("emoji-64"), candidate_name("emoji-64")) == (
        "ganserve-generator.emoji-64",
        "ganserve-candidate.emoji-64",
    )
    for name in ("ganserve-generator", "ganserve-candidate.fashion", "ganserve-generator.emoji-64", "other", "x.y"):
        line = line_of(name)
        assert line is None or name in (production_name(line), candidate_name(line))
    assert line_of("ganserve-generator.fashion") == "fashion" and line_of("other") is None
    for bad in ("", "Fashion", "-a", "a-", "a_b", "a.b", "x" * 33, "über"):
        with pytest.raises(LineError, match="lower-case letters, digits and inner dashes"):
            check_line(bad)


def test_each_line_promotes_and_rolls_back_alone(models, tmp_path):
    fashion, emoji = Registry(tmp_path, line="fashion"), Registry(tmp_path, line="emoji")
    fa, fb = add(fashion, models / "a"), add(fashion, models / "b")
    e = add(emoji, models / "rgb")
    assert fa.name == "ganserve-candidate.fashion" and e.name == "ganserve-candidate.emoji"
    fashion.promote(fa.version)
    emoji.promote(e.version)
    emoji_before = emoji.production()
    fashion.promote(fb.version)
    assert emoji.production() == emoji_before  # a promotion on one line leaves the other as it was
    assert fashion.rollback().metadata["promoted_from"] == fa.tag
    assert emoji.production() == emoji_before
    assert Registry(tmp_path).production() is None  # the default line has nothing
    assert Registry(tmp_path).lines() == ["emoji", "fashion"]
    with pytest.raises(RegistryError, match="is not a model of line 'emoji'"):
        emoji.promote(fa.tag)  # a candidate of another line is not this line's to promote
    with pytest.raises(RegistryError, match="no earlier promotion"):
        emoji.rollback()


def test_a_promotion_on_one_line_does_not_wait_for_anothers_lock(models, tmp_path):
    fashion, emoji = Registry(tmp_path, line="fashion"), Registry(tmp_path, line="emoji")
    candidate = add(emoji, models / "rgb")
    with fashion.lock():
        emoji.promote(candidate.version)  # not RegistryLocked
        with pytest.raises(RegistryLocked):
            Registry(tmp_path, line="fashion").promote(add(fashion, models / "a").version)
    assert emoji.production().metadata["promoted_from"] == candidate.tag


def test_the_cli_takes_the_line(models, tmp_path):
    env = {"BENTOML_HOME": str(tmp_path), "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}

    def ganserve(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["ganserve", *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)

    reg = Registry(tmp_path, line="emoji")
    candidate = add(reg, models / "rgb")
    assert ganserve("promote", candidate.version, "--line", "emoji").returncode == 0
    listed = ganserve("models").stdout
    rows = [row.split() for row in listed.splitlines()]
    assert any(r[:3] == ["emoji", r[1], "PRODUCTION"] and r[1].startswith("ganserve-generator.emoji:") for r in rows)
    assert ganserve("models", "--line", "fashion").stdout.startswith("no models")
    wrong = ganserve("promote", candidate.version, "--line", "Emoji!")
    assert (
        wrong.returncode == 2 and wrong.stderr.count("\n") == 1 and "model line 'Emoji!' is not allowed" in wrong.stderr
    )
    other = ganserve("promote", candidate.version, "--line", "fashion")
    assert other.returncode == 2 and "no model versions match" in other.stderr


def test_the_bento_packs_every_lines_production_model(models, tmp_path):
    """``bentoml build`` pins each line's production model to its version, so the container serves every line."""
    promoted = [
        Registry(tmp_path, line=line).promote(add(Registry(tmp_path, line=line), models / folder).version).tag
        for line, folder in (("default", "a"), ("emoji", "rgb"))
    ]
    env = {"BENTOML_HOME": str(tmp_path), "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    out = subprocess.run(["bentoml", "build", "-o", "tag"], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    tag = out.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    bento = (tmp_path / "bentos" / tag.replace(":", "/") / "bento.yaml").read_text()
    for model_tag in promoted:
        assert f"tag: {model_tag}" in bento
