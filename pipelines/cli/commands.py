"""What each sub-command does with its parsed flags: build the option objects, call the
room that does the work, print the answer. Heavy imports stay inside the functions so
`gan-pipeline --help` is fast."""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from typing import TYPE_CHECKING

from gan.config import ConfigError, RunConfig
from pipelines.cli.flags import config_from_args, ray_options, sweep_options
from pipelines.errors import TrackingError
from pipelines.tracking import names

if TYPE_CHECKING:
    from pipelines.registry.origin import Origin


def _store_ready(*, reads: bool = False) -> None:
    """Every command that touches the store probes it first (bounded, one line, exit 2);
    one that only reads (reads=True) refuses a local store that does not exist yet."""
    from pipelines.tracking.store import probe_store, tracking_uri

    probe_store(tracking_uri(), must_exist=reads)


def cmd_train(args: argparse.Namespace) -> int:
    from pipelines.distributed.trainer import run_distributed
    from pipelines.tracking.store import tracking_uri, ui_hint
    from pipelines.training.local import run_local

    origin = _train_source(args)
    cfg = config_from_args(args, origin.config if origin else None)
    opts = ray_options(args)
    if opts.workers == 1 and opts.ray_address:
        raise ConfigError(f"--ray-address {opts.ray_address} is invalid with --workers 1: a one-worker run "
                          "trains in this process (use --workers N > 1 to train on the cluster)")
    _store_ready()
    tags, warm = _lineage(origin, cfg, args.warm)
    if opts.workers > 1:
        if args.resume:
            raise ConfigError("--resume is invalid with --workers > 1: Ray Train restarts failed "
                              "workers itself (--max-failures); resume in-process with --workers 1")
        out = run_distributed(cfg, opts, experiment=args.experiment, run_name=args.run_name, tags=tags, warm=warm)
    else:  # in-process, no Ray; --gpu just means cuda
        cfg = dataclasses.replace(cfg, device="cuda") if opts.gpu else cfg
        out = run_local(cfg, experiment=args.experiment, run_name=args.run_name, resume=args.resume,
                        extend_to=args.epochs, tags=tags, warm=warm)
    r = out.result
    last = r.eval_history[-1][1] if r.eval_history else {}
    score = f", {cfg.backbone} FID {last[names.FID]:.2f}" if names.FID in last else ""
    print(f"finished run {out.run_id}: {r.epochs_done} epochs, {r.step} steps{score}")
    print(f"generator: {out.model_uri}")
    if tags:  # train --from: where it came from (its description on the run page says more)
        warm_line = f", fine-tuned from its checkpoint of epoch {tags[names.WARM_START_EPOCH]}" \
            if names.WARM_START_EPOCH in tags else ""
        print(f"started from run {tags[names.FROM_RUN_ID]}'s config{warm_line}")
    print(ui_hint(tracking_uri(), out.experiment_id, out.run_id))
    return 0


def _train_source(args: argparse.Namespace) -> Origin | None:
    """`train --from`'s source run (registry.origin), its flags checked together first. It
    reads a store that must exist: a bad source creates nothing, not even an empty store."""
    if args.warm and args.resume:
        raise ConfigError("--warm is invalid with --resume: a resumed run continues from its own checkpoint; "
                          "--from RUN_ID --warm fine-tunes another run's in a new run")
    if args.warm and not args.from_run:
        raise ConfigError("--warm needs --from RUN_ID|models:/...: it fine-tunes that run's best checkpoint")
    if not args.from_run:
        return None
    if args.config:
        raise ConfigError(f"--from {args.from_run} is invalid with --config: the new run's config is the source "
                          "run's config.yaml; override single values with flags (e.g. --epochs 50)")
    if args.resume:
        raise ConfigError("--from is invalid with --resume: --resume continues a run in place, --from starts a "
                          "new run from one; give one of them")
    from pipelines.registry.origin import find_origin
    from pipelines.tracking.store import client_for

    try:
        _store_ready(reads=True)
    except TrackingError as e:
        raise TrackingError(f"--from {args.from_run}: {e}") from None
    return find_origin(client_for(), args.from_run)


def _lineage(origin: Origin | None, cfg: RunConfig, warm: bool) -> tuple[dict[str, str] | None, dict | None]:
    """The new run's tags naming its source, and with --warm the checkpoint it starts from
    (checked to fit `cfg` with the data, before the run exists: training.prepare)."""
    if origin is None:
        return None, None
    from pipelines.registry.origin import lineage_tags, warm_start
    from pipelines.tracking.store import client_for

    start = warm_start(client_for(), origin) if warm else None
    return lineage_tags(origin, cfg, start), start.state if start else None


def cmd_sweep(args: argparse.Namespace) -> int:
    from pipelines.sweep.driver import run_sweep
    from pipelines.sweep.report import sampled_params
    from pipelines.tracking.store import ui_hint

    _store_ready()
    resume = args.resume
    if resume and args.name and resume == "latest":
        resume = args.name
    out = run_sweep(sweep_options(args), resume=resume)
    done = sum(r.info.status == "FINISHED" for r in out.runs)
    print(f"sweep {out.name}: {len(out.runs)} trials ({done} finished, "
          f"{len(out.runs) - done} stopped early or failed) in {out.seconds:.0f} s")
    if out.best is None:
        print("no trial produced a finite FID")
        return 1
    b = out.best
    params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in sampled_params(b, out.space).items())
    m = b.data.metrics
    # Named as in MLflow and in the progress lines (Tune's id is in the run's tags).
    print(f"best trial {b.info.run_name} (run {b.info.run_id}): "
          f"FID {m.get(names.FID, math.nan):.2f} (best during training {m.get(names.BEST_FID, math.nan):.2f}, "
          f"{b.data.params.get('backbone', '')} backbone)")
    print(f"  {params}")
    ended = {k[len(names.PBT_VALUE_PREFIX):]: v for k, v in m.items() if k.startswith(names.PBT_VALUE_PREFIX)
             and k[len(names.PBT_VALUE_PREFIX):] in params}
    if ended:  # a population member: what it started with is above, what it trained last with here
        print("  at the end: " + ", ".join(f"{k}={v:.3g}" for k, v in ended.items())
              + f"; {b.data.tags.get(names.PBT_EXPLOITS, '0')} exploits (its description has its lineage)")
    print(ui_hint(out.tracking_uri, out.experiment_id, b.info.run_id, sweep=out.name,
                  parent_run_id=out.parent_run_id))
    # The last line says what to do next: register the winner (promote checks that it is
    # better than the current champion before moving the alias).
    print(f"next: gan-pipeline promote --sweep {out.name}   # registers the best generator; "
          "alias champion if it beats the current one")
    return 0


def cmd_spaces(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pipelines.sweep.space_file import shipped

    spaces = shipped()
    if not spaces:  # a broken install, not a user error: say where they were looked for
        from pipelines.sweep.space import SPACES_DIR

        print(f"no shipped search spaces in {SPACES_DIR}", file=sys.stderr)
        return 1
    width = max(len(Path(s.path).stem) for s in spaces)
    for s in spaces:
        trials = s.sweep.get("trials", 10)
        print(f"{Path(s.path).stem:<{width}}  {trials:>3} trials  {s.description}")
    return 0


def cmd_confirm(args: argparse.Namespace) -> int:
    from pipelines.sweep.confirm import check_counts, confirm_sweep
    from pipelines.tracking.store import ui_hint

    check_counts(args.top, args.seeds)
    _store_ready(reads=True)
    out = confirm_sweep(args.sweep, top=args.top, seeds=args.seeds, ray_address=args.ray_address)
    print(f"confirm {out.sweep}: {len(out.configs)} configs in {out.seconds:.0f} s; best_fid over their "
          "confirmation seeds (the trial's own score, which picked it, is not in the mean):")
    for c in out.configs:
        values = ", ".join(f"{v:.2f}" for v in c.values)
        spread = f" +- {c.std:.2f}" if math.isfinite(c.std) else ""
        print(f"  {c.trial.info.run_name}: {c.mean:.2f}{spread} (n={len(c.values)}, seeds "
              f"{','.join(map(str, c.seeds))}: {values}); the trial scored {c.selection:.2f}")
    single = min(out.configs, key=lambda c: c.selection)
    if out.configs[0] is single:
        print(f"the sweep's winner {single.trial.info.run_name} holds up across seeds")
    else:
        print(f"the sweep's winner {single.trial.info.run_name} does not hold up: "
              f"{out.configs[0].trial.info.run_name} has the better mean")
    print(f"promote --sweep {out.sweep} now ranks configs by this mean")
    print(ui_hint(out.tracking_uri, out.experiment_id, out.configs[0].trial.info.run_id, sweep=out.sweep,
                  parent_run_id=out.parent_run_id))
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    from pipelines.registry.promote import promote
    from pipelines.tracking.store import client_for

    if args.min_epochs < 0:
        raise ConfigError(f"--min-epochs={args.min_epochs} is invalid: must be >= 0")
    if args.max_copy is not None and not 0 <= args.max_copy <= 1:
        raise ConfigError(f"--max-copy={args.max_copy} is invalid: must be a share in [0, 1]")
    where = {k: str(v) for k, v in (("dataset", args.dataset), ("image_size", args.image_size),
                                    ("backbone", args.backbone), ("eval_samples", args.eval_samples))
             if v is not None}
    _store_ready(reads=True)
    result = promote(client_for(), sweep=args.sweep, experiment=None if args.sweep else args.experiment,
                     metric=args.metric, model_name=args.model_name, min_epochs=args.min_epochs,
                     force=args.force, where=where, max_copy=args.max_copy)
    print(result.line(args.metric))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from pipelines.registry.generate import generate_images, serving_hint, write_images
    from pipelines.tracking.store import global_tracking_uri, tracking_uri

    if not 1 <= args.num_images <= 10_000:
        raise ConfigError(f"-n={args.num_images} is invalid: must be in [1, 10000]")
    if not args.out and not args.out_dir:
        raise ConfigError("nothing to write: give --out FILE and/or --out-dir DIR")
    _store_ready(reads=True)
    with global_tracking_uri(tracking_uri()):  # MLflow loads a models:/ URI through it alone
        images = generate_images(args.model, args.num_images, args.seed)
    try:
        written = write_images(images, args.out, args.out_dir)
    except OSError as e:
        raise ConfigError(f"--out/--out-dir cannot be written ({e.filename}: {e.strerror or e}): "
                          "pick a writable place") from None
    shape = "x".join(str(d) for d in images.shape[1:])
    print(f"wrote {len(images)} images ({shape}, seed {args.seed}) from {args.model}: "
          + (str(written[0]) if args.out else "") + (f" {args.out_dir}/" if args.out_dir else ""))
    print(serving_hint(args.model, tracking_uri()))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pipelines.registry.evaluate import EvalRequest, evaluate, log_scores, table
    from pipelines.tracking.store import client_for, global_tracking_uri

    if args.num_samples is not None and args.num_samples < 10:
        raise ConfigError(f"--num-samples={args.num_samples} is invalid: must be >= 10")
    _store_ready(reads=True)
    client = client_for()
    req = EvalRequest(args.model, args.run_id, args.dataset, args.backbone, args.num_samples, args.seed,
                      args.data_dir)
    with global_tracking_uri(client.tracking_uri):  # MLflow loads a models:/ URI through it alone
        ev = evaluate(client, req)
    print(f"{args.model or 'run ' + args.run_id} vs {ev.dataset} ({ev.backbone}, {ev.num_samples} samples, "
          f"seed {ev.seed})")
    print(table(ev.scores, ev.logged))
    if args.log:
        if ev.run is None:
            raise ConfigError("--log needs a source run: use --run-id or a runs:/ or registered models:/ URI")
        log_scores(client, ev.run, ev.backbone, ev.scores)
        print(f"logged to run {ev.run.info.run_id} as {names.EVAL_PREFIX}{ev.backbone}_*")
    return 0
