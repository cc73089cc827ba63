"""Every flag of every command, given a bad value: one line naming it, exit 2, and nothing
created (no store, no artifacts folder, no Ray folder). The flags are read from the
parser itself, so a new flag fails this test until it gets a bad value here, or is
listed as taking any value."""

from __future__ import annotations

import argparse

import pytest

from pipelines.cli import main
from pipelines.cli.parser import build_parser

BAD: dict[str, dict[str, list[str]]] = {
    "train": {
        "--config": ["missing.yaml"], "--dataset": ["imagenet"], "--data-dir": [""], "--image-size": ["3"],
        "--arch": ["vit"], "--latent-dim": ["0"], "--dcgan-width": ["-1"], "--mlp-width": ["x"],
        "--g-norm": ["layer"], "--epochs": ["0"], "--batch-size": ["-64"], "--lr-g": ["-0.1"], "--lr-d": ["nan"],
        "--beta1": ["1.0"], "--beta2": ["-0.5"], "--label-smoothing": ["0.5"], "--loss": ["wgan"],
        "--n-dis": ["0"], "--ema": ["1.5"], "--seed": ["-1"], "--eval-every": ["0"], "--checkpoint-every": ["0"],
        "--eval-budget": ["1.5", "-0.1"],
        "--keep-checkpoints": ["-1"], "--log-every": ["0"], "--health-d-floor": ["0"],
        "--health-g-ceiling": ["-5"], "--health-window": ["0"], "--health-g-limit": ["inf"],
        "--backbone": ["vgg"], "--eval-samples": ["5"], "--device": ["tpu"], "--experiment": [""],
        "--resume": ["a b"], "--workers": ["0"], "--cpus-per-worker": ["0"], "--ray-address": ["nohost"],
        "--max-failures": ["-2"], "--ray-storage": ["a-file/sub"],
    },
    "sweep": {
        "--space": ["missing.yaml"], "--trials": ["0"], "--concurrency": ["0"], "--scheduler": ["hyperband"],
        "--grace-period": ["0"], "--searcher": ["cmaes"], "--experiment": [" "], "--seed": ["x"],
        "--name": ["../up"], "--resume": ["a'b"], "--workers-per-trial": ["0"], "--cpus-per-trial": ["0"],
        "--gpus-per-trial": ["-1"], "--ray-address": ["127.0.0.1:1"], "--ray-storage": ["a-file/sub", "a-file"],
    },
    "promote": {
        "--sweep": ["x' or '1'='1"], "--experiment": [""], "--metric": ["nope"], "--min-epochs": ["-1"],
        "--image-size": ["x"], "--backbone": ["vgg"], "--eval-samples": ["x"], "--dataset": ["nope"],
        "--model-name": [""],
    },
    "generate": {"--model": ["models:/missing@champion"], "--num-images": ["0"], "--seed": ["x"], "--out": [""]},
    "evaluate": {"--model": ["models:/missing@champion"], "--run-id": ["nope"], "--dataset": ["imagenet"],
                 "--data-dir": ["x"], "--backbone": ["vgg"], "--num-samples": ["5"], "--seed": ["x"]},
}
# Flags whose every value is valid (switches, names, places): nothing to reject.
ANY = {
    "train": {"--spectral-norm", "--health-guard", "--amp", "--sync-bn", "--run-name", "--gpu"},
    "promote": {"--force"},
    "generate": {"--out-dir"},
    "evaluate": {"--log"},
}
# Some bad values are only bad together with another flag (evaluate needs a model; train
# uses --ray-storage only with Ray Train workers).
CONTEXT = {"train": {"--ray-storage": ["--workers", "2"]},
           "evaluate": {"--dataset": ["--run-id", "nope"], "--data-dir": ["--run-id", "nope"],
                        "--backbone": ["--run-id", "nope"], "--num-samples": ["--run-id", "nope"],
                        "--seed": ["--run-id", "nope"]}}


def _flags() -> dict[str, set[str]]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: {next(o for o in a.option_strings if o.startswith("--"))
                   for a in sp._actions if a.option_strings and a.dest != "help"}
            for name, sp in sub.choices.items()}


def test_every_flag_has_a_bad_value_or_is_declared_free():
    for command, flags in _flags().items():
        covered = set(BAD.get(command, {})) | ANY.get(command, set())
        assert flags == covered, (command, sorted(flags - covered), sorted(covered - flags))


CASES = [(c, f, v) for c, flags in BAD.items() for f, values in flags.items() for v in values]


@pytest.mark.parametrize(("command", "flag", "value"), CASES, ids=[f"{c} {f}={v!r}" for c, f, v in CASES])
def test_a_bad_value_is_one_line_exit_2_and_creates_nothing(command, flag, value, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("")  # a folder cannot be made in a file, even by root
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    args = [command, *CONTEXT.get(command, {}).get(flag, []), flag, value]
    if command == "promote" and flag not in ("--sweep", "--experiment"):
        args += ["--experiment", "none-such"]
    rejected_by_argparse = _argparse_rejects(command, flag, value)
    capsys.readouterr()
    with pytest.raises(SystemExit) if rejected_by_argparse else _nothing():
        rc = main(args)
        assert rc == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) <= 400, err
    assert not (tmp_path / "mlartifacts").exists() and not (tmp_path / "ray_results").exists()
    assert not (tmp_path / "mlflow.db").exists()  # no store is created, not even an empty one


def _argparse_rejects(command: str, flag: str, value: str) -> bool:
    parser = build_parser()
    try:
        parser.parse_args([command, *CONTEXT.get(command, {}).get(flag, []), flag, value])
    except SystemExit as e:
        assert e.code == 2
        return True
    return False


class _nothing:  # noqa: N801 - a no-op context manager
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return False


@pytest.mark.parametrize("args", [["sweep"], ["train", "--workers", "2"]], ids=["sweep", "train --workers 2"])
def test_a_ray_storage_that_cannot_be_a_folder_is_named_before_anything_is_created(args, tmp_path, monkeypatch,
                                                                                    capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    (tmp_path / "a-file").write_text("")
    assert main([*args, "--ray-storage", "a-file/ray"]) == 2
    err = capsys.readouterr().err
    assert "--ray-storage a-file/ray is invalid" in err and f"{tmp_path / 'a-file'} is a file" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # no store, no Ray folder
