"""Search space files: parsing, conditionals, sampling, and one-line errors (fast, no Ray)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import optuna
import pytest
import yaml

from gan.config import ConfigError, RunConfig
from pipelines.sweep.space_file import SearchSpaceError, load_space, parse_space

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _space(params, **top):
    return parse_space({"params": params, **top}, "test.yaml")


def _error(params, **top) -> str:
    with pytest.raises(SearchSpaceError) as e:
        _space(params, **top)
    message = str(e.value)
    assert "\n" not in message and message.startswith("search space test.yaml: ")
    return message


@pytest.mark.parametrize("name", ["quick", "default", "cifar10-gpu"])
def test_shipped_spaces_load_and_sample_valid_configs(name):
    space = load_space(name)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        values = space.suggest(study.ask())
        assert isinstance(space.config(values), RunConfig)


def test_conditional_parameters_exist_only_under_their_parent_choice():
    space = _space({
        "arch": {"type": "categorical", "choices": ["mlp", "dcgan"]},
        "dcgan_width": {"type": "int", "low": 8, "high": 32, "step": 8, "when": {"arch": "dcgan"}},
        "mlp_width": {"type": "categorical", "choices": [16, 32], "when": {"arch": ["mlp"]}},
        "epochs": 2,
    })
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        values = space.suggest(trial)
        seen.add(values["arch"])
        assert values["epochs"] == 2
        assert ("dcgan_width" in trial.params) == (values["arch"] == "dcgan")
        assert ("mlp_width" in trial.params) == (values["arch"] == "mlp")
    assert seen == {"mlp", "dcgan"}


def test_children_listed_before_parents_are_sampled_after_them():
    space = _space({
        "mlp_width": {"type": "categorical", "choices": [16], "when": {"arch": "mlp"}},
        "arch": {"type": "categorical", "choices": ["mlp"]},
    })
    assert [p.name for p in space.params] == ["arch", "mlp_width"]


def test_float_log_and_int_ranges_sample_inside_their_bounds():
    space = _space({
        "lr_g": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
        "n_dis": {"type": "int", "low": 1, "high": 3},
        "beta1": {"value": 0.5},
    })
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(10):
        v = space.suggest(study.ask())
        assert 1e-5 <= v["lr_g"] <= 1e-2 and 1 <= v["n_dis"] <= 3 and v["beta1"] == 0.5


def test_sweep_defaults_are_read_and_checked():
    assert _space({"epochs": 1}, sweep={"trials": 3}).sweep == {"trials": 3}
    assert "sweep.trials" in _error({"epochs": 1}, sweep={"trials": 0})
    assert "sweep.workers" in _error({"epochs": 1}, sweep={"workers": 2})


@pytest.mark.parametrize(
    ("params", "key", "problem"),
    [
        ({"lr": {"type": "float", "low": 1e-4, "high": 1e-3}}, "lr", "unknown parameter"),
        ({"lr_g": {"type": "float", "low": 1e-3, "high": 1e-3}}, "lr_g", "empty range"),
        ({"n_dis": {"type": "int", "low": 3, "high": 1}}, "n_dis", "empty range"),
        ({"lr_g": {"type": "float", "low": 0.0, "high": 1e-3}}, "lr_g", "low 0.0 is invalid"),
        ({"lr_g": {"type": "float", "low": 0.0, "high": 1e-3, "log": True}}, "lr_g", "log range"),
        ({"beta1": {"type": "float", "low": 0.5, "high": 1.5}}, "beta1", "high 1.5 is invalid"),
        ({"epochs": {"type": "float", "low": 1, "high": 3}}, "epochs", "use type int"),
        ({"lr_g": {"type": "int", "low": 1, "high": 3}}, "lr_g", "use type float"),
        ({"n_dis": {"type": "int", "low": 1.5, "high": 3}}, "n_dis", "must be an integer"),
        ({"lr_g": {"type": "float", "low": "a", "high": 1e-3}}, "lr_g", "must be a number"),
        ({"loss": {"type": "categorical", "choices": ["bce", "wgan"]}}, "loss", "'wgan' is invalid"),
        ({"loss": {"type": "categorical", "choices": []}}, "loss", "non-empty list"),
        ({"loss": {"type": "uniform"}}, "loss", "type 'uniform' is invalid"),
        ({"loss": "wgan"}, "loss", "'wgan' is invalid"),
        ({"epochs": 0}, "epochs", "must be a positive integer"),
        ({"lr_g": {"type": "float", "low": 1e-4, "high": 1e-3, "choices": [1]}}, "lr_g", "'choices' is not allowed"),
        ({"mlp_width": {"type": "categorical", "choices": [16], "when": {"arch": "mlp"}}},
         "mlp_width", "conditional on 'arch', which is not in this space"),
        ({"arch": "mlp", "mlp_width": {"type": "categorical", "choices": [16], "when": {"arch": "mlp"}}},
         "mlp_width", "which is a fixed value"),
        ({"arch": {"type": "categorical", "choices": ["mlp"]},
          "mlp_width": {"type": "categorical", "choices": [16], "when": {"arch": "gru"}}},
         "mlp_width", "not one of its choices"),
        ({"lr_g": {"type": "float", "low": 1e-4, "high": 1e-3},
          "mlp_width": {"type": "categorical", "choices": [16], "when": {"lr_g": 1e-4}}},
         "mlp_width", "only a categorical parameter can be a parent"),
    ],
)
def test_invalid_spaces_fail_with_one_line_naming_the_key(params, key, problem):
    message = _error(params)
    assert f": {key}: " in message and problem in message, message


def test_unknown_top_level_key_and_missing_params_are_errors():
    assert "space:" in _error({"epochs": 1}, space={})
    with pytest.raises(SearchSpaceError, match="params: must be a non-empty mapping"):
        parse_space({"params": {}}, "test.yaml")


def test_errors_are_config_errors_so_the_cli_exits_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"params": {"lr_g": {"type": "float", "low": 0, "high": 1}}}))
    with pytest.raises(ConfigError, match=f"search space {bad}: lr_g: "):
        load_space(bad)
    with pytest.raises(ConfigError, match="cannot be read"):
        load_space(tmp_path / "missing.yaml")
    (tmp_path / "broken.yaml").write_text("params: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_space(tmp_path / "broken.yaml")



@pytest.mark.parametrize("flag", ["trials", "concurrency", "grace_period", "workers_per_trial"])
def test_sweep_flags_below_one_are_config_errors(flag):
    from pipelines.sweep.options import SweepOptions
    from pipelines.sweep.space_file import load_space

    with pytest.raises(ConfigError, match=f"--{flag.replace('_', '-')} 0 is invalid"):
        SweepOptions(**{flag: 0}).resolved(load_space("quick"))


REPO = Path(__file__).resolve().parents[1]


def test_the_shipped_spaces_are_the_top_level_search_spaces_folder():
    from pipelines.sweep.space import SPACES_DIR

    assert SPACES_DIR == REPO / "search_spaces"
    assert {"quick.yaml", "default.yaml", "cifar10-gpu.yaml"} <= {p.name for p in SPACES_DIR.glob("*.yaml")}
    assert not (REPO / "pipelines" / "sweep" / "spaces").exists()  # one copy in the repository


def test_shipped_spaces_resolve_by_name_or_path_from_any_folder(tmp_path, monkeypatch):
    from pipelines.sweep.space import SPACES_DIR, resolve_path

    monkeypatch.chdir(REPO)  # a checkout: the path the README writes is a plain relative path
    assert resolve_path("search_spaces/quick.yaml").resolve() == SPACES_DIR / "quick.yaml"
    monkeypatch.chdir(tmp_path)  # no search_spaces/ here: the names come from the package
    assert resolve_path("quick") == SPACES_DIR / "quick.yaml" and resolve_path("quick").is_file()
    assert resolve_path("search_spaces/quick.yaml") == SPACES_DIR / "quick.yaml"
    assert resolve_path("search_spaces/none-such.yaml") == Path("search_spaces/none-such.yaml")  # named as given
    assert load_space("quick").sweep["trials"] >= 1
    own = tmp_path / "search_spaces" / "quick.yaml"  # a user's own copy, edited, wins over the shipped one
    own.parent.mkdir()
    own.write_text((SPACES_DIR / "quick.yaml").read_text().replace("trials: 10", "trials: 3"))
    assert load_space("search_spaces/quick.yaml").sweep["trials"] == 3 and load_space("quick").sweep["trials"] == 10


@pytest.mark.slow  # builds and installs a wheel
def test_an_installed_wheel_holds_the_spaces_and_sweep_finds_them(tmp_path):
    """Build the wheel (from a copy: setuptools writes build/ next to the sources), unpack it
    as site-packages, and run the installed CLI from another folder: `--space quick` and
    `--space search_spaces/quick.yaml` load (the sweep then stops at --trials 0, before
    anything is created)."""
    src = tmp_path / "src"
    for name in ("pyproject.toml", "README.md"):
        (src / name).parent.mkdir(exist_ok=True)
        shutil.copy(REPO / name, src / name)
    for name in ("gan", "pipelines", "search_spaces"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, timeout=300, capture_output=True)
    wheel = zipfile.ZipFile(next((tmp_path / "dist").glob("*.whl")))
    files = wheel.namelist()
    shipped = sorted(p.name for p in (REPO / "search_spaces").glob("*.yaml"))
    assert sorted(f.split("/", 1)[1] for f in files if f.startswith("search_spaces/")) == shipped
    assert not any(f.endswith(".yaml") and not f.startswith("search_spaces/") for f in files)
    site, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    wheel.extractall(site)
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "MLFLOW_TRACKING_URI": f"sqlite:///{elsewhere}/mlflow.db"}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=elsewhere, env=env,
                              capture_output=True, text=True, timeout=300)

    listed = cli("spaces")
    assert listed.returncode == 0 and [line.split()[0] for line in listed.stdout.splitlines()] == \
        [Path(name).stem for name in shipped], listed.stderr
    found = subprocess.run([sys.executable, "-c", "import pipelines.sweep.space as s; print(s.SPACES_DIR)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True)
    assert Path(found.stdout.strip()) == site / "search_spaces"  # the installed copy, not the checkout's
    for space in ("quick", "search_spaces/quick.yaml"):
        r = cli("sweep", "--space", space, "--trials", "0")
        assert r.returncode == 2 and "--trials 0 is invalid" in r.stderr, r.stderr  # the space itself loaded
    assert sorted(p.name for p in elsewhere.iterdir()) == []  # nothing created


def test_spaces_command_lists_name_trials_and_description(tmp_path, monkeypatch, capsys):
    from pipelines.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["spaces"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    names = [line.split()[0] for line in lines]
    assert names == sorted(names) and {"quick", "default", "cifar10-gpu"} <= set(names)
    quick = next(line for line in lines if line.startswith("quick "))
    assert "10 trials" in quick and "quick CPU sweep on mnist-5k" in quick
