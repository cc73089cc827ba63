"""gan.sampling.image_grid draws torchvision's make_grid layout itself (importing
torchvision costs every trial process about 1.4 s): the same pixels, checked against
torchvision's own make_grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.utils import make_grid

from gan.sampling import image_grid


@pytest.mark.parametrize("shape,nrow", [((64, 1, 28, 28), None), ((10, 3, 32, 32), 4), ((1, 1, 8, 8), None),
                                        ((7, 3, 16, 16), 8), ((5, 1, 9, 11), 2)])
def test_the_grid_is_torchvisions_make_grid_pixel_for_pixel(shape, nrow):
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    expected = make_grid(images, nrow=nrow or max(1, int(np.sqrt(shape[0]))), padding=2, pad_value=0)
    expected_np = expected[0].numpy() if shape[1] == 1 else expected.permute(1, 2, 0).numpy()
    got = image_grid(images, nrow)
    assert got.dtype == np.uint8 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, expected_np)
