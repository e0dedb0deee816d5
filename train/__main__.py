"""python -m train [--config config.yaml] [--fresh] [key=value ...]"""

import sys

import train
from common.cli import run_stage

if __name__ == "__main__":
    sys.exit(run_stage("train", "LoRA fine-tuning on runs/<name>/curate/train.jsonl into runs/<name>/train/.", train.run,
                       flags={"--fresh": "delete existing checkpoints and start over"}))
