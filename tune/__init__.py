"""freeze-depth search: how much of a pretrained network to freeze, answered by a Ray Tune search.

Ray is imported only by ``tune.search``, MLflow only by ``tune.tracking`` (the runs) and ``tune.system_metrics``
(MLflow's CPU and GPU monitors, in a trial's process); the rest is plain torch.
(This package is ``tune``; Ray's is imported as ``from ray import tune as ray_tune``.)
"""

__version__ = "0.1.0"
