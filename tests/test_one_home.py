"""Each concept written once (issue #25): the pixel mappings, staging, and what a loss asks of the training step."""

import numpy as np
import pytest
import torch

from service.imaging import to_uint8
from training.artifacts import staged, to_bytes, to_unit
from training.judging.metrics import pixel_fractions
from training.losses import LOSSES

LEVELS = torch.arange(256, dtype=torch.uint8).reshape(4, 4, 4, 4)  # every uint8 level once, as N x H x W x C


def _bits(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous().view(torch.int32)


def test_to_unit_is_bit_for_bit_the_expressions_it_replaced():
    nchw = LEVELS.permute(0, 3, 1, 2).contiguous()
    assert torch.equal(_bits(to_unit(nchw)), _bits(nchw.float() / 127.5 - 1))
    assert torch.equal(_bits(to_unit(nchw)), _bits(nchw.float().div_(127.5).sub_(1.0)))  # the training loop's
    nhwc = to_unit(LEVELS, channels_last=True)
    assert torch.equal(_bits(nhwc), _bits(LEVELS.permute(0, 3, 1, 2).to(torch.float32) / 127.5 - 1.0))
    assert nhwc.shape == (4, 4, 4, 4) and nhwc.stride() == LEVELS.permute(0, 3, 1, 2).stride()  # NHWC memory kept


def test_to_bytes_inverts_to_unit_and_agrees_with_the_service():
    x = to_unit(LEVELS, channels_last=True)
    assert torch.equal(to_bytes(x), LEVELS)
    noisy = torch.linspace(-1.2, 1.2, 4 * 4 * 4 * 4).reshape(4, 4, 4, 4)
    assert np.array_equal(to_bytes(noisy).numpy(), to_uint8(noisy.numpy()))


def test_pixel_fractions_are_the_quantile_features_bit_for_bit():
    images = LEVELS.numpy()
    assert np.array_equal(pixel_fractions(images).view(np.int32), (LEVELS.float() / 255).numpy().view(np.int32))


def test_a_staged_folder_appears_whole_or_not_at_all(tmp_path):
    with staged(tmp_path / "out", prefix=".t-") as staging:
        (staging / "a").write_text("a")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a"]
    with pytest.raises(RuntimeError), staged(tmp_path / "failed", prefix=".t-") as staging:
        (staging / "a").write_text("a")
        raise RuntimeError
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # neither the folder nor its staging is left


def test_staged_files_replace_their_namesakes_and_keep_the_rest(tmp_path):
    out = tmp_path / "evaluator"
    out.mkdir()
    (out / "manifest.json").write_text("old")
    (out / "README").write_text("kept")
    with pytest.raises(RuntimeError), staged(out, prefix=".t-", files=("model", "manifest.json")) as staging:
        (staging / "model").write_text("new")
        raise RuntimeError
    assert sorted(p.name for p in out.iterdir()) == ["README", "manifest.json"]
    with staged(out, prefix=".t-", files=("model", "manifest.json")) as staging:
        (staging / "model").write_text("new")
        (staging / "manifest.json").write_text("new")
    assert {p.name: p.read_text() for p in out.iterdir()} == {"README": "kept", "manifest.json": "new", "model": "new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evaluator"]


def test_each_loss_says_what_it_asks_of_the_training_step():
    asks = {name: (loss.penalty, loss.clip) for name, loss in LOSSES.items()}
    assert asks == {
        "nonsaturating": (False, False),
        "wgan": (False, True),
        "wgan-gp": (True, False),
        "hinge": (False, False),
    }
