"""Every architecture maps z to images of the dataset's shape and images to one logit."""

from __future__ import annotations

import pytest
import torch

from gan.config import ConfigError, make_config
from gan.models import build_models


@pytest.mark.parametrize("arch", ["mlp", "dcgan"])
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 64, 64)])
@pytest.mark.parametrize("spectral_norm", [False, True])
def test_shapes(arch, shape, spectral_norm):
    cfg = make_config({"arch": arch, "latent_dim": 16, "dcgan_width": 8, "mlp_width": 8,
                       "spectral_norm": spectral_norm})
    G, D = build_models(cfg, shape)
    x = G(torch.randn(3, 16))
    assert x.shape == (3, *shape)
    assert D(x).shape == (3,)


@pytest.mark.parametrize("arch", ["mlp", "dcgan"])
@pytest.mark.parametrize("g_norm", ["batch", "none"])
def test_eval_mode_generator_is_a_function_of_z_alone_and_changes_nothing(arch, g_norm):
    # what sampling and scoring rely on: one image does not depend on the rest of its
    # batch (BatchNorm uses running statistics) and a forward writes no buffer
    cfg = make_config({"arch": arch, "latent_dim": 16, "dcgan_width": 8, "mlp_width": 8, "g_norm": g_norm})
    G, _ = build_models(cfg, (1, 28, 28))
    G.train()(torch.randn(8, 16))  # running statistics away from their init
    G.eval()
    state = {k: v.clone() for k, v in G.state_dict().items()}
    z = torch.randn(4, 16)
    with torch.no_grad():
        assert torch.allclose(G(z)[1:2], G(z[1:2]), atol=1e-6)
    assert all(torch.equal(v, G.state_dict()[k]) for k, v in state.items())


@pytest.mark.parametrize("arch", ["mlp", "dcgan"])
def test_the_same_seed_builds_the_same_models(arch):
    cfg = make_config({"arch": arch, "latent_dim": 16, "dcgan_width": 8, "mlp_width": 8})
    built = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        built.append([m.state_dict() for m in build_models(cfg, (1, 28, 28))])

    def same(x: list, y: list) -> bool:
        return all(torch.equal(a[k], b[k]) for a, b in zip(x, y, strict=True) for k in a)

    assert same(built[0], built[1]) and not same(built[0], built[2])


def test_dcgan_follows_the_papers_init():
    G, D = build_models(make_config({"arch": "dcgan"}), (1, 28, 28))
    for m in [*G.modules(), *D.modules()]:
        if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d):
            assert m.weight.std().item() == pytest.approx(0.02, rel=0.1)
        if isinstance(m, torch.nn.BatchNorm2d):
            assert m.weight.mean().item() == pytest.approx(1.0, abs=0.01) and not m.bias.any()


def test_mlp_default_matches_the_classic_tutorial_sizes():
    G, D = build_models(make_config({"arch": "mlp"}), (1, 28, 28))
    g_sizes = [m.out_features for m in G.modules() if isinstance(m, torch.nn.Linear)]
    d_sizes = [m.out_features for m in D.modules() if isinstance(m, torch.nn.Linear)]
    assert g_sizes == [128, 256, 512, 1024, 784]
    assert d_sizes == [512, 256, 1]


def test_dcgan_rejects_unsupported_sizes_with_a_config_error():
    with pytest.raises(ConfigError, match="invalid for arch='dcgan'"):
        build_models(make_config({"arch": "dcgan"}), (3, 30, 30))


def test_spectral_norm_dcgan_discriminator_has_no_batchnorm():
    _, D = build_models(make_config({"spectral_norm": True}), (1, 28, 28))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in D.modules())
