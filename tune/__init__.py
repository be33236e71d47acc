"""freeze-depth search: how much of a pretrained network to freeze, answered by a Ray Tune search.

    import tune

    result = tune.FreezeSearch("digits_freeze", overrides={"train.epochs": 5}).run()
    print(result.recommendation)
    model = tune.load_model(result.model_uri)      # the recommended model, its classes and preprocessing
    model.predict(raw_inputs)                      # their labels

The public API (tune/api.py) and the types a user's own task is made of (``Task``, ``BlockModel``) are exported
here; ``freeze-search`` (tune/cli.py) is the console command. Ray is imported only by ``tune.search`` and
``tune.cluster``, MLflow only by ``tune.tracking`` (the runs) and ``tune.system_metrics`` (MLflow's CPU and GPU
monitors, in a trial's process); the rest is plain torch, imported on first use. (This package is ``tune``; Ray's is
imported as ``from ray import tune as ray_tune``.)
"""

from typing import Any

from tune.api import FreezeSearch, Recommended, SearchResult, follow, layers, load_config, load_search, spaces, submit
from tune.config import Config
from tune.errors import ConfigError, TrialConfigError

__version__ = "0.1.0"

__all__ = ["BlockModel", "Config", "ConfigError", "FreezeSearch", "Predictor", "Recommended", "SearchResult", "Task",
           "TrialConfigError", "TrialResult", "follow", "layers", "load_config", "load_model", "load_search", "spaces",
           "submit"]

# torch-heavy types come in on first use: `import tune` stays quick, so that a bad space file is reported at once
_LAZY = {"Task": "tune.tasks.base", "BlockModel": "tune.blocks", "TrialResult": "tune.report",
         "Predictor": "tune.predict", "load_model": "tune.predict"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tune' has no attribute {name!r}")
