"""MLflow tracking: everything that reads or writes the tracking store.

Owns: the store (which one, probed and named for every process: store.py; a new sqlite
store set up once when two processes open it together: sqlite_setup.py; whether a folder
can be made and written, tried: folders.py), the private
`mlflow server` a sweep runs in front of sqlite (server.py), which run a command trains
into (opening.py), a run's lifecycle, the same object in every mode (lease, record,
restore, the loop, settle, close exactly one way: runs.py; a Ray Train rank 0's side:
attached.py; how a run no loop closes ends: ending.py), its one owner (lease.py),
what the training loop writes into a run (callbacks.py; sample grids and the GIF:
pictures.py) and, while the server is away, keeps on local disk and sends once it is
back (delivery.py, outage.py, outbox.py), what it reads back on resume (history.py), the generator's MLflow model format
(generator_model.py; served_generator.py, the standalone pyfunc loader stored with every
model, which imports nothing of this project), and every tag, metric and artifact name (names.py).

Must not import: pipelines.training, .distributed, .sweep, .registry, .cli (it is the
layer they all stand on), ray or optuna.
"""
