"""The one typed, validated run configuration.

A `RunConfig` is built once at the edge (YAML file, CLI flags, a Tune sample) by
`make_config`; every bad value raises `ConfigError` with one line naming the field,
the value and what is allowed. Code past the edge trusts the object.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from gan.errors import UserError

ARCHS = ("mlp", "dcgan")
LOSSES = ("bce", "hinge")
BACKBONES = ("classifier", "inception")
NORMS = ("batch", "none")
DATA_MODES = ("auto", "memory", "stream")
BUILTIN_DATASETS = ("mnist-5k", "mnist", "fashion-mnist", "cifar10", "svhn")


class ConfigError(UserError):
    """A configuration value is invalid; the message is one line for the user."""


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a training run; it alone reproduces one."""

    # data
    dataset: str = "mnist-5k"
    data_dir: str = "./data"
    image_size: int = 0  # 0: the dataset's native size (folder datasets: 32)
    # memory: hold the whole dataset; stream: read each batch from its prepared shards
    # (gan/streamed.py); auto: stream a prepared or folder dataset past data_budget_mb
    data_mode: str = "auto"
    data_budget_mb: int = 2048  # decoded size up to which auto holds a dataset in memory
    # architecture
    arch: str = "dcgan"
    latent_dim: int = 100
    dcgan_width: int = 64  # feature maps of the widest DCGAN layer / 2
    mlp_width: int = 128  # first hidden layer of the MLP G (128-256-512-1024)
    spectral_norm: bool = False
    # G's normalisation; "none" makes a worker's step independent of how the global
    # batch is split (per-worker BatchNorm statistics are not), e.g. on CPU where
    # SyncBatchNorm is unavailable.
    g_norm: str = "batch"
    # optimisation
    epochs: int = 5
    batch_size: int = 64
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    label_smoothing: float = 0.0
    loss: str = "bce"
    n_dis: int = 1
    ema: float = 0.0  # EMA decay of G's weights; 0 disables the EMA copy
    seed: int = 0
    # cadence
    eval_every: int = 1  # epochs between sample grids (always) and metrics (when the eval budget allows)
    eval_budget: float = 0.05  # periodic evals take at most this share of training time; 0: no limit
    # "2,4,5": score after exactly these epochs (and the last) instead of eval_every and the
    # budget; a confirmation scores where its trial scored (a best-of-more-evals is lower)
    eval_at: str = ""
    checkpoint_every: int = 1  # epochs between full-state checkpoints
    keep_checkpoints: int = 2  # newest checkpoints kept (plus the best one's); 0 keeps all
    log_every: int = 10  # steps between batched metric flushes
    # health guard: a diverged run stops and fails (see gan.health)
    health_guard: bool = True
    health_d_floor: float = 1e-3  # D loss below this for health_window steps: D won outright
    health_g_ceiling: float = 50.0  # G loss above this for health_window steps: G blew up
    health_window: int = 200  # steps a collapse or blow-up must last to count
    health_g_limit: float = 1e4  # G loss beyond any working GAN's: stop at once
    # evaluation
    backbone: str = "classifier"
    eval_samples: int = 1000
    # hardware
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # mixed precision on CUDA (bf16 where supported, else fp16); CPU stays fp32
    sync_bn: bool = False  # SyncBatchNorm across DDP ranks instead of per-rank statistics

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


FIELD_NAMES = tuple(f.name for f in fields(RunConfig))


def _positive_int(v: Any) -> str | None:
    return None if isinstance(v, int) and not isinstance(v, bool) and v > 0 else "a positive integer"


def _non_negative_int(v: Any) -> str | None:
    ok = isinstance(v, int) and not isinstance(v, bool) and v >= 0
    return None if ok else "an integer >= 0"


def _positive_float(v: Any) -> str | None:
    ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0
    return None if ok else "a finite number > 0"


def _budget(v: Any) -> str | None:
    ok = isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v <= 1
    return None if ok else "a share of training time in [0, 1] (0: every eval_every epochs)"


def _epochs_list(v: Any) -> str | None:
    ok = isinstance(v, str) and (v == "" or bool(re.fullmatch(r"[1-9][0-9]*(,[1-9][0-9]*)*", v)))
    if ok and v:
        epochs = [int(e) for e in v.split(",")]
        ok = epochs == sorted(set(epochs))
    return None if ok else "empty or increasing epoch numbers separated by commas, such as 2,4,5"


def eval_epochs(cfg: RunConfig) -> frozenset[int] | None:
    """The epochs cfg.eval_at fixes, or None (eval_every and the eval budget decide)."""
    return frozenset(int(e) for e in cfg.eval_at.split(",")) if cfg.eval_at else None


def _unit_interval_open(v: Any) -> str | None:
    ok = isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v < 1
    return None if ok else "a number in [0, 1)"


def _smoothing(v: Any) -> str | None:
    ok = isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v < 0.5
    return None if ok else "a number in [0, 0.5)"


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if v in choices else "one of " + ", ".join(choices)

    return check


def _dataset(v: Any) -> str | None:
    ok = isinstance(v, str) and (v in BUILTIN_DATASETS or any(
        v.startswith(kind) and len(v) > len(kind) for kind in ("folder:", "prepared:")))
    return None if ok else "one of " + ", ".join(BUILTIN_DATASETS) + ", folder:PATH, prepared:PATH"


def _image_size(v: Any) -> str | None:
    ok = isinstance(v, int) and not isinstance(v, bool) and (v == 0 or 8 <= v <= 256)
    return None if ok else "0 (the dataset's size) or an integer in [8, 256]"


def _device(v: Any) -> str | None:
    ok = isinstance(v, str) and (v in ("auto", "cpu", "cuda") or v.startswith("cuda:"))
    return None if ok else "auto, cpu, cuda or cuda:N"


def _string(v: Any) -> str | None:
    return None if isinstance(v, str) and v else "a non-empty string"


def _bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else "true or false"


def _eval_samples(v: Any) -> str | None:
    ok = isinstance(v, int) and not isinstance(v, bool) and v >= 10
    return None if ok else "an integer >= 10"


CHECKS: dict[str, Callable[[Any], str | None]] = {
    "dataset": _dataset,
    "data_dir": _string,
    "image_size": _image_size,
    "data_mode": _one_of(DATA_MODES),
    "data_budget_mb": _non_negative_int,
    "arch": _one_of(ARCHS),
    "latent_dim": _positive_int,
    "dcgan_width": _positive_int,
    "mlp_width": _positive_int,
    "spectral_norm": _bool,
    "g_norm": _one_of(NORMS),
    "epochs": _positive_int,
    "batch_size": _positive_int,
    "lr_g": _positive_float,
    "lr_d": _positive_float,
    "beta1": _unit_interval_open,
    "beta2": _unit_interval_open,
    "label_smoothing": _smoothing,
    "loss": _one_of(LOSSES),
    "n_dis": _positive_int,
    "ema": _unit_interval_open,
    "seed": _non_negative_int,
    "eval_every": _positive_int,
    "eval_budget": _budget,
    "eval_at": _epochs_list,
    "checkpoint_every": _positive_int,
    "keep_checkpoints": _non_negative_int,
    "log_every": _positive_int,
    "health_guard": _bool,
    "health_d_floor": _positive_float,
    "health_g_ceiling": _positive_float,
    "health_window": _positive_int,
    "health_g_limit": _positive_float,
    "backbone": _one_of(BACKBONES),
    "eval_samples": _eval_samples,
    "device": _device,
    "amp": _bool,
    "sync_bn": _bool,
}
assert set(CHECKS) == set(FIELD_NAMES), "every RunConfig field needs a check"


def _coerce(name: str, value: Any) -> Any:
    """Accept ints for float fields (YAML writes 1 for 1.0) and nothing looser."""
    default = getattr(RunConfig, name)
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def make_config(values: Mapping[str, Any] | None = None) -> RunConfig:
    """Validate `values` (only differences from the defaults) into a RunConfig."""
    values = dict(values or {})
    unknown = sorted(set(values) - set(FIELD_NAMES))
    if unknown:
        raise ConfigError(
            f"unknown config key {unknown[0]!r}: allowed keys are " + ", ".join(FIELD_NAMES)
        )
    clean = {k: _coerce(k, v) for k, v in values.items()}
    for name, value in clean.items():
        allowed = CHECKS[name](value)
        if allowed is not None:
            raise ConfigError(f"{name}={value!r} is invalid: must be {allowed}")
    return RunConfig(**clean)


MAX_YAML_BYTES = 1 << 20  # a config or search space is a few hundred bytes
# Aliases expand: nine levels of nine aliases name 9^9 values in a few lines (a "YAML
# bomb"). With at most 20 the largest expansion is a few thousand values.
MAX_YAML_ALIASES = 20


def safe_yaml(text: str, where: str) -> Any:
    """yaml.safe_load with limits on size and aliases; one-line ConfigErrors."""
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"{where} is {len(text)} bytes: a config file must be under {MAX_YAML_BYTES} bytes")
    try:
        aliases = sum(isinstance(e, yaml.AliasEvent) for e in yaml.parse(text, Loader=yaml.SafeLoader))
        if aliases > MAX_YAML_ALIASES:
            raise ConfigError(f"{where} uses {aliases} YAML aliases: at most {MAX_YAML_ALIASES} are allowed")
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0][:200] if str(e) else "parse error"
        raise ConfigError(f"{where} is not valid YAML: {first}") from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict of overrides, with one-line errors."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"config file {str(p)!r} cannot be read: {e.strerror or e}") from None
    data = safe_yaml(text, f"config file {str(p)!r}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping of key: value")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def config_from_sources(
    path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> RunConfig:
    """Defaults, then the YAML file, then explicit overrides (CLI flags win)."""
    values: dict[str, Any] = load_yaml(path) if path else {}
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return make_config(values)
