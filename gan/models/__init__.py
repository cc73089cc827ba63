"""Model families by name: `build_models(cfg, image_shape)` -> (G, D).

A new family is a new file with a generator and a discriminator class, plus one
entry in FAMILIES. D returns one logit per image; G maps [N, latent_dim] to images
in [-1, 1].
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from gan.config import ConfigError, RunConfig
from gan.models.dcgan import DCGANDiscriminator, DCGANGenerator, dcgan_levels
from gan.models.mlp import MLPDiscriminator, MLPGenerator

Shape = tuple[int, int, int]


def _mlp(cfg: RunConfig, shape: Shape) -> tuple[nn.Module, nn.Module]:
    return (
        MLPGenerator(cfg.latent_dim, shape, cfg.mlp_width, cfg.g_norm),
        MLPDiscriminator(shape, cfg.mlp_width, cfg.spectral_norm),
    )


def _dcgan(cfg: RunConfig, shape: Shape) -> tuple[nn.Module, nn.Module]:
    if shape[1] != shape[2] or dcgan_levels(shape[1]) is None:
        raise ConfigError(
            f"image_size={shape[1]}x{shape[2]} is invalid for arch='dcgan': "
            "must be square, 28 or 4*2^k (8, 16, 32, 64, 128, 256)"
        )
    return (
        DCGANGenerator(cfg.latent_dim, shape, cfg.dcgan_width, cfg.g_norm),
        DCGANDiscriminator(shape, cfg.dcgan_width, cfg.spectral_norm),
    )


FAMILIES: dict[str, Callable[[RunConfig, Shape], tuple[nn.Module, nn.Module]]] = {
    "mlp": _mlp,
    "dcgan": _dcgan,
}


def build_models(cfg: RunConfig, image_shape: Shape) -> tuple[nn.Module, nn.Module]:
    """Build (G, D) for cfg.arch at image_shape (C, H, W)."""
    return FAMILIES[cfg.arch](cfg, image_shape)
