"""The search on Ray: from a checked config to trials on the cluster and the result they give.

``study`` is a search's story from the top (check, run, race, report, register the model, return the result);
``checks`` and ``preflight`` refuse bad input before any trial (``smoke`` sizes the smoke test's config); ``tuner``
runs the trials with Ray Tune, Optuna and ASHA (``resources`` their freeze-aware GPU shares); ``scoring`` scores the
chosen trials on the test split; ``events`` turns Ray's callbacks into the console lines and the bad-input stop;
``cluster`` submits the same search to a Ray cluster as a job. The one part that imports Ray and Optuna. May import
every other part (``tune.settings``, ``tune.training``, ``tune.tasks``, ``tune.tracker``, ``tune.reporting``) and the
top-level ``tune.errors``, ``tune.log``, ``tune.result`` and ``tune.predict``; nothing below it imports it.
"""

MAY_IMPORT = ("tune.errors", "tune.log", "tune.result", "tune.predict", "tune.settings", "tune.training", "tune.tasks",
              "tune.tracker", "tune.reporting")
