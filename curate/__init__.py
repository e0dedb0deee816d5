"""curate: mixed-format chat data -> one chat template, filtered with reasons, deduplicated, split."""


def __getattr__(name: str):
    """`curate.run(cfg)` and `curate.checks(cfg)` live in curate/pipeline.py, imported on first use (not at package import)."""
    if name in ("run", "checks"):
        from curate import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'curate' has no attribute {name!r}")
