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
    assert x.min() >= -1 and x.max() <= 1
    assert D(x).shape == (3,)


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
