"""One training run, wherever it runs: what every mode checks and builds before the
MLflow run exists (prepare.py), the loop in this process (in_process.py: a local run and
a one-worker sweep trial; Ray Train's counterpart is distributed.trainer.RayTrainLoop), and the
local command (local.py: world size 1, no Ray start). Every mode lives in its run through
pipelines.tracking.runs (one lifecycle).

Must not import: pipelines.distributed, .sweep, .registry, .cli; ray or optuna.
"""
