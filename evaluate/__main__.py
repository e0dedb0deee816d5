"""python -m evaluate [--config config.yaml] [key=value ...]"""

import sys

import evaluate
from common.cli import run_stage

if __name__ == "__main__":
    sys.exit(run_stage("evaluate", "Base vs tuned on runs/<name>/curate/val.jsonl into runs/<name>/eval/.", evaluate.run))
