from pathlib import Path

import pytest

from training.config import SUPPORTED_SIZES, ConfigError, apply_overrides, load_config, validate_config

CONFIGS = Path(__file__).parent.parent / "configs"


def test_shipped_config_is_valid_and_resolved():
    cfg = load_config(CONFIGS / "fashion-mnist.yaml")
    assert cfg.data.kind == "fashion-mnist"
    assert (cfg.model.image_size, cfg.model.channels) == (28, 1)
    assert cfg.model.d_norm == "batch"  # resolved from the loss, so config.json says it


def test_overrides_are_parsed_as_yaml_into_nested_keys():
    raw = apply_overrides({"optim": {"lr_g": 1}}, ["optim.lr_d=1e-4", "optim.betas=[0.0, 0.9]", "epochs=3"])
    cfg = validate_config(raw)
    assert cfg.optim.lr_d == 1e-4 and cfg.optim.betas == (0.0, 0.9) and cfg.optim.lr_g == 1 and cfg.epochs == 3


def test_unknown_key_lists_the_valid_ones():
    with pytest.raises(ConfigError) as err:
        validate_config({"loss": {"nme": "hinge"}})
    text = str(err.value)
    assert "loss.nme: unknown key" in text and "name, d_steps, clip, gp_weight" in text


def test_unknown_top_level_key_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="valid keys here: name, seed, epochs"):
        validate_config({"epoch": 3})


def test_bad_values_say_what_is_allowed():
    with pytest.raises(ConfigError, match="loss.name: Input should be 'nonsaturating', 'wgan', 'wgan-gp' or 'hinge'"):
        validate_config({"loss": {"name": "lsgan"}})
    with pytest.raises(ConfigError, match="image_size 30 cannot be produced by the networks; supported sizes are"):
        validate_config({"data": {"image_size": 30}})


@pytest.mark.parametrize("text", ["epochs", "=3", ""])
def test_malformed_set_is_rejected(text):
    with pytest.raises(ConfigError, match="--set expects key=value"):
        apply_overrides({}, [text])


def test_loss_picks_a_fitting_normalisation_and_refuses_a_wrong_one():
    assert validate_config({"loss": {"name": "hinge"}}).model.d_norm == "spectral"
    assert validate_config({"loss": {"name": "wgan-gp"}}).model.d_norm == "layer"
    with pytest.raises(ConfigError, match="wgan-gp cannot use d_norm 'batch'"):
        validate_config({"loss": {"name": "wgan-gp"}, "model": {"d_norm": "batch"}})


def test_model_shape_cannot_disagree_with_data():
    with pytest.raises(ConfigError, match="model.image_size=32 disagrees with data.image_size=28"):
        validate_config({"model": {"image_size": 32}})


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(bad)


def test_supported_sizes_include_the_common_ones():
    assert {28, 32, 64, 128} <= set(SUPPORTED_SIZES)
