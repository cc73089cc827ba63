"""pipelines: where the math of gan/ runs and where its numbers go. Glue only.

    cli/          the only argparse: flags -> option objects -> a room below; errors -> exit codes
    sweep/        Ray Tune + Optuna: search spaces, the driver, one trial, the report
    registry/     promote to the MLflow Model Registry, generate, evaluate
    distributed/  Ray: connect (one function), TorchTrainer runs, the worker
    training/     one run's set-up, and the in-process mode
    tracking/     MLflow: store, run lifecycle, callbacks, history, model format, names
    errors.py     the kinds of user error (all gan.errors.UserError: exit 2, one line)
    compat/       every private API of Ray and MLflow used, wrapped and checked (torch's: gan/torch_api.py)

A package imports only those below it in this list (sweep and registry are siblings);
import-linter checks it (pyproject.toml). Nothing here imports the CLI.
"""
