"""curate: mixed-format chat data -> one chat template, filtered with reasons, deduplicated, split."""
