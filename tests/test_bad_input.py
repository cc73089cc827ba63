"""Every flag of every command, given a bad value: one line naming it, exit 2, and nothing
created (no store, no artifacts folder, no Ray folder). The flags are read from the
parser itself, so a new flag fails this test until it gets a bad value here, or is
listed as taking any value."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.cli import main
from pipelines.cli.parser import build_parser

BAD: dict[str, dict[str, list[str]]] = {
    "train": {
        "--config": ["missing.yaml"], "--dataset": ["imagenet"], "--data-dir": [""], "--image-size": ["3"],
        "--data-mode": ["disk"], "--data-budget-mb": ["-1", "x"],
        "--arch": ["vit"], "--latent-dim": ["0"], "--dcgan-width": ["-1"], "--mlp-width": ["x"],
        "--g-norm": ["layer"], "--epochs": ["0"], "--batch-size": ["-64"], "--lr-g": ["-0.1"], "--lr-d": ["nan"],
        "--beta1": ["1.0"], "--beta2": ["-0.5"], "--label-smoothing": ["0.5"], "--loss": ["wgan"],
        "--n-dis": ["0"], "--ema": ["1.5"], "--seed": ["-1"], "--eval-every": ["0"], "--checkpoint-every": ["0"],
        "--eval-budget": ["1.5", "-0.1"], "--eval-at": ["3,2", "0", "2,,4"],
        "--keep-checkpoints": ["-1"], "--log-every": ["0"], "--health-d-floor": ["0"],
        "--health-g-ceiling": ["-5"], "--health-window": ["0"], "--health-g-limit": ["inf"],
        "--backbone": ["vgg"], "--eval-samples": ["5"], "--device": ["tpu"], "--experiment": [""],
        "--resume": ["a b"], "--workers": ["0"], "--cpus-per-worker": ["0"], "--ray-address": ["nohost"],
        "--max-failures": ["-2"], "--ray-storage": ["a-file/sub"],
        "--from": ["a b", "nope", "models:/", "models:/gan-generator"],
    },
    "sweep": {
        "--space": ["missing.yaml"], "--trials": ["0"], "--concurrency": ["0"], "--scheduler": ["hyperband"],
        "--grace-period": ["0"], "--perturb-every": ["0", "x"], "--searcher": ["cmaes"], "--experiment": [" "],
        "--seed": ["x"],
        "--name": ["../up"], "--resume": ["a'b"], "--warm-start": ["a'b"], "--workers-per-trial": ["0"],
        "--cpus-per-trial": ["0"],
        "--gpus-per-trial": ["-1"], "--ray-address": ["127.0.0.1:1"], "--ray-storage": ["a-file/sub", "a-file"],
    },
    "promote": {
        "--sweep": ["x' or '1'='1"], "--experiment": [""], "--metric": ["nope"], "--min-epochs": ["-1"],
        "--image-size": ["x"], "--backbone": ["vgg"], "--eval-samples": ["x"], "--dataset": ["nope"],
        "--model-name": [""], "--max-copy": ["1.5", "-0.1", "nan", "x"],
    },
    "confirm": {"--sweep": ["x' or '1'='1", "nope"], "--top": ["0"], "--seeds": ["0", "x"],
                "--ray-address": ["127.0.0.1:1"]},
    "generate": {"--model": ["models:/missing@champion"], "--num-images": ["0"], "--seed": ["x"], "--out": [""]},
    "evaluate": {"--model": ["models:/missing@champion"], "--run-id": ["nope"], "--dataset": ["imagenet"],
                 "--data-dir": ["x"], "--backbone": ["vgg"], "--num-samples": ["5"], "--seed": ["x"]},
    # tests/test_prepared.py checks that these create nothing at all (no data dir either)
    "data prepare": {"--image-size": ["3", "x"], "--data-dir": ["", "a-file/sub"], "--out": ["", "a-file"],
                     "--ray-address": ["127.0.0.1:1", "nohost"]},
}
# Flags whose every value is valid (switches, names, places): nothing to reject.
ANY = {
    "train": {"--spectral-norm", "--health-guard", "--amp", "--sync-bn", "--run-name", "--gpu",
              "--warm"},  # a switch: bad only in combination (MESSAGES)
    "promote": {"--force"},
    "generate": {"--out-dir"},
    "evaluate": {"--log"},
    "data prepare": {"--skip-bad", "--parallel"},
}
# Some bad values are only bad together with another flag (evaluate needs a model; train
# uses --ray-storage only with Ray Train workers).
CONTEXT = {"train": {"--ray-storage": ["--workers", "2"]},
           "confirm": {f: ["--sweep", "s"] for f in ("--top", "--seeds", "--ray-address")},
           "evaluate": {"--dataset": ["--run-id", "nope"], "--data-dir": ["--run-id", "nope"],
                        "--backbone": ["--run-id", "nope"], "--num-samples": ["--run-id", "nope"],
                        "--seed": ["--run-id", "nope"]},
           "data prepare": {**{f: ["mnist-5k"] for f in ("--image-size", "--data-dir", "--out")},
                            "--ray-address": ["mnist-5k", "--parallel"]}}


def _flags(parser: argparse.ArgumentParser | None = None, prefix: str = "") -> dict[str, set[str]]:
    """Each command's flags; a command with actions of its own (`data prepare`) as 'data prepare'."""
    parser = parser or build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    flags = {}
    for name, sp in sub.choices.items():
        if any(isinstance(a, argparse._SubParsersAction) for a in sp._actions):
            flags.update(_flags(sp, f"{prefix}{name} "))
        else:
            flags[prefix + name] = {next(o for o in a.option_strings if o.startswith("--"))
                                    for a in sp._actions if a.option_strings and a.dest != "help"}
    return flags


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
    args = [*command.split(), *CONTEXT.get(command, {}).get(flag, []), flag, value]
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
        parser.parse_args([*command.split(), *CONTEXT.get(command, {}).get(flag, []), flag, value])
    except SystemExit as e:
        assert e.code == 2
        return True
    return False


class _nothing:  # noqa: N801 - a no-op context manager
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return False


@pytest.mark.parametrize("place", ["a-file/ray", "/proc/gan-pipelines-x", "/sys/gan-pipelines-x"])
@pytest.mark.parametrize("args", [["sweep"], ["train", "--workers", "2"]], ids=["sweep", "train --workers 2"])
def test_a_ray_storage_that_cannot_be_a_folder_is_named_before_anything_is_created(args, place, tmp_path,
                                                                                    monkeypatch, capsys):
    # /proc, /sys: nothing can be made there, yet os.access says yes to root: tried, not asked
    if place.startswith("/") and not Path(place).parent.is_dir():
        pytest.skip(f"no {Path(place).parent} here")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the default store: ./mlflow.db
    (tmp_path / "a-file").write_text("")
    assert main([*args, "--ray-storage", place]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--ray-storage {place} is invalid" in err, err
    assert (f"{tmp_path / 'a-file'} is a file" if place == "a-file/ray" else "cannot be made or written in") in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # no store, no mlruns, no Ray folder
    assert not Path(place).exists()


# --------------------------------------------------------------------------- the message


# What the line says, not only that there is one: the field, the value given and what is
# allowed (the config's own validation and argparse's).
MESSAGES = [
    (["--dataset", "imagenet"], "dataset='imagenet' is invalid"),
    (["--arch", "resnet"], "arch='resnet' is invalid"),
    (["--lr-g", "0"], "lr_g=0.0 is invalid"),
    (["--lr-d", "-0.1"], "lr_d=-0.1 is invalid"),
    (["--label-smoothing", "0.5"], "label_smoothing=0.5 is invalid"),
    (["--beta1", "1"], "beta1=1.0 is invalid"),
    (["--beta2", "1.5"], "beta2=1.5 is invalid"),
    (["--batch-size", "6000"], "batch_size=6000 is invalid"),
    (["--lr-g", "fast"], "argument --lr-g: invalid float value"),
    (["--config", "/nonexistent/c.yaml"], "cannot be read"),
    (["--warm"], "--warm needs --from RUN_ID|models:/..."),
    (["--warm", "--resume"], "--warm is invalid with --resume"),
    (["--from", "abc", "--config", "c.yaml"], "--from abc is invalid with --config"),
    (["--from", "abc", "--resume", "abc"], "--from is invalid with --resume"),
    (["--from", "runs:/abc/generator"], "give a run id, or models:/<model_id>"),
    (["--from", "abc"], "--from abc: no tracking store at"),
]


@pytest.mark.parametrize(("flags", "message"), MESSAGES, ids=[" ".join(f) for f, _ in MESSAGES])
def test_the_line_names_the_field_its_value_and_what_is_allowed(flags, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    assert _exit_code(["train", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "mlflow.db").exists()


def _exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse exits for flag-type errors
        return int(e.code or 0)


# --------------------------------------------------------------------------- at the door


def _bomb(tmp_path: Path) -> list[str]:
    f = tmp_path / "bomb.yaml"
    # nine levels of nine aliases: 9^9 values if it were expanded
    f.write_text("a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefghi", "bcdefghij", strict=True)))
    return ["train", "--config", str(f)]


def _png_bomb(tmp_path: Path) -> list[str]:
    from PIL import Image

    folder = tmp_path / "bombs"
    folder.mkdir()
    Image.new("1", (12000, 12000)).save(folder / "huge.png")  # 144 Mpx in a few kB
    return ["train", "--dataset", f"folder:{folder}", "--backbone", "inception"]


def _folder(tmp_path: Path, kind: str) -> list[str]:
    from PIL import Image

    folder = tmp_path / kind
    folder.mkdir()
    if kind == "junk":
        (folder / "x.jpg").write_text("not a jpeg")
    elif kind == "faces":  # images without labels cannot train the classifier backbone
        for i in range(70):
            Image.new("RGB", (32, 32), (i, 2 * i, 3 * i)).save(folder / f"{i}.png")
    return ["train", "--dataset", f"folder:{folder}"]


def _unwritable_store(tmp_path: Path) -> list[str]:
    (tmp_path / "a-file").write_text("x")
    return ["train"]


_STORE = {"MLFLOW_TRACKING_URI": "sqlite:///{tmp}/store/mlflow.db"}  # a store the case made in tmp/store
DOOR = {
    "dead tracking server": (["train"], {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}, "does not answer"),
    "unknown tracking scheme": (["train"], {"MLFLOW_TRACKING_URI": "foo://x"}, "scheme 'foo' is not supported"),
    "credentials never printed": (["train"], {"MLFLOW_TRACKING_URI": "http://me:s3cret@127.0.0.1:9"}, "me:***@"),
    "unwritable store": (_unwritable_store, {"MLFLOW_TRACKING_URI": "sqlite:///{tmp}/a-file/mlflow.db"},
                         "is not writable"),
    "empty experiment": (["train", "--experiment", ""], {}, "--experiment"),
    "quotes in a sweep name": (["promote", "--sweep", "x' or '1'='1"], {}, "--sweep"),
    "ray address with one worker": (["train", "--ray-address", "127.0.0.1:1"], {}, "--workers 1"),
    "unreachable ray address for a sweep": (["sweep", "--ray-address", "127.0.0.1:1"], {}, "nothing answers"),
    "yaml alias bomb": (_bomb, {}, "YAML aliases"),
    "decompression bomb in a folder": (_png_bomb, {}, "too large to decode safely"),
    "empty image folder": (lambda t: _folder(t, "empty"), {}, "holds no images"),
    "a file that is no image": (lambda t: _folder(t, "junk"), {}, "is not a readable image"),
    "unlabelled images for the classifier": (lambda t: _folder(t, "faces"), {}, "--backbone inception"),
    "bad search space": (["sweep", "--space", "nope.yaml"], {}, "cannot be read"),
    # a local Ray cannot grow: a run or a trial bigger than this machine would wait forever
    "a run bigger than the local Ray": (["train", "--workers", "2", "--cpus-per-worker", "4096"], {},
                                        "needs 8192 CPUs but the local Ray this command starts has"),
    "a trial bigger than the local Ray": (["sweep", "--workers-per-trial", "2", "--cpus-per-trial", "4096"], {},
                                          "needs 8192 CPUs but the local Ray this command starts has"),
    # population-based training (`--scheduler pbt|pb2`): quick has 4 epochs
    "perturbation at the last epoch": (["sweep", "--scheduler", "pbt", "--perturb-every", "4"], {},
                                       "--perturb-every 4 is invalid: must be from 1 to 3"),
    "perturbation without a population": (["sweep", "--perturb-every", "2"], {},
                                          "--perturb-every is invalid with --scheduler asha"),
    "a population of one": (["sweep", "--scheduler", "pb2", "--trials", "1"], {}, "at least 2 members"),
    "a population with nothing to mutate": (lambda t: _space(t, {"arch": {"type": "categorical",
                                                                          "choices": ["mlp", "dcgan"]}}),
                                            {}, "there is nothing to mutate"),
    "a population whose epochs are searched": (lambda t: _space(t, {"epochs": {"type": "int", "low": 2, "high": 4},
                                                                    "lr_g": {"type": "float", "low": 1e-4,
                                                                             "high": 1e-3}}),
                                               {}, "epochs is searched"),
    # Extending or warm-starting from a sweep (tests/sweep_records.py writes one in ms; the
    # store is in tmp/store, so the checks below see whether anything else was made)
    "extend a finished sweep to no more trials": (lambda t: _swept(t, "--resume", "base", "--trials", "2"),
                                                  _STORE, "sweep base already has 2 trials"),
    "a finished sweep resumed without --trials": (lambda t: _swept(t, "--resume", "base"), _STORE,
                                                  "extend it with --resume base --trials N"),
    "extend a sweep whose driver runs": (lambda t: _swept(t, "--resume", "live", "--trials", "4"), _STORE,
                                         "the sweep is running"),
    "extend an interrupted sweep": (lambda t: _swept(t, "--resume", "cut", "--trials", "4"), _STORE,
                                    "continue it with --resume cut first"),
    "warm start with --resume": (lambda t: _swept(t, "--resume", "base", "--warm-start", "base"), _STORE,
                                 "--warm-start base is invalid with --resume"),
    "warm start without a store": (["sweep", "--warm-start", "base"], {}, "no tracking store"),
    "warm start from an unknown sweep": (lambda t: _swept(t, "--warm-start", "nope"), _STORE,
                                         "no sweep named 'nope'"),
    "warm start from a sweep with no scored trials": (lambda t: _swept(t, "--warm-start", "failed"), _STORE,
                                                      "sweep failed has no scored trials"),
    "warm start from trials outside the space": (lambda t: _swept(t, "--warm-start", "base", lr_g_high=1e-3),
                                                 _STORE, "trial t02 lr_g=0.0015: lr_g=0.0015 is outside this space"),
    # train --from a run of a store in tmp/store (tests/test_train_from.py: every bad source
    # against a store with a real source run, and that no run is created in it)
    "train --from an unknown run": (lambda t: _from(t, "0123456789abcdef"), _STORE, "no such run in this store"),
    "train --from a run that is no training run": (lambda t: _from(t, None), _STORE, "has no config.yaml"),
    "train --from a model uri that names nothing": (lambda t: _from(t, "models:/gan-generator@champion"),
                                                    _STORE, "--from models:/gan-generator@champion: no such model"),
    # confirm a sweep of a store in tmp/store (tests/test_confirm.py runs the real thing)
    "confirm an unknown sweep": (lambda t: _confirm(t, "nope"), _STORE, "no sweep named 'nope'"),
    "confirm a sweep with no finished trials": (lambda t: _confirm(t, "failed"), _STORE,
                                                "--sweep failed: no finished trial with a best_fid"),
    "confirm a sweep whose driver runs": (lambda t: _confirm(t, "live"), _STORE, "the sweep is running"),
}


def _space(tmp_path: Path, params: dict) -> list[str]:
    """`sweep --scheduler pbt` over a space of `params` (plus a fixed dataset)."""
    import yaml

    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"params": {"dataset": "mnist-5k", "epochs": 4, **params}}))
    return ["sweep", "--space", str(path), "--scheduler", "pbt"]


def _confirm(tmp_path: Path, sweep: str) -> list[str]:
    _swept(tmp_path)
    return ["confirm", "--sweep", sweep]


def _from(tmp_path: Path, ref: str | None) -> list[str]:
    """`train --from REF` against a store in tmp/store holding one bare run (no config.yaml);
    REF None: that run."""
    from conftest import store_with_run

    _, run_id = store_with_run(tmp_path / "store", "other")
    return ["train", "--from", ref or run_id, "--warm"]


def _swept(tmp_path: Path, *flags: str, lr_g_high: float = 2e-3) -> list[str]:
    """`sweep FLAGS` against a store holding finished sweep base (2 scored trials), failed
    (none scored), live (its driver alive) and cut (interrupted)."""
    from sweep_records import recorded_sweep, space_file

    recorded_sweep(tmp_path, "base", [(3e-4, 40.0), (1.5e-3, 30.0)])
    recorded_sweep(tmp_path, "failed", [(3e-4, None)])
    recorded_sweep(tmp_path, "live", [(3e-4, 40.0)], status="RUNNING", driver_alive=True)
    recorded_sweep(tmp_path, "cut", [(3e-4, 40.0)], status="KILLED")
    space = space_file(tmp_path, "new", {"type": "float", "low": 1e-4, "high": lr_g_high, "log": True})
    return ["sweep", "--space", str(space), *flags]


@pytest.mark.parametrize("case", list(DOOR))
def test_what_a_user_gets_wrong_at_the_door_is_one_line_exit_2_and_creates_nothing(case, tmp_path, monkeypatch,
                                                                                  capsys):
    args, env, expected = DOOR[case]
    args = args(tmp_path) if callable(args) else args
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    for key, value in env.items():
        monkeypatch.setenv(key, value.format(tmp=tmp_path))
    capsys.readouterr()
    assert _exit_code(args) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and len(err) <= 400 and expected in err, err
    assert "s3cret" not in err + out
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlartifacts").exists()
    assert not (tmp_path / "ray_results").exists()


def test_the_installed_script_exits_2_with_one_line_and_never_prints_a_password(tmp_path):
    # The process boundary is the point here: the console script's exit code and stderr.
    script = Path(sys.executable).with_name("gan-pipeline")
    env = {**os.environ, "MLFLOW_TRACKING_URI": "http://me:s3cret@127.0.0.1:9"}
    env.pop("GAN_PIPELINES_DEBUG", None)
    done = subprocess.run([str(script), "train"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "me:***@" in done.stderr and "does not answer" in done.stderr
    assert "s3cret" not in done.stderr + done.stdout
    assert list(tmp_path.iterdir()) == []
