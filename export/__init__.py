"""export: merged model -> GGUF (llama.cpp converter and quantizer) -> Ollama Modelfile, verified by a round trip."""


def __getattr__(name: str):
    """`export.run(cfg)` and `export.checks(cfg)` live in export/pipeline.py, imported on first use (not at package import)."""
    if name in ("run", "checks"):
        from export import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'export' has no attribute {name!r}")
