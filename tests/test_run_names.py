"""How runs read in the MLflow UI, without a server: trial names (number + the values that
set a trial apart, at most 32 characters, numbers kept by the report), the one fixed grid
size, and the experiment link (runs table, not the GenAI view)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from pipelines.sweep.naming import MAX_NAME, differing, number, number_of, trial_name
from pipelines.sweep.report import name_trials
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


def test_a_trial_name_fits_the_runs_table_with_the_values_that_most_set_it_apart():
    # The 66-character name: the number, the choices (what kind of GAN), then a number.
    values = {"lr_g": 5.5e-4, "lr_d": 3.3e-4, "beta1": 0.533, "loss": "bce", "label_smoothing": 0.0,
              "batch_size": 64, "arch": "dcgan", "dcgan_width": 16}
    assert trial_name(4, values) == "t04 bce dcgan lr_g=5.5e-4"
    # A part that would pass MAX_NAME is skipped for the next one that fits.
    long = {"loss": "hinge", "lr_g": 2.1e-4, "lr_d": 3.3e-4, "beta1": 0.5}
    assert trial_name(4, long) == "t04 hinge lr_g=2.1e-4 b1=0.5"
    assert trial_name(123, {"loss": "hinge"}) == "t123 hinge" and trial_name(3, {}) == "t03"


@pytest.mark.parametrize("space_name", ["quick", "default", "cifar10-gpu"])
def test_every_shipped_space_gives_names_of_at_most_32_characters_with_two_values_or_more(space_name):
    import optuna

    from pipelines.sweep.space_file import load_space

    space = load_space(space_name)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    samples = []
    for _ in range(60):
        trial = study.ask()
        values = space.suggest(trial)
        samples.append({p.name: values[p.name] for p in space.params if p.name in values})
        study.tell(trial, 0.0)
    keep = differing(samples)
    for i, values in enumerate(samples, 1):
        for name in (trial_name(i, values), trial_name(i, values, keep), trial_name(100 + i, values, keep)):
            assert len(name) <= MAX_NAME and len(name.split()) >= 3, name


def _run(run_id, name, start, **params):
    return SimpleNamespace(info=SimpleNamespace(run_id=run_id, run_name=name, start_time=start),
                           data=SimpleNamespace(params={k: str(v) for k, v in params.items()}))


class _Client:
    def __init__(self, runs):
        self.runs = {r.info.run_id: r for r in runs}

    def update_run(self, run_id, name):
        self.runs[run_id].info.run_name = name

    def get_run(self, run_id):
        return self.runs[run_id]


def _space():
    from pipelines.sweep.space_file import parse_space

    return parse_space({"params": {"loss": {"type": "categorical", "choices": ["bce", "hinge"]},
                                   "lr_g": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}})


def test_the_report_keeps_the_numbers_the_console_printed_and_shows_only_what_differs():
    runs = [_run("a", "t02 hinge lr_g=2e-3", 10, loss="hinge", lr_g=0.002),
            _run("b", "t01 hinge lr_g=1e-3", 20, loss="hinge", lr_g=0.001)]
    renamed = name_trials(_Client(runs), runs, _space())
    assert [r.info.run_name for r in renamed] == ["t02 lr_g=2e-3", "t01 lr_g=1e-3"]  # loss is the same


def test_the_report_numbers_trials_in_start_order_when_two_took_the_same_number():
    runs = [_run("b", "t01 hinge lr_g=2e-3", 10, loss="hinge", lr_g=0.002),
            _run("a", "t01 bce lr_g=1e-3", 10, loss="bce", lr_g=0.001),  # started in the same ms
            _run("c", "t02 bce lr_g=3e-3", 30, loss="bce", lr_g=0.003)]
    renamed = name_trials(_Client(runs), runs, _space())
    assert [r.info.run_name for r in renamed] == ["t01 bce lr_g=1e-3", "t02 hinge lr_g=2e-3", "t03 bce lr_g=3e-3"]
    assert number_of("t07 dcgan") == 7 and number_of("t123") == 123 and number_of("my run") is None


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


def test_the_console_names_a_trial_as_mlflow_does_and_falls_back_to_the_tune_id():
    from pipelines.sweep.naming import TUNE_NAME_KEY
    from pipelines.sweep.tuning import shown_name

    reported = SimpleNamespace(trial_id="def7caf8", last_result={TUNE_NAME_KEY: "t04 bce dcgan lr_g=5.5e-4"})
    assert shown_name(reported) == "t04 bce dcgan lr_g=5.5e-4"
    assert shown_name(SimpleNamespace(trial_id="def7caf8", last_result=None)) == "trial def7caf8"  # never reported
