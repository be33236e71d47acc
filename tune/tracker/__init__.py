"""Tracking in MLflow: the search's parent run, one run per trial, the store they live in, and what they record.

``tracking`` writes the runs (``SearchTracker``) and reads a finished search back as plain records; ``trial_runs``
names and tags a trial's run; ``store`` resolves and checks the tracking store (sqlite by default, a server, the lock
under which a new file is created); ``system_metrics`` runs MLflow's CPU and GPU monitors in a trial's process;
``provenance`` records the code and packages a search ran with; ``datasets`` describes a task's data splits as the
runs' MLflow datasets. The one part that imports MLflow for a search. May import ``tune.errors``, ``tune.log``,
``tune.settings`` and ``tune.reporting`` (the plain records it reads and writes).
"""

MAY_IMPORT = ("tune.errors", "tune.log", "tune.settings", "tune.reporting")
