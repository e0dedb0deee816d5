"""python -m curate [--config config.yaml] [key=value ...]"""

import sys

from common.cli import config_from_args, parser
from common.errors import exits_cleanly


@exits_cleanly
def main(argv=None) -> int:
    args = parser("python -m curate", "Normalise, filter, deduplicate and split chat data into runs/<name>/curate/.").parse_args(argv)
    cfg = config_from_args(args)
    from curate.pipeline import run

    run(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
