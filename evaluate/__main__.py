"""python -m evaluate [--config config.yaml] [key=value ...]"""

import sys

from common.cli import config_from_args, parser
from common.errors import exits_cleanly


@exits_cleanly
def main(argv=None) -> int:
    args = parser("python -m evaluate", "Base vs tuned on runs/<name>/curate/val.jsonl into runs/<name>/eval/.").parse_args(argv)
    cfg = config_from_args(args)
    from evaluate.run import main as run

    run(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
