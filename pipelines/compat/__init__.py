"""compat: every private API of Ray and MLflow that pipelines/ uses, one module per
library, and nowhere else (torch's is gan/torch_api.py: gan/ imports nothing of pipelines).

    ray_api.py     Tune's trial session, PBT's per-member state, `__mixins__` of function
                   trainables, the loopback switch of a local node, the CPUs a local node
                   gets, Train V2's wrapped worker errors, the loggers Ray names by file
    mlflow_api.py  a dataset's run-input entity, the system-metrics monitor's thread,
                   log_image's file names, the UI's saved-view experiment tag
    changed.py     InternalsChanged, the one error a missing or changed internal raises

Each module is written against one version (its TESTED; pyproject.toml pins it), wraps
each internal in a small function the call sites use, and has a check() that verifies
every internal it wraps: a missing or changed one raises InternalsChanged naming the API
and the installed version, at check() and at the call site alike, never a fallback that
turns it into a silent success (tests/test_compat.py takes each one away).

The bottom layer of pipelines/: imports nothing of it. Ray and MLflow load inside the
functions, as at the call sites (importing this package must not import either).
"""
