"""train: Unsloth-patched LoRA/QLoRA through TRL on curate's train split."""


def __getattr__(name: str):
    """`train.run(cfg)` and `train.checks(cfg)` live in train/pipeline.py, imported on first use (not at package import)."""
    if name in ("run", "checks"):
        from train import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'train' has no attribute {name!r}")
