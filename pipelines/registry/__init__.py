"""The Model Registry side: promote the best run's generator (promote.py), draw images
from any generator model (generate.py), and score a model against a dataset
(evaluate.py).

Must not import: pipelines.sweep, .distributed, .training, .cli; ray or optuna. It
reads what runs recorded through pipelines.tracking.
"""
