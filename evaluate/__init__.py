"""evaluate: base vs tuned on the same held-out set (the package is not named `eval`, a Python builtin)."""
