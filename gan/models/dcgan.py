"""DCGAN (Radford et al. 2015) for square images of 28 or 4*2^k pixels.

G: z -> (base, s0, s0) by a transposed conv, then k stride-2 transposed convs
(BatchNorm + ReLU; ReLU alone with norm='none') halving the channels, tanh on the
last. s0 is 7 for 28x28 and 4 otherwise. D mirrors it with stride-2 convs and
LeakyReLU(0.2), BatchNorm on all but the first (or spectral norm instead of
BatchNorm), and a final conv to one logit.
`width` is the channel count next to the image; it doubles per level inward.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as sn


def dcgan_levels(size: int) -> tuple[int, int] | None:
    """(s0, k) with size = s0 * 2**k, or None for an unsupported size."""
    if size == 28:
        return 7, 2
    k = 0
    while size > 4 and size % 2 == 0:
        size //= 2
        k += 1
    return (4, k) if size == 4 and k >= 1 else None


class DCGANGenerator(nn.Module):
    def __init__(
        self, latent_dim: int, image_shape: tuple[int, int, int], width: int = 64, norm: str = "batch"
    ) -> None:
        super().__init__()
        channels, size, _ = image_shape
        levels = dcgan_levels(size)
        if levels is None:
            raise ValueError(f"DCGAN does not support {size}x{size} images")
        s0, k = levels
        ch = [width * 2 ** (k - 1 - i) for i in range(k)]  # e.g. k=3: 4w, 2w, w
        batch = norm == "batch"

        def block(a: int, b: int, kernel: int, stride: int, padding: int) -> list[nn.Module]:
            # BatchNorm's shift makes a conv bias redundant; without it the bias is needed.
            bn = [nn.BatchNorm2d(b)] if batch else []
            return [nn.ConvTranspose2d(a, b, kernel, stride, padding, bias=not batch), *bn, nn.ReLU(True)]

        layers = block(latent_dim, ch[0], s0, 1, 0)
        for a, b in zip(ch, ch[1:], strict=False):
            layers += block(a, b, 4, 2, 1)
        layers += [nn.ConvTranspose2d(ch[-1], channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.apply(dcgan_init)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.view(z.shape[0], -1, 1, 1))


class DCGANDiscriminator(nn.Module):
    def __init__(
        self, image_shape: tuple[int, int, int], width: int = 64, spectral_norm: bool = False
    ) -> None:
        super().__init__()
        channels, size, _ = image_shape
        levels = dcgan_levels(size)
        if levels is None:
            raise ValueError(f"DCGAN does not support {size}x{size} images")
        s0, k = levels
        wrap = sn if spectral_norm else (lambda m: m)
        ch = [width * 2**i for i in range(k)]  # e.g. k=3: w, 2w, 4w
        layers: list[nn.Module] = [wrap(nn.Conv2d(channels, ch[0], 4, 2, 1)), nn.LeakyReLU(0.2, True)]
        for a, b in zip(ch, ch[1:], strict=False):
            layers.append(wrap(nn.Conv2d(a, b, 4, 2, 1, bias=spectral_norm)))
            if not spectral_norm:
                layers.append(nn.BatchNorm2d(b))
            layers.append(nn.LeakyReLU(0.2, True))
        layers.append(wrap(nn.Conv2d(ch[-1], 1, s0, 1, 0)))
        self.net = nn.Sequential(*layers)
        if not spectral_norm:
            self.apply(dcgan_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).view(-1)


def dcgan_init(m: nn.Module) -> None:
    """The DCGAN paper's init: N(0, 0.02) conv weights, N(1, 0.02) BatchNorm scales."""
    if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)
