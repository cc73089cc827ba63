"""Sweeps: Ray Tune + Optuna over a search space, one parent MLflow run with a nested
child run per trial.

Owns: the search space files (space.py), a sweep's options (options.py), the driver
(driver.py: checks, Ray, the private MLflow server, the Tuner), the parent run
(parent.py), what one trial runs (trial.py) and the closing report (report.py).

Must not import: pipelines.registry, .cli. Uses .distributed for Ray and multi-worker
trials, .training and .tracking for the run itself.
"""
