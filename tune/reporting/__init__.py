"""The answer, from plain records: the frontier, the race between candidates and the report's text and plots.

``records`` holds a search and its trials as plain data (what MLflow gives back), each trial's policy among them;
``analysis`` turns them into the frontier, the candidates and the recommendation, ``report`` into their tables and
words; ``race`` decides between candidates on paired seeds
at the confidence it prints; ``plots`` draws the frontier. No torch, Ray or MLflow: a report rebuilds from records
alone. May import ``tune.errors`` and ``tune.settings``.
"""

MAY_IMPORT = ("tune.errors", "tune.settings")
