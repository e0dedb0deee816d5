"""python -m curate [--config config.yaml] [key=value ...]"""

import sys

import curate
from common.cli import run_stage

if __name__ == "__main__":
    sys.exit(run_stage("curate", "Normalise, filter, deduplicate and split chat data into runs/<name>/curate/.", curate.run))
