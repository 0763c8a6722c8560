"""sact_det: Spatially Adaptive Computation Time in detectron2. Importing registers everything."""
from . import compat  # noqa: F401  (must come before any detectron2 submodule import)
from . import config, modeling  # noqa: F401,E402  (registers the backbone and meta-architecture)
from . import data  # noqa: F401,E402  (registers the demo and CAT2000 datasets, lazily)
from . import engine, evaluation  # noqa: F401,E402

__version__ = "0.1.0"
