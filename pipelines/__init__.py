"""pipelines: orchestration glue (MLflow tracking, Ray Train, Ray Tune, registry, CLI)."""
