"""Sweeps: Ray Tune + Optuna over a search space, one parent MLflow run with a nested
child run per trial.

Owns: search spaces (space.py: the objects; space_file.py: reading and checking a file;
the shipped ones are data in the top-level search_spaces/), a sweep's options (options.py),
the Tune set-up (tuning.py: searcher, scheduler, trainable), the driver (driver.py:
checks, Ray, the private MLflow server, the Tuner), the parent run (parent.py), what one
trial runs (trial.py, with its name in naming.py and description in notes.py; how a
distributed trial hears Tune's stop: tune_stop.py), closing
the runs a trial could not close itself (closing.py) and the closing report (report.py).
Population-based training (`--scheduler pbt|pb2`): the population and its scheduler
(population.py), a member's lives and exploits (member.py), the family tree on the parent
(family.py).

Must not import: pipelines.registry, .cli. Uses .distributed for Ray and multi-worker
trials, .training and .tracking for the run itself.
"""
