"""Every MLflow tag, metric, param and artifact name the product writes or reads, once.

A name used by two modules lives here, so a writer and its readers (the report, promote,
resume) cannot drift apart. MLflow's own reserved tags are named here too.
"""

from __future__ import annotations

from pipelines.compat import mlflow_api

# MLflow's reserved tags
PARENT_RUN = "mlflow.parentRunId"
RUN_NAME = "mlflow.runName"
GIT_COMMIT = "mlflow.source.git.commit"
SOURCE_NAME = "mlflow.source.name"
NOTE = "mlflow.note.content"  # the run's description (markdown) on its page
# experiment tags only MLflow's UI reads (compat.mlflow_api checks its bundle still does)
EXPERIMENT_KIND = mlflow_api.EXPERIMENT_KIND  # which view MLflow 3's UI opens
MODEL_DEVELOPMENT = mlflow_api.MODEL_DEVELOPMENT  # the classic runs table, not the GenAI view
SHARED_VIEW_PREFIX = mlflow_api.SHARED_VIEW_PREFIX  # a saved runs-table view

# every run
DATASET = "dataset"
DEVICE = "device"
SOURCE_VERSION = "source.version"  # the installed gan-pipelines version when there is no checkout
NODE_ID = "ray.node_id"  # the Ray node a trial ran on
VERSION_PREFIX = "version."  # version.torch, version.ray, ...
ERROR = "error"  # why a run FAILED (or was interrupted)
STOPPED_REASON = "stopped_reason"  # why a run ended early: "health: ...", "tune: ...", "lost: ..."

# Ray Train runs
RAY_STORAGE = "ray.storage"
RAY_RESTORED_FROM_STEP = "ray.restored_from_step"

# sweeps: the parent run and its trials
SWEEP_NAME = "sweep_name"
SWEEP_ROLE = "sweep.role"  # SWEEP_PARENT on the sweep's own run
SWEEP_PARENT = "parent"
STOP_REQUESTED = "gan.stop_requested"  # a distributed trial's driver asks its Ray Train workers to stop
SWEEP_STORAGE = "sweep.storage"  # the Tune experiment folder (for --resume)
SWEEP_LOST = "sweep.lost"
# Lineage of a sweep's searcher (sweep/seeding.py): a warm start names the sweep whose
# scored trials seeded it; an extension (--resume NAME --trials N) keeps its trial counts.
SWEEP_SEEDED_FROM = "sweep.seeded_from"  # the source sweep's name
SWEEP_SEEDED_FROM_RUN = "sweep.seeded_from_run"  # the source sweep's parent run id
SWEEP_SEEDED_TRIALS = "sweep.seeded_trials"  # how many scored trials seeded the searcher
SWEEP_EXTENDED = "sweep.extended"  # trials after each extension: "2 -> 4 -> 6"
# What the sweep's live searcher (Ray's OptunaSearch) told Optuna of each trial, written by
# the driver as Tune tells it (sweep/searcher_record.py), read when the trial seeds a later
# searcher (sweep/seeding.py): a later study holds the trial as the live one did.
SEARCHER_FID = "searcher.fid"  # each intermediate value it reported, at step = Tune's training_iteration
SEARCHER_TOLD = "searcher.told"  # the trial's end as Optuna has it: COMPLETE, PRUNED, FAIL or RUNNING
SEARCHER_VALUE = "searcher.value"  # the value told with COMPLETE
TRIAL_ID = "tune_trial_id"  # also logged as a param of each trial
RESUMED_FROM_STEP = "resumed_from_step"  # a restarted run (a trial Tune restarted, a --resume) continued from this step
TRIAL_SECONDS_TO_FIRST_STEP = "trial.seconds_to_first_step"
BEST_RUN_ID = "best_run_id"
BEST_TRIAL_ID = "best_trial_id"
PLOT_PREFIX = "plot."  # plot.<name>: why a report plot was skipped

# metrics (the per-step ones come from gan.train.STEP_METRICS)
FID = "fid"
BEST_FID = "best_fid"
KID = "kid"
EPOCH = "epoch"  # logged at every eval's step: the eval steps of a run
TRIALS_FINISHED = "sweep.trials_finished"
SWEEP_SECONDS = "sweep.seconds"
KIMG = "kimg"  # thousands of real images shown to D: the clock trials share (see docs/training.md)
SWEEP_PREFIX = "sweep."  # the parent's own metrics (sweep.best_fid, ...): apart from the trials'
# A run's resource use sits with MLflow's own system/ metrics (CPU, memory, GPU): the UI
# shows "system/x" on the run's System metrics tab and last on the compare page, while any
# other "a/b" name opens a section of its own that comes before the model's metrics.
SYSTEM_PREFIX = "system/"
WALL_S = "system/wall_s"
CPU_HOURS = "system/cpu_hours"
GPU_HOURS = "system/gpu_hours"
PEAK_MEMORY_MB = "system/peak_memory_mb"
# Seconds a run's Ray Train worker groups waited for their CPUs/GPUs (their placement
# groups' creation), summed over its groups. A sweep trial's wall_s and CPU/GPU-hours leave
# it out: its function holds no CPU while its workers wait, so nothing was used.
QUEUED_S = "system/queued_s"
TRAIN_S = "system/train_s"  # seconds in training steps (this life of the run)
EVAL_S = "system/eval_s"  # seconds scoring (gan.eval_budget keeps it near 5% of train_s)
EVAL_SHARE = "system/eval_share"
EVAL_PREFIX = "eval_"  # eval_<backbone>_<metric>: `gan-pipeline evaluate --log`

# params that are not RunConfig fields
WORLD_SIZE = "world_size"

# artifacts
GRID_KEY = "samples"  # log_image key of the sample grids (artifact folder images/)
IMAGES_DIR = "images"
CHECKPOINT_DIR = "checkpoints"
GENERATOR_DIR = "generator"
CONFIG_FILE = "config.yaml"
PROGRESS_GIF = "progress.gif"
GRIDS_DIR = "grids"  # grids/epoch_002.png: one fixed name per eval, the same in every run
COPY_DIR = "copy_check"  # copy_check/epoch_002.png: a best generator's samples above their nearest training images

# registered model versions
CHAMPION = "champion"  # the alias promote moves
VERSION_METRIC = "metric"
VERSION_METRIC_VALUE = "metric_value"
VERSION_DATASET = "dataset"
VERSION_BACKBONE = "backbone"
VERSION_SWEEP = "sweep"
VERSION_SOURCE_RUN = "source_run"
VERSION_PROMOTION = "promotion"

# LoggedModels (MLflow 3): the run's best and final generator
MODEL_TYPE = "gan-generator"
FINAL_MODEL = GENERATOR_DIR  # so runs:/RUN_ID/generator keeps naming the final generator
BEST_MODEL = "generator-best"
MODEL_ROLE = "gan.role"  # "best" | "final" | "best,final"
MODEL_STEP = "gan.step"
MODEL_EPOCH = "gan.epoch"
MODEL_COPY_PANEL = "gan.copy_panel"  # the run artifact holding the model's copy-check panel
COPY_SHARE = "copy_share"  # the copy check's metric (gan.metrics.copies)
VERSION_MODEL_ID = "model_id"

# the lease: one owner per run (tracking.lease)
LEASE_OWNER = "gan.lease.owner"
LEASE_HEARTBEAT = "gan.lease.heartbeat"
EXTENDED_TO = "gan.extended_to_epochs"  # a FINISHED run resumed with more --epochs


# lineage of a run started from another (`train --from`, registry.origin)
FROM_RUN_ID = "from_run_id"  # the run whose config.yaml this one started from
FROM_MODEL_ID = "from_model_id"  # the LoggedModel a models:/ URI named (its source run is from_run_id)
FROM_SWEEP = "from_sweep"  # the source run's sweep, when it was a trial
WARM_START_FROM = "warm_start_from"  # --warm: a fine-tune of this run's checkpoint ...
WARM_START_EPOCH = "warm_start_epoch"  # ... taken after this many epochs ...
WARM_START_STEP = "warm_start_step"  # ... at this step (the new run's own count from 0)

# a sweep's confirmation (`confirm --sweep`, sweep.confirm): its top trials again, new seeds
CONFIRM_OF = "confirm_of"  # on a confirming run: the trial run whose config it trains again
CONFIRM_SEED = "confirm_seed"  # ... with this seed
CONFIRM_PREFIX = "confirm."  # per config, on the trial: confirm.best_fid_mean / _std / _n
SWEEP_CONFIRMED = "sweep.confirmed"  # on the parent: "top K x S seeds" of the last confirmation
VERSION_CONFIRM_MEAN = "confirm_mean"  # on a model version promoted by its config's mean over seeds
VERSION_CONFIRM_STD = "confirm_std"
VERSION_CONFIRM_N = "confirm_n"
# ... and the noise of one seed's score pooled over its sweep's confirmed configs (registry.champion_rule)
VERSION_CONFIRM_POOLED_STD = "confirm_pooled_std"
VERSION_CONFIRM_POOLED_DF = "confirm_pooled_df"

# population-based training (`sweep --scheduler pbt|pb2`, sweep.population / sweep.member)
PBT_EPOCH = "pbt_epoch"  # Tune result key PBT times perturbations by: only a perturbation epoch's report has it
PBT_EXPLOITS = "pbt.exploits"  # on a member: how many times it copied another member
PBT_LAST_EXPLOIT = "pbt.last_exploit"  # ... and the last one in words
PBT_EVENTS_FILE = "pbt/exploits.json"  # ... every one as a row: epoch, from which run, old -> new values
PBT_VALUE_PREFIX = "pbt/"  # metric pbt/<param>: the value a member trains with from that step on
PBT_LINEAGE_FILE = "pbt/lineage.png"  # on the parent: members over epochs with exploit edges
PBT_SCHEDULES_FILE = "pbt/schedules.html"  # ... and each member's hyperparameter schedule
