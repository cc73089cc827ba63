"""Before a run exists: load the data, dry-build the models, build the evaluator. Every
user error surfaces here, so bad input never leaves a half-created run."""

from __future__ import annotations

from typing import Any

from gan.config import ConfigError, RunConfig
from gan.data import Dataset, load_dataset
from gan.models import build_models
from gan.prepare_folder import scan_folder
from gan.train import check_batch, resolve_device

DEFAULT_EXPERIMENT = "gan-pipelines"


def prepare(cfg: RunConfig, world_size: int = 1, check_device: bool = True,
            warm: dict[str, Any] | None = None) -> Dataset:
    """Load the data and dry-build the models: every user error surfaces here. A Ray
    driver passes check_device=False: its workers, not it, hold the GPUs. `warm`: the
    checkpoint a fine-tune starts from (train --from --warm) must fit those models."""
    if cfg.backbone == "classifier" and cfg.dataset.startswith("folder:"):
        # refused before the folder is prepared (seconds to minutes), not after; what is
        # wrong with the folder itself is said first
        scan_folder(cfg.dataset[len("folder:"):])
        raise ConfigError(f"backbone 'classifier' needs a labelled dataset and {cfg.dataset!r} has no labels "
                          "(an image folder has none): use --backbone inception")
    data = load_dataset(cfg.dataset, cfg.data_dir, cfg.image_size, cfg.data_mode, cfg.data_budget_mb)
    check_batch(cfg, len(data), world_size)
    G, D = build_models(cfg, data.shape)  # noqa: N806
    if warm is not None:
        check_warm_fits(cfg, warm, G, D)
    if check_device:
        resolve_device(cfg.device)
    return data


# The fields that shape G and D: what a warm start cannot change.
SHAPE_FIELDS = ("arch", "latent_dim", "dcgan_width", "mlp_width", "spectral_norm", "g_norm", "image_size",
                "dataset")


def check_warm_fits(cfg: RunConfig, warm: dict[str, Any], G: Any, D: Any) -> None:  # noqa: N803
    """A checkpoint's networks load into this config's, or a ConfigError naming the
    changed fields (a fine-tune keeps the architecture; the data may change if its images
    are the same shape)."""
    try:
        G.load_state_dict(warm["G"])
        D.load_state_dict(warm["D"])
    except (RuntimeError, KeyError):
        source = warm.get("config", {})
        changed = [f"{k}={getattr(cfg, k)!r} (was {source[k]!r})" for k in SHAPE_FIELDS
                   if k in source and source[k] != getattr(cfg, k)]
        raise ConfigError("--warm: the source checkpoint's networks do not fit this config"
                          + (f" ({', '.join(changed)})" if changed else "")
                          + ": a warm start keeps the architecture and image shape; drop those flags, "
                          "or train without --warm") from None


def build_evaluator(cfg: RunConfig, data: Dataset, device: Any = None, progress: bool | None = None) -> Any:
    """The FID-style evaluator for `cfg.backbone`: trains/loads the classifier and the real
    statistics (cached on disk), so build it once per process and reuse it. progress=None:
    a bar for the long waits (real statistics, each eval's features with Inception) on a
    terminal only, so Ray workers and logs stay quiet. device None: cfg.device's."""
    from gan.metrics import Evaluator

    device = resolve_device(cfg.device) if device is None else device
    return Evaluator(data, backbone=cfg.backbone, num_samples=cfg.eval_samples, device=device, seed=cfg.seed,
                     progress=progress)


_EVALUATORS: dict[tuple, Any] = {}


def shared_evaluator(cfg: RunConfig, data: Dataset) -> Any:
    """One evaluator per process and setting, on cfg.device: a process that trains run
    after run (a reused Tune actor) skips loading the backbone and the real statistics
    (part of each trial's start-up)."""
    key = (cfg.backbone, cfg.eval_samples, cfg.seed, cfg.device, data.fingerprint())
    if key not in _EVALUATORS:
        _EVALUATORS.clear()  # one at a time: the backbone may be an Inception network
        _EVALUATORS[key] = build_evaluator(cfg, data)
    return _EVALUATORS[key]
