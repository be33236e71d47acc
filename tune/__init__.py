"""freeze-depth search: how much of a pretrained network to freeze, answered by a Ray Tune search.

    import tune

    result = tune.FreezeSearch("digits_freeze", overrides={"train.epochs": 5}).run()
    print(result.recommendation)
    model = tune.load_model(result.model_uri)      # the recommended model, its classes and preprocessing
    model.predict(raw_inputs)                      # their labels

The public API (tune/api.py) and the types a user's own task is made of (``Task``, ``BlockModel``) are exported
here; ``freeze-search`` (tune/cli.py) is the console command. The parts, each a subpackage whose ``__init__`` says
what it owns and what it may import:

    tune/settings/    the config and the search space, checked from the text alone (no torch)
    tune/tasks/       the model as blocks, its data and its score: the bundled tasks and a user's own
    tune/training/    one trial in pure torch: freeze, train, measure (no Ray, no MLflow)
    tune/reporting/   the frontier, the race and the report, from plain records
    tune/tracker/     the runs in MLflow and the store they live in
    tune/driver/      the search on Ray: checks, trials, race, report, model, result

Ray and Optuna are imported only in ``tune.driver``, MLflow only in ``tune.tracker`` and ``tune.predict`` (loading
a saved model); the rest is plain torch, imported on first use. (This package is ``tune``; Ray's is imported as
``from ray import tune as ray_tune``.) A module's path from before the parts (``tune.race``, ``tune.config``,
``tune.train``, ...) still imports: it is the same module object under its old name.
"""

import importlib
import importlib.abc
import importlib.util
import sys
from typing import Any

from tune.api import FreezeSearch, Recommended, SearchResult, follow, layers, load_config, load_search, spaces, submit
from tune.errors import ConfigError, TrialConfigError
from tune.settings.config import Config

__version__ = "0.1.0"

__all__ = ["BlockModel", "Config", "ConfigError", "FreezeSearch", "Predictor", "Recommended", "SearchResult", "Task",
           "TrialConfigError", "TrialResult", "follow", "layers", "load_config", "load_model", "load_search", "spaces",
           "submit"]

# torch-heavy types come in on first use: `import tune` stays quick, so that a bad space file is reported at once
_LAZY = {"Task": "tune.tasks.base", "BlockModel": "tune.blocks", "TrialResult": "tune.reporting.analysis",
         "Predictor": "tune.predict", "load_model": "tune.predict"}


# A module's flat path before the parts, and where it lives: ``import tune.race`` gives tune.reporting.race itself
MOVED = {
    **{name: f"tune.settings.{name}" for name in ("config", "space")},
    **{name: f"tune.driver.{name}" for name in ("study", "cluster", "events", "checks", "preflight")},
    "search": "tune.driver.tuner",
    **{name: f"tune.training.{name}" for name in ("trial", "train", "freeze", "policy", "adapter", "precision",
                                                  "prefix_cache", "prefix_chain", "probe", "measure", "data")},
    **{name: f"tune.tracker.{name}" for name in ("tracking", "trial_runs", "store", "provenance", "system_metrics")},
    **{name: f"tune.reporting.{name}" for name in ("report", "race", "plots", "records")},
    "weights": "tune.tasks.weights",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports ``tune.<old>`` as the module it names in MOVED: one module object under both names, so that a
    monkeypatch or an isinstance through either path sees the same thing."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname.startswith("tune.") and fullname[len("tune."):] in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def __init__(self) -> None:
        self._own_specs: dict[str, Any] = {}

    def create_module(self, spec: Any) -> Any:
        module = importlib.import_module(MOVED[spec.name[len("tune."):]])
        self._own_specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module: Any) -> None:
        # the import system stamped the old name's spec on the module: give it back its own
        module.__spec__ = self._own_specs.pop(module.__spec__.name)


if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModules())


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in MOVED:
        return importlib.import_module(f"tune.{name}")
    raise AttributeError(f"module 'tune' has no attribute {name!r}")
