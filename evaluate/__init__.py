"""evaluate: base vs tuned on the same held-out set (not named `eval`, a Python builtin;
Hugging Face's `evaluate` library is not a dependency, see README "Layout")."""


def __getattr__(name: str):
    """`evaluate.run(cfg)` and `evaluate.checks(cfg)` live in evaluate/pipeline.py, imported on first use (not at package import)."""
    if name in ("run", "checks"):
        from evaluate import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'evaluate' has no attribute {name!r}")
