"""The settings: what a user writes down for a search, and the checks that need nothing but the text.

``config`` holds the config's sections as dataclasses (task, train, search, report), built from the rules each key
must keep (``fields``) and the rules across keys (``consistency``); ``loading`` reads a space file with its overrides;
``space`` the search space's dimensions (ranges, choices, cut-point names) and the vocabulary of a policy's keys;
``policy`` a trial's policy as data (what it freezes, its decay, thaw and adapter) with its one label. Plain Python
and YAML: no torch, no Ray, no MLflow, so a bad space file is refused in a second. May import ``tune.errors`` only;
every other part reads its settings from here.
"""

MAY_IMPORT = ("tune.errors",)
