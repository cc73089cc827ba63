"""One training run, wherever it runs: what every mode checks and builds before the
MLflow run exists (prepare.py), and the in-process mode itself (local.py: world size 1,
no Ray start). Ray Train runs and sweep trials reuse prepare.py and the run lifecycle in
pipelines.tracking.runs.

Must not import: pipelines.distributed, .sweep, .registry, .cli; ray or optuna.
"""
