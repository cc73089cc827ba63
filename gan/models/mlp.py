"""The vanilla MLP GAN of the classic Fashion-MNIST tutorial.

G: z-128-256-512-1024-(C*H*W) with LeakyReLU(0.2), BatchNorm after the first layer (none
with norm='none'), tanh.
D: (C*H*W)-512-256-1 with LeakyReLU(0.2); outputs a logit. `width` scales every layer
(width=128 is the tutorial's sizes).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as sn


class MLPGenerator(nn.Module):
    def __init__(
        self, latent_dim: int, image_shape: tuple[int, int, int], width: int = 128, norm: str = "batch"
    ) -> None:
        super().__init__()
        self.image_shape = image_shape
        sizes = [width, 2 * width, 4 * width, 8 * width]
        layers: list[nn.Module] = [nn.Linear(latent_dim, sizes[0]), nn.LeakyReLU(0.2)]
        for a, b in zip(sizes, sizes[1:], strict=False):
            layers.append(nn.Linear(a, b))
            if norm == "batch":
                layers.append(nn.BatchNorm1d(b))
            layers.append(nn.LeakyReLU(0.2))
        layers += [nn.Linear(sizes[-1], math.prod(image_shape)), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(z.shape[0], *self.image_shape)


class MLPDiscriminator(nn.Module):
    def __init__(
        self, image_shape: tuple[int, int, int], width: int = 128, spectral_norm: bool = False
    ) -> None:
        super().__init__()
        wrap = sn if spectral_norm else (lambda m: m)
        self.net = nn.Sequential(
            nn.Flatten(),
            wrap(nn.Linear(math.prod(image_shape), 4 * width)),
            nn.LeakyReLU(0.2),
            wrap(nn.Linear(4 * width, 2 * width)),
            nn.LeakyReLU(0.2),
            wrap(nn.Linear(2 * width, 1)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).view(-1)
