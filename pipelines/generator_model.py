"""Where generator models logged by gan-pipelines 0.1 find their loader.

An MLflow model names its pyfunc loader module in its MLmodel file; 0.1 wrote
`pipelines.generator_model`, which now lives in pipelines.tracking.generator_model.
Registered versions logged back then keep loading through this name.
"""

from pipelines.tracking.generator_model import _load_pyfunc

__all__ = ["_load_pyfunc"]
