"""Ray: joining or starting it (connect.py, one function every command uses; reaper.py
makes a local Ray it started end with the command), the options of a data-parallel run
(options.py), the driver's TorchTrainer run (trainer.py) and what each Ray Train worker
runs (worker.py).

Must not import: pipelines.sweep, .registry, .cli; optuna. Imports of ray stay inside
functions, so `gan-pipeline --help` stays fast.
"""
