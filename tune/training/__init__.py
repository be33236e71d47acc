"""One trial in pure torch: a model frozen over a block range, trained and measured, with no Ray and no MLflow.

``train`` is the training loop (``LoopTrial``, ``make_trial``) and ``trial`` the protocol every trial keeps (its
epoch metrics, checkpoints, device); ``freeze`` turns a range into frozen parameters and ``policy`` / ``adapter``
say how the rest trains (decay, thaw, LoRA); ``probe`` fits the linear-probe head every depth starts from;
``prefix_cache`` / ``prefix_chain`` compute a frozen prefix once where that is exact; ``data`` makes the batches,
``precision`` the numerics, ``measure`` the time and memory. May import ``tune.errors``, ``tune.log``,
``tune.blocks``, ``tune.settings`` and ``tune.tasks.base`` (the Task a trial trains); the driver imports it, never the
reverse.
"""

MAY_IMPORT = ("tune.errors", "tune.log", "tune.blocks", "tune.settings", "tune.tasks.base")
