"""How runs read in the MLflow UI, without a server: trial names (number + what differs),
the one fixed grid size, and the experiment link (runs table, not the GenAI view)."""

from __future__ import annotations

import numpy as np

from pipelines.sweep.naming import differing, number, trial_name
from pipelines.tracking.pictures import upscale
from pipelines.tracking.store import run_url, runs_table_url, sweep_view_key


def test_a_trial_is_named_by_its_number_and_the_values_that_differ():
    trials = [{"arch": "dcgan", "lr_g": 3e-4, "loss": "hinge", "beta1": 0.5, "dcgan_width": 64},
              {"arch": "mlp", "lr_g": 1.2e-3, "loss": "hinge", "beta1": 0.5, "mlp_width": 256}]
    keep = differing(trials)
    assert keep == ["arch", "lr_g", "dcgan_width", "mlp_width"]  # loss and beta1 are the same in both
    assert trial_name(7, trials[0], keep) == "t07 dcgan lr_g=3e-4 w=64"
    assert trial_name(12, trials[1], keep) == "t12 mlp lr_g=1.2e-3 w=256"
    assert trial_name(1, {"spectral_norm": True, "batch_size": 64}) == "t01 sn bs=64"
    assert [number(v) for v in (0.0, 0.5, 0.999, 2e-4, 12345.0)] == ["0", "0.5", "0.999", "2e-4", "1.2e4"]


def test_grids_are_upscaled_by_a_whole_factor_to_at_least_512_px():
    gray, rgb = np.zeros((242, 242), np.uint8), np.zeros((274, 274, 3), np.uint8)
    assert upscale(gray).shape == (726, 726) and upscale(rgb).shape == (548, 548, 3)
    assert upscale(np.zeros((600, 600), np.uint8)).shape == (600, 600)


def test_links_open_the_runs_table_and_a_sweep_opens_its_saved_view():
    assert run_url("http://h:5000", "3", "abc") == \
        "http://h:5000/#/experiments/3/runs/abc?workflowType=machine_learning"
    url = runs_table_url("http://h:5000", "3", "my sweep")
    assert url.startswith("http://h:5000/#/experiments/3/runs?workflowType=machine_learning&viewStateShareKey=")
    assert url.endswith(sweep_view_key("my sweep")) and sweep_view_key("a") != sweep_view_key("b")
