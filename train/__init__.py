"""train: Unsloth-patched LoRA/QLoRA through TRL on curate's train split."""
