import pytest
import torch

from training.config import ModelConfig
from training.networks import Discriminator, Generator, build_networks


@pytest.mark.parametrize("size", [28, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("d_norm", ["batch", "layer", "spectral", "none"])
def test_shapes_for_each_size_and_channel_count(size, channels, d_norm):
    cfg = ModelConfig(latent_dim=8, g_width=4, d_width=4, image_size=size, channels=channels, d_norm=d_norm)
    g, d = build_networks(cfg)
    images = g(torch.randn(3, 8))
    assert images.shape == (3, channels, size, size)
    assert images.min() >= -1 and images.max() <= 1
    assert d(images).shape == (3,)


def test_the_recipe_networks_have_the_documented_size():
    g, d = build_networks(ModelConfig(image_size=28, channels=1, d_norm="batch"))
    assert sum(p.numel() for p in g.parameters()) == 771_969  # ~772k, as in the design note's recipe
    assert sum(p.numel() for p in d.parameters()) == 138_625  # ~139k


def test_conditional_networks_use_the_label():
    torch.manual_seed(0)
    cfg = ModelConfig(latent_dim=8, g_width=4, d_width=4, image_size=28, channels=1, d_norm="batch",
                      conditional=True, num_classes=5)  # fmt: skip
    g, d = Generator(cfg).eval(), Discriminator(cfg).eval()
    z = torch.randn(1, 8).repeat(2, 1)
    images = g(z, torch.tensor([0, 4]))
    assert not torch.allclose(images[0], images[1])  # same z, other class, other image
    scores = d(images[:1].repeat(2, 1, 1, 1), torch.tensor([0, 4]))
    assert scores[0] != scores[1]
    with pytest.raises(ValueError, match="class-conditional: pass labels"):
        g(z)


def test_unconditional_ignores_class_count():
    cfg = ModelConfig(latent_dim=8, g_width=4, d_width=4, image_size=28, channels=1, d_norm="batch", num_classes=5)
    assert Generator(cfg).num_classes == 0
