"""python -m export [--config config.yaml] [key=value ...]"""

import sys

import export
from common.cli import run_stage

if __name__ == "__main__":
    sys.exit(run_stage("export", "Merged model -> GGUF -> verified Ollama Modelfile into runs/<name>/export/.", export.run))
